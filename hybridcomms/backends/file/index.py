"""The in-memory index of ``new/`` that a claimer keeps, so a claim is not a directory listing.

Names sort by (priority rank, due time, id) as text, so one sorted listing is the delivery order.
Per priority rank the index keeps:

- the names of the last listing, sorted once, next name last (a claim pops it: O(1));
- a small heap of the names pushed since (this process's own puts and nacks, and arrivals the
  watcher reports), because they arrive in any order.

The next message is the earliest of the two heads of the first rank whose earliest head is due.
Files hybridcomms did not name (dropped by hand, or by an old writer) are tried first.

The listing is redone when no due name is left, and every ``rescan_interval`` seconds so that
arrivals from other processes are seen in priority order even with a long backlog; a listing that
took long (a folder of 100,000 names) stretches that interval so that relisting stays under about
5% of the claimer's time. Names other claimers took in the meantime just fail to open and are
dropped: the index is a hint, the folder is the truth.
"""

from __future__ import annotations

import bisect
import heapq
import threading
import time

from ..._fs import listdir_at
from ..._names import DUE_RE as _DUE_RE
from ..._names import RANKS as _RANKS
from ..._names import compact_time

__all__ = ["ClaimIndex"]

#: Relisting may take at most 1/_SCAN_SHARE of the time between listings.
_SCAN_SHARE = 20
_monotonic = time.monotonic
_heappop = heapq.heappop


class ClaimIndex:
    def __init__(self, rescan_interval: float) -> None:
        self.rescan_interval = rescan_interval
        self._interval = rescan_interval  # stretched by slow listings
        self._listed: dict[str, list[str]] = {r: [] for r in _RANKS}  # sorted, next name last
        self._pushed: dict[str, list[str]] = {r: [] for r in _RANKS}  # heaps
        self._pairs = self._pair_up()  # (listed, pushed) per rank, highest priority first
        self._foreign: list[str] = []
        self._last_scan = float("-inf")
        self._now = ""  # the last compact "now" seen; only ever moves forward
        self._active = False  # set by the first listing: only a claimer keeps an index
        self.skipped = False  # names were skipped (`skip`) since the last listing
        self._lock = threading.Lock()

    def _pair_up(self) -> tuple[tuple[list[str], list[str]], ...]:
        """(listed, pushed) of the ranks that hold names, highest priority first: a claim does not
        walk past empty ranks. (A rank emptied by claims stays until the next listing or push.)"""
        return tuple((self._listed[r], self._pushed[r]) for r in _RANKS if self._listed[r] or self._pushed[r])

    def mark_stale(self) -> None:
        """Events were lost: list the folder at the next claim."""
        self._last_scan = float("-inf")

    def stale(self) -> bool:
        return _monotonic() - self._last_scan >= self._interval

    @property
    def listed_once(self) -> bool:
        """The folder was listed at least once (the index is in use)."""
        return self._active

    @property
    def interval(self) -> float:
        """Seconds between listings now: ``rescan_interval``, or longer after a slow listing."""
        return self._interval

    def rescan(self, new_fd: int) -> None:
        started = _monotonic()
        names = listdir_at(new_fd)
        names.sort()
        # Our names are "<rank>.<due>…" with a due time that starts with a digit: per rank, the
        # names from "<rank>.0" up to "<rank>.:" (":" sorts right after "9"). Everything else is
        # a file hybridcomms did not name.
        listed: dict[str, list[str]] = {}
        foreign: list[str] = []
        lo = 0
        for rank in _RANKS:
            start = bisect.bisect_left(names, rank + ".0", lo)
            end = bisect.bisect_left(names, rank + ".:", start)
            foreign += names[lo:start]
            chunk = names[start:end]
            chunk.reverse()
            listed[rank] = chunk
            lo = end
        foreign += names[lo:]
        finished = _monotonic()
        with self._lock:
            self._listed = listed
            self._pushed = {r: [] for r in _RANKS}
            self._foreign = foreign
            self._pairs = self._pair_up()
            self._last_scan = finished
            self._interval = max(self.rescan_interval, (finished - started) * _SCAN_SHARE)
            self._active = True
            self.skipped = False

    def push(self, name: str) -> None:
        """A name this process just put into new/. Kept only once this index is in use (its owner
        claims): a producer-only mailbox must not collect every name it ever wrote."""
        if not self._active:
            return
        rank = _rank_of(name)
        with self._lock:
            heap = self._pushed.get(rank)
            if heap is None:
                self._foreign.append(name)
            else:
                self._push_ranked(rank, heap, name)

    def _push_ranked(self, rank: str, heap: list[str], name: str) -> None:
        """Under the lock: ``name`` into the heap of its priority ``rank``."""
        was_empty = not heap and not self._listed[rank]
        heapq.heappush(heap, name)
        if was_empty:  # the rank may be missing from the pairs a claim walks
            self._pairs = self._pair_up()

    def pop_due(self, just_scanned: bool = False) -> str | None:
        """The next name to try. None when no name is due, and also when the folder is due for a
        relisting (`stale`) unless ``just_scanned``: the caller then relists and asks again."""
        if not just_scanned and _monotonic() - self._last_scan >= self._interval:
            return None
        with self._lock:
            if self._foreign:
                return self._foreign.pop()
            return self._pop_first_due()

    def _pop_first_due(self) -> str | None:
        """Under the lock: the earliest head of the first priority whose head is due, taken out."""
        for listed, pushed in self._pairs:
            head = _head_of(listed, pushed)
            if head is not None and self._is_due(head[0][3:25]):
                return listed.pop() if head[1] else _heappop(pushed)
        return None

    def _is_due(self, due: str) -> bool:
        """Whether a head due at ``due`` (a name's due part) is to be tried now.

        Time only moves forward: a head due before the last "now" is due. Only a head that looks due
        later asks the clock again (most claims skip formatting it). A head not due yet whose due time
        is not a time at all is a name we did not write: it is tried now, and the claim gives it a
        proper name."""
        return due <= self._now or due <= self._refresh_now() or not _DUE_RE.match(due)

    def skip(self, count: int) -> int:
        """Drop up to ``count`` due names from the head (a claimer that lost a race jumps ahead: see
        `FileMailbox._claim_once`). Names dropped here stay in the folder: other claimers take them,
        or the next listing brings them back. Returns how many were dropped."""
        dropped = 0
        while dropped < count:
            name = self.pop_due()
            if name is None:
                break
            dropped += 1
        if dropped:
            self.skipped = True
        return dropped

    def _refresh_now(self) -> str:
        self._now = compact_time(time.time())
        return self._now

    def next_due(self) -> str | None:
        """The earliest due time among names not yet due (compact form), if any."""
        with self._lock:
            heads = self._head_names()
        return min((h[3:25] for h in heads if _DUE_RE.match(h[3:25])), default=None)

    def _head_names(self) -> list[str]:
        """Under the lock: the first name of each priority's listing and of each one's heap."""
        return [h[-1] for h in self._listed.values() if h] + [h[0] for h in self._pushed.values() if h]

    def __len__(self) -> int:
        with self._lock:
            return (
                len(self._foreign)
                + sum(len(h) for h in self._listed.values())
                + sum(len(h) for h in self._pushed.values())
            )


def _rank_of(name: str) -> str:
    """The priority rank a name of ours starts with ("<rank>.<digit>…"); "" for any other name."""
    return name[:2] if name[2:3] == "." and "0" <= name[3:4] <= "9" else ""


def _head_of(listed: list[str], pushed: list[str]) -> tuple[str, bool] | None:
    """The first name of one priority, and whether it is the listing's (else the pushed heap's);
    None if both are empty. (``listed`` is sorted last-first, ``pushed`` a heap.)"""
    if listed and not (pushed and pushed[0] < listed[-1]):
        return listed[-1], True
    if pushed:
        return pushed[0], False
    return None
