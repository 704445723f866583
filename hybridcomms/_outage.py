"""A backend that fails: said in one line, and an outage told twice (when it starts, when it ends)
however often the caller retries meanwhile, and counted for the metrics.

- `unreachable(exc)`, `reason(exc)`, `one_line(text)`: from `hybridcomms._reasons` (a lower layer),
  re-exported here.
- `is_outage(exc)`: an error that says the mailbox's backend is failing (an I/O error, a server that
  cannot be reached, a mailbox folder gone), not a mistake in what was asked: wait and try again.
- `Outage`: one user's view of one backend (a `Comms`'s consumer loop and router; ``hybridcomms work``).
  `failed(exc)` says the outage once, when it starts (a warning, with the reason), and returns how
  long to wait before the next try (a capped backoff: `RETRY`); `ok()` says once that it is back, and
  how long it was gone.
- `OUTAGE_STATS`: per (agent, backend kind): outages so far, seconds they lasted, and whether the
  backend is down now (exported by `hybridcomms.metrics`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from . import _log
from ._reasons import one_line, reason, unreachable
from .errors import UnsafePathError
from .retry import Backoff

__all__ = ["OUTAGE_STATS", "RETRY", "Outage", "is_outage", "one_line", "reason", "unreachable"]

log = _log.get("hybridcomms.comms")

#: Waits between tries while a backend fails: 0.25 s, doubling, never more than 5 s apart (so a
#: consumer is back within 5 s of its backend).
RETRY = Backoff(initial=0.25, factor=2.0, maximum=5.0, jitter=0.1)


def is_outage(exc: BaseException) -> bool:
    """An error that says the backend is failing (try again later), not a mistake in the call."""
    return isinstance(exc, (OSError, UnsafePathError)) or unreachable(exc) is not None


@dataclass(slots=True)
class _Row:
    outages: int = 0  # outages started
    seconds: float = 0.0  # seconds of the outages that ended
    down: int = 0  # `Outage` s that see it down now
    since: float = 0.0  # monotonic time the current outage started (when down)


#: (agent, backend kind) -> its row, for every `Outage` of this process (`hybridcomms.metrics`).
OUTAGE_STATS: dict[tuple[str, str], _Row] = {}
_stats_lock = threading.Lock()


def outage_rows() -> list[tuple[str, str, int, float, bool]]:
    """(agent, backend, outages, seconds down in all, up now) per row, the current outage included."""
    now = time.monotonic()
    with _stats_lock:
        return [
            (agent, backend, r.outages, r.seconds + (now - r.since if r.down else 0.0), r.down == 0)
            for (agent, backend), r in OUTAGE_STATS.items()
        ]


class Outage:
    """One backend as one user of it sees it: up, or down since when (see the module docstring).

    ``Outage(agent, backend, where, *, say=None, retry=None)``
        agent     who sees it (a label of the metrics)
        backend   its kind: "file", "redis", "memory" (a label of the metrics)
        where     what the messages name: the URL without its password, or the mailbox's folder
        say       where the two lines go (default: a warning on the ``hybridcomms.comms`` logger)
        retry     the waits between tries (default: `RETRY`, as it is when the `Outage` is made)
    """

    def __init__(
        self,
        agent: str,
        backend: str,
        where: str,
        *,
        say: Callable[[str], None] | None = None,
        retry: Backoff | None = None,
    ) -> None:
        self.agent = agent
        self.backend = backend
        self.where = where
        self.retry = RETRY if retry is None else retry
        self._say = say
        self._lock = threading.Lock()
        self._since: float | None = None  # monotonic time it went down; None while up
        self._tries = 0
        with _stats_lock:
            OUTAGE_STATS.setdefault((agent, backend), _Row())

    @property
    def down(self) -> bool:
        return self._since is not None

    def failed(self, exc: BaseException) -> float:
        """``exc`` says the backend fails: the first time, say so. Returns the seconds to wait before
        the next try."""
        with self._lock:
            self._tries += 1
            tries = self._tries
            started = self._since is None
            if started:
                self._since = time.monotonic()
                with _stats_lock:
                    row = OUTAGE_STATS.setdefault((self.agent, self.backend), _Row())
                    row.outages += 1
                    if row.down == 0:
                        row.since = self._since
                    row.down += 1
        delay = self.retry.delay(tries)
        if started:
            text = (
                f"{self.agent}: {self.where}: backend failing: {reason(exc)} (retrying at most "
                f"{self.retry.maximum:g}s apart; one more line when it is back)"
            )
            self._tell(text, exc)
        return delay

    def _tell(self, text: str, exc: BaseException | None = None) -> None:
        """Say ``text`` where this outage's lines go: ``say``, else a warning on the log (with the
        traceback of ``exc`` only for who asked for debug output)."""
        if self._say is not None:
            self._say(text)
        else:
            log.warning("%s", text, exc_info=exc if log.isEnabledFor(logging.DEBUG) else None)

    def ok(self) -> None:
        """A call on the backend worked: if it was down, say once that it is back."""
        if self._since is None:  # the common case, without the lock
            return
        with self._lock:
            since, tries = self._since, self._tries
            if since is None:
                return
            self._since, self._tries = None, 0
            lasted = self._end(since)
        text = f"{self.agent}: {self.where}: backend works again after {lasted:.1f}s ({tries} failed tries)"
        self._tell(text)

    def _end(self, since: float) -> float:
        now = time.monotonic()
        with _stats_lock:
            row = OUTAGE_STATS.setdefault((self.agent, self.backend), _Row())
            row.down = max(row.down - 1, 0)
            if row.down == 0:
                row.seconds += now - row.since
        return now - since

    def close(self) -> None:
        """No longer watched (its user stopped): a current outage ends for the metrics, silently."""
        with self._lock:
            since, self._since, self._tries = self._since, None, 0
            if since is not None:
                self._end(since)
