"""The in-memory index of ``new/`` that a claimer keeps, so a claim is not a directory listing.

One listing fills one heap per priority rank, ordered by (due time, id): the head of the first rank
whose head is due is the next message. Names pushed by this process (its own puts and nacks, and
arrivals the watcher reports) join the heaps at once. The listing is redone when no due name is
left, and every ``rescan_interval`` seconds so that arrivals from other processes are seen in
priority order even with a long backlog. Names other claimers took in the meantime just fail to
open and are dropped: the index is a hint, the folder is the truth.
"""

from __future__ import annotations

import heapq
import os
import threading
import time

from ._names import compact_time

__all__ = ["ClaimIndex"]

_RANKS = ("0C", "1H", "2M", "3L")


class ClaimIndex:
    def __init__(self, rescan_interval: float) -> None:
        self.rescan_interval = rescan_interval
        self._heaps: dict[str, list[str]] = {r: [] for r in _RANKS}
        self._foreign: list[str] = []
        self._last_scan = float("-inf")
        self._now = ""  # the last compact "now" seen; only ever moves forward
        self._active = False  # set by the first listing: only a claimer keeps an index
        self._lock = threading.Lock()

    def mark_stale(self) -> None:
        """Events were lost: list the folder at the next claim."""
        self._last_scan = float("-inf")

    def stale(self) -> bool:
        return time.monotonic() - self._last_scan >= self.rescan_interval

    def rescan(self, new_fd: int) -> None:
        names = os.listdir(new_fd)
        heaps: dict[str, list[str]] = {r: [] for r in _RANKS}
        foreign: list[str] = []
        for name in names:
            heap = heaps.get(name[:2]) if len(name) > 26 and name[2] == "." else None
            if heap is None:
                foreign.append(name)
            else:
                heap.append(name)
        for heap in heaps.values():
            heapq.heapify(heap)
        with self._lock:
            self._heaps = heaps
            self._foreign = foreign
            self._last_scan = time.monotonic()
            self._active = True

    def push(self, name: str) -> None:
        """A name this process just put into new/. Kept only once this index is in use (its owner
        claims): a producer-only mailbox must not collect every name it ever wrote."""
        if not self._active:
            return
        heap = self._heaps.get(name[:2]) if len(name) > 26 and name[2] == "." else None
        with self._lock:
            if heap is None:
                self._foreign.append(name)
            else:
                heapq.heappush(self._heaps[name[:2]], name)

    def pop_due(self) -> str | None:
        """The next name to try: a file hybridcomms did not name first, then by priority and due time."""
        with self._lock:
            if self._foreign:
                return self._foreign.pop()
            for rank in _RANKS:
                heap = self._heaps[rank]
                if heap:
                    due = heap[0][3:25]
                    # Time only moves forward: a head due before the last "now" is due. Only a head
                    # that looks due later asks the clock again (most claims skip formatting it).
                    if due <= self._now or due <= self._refresh_now():
                        return heapq.heappop(heap)
        return None

    def _refresh_now(self) -> str:
        self._now = compact_time(time.time())
        return self._now

    def next_due(self) -> str | None:
        """The earliest due time among names not yet due (compact form), if any."""
        with self._lock:
            heads = [h[0][3:25] for h in self._heaps.values() if h]
        return min(heads) if heads else None

    def __len__(self) -> int:
        with self._lock:
            return len(self._foreign) + sum(len(h) for h in self._heaps.values())
