"""What a file of ``new/`` holds, read by the claim that locked it (`FileMailbox._try_claim`).

The common case is a native file (what `Message.encode` writes): one ``read(65536)`` and the fast
decoder (`message.from_native`). Anything else (a big file, another layout, a FIFO, garbage) takes
`read_message`, which says why a file can never be delivered; fstat is only asked then.
"""

from __future__ import annotations

import os
import re
import stat

import orjson

from ... import _fs
from ..._names import RANK_OF, compact_time_of, make_name
from ...errors import MessageDecodeError
from ...message import Message, from_native

__all__ = ["claim_target", "read_claimed", "read_message"]

_loads = orjson.loads
_JSONDecodeError = orjson.JSONDecodeError
#: The first read; a native message smaller than this is read in one go.
_FIRST = 65536
#: The attempt count a name can hold (``a`` and at most six digits).
_MAX_ATTEMPT_IN_NAME = 999_999


def read_claimed(fd: int, m: re.Match[str] | None, limit: int) -> tuple[Message | None, str]:
    """The message in the open file ``fd`` (``m``: its name's match of `_names.NAME_RE`, None for a
    name not ours), or None and why it can never be delivered."""
    try:
        raw: bytes | None = os.read(fd, _FIRST)
    except OSError:
        raw = None  # EISDIR, EAGAIN on a FIFO, …: read_message says what it is
    if raw is None:
        return read_message(fd, None, limit)
    if raw[:13] == b'{"version":1,' and len(raw) < _FIRST:
        message = _native(raw, m, limit)
        if message is not None:
            return message, ""
    return read_message(fd, raw, limit)


def _native(raw: bytes, m: re.Match[str] | None, limit: int) -> Message | None:
    """The message in ``raw``, a whole native file, by the fast decoder; None if it does not decode
    so (`read_message` then reads it the long way, and says why not)."""
    try:
        obj = _loads(raw)
    except _JSONDecodeError:
        return None
    if type(obj) is not dict or len(raw) > limit:
        return None
    return from_native(obj, True, None if m is None else m[3])


def read_message(fd: int, first: bytes | None, limit: int) -> tuple[Message | None, str]:
    """The message in an open file whose first ``read(65536)`` gave ``first`` (None if that
    read failed), or None and why it can never be delivered."""
    raw, unreadable = _whole(fd, first, limit)
    problem = ""
    if raw is not None and len(raw) <= limit:
        message, problem = _decoded(raw)
        if message is not None:
            return message, ""
    else:
        raw = None
    return None, _why_not(fd, unreadable, raw is None, limit) or problem


def _whole(fd: int, first: bytes | None, limit: int) -> tuple[bytes | None, bool]:
    """The file's bytes, given its first read ``first``: the rest read too for a big one, up to the
    limit (None beyond it); and whether a read failed (then None)."""
    if first is None or len(first) < _FIRST:
        return first, first is None
    try:  # a big one: read the rest, up to the limit
        rest = _fs.read_all(fd, 0, limit - _FIRST)
    except OSError:
        return None, True
    return (None if rest is None else first + rest), False


def _decoded(raw: bytes) -> tuple[Message | None, str]:
    """The message the bytes ``raw`` hold, or None and why they are none."""
    try:
        return Message.decode(raw), ""
    except MessageDecodeError as exc:
        return None, exc.reason
    except Exception as exc:  # anything else about this file is its problem too
        return None, f"cannot be read as a message: {type(exc).__name__}: {exc}"


def _why_not(fd: int, unreadable: bool, too_large: bool, limit: int) -> str:
    """What the file is, when that is why it cannot be read ("" when its content is the problem)."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return f"not a regular file (mode {stat.filemode(st.st_mode)})"
    if unreadable:
        return "cannot be read (I/O error)"
    if too_large or st.st_size > limit:
        return f"too large: {st.st_size} bytes, over the limit of {limit}"
    return ""


def claim_target(m: re.Match[str] | None, message: Message | None, problem: str) -> tuple[str, int, str]:
    """The name a claimed message gets in ``processing/`` (its attempt count raised) and the
    attempt; or ``""`` and why it cannot be delivered (``problem`` when there is no message)."""
    if message is None:
        return "", 0, problem
    try:
        if m is None:  # a file not named by us: give it a proper name
            return (
                make_name(RANK_OF[message.priority], compact_time_of(message.created_at), message.id, 1),
                1,
                "",
            )
        return _next_attempt(m)
    except Exception as exc:  # a message that cannot be named is that file's problem
        return "", 0, f"cannot be delivered: {type(exc).__name__}: {exc}"


def _next_attempt(m: re.Match[str]) -> tuple[str, int, str]:
    """Our name ``m`` with its attempt count raised, and that attempt; or ``""`` and why the count
    cannot go higher."""
    rank, due, msg_id, seen = m.groups()
    attempt = int(seen) + 1
    if attempt > _MAX_ATTEMPT_IN_NAME:
        return "", 0, f"attempt count {seen} is out of range"
    return make_name(rank, due, msg_id, attempt), attempt, ""
