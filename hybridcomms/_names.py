"""Message file names: what a name says, and how to read it back.

    2M.20261126T112403123456Z.3f2a9c0e4b7d4e1f8a6b5c4d3e2f1a0b.a1.json
    ^^ ^^^^^^^^^^^^^^^^^^^^^^ ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^ ^^
    |  due time (UTC, µs)     message id                       attempts so far
    priority: 0C critical, 1H high, 2M medium, 3L low

Sorting names sorts by (priority, due time), so the first due name of the first rank is the
next message to deliver. The due time is the creation time, or the not-before time a nack or a
recovery set. The attempt count goes up on every claim, so it survives a killed consumer.
"""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from typing import NamedTuple

from .message import Priority

__all__ = [
    "NAME_RE",
    "RANK_OF",
    "REASON_SUFFIX",
    "NameInfo",
    "compact_time",
    "compact_time_of",
    "make_name",
    "parse_compact",
    "parse_name",
]

RANK_OF: dict[Priority, str] = {
    Priority.CRITICAL: "0C",
    Priority.HIGH: "1H",
    Priority.MEDIUM: "2M",
    Priority.LOW: "3L",
}
PRIORITY_OF_RANK: dict[str, Priority] = {v: k for k, v in RANK_OF.items()}
#: The ranks in claim order (highest priority first), which is also their order as text.
RANKS: tuple[str, ...] = tuple(sorted(PRIORITY_OF_RANK))
REASON_SUFFIX = ".reason.json"

_DUE = r"\d{8}T\d{12}Z"
#: A compact due time (``20261126T112403123456Z``), the part of a name at [3:25].
DUE_RE = re.compile(_DUE + r"\Z")

# The id part allows exactly what a message id allows (message.ID_RE), so a name that matches
# carries a valid id: the claim path compares it with the file's id instead of checking that again.
NAME_RE = re.compile(
    rf"({'|'.join(RANKS)})\.({_DUE})\.([A-Za-z0-9_:@+-][A-Za-z0-9._:@+-]{{0,127}})\.a(\d{{1,6}})\.json\Z"
)


class NameInfo(NamedTuple):
    rank: str
    due: str
    id: str
    attempt: int

    @property
    def priority(self) -> Priority:
        return PRIORITY_OF_RANK[self.rank]

    def with_(self, *, due: str | None = None, attempt: int | None = None) -> str:
        return make_name(self.rank, due or self.due, self.id, self.attempt if attempt is None else attempt)


def make_name(rank: str, due: str, msg_id: str, attempt: int) -> str:
    return f"{rank}.{due}.{msg_id}.a{attempt}.json"


def parse_name(name: str) -> NameInfo | None:
    """Read a message file name; ``None`` for a name hybridcomms did not write."""
    m = NAME_RE.match(name)
    if m is None:
        return None
    rank, due, msg_id, attempt = m.groups()
    return NameInfo(rank, due, msg_id, int(attempt))


_second_cache: tuple[int, str] = (-1, "")


def _seconds(whole: int) -> str:
    """``20261126T112403`` for a whole POSIX second, from a one-entry cache (names made in a burst
    share their second)."""
    global _second_cache
    cached_whole, prefix = _second_cache
    if whole != cached_whole:
        prefix = time.strftime("%Y%m%dT%H%M%S", time.gmtime(whole))
        _second_cache = (whole, prefix)
    return prefix


def compact_time(ts: float) -> str:
    """``20261126T112403123456Z`` for a POSIX time: fixed width, so it sorts as text."""
    whole = int(ts)
    return f"{_seconds(whole)}{int((ts - whole) * 1e6):06d}Z"


def compact_time_of(dt: datetime, ts: float | None = None) -> str:
    """The same form for an aware UTC datetime (a message's creation time); ``ts`` is its POSIX
    time if the caller has it already.

    On the put path: the seconds come from the same one-entry cache as `compact_time` and the
    microseconds from the datetime itself, exactly (about 3x faster than formatting it)."""
    if ts is None:
        ts = dt.timestamp()
    if 0.0 <= ts < 4e9:  # float seconds exact enough here that x.999999 never rounds up to x+1
        return f"{_seconds(int(ts))}{dt.microsecond:06d}Z"
    s = dt.isoformat(timespec="microseconds")  # 2026-11-26T11:24:03.123456+00:00
    return f"{s[0:4]}{s[5:7]}{s[8:10]}T{s[11:13]}{s[14:16]}{s[17:19]}{s[20:26]}Z"


def parse_compact(text: str) -> float:
    """Back from the compact form to a POSIX time."""
    base = datetime.strptime(text[:15], "%Y%m%dT%H%M%S").replace(tzinfo=timezone.utc)
    return base.timestamp() + int(text[15:21]) / 1e6
