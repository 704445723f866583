"""Legacy lock files another process holds: skipped, and tried again later, with a growing backoff.

Legacy writers hold ``inbox.json.lock`` (or ``inbox/.inbox.lock``) for the few milliseconds of an append.
A co-tenant can hold one forever (``flock`` it and sleep). A consumer loop or the watch service that
waited for it would deliver one message per wait; instead they try the lock once without waiting
(`ingest(skip_held=True)`), and while it stays held skip that legacy intake for `FIRST_WAIT` seconds,
then twice as long after every try that finds it held, up to `LONGEST_WAIT`. That is said once (a
warning when it is first found held, an info line when it is free again), not at every try. The
mailbox itself is delivered meanwhile as if nothing were there.

One table per process (`HELD`), keyed by the lock file's path: every consumer, probe and watcher of the
process shares what it knows.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

from ... import _log

__all__ = ["FIRST_WAIT", "HELD", "LONGEST_WAIT", "HeldLocks"]

log = _log.get("hybridcomms.compat.dreamos.legacy")

#: Seconds a held lock is left alone after it is first found held; doubled after every try that finds
#: it held still, up to `LONGEST_WAIT`.
FIRST_WAIT = 0.25
LONGEST_WAIT = 8.0


@dataclass
class _Held:
    since: float  # monotonic time it was first found held
    wait: float  # the current backoff
    next_try: float  # monotonic time of the next try
    tries: int = 1


class HeldLocks:
    """Which lock files were found held, and when to try each again (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._held: dict[str, _Held] = {}

    def due(self, key: str) -> bool:
        """Is it time to try this lock (never found held, or its backoff is over)?"""
        with self._lock:
            held = self._held.get(key)
            return held is None or time.monotonic() >= held.next_try

    def retry_in(self, key: str) -> float | None:
        """Seconds until this lock is due again; None if it is not known to be held."""
        with self._lock:
            held = self._held.get(key)
            return None if held is None else max(held.next_try - time.monotonic(), 0.0)

    def held(self, key: str, shown: str) -> None:
        """A try found the lock held by another process: wait longer before the next one."""
        now = time.monotonic()
        with self._lock:
            held = self._held.get(key)
            if held is None:
                held = self._held[key] = _Held(now, FIRST_WAIT, now + FIRST_WAIT)
                first = True
            else:
                held.wait = min(held.wait * 2, LONGEST_WAIT)
                held.next_try = now + held.wait
                held.tries += 1
                first = False
        if first:
            log.warning(
                "%s is held by another process: the legacy drops it guards are skipped and tried again "
                "later (every %gs at most) until it is free; the mailbox is delivered meanwhile",
                shown,
                LONGEST_WAIT,
            )

    def free(self, key: str, shown: str) -> None:
        """A try took the lock: forget it was held (and say so, if it was)."""
        with self._lock:
            held = self._held.pop(key, None)
        if held is not None:
            log.info(
                "%s is free again after %.1fs (%d tries found it held): legacy drops taken again",
                shown,
                time.monotonic() - held.since,
                held.tries,
            )


#: The table of this process.
HELD = HeldLocks()
