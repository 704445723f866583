"""A backend that fails: said in one line, and an outage told twice (when it starts, when it ends)
however often the caller retries meanwhile, and counted for the metrics.

- `unreachable(exc)`: the error behind ``exc`` that says the backend cannot be reached at all (a
  `BackendUnavailableError`, or the Redis client's connection, timeout or authentication error), or
  None. The CLI says it as ``cannot reach URL: REASON``.
- `reason(exc)`: why ``exc`` happened, in one line, without a traceback (what people read).
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
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

from . import _log
from ._text import printable
from .errors import BackendUnavailableError, UnsafePathError
from .retry import Backoff

__all__ = ["OUTAGE_STATS", "RETRY", "Outage", "is_outage", "one_line", "reason", "unreachable"]

log = _log.get("hybridcomms.comms")

#: Waits between tries while a backend fails: 0.25 s, doubling, never more than 5 s apart (so a
#: consumer is back within 5 s of its backend).
RETRY = Backoff(initial=0.25, factor=2.0, maximum=5.0, jitter=0.1)

_CONNECTING = re.compile(r"Error -?\d+ connecting to .*?\. (.+)", re.DOTALL)


def one_line(text: str) -> str:
    """``text`` as one printable line (`hybridcomms._text.printable`): controls (a newline in a hostile
    file name), invisible format characters and undecodable bytes written as escapes."""
    return printable(text)


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the errors it was raised from (``raise ... from``; not those it met on the way)."""
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        yield cur
        cur = cur.__cause__


def _redis_unreachable_types() -> tuple[type[BaseException], ...]:
    mod = sys.modules.get("redis.exceptions")  # not imported: no Redis error can have happened
    if mod is None:
        return ()
    return (mod.ConnectionError, mod.TimeoutError)


def unreachable(exc: BaseException) -> BaseException | None:
    """The error in ``exc``'s chain that says its backend cannot be reached, or None."""
    kinds: tuple[type[BaseException], ...] = (BackendUnavailableError, *_redis_unreachable_types())
    for e in _chain(exc):
        if isinstance(e, kinds):
            return e
    return None


def reason(exc: BaseException) -> str:
    """Why ``exc`` happened, in one line: for a backend that cannot be reached the cause only
    ("Connection refused", "Name or service not known"), else the error's own text."""
    found = unreachable(exc)
    if isinstance(found, BackendUnavailableError):
        return one_line(found.reason)
    if found is not None:
        return one_line(_client_cause(found))
    if isinstance(exc, OSError) and exc.strerror:  # "[Errno 2] text: 'file'" reads as "text: file"
        return one_line(_os_error_text(exc, exc.strerror))
    return one_line(str(exc) or type(exc).__name__)


def _client_cause(found: BaseException) -> str:
    """What a client library's "cannot reach" error says, without the words around the cause."""
    text = str(found).strip()
    name = type(found).__name__
    m = _CONNECTING.match(text)
    if m is not None:
        text = m.group(1).strip().rstrip(".")
    elif name == "AuthenticationError":
        text = _auth_refusal(text)
    elif name == "TimeoutError":
        text = f"timed out ({text.rstrip('.')})" if text else "timed out"
    return text.rstrip(".") or name


def _auth_refusal(text: str) -> str:
    """An authentication error: a password is missing, or the credentials given were refused."""
    if "HELLO" in text or "NOAUTH" in text or "required" in text:
        return "the server wants a password (the URL has none)"
    return f"credentials refused: {text.rstrip('.')}"


def _os_error_text(exc: OSError, strerror: str) -> str:
    """An `OSError` as its text and the file it names (once): "text: file"."""
    name = exc.filename
    shown = "" if name is None or str(name) in strerror else f": {name!s}"
    return strerror + shown


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
