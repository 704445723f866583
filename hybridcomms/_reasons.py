"""Why an error happened, in one line: what people read of a failing backend or file.

- `unreachable(exc)`: the error behind ``exc`` that says the backend cannot be reached at all (a
  `BackendUnavailableError`, or the Redis client's connection, timeout or authentication error), or
  None. The CLI says it as ``cannot reach URL: REASON``.
- `reason(exc)`: why ``exc`` happened, in one line, without a traceback.
- `one_line(text)`: any text as one printable line.

A foundation module (it imports only `_text` and `errors`): every layer may use it, the backends to
word their errors, `hybridcomms._outage` and the CLI to say them.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Callable, Iterator

from ._text import printable
from .errors import BackendUnavailableError

__all__ = ["one_line", "reason", "unreachable"]

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
    if found is not None:
        return one_line(_unreachable_reason(found))
    if isinstance(exc, OSError) and exc.strerror:  # "[Errno 2] text: 'file'" reads as "text: file"
        return one_line(_os_error_text(exc, exc.strerror))
    return one_line(str(exc) or type(exc).__name__)


def _unreachable_reason(found: BaseException) -> str:
    """Why a backend cannot be reached: our own error's reason, or a client library's cause."""
    if isinstance(found, BackendUnavailableError):
        return found.reason
    return _client_cause(found)


def _client_cause(found: BaseException) -> str:
    """What a client library's "cannot reach" error says, without the words around the cause."""
    text = str(found).strip()
    name = type(found).__name__
    m = _CONNECTING.match(text)
    said_by_kind = _CAUSE_BY_ERROR.get(name)
    if m is not None:
        text = m.group(1).strip().rstrip(".")
    elif said_by_kind is not None:
        text = said_by_kind(text)
    return text.rstrip(".") or name


def _timed_out(text: str) -> str:
    """A timeout, with what the client said about it."""
    return f"timed out ({text.rstrip('.')})" if text else "timed out"


def _auth_refusal(text: str) -> str:
    """An authentication error: a password is missing, or the credentials given were refused."""
    if "HELLO" in text or "NOAUTH" in text or "required" in text:
        return "the server wants a password (the URL has none)"
    return f"credentials refused: {text.rstrip('.')}"


#: How the text of a client library's error is said, by the error's class name (Redis's, ...).
_CAUSE_BY_ERROR: dict[str, Callable[[str], str]] = {
    "AuthenticationError": _auth_refusal,
    "TimeoutError": _timed_out,
}


def _os_error_text(exc: OSError, strerror: str) -> str:
    """An `OSError` as its text and the file it names (once): "text: file"."""
    name = exc.filename
    shown = "" if name is None or str(name) in strerror else f": {name!s}"
    return strerror + shown
