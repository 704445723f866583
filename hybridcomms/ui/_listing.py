"""One mailbox's messages, a page at a time, without reading bodies to list them.

The listing is the mailbox's own (`Mailbox.list`: names, sizes, times, reasons); only the messages of
the page shown are read, for their topic and sender, and only when they are small (`HEAD_LIMIT`):
a giant file costs a stat, never a read. What was read is remembered by name (a message file is
written once and never changed). A topic filter reads topics until the page is full, at most
`SCAN_LIMIT` of them per request, and says so when it stopped there.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import fnmatch
import os
import re
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

from ._payload import reason_shown
from ._source import HybridCommsError, Mailbox, MessageInfo, State, Withheld, listing, read_small, with_reason

PAGE_SIZE = 50
#: A message larger than this is not read for the listing (its topic shows as unknown).
HEAD_LIMIT = 256 * 1024
#: A topic filter looks at most this many messages per page asked.
SCAN_LIMIT = 5000
#: The most of a topic, sender, recipient kept for the listing (characters; the message page shows all).
FIELD_LIMIT = 200
#: What the cache of heads may hold, in (estimated) bytes: not a count of entries, which a producer
#: could make as large as it likes.
CACHE_BYTES = 16 << 20
#: The estimated cost of one cached head beyond its strings (the key, the object, the dict slot).
ENTRY_OVERHEAD = 400
#: What a message key in a URL may be: a message id (`hybridcomms.message`'s rule), or "~" and the
#: file name as URL-safe base64 (a file hybridcomms did not name).
_ID_RE = re.compile(r"[A-Za-z0-9_:@+-][A-Za-z0-9._:@+-]{0,127}\Z")
_NAME_KEY_RE = re.compile(r"~[A-Za-z0-9_-]{1,700}={0,2}\Z")


@dataclass(frozen=True, slots=True)
class Head:
    """What the listing shows of a message's content."""

    topic: str | None
    sender: str | None
    recipient: str | None
    priority: str | None
    withheld: str | None = None  # why the file was not read (hard-linked, too large)

    def cost(self) -> int:
        """Its estimated size in bytes (what `HeadCache` counts)."""
        texts = (self.topic, self.sender, self.recipient, self.priority, self.withheld)
        return ENTRY_OVERHEAD + sum(len(t) * 4 for t in texts if t)  # 4: the widest str storage


_UNKNOWN = Head(None, None, None, None)


def _clip(value: str | None) -> str | None:
    return value if value is None or len(value) <= FIELD_LIMIT else value[: FIELD_LIMIT - 1] + "…"


class HeadCache:
    """Heads read, by (agent, state, name): bounded by their bytes (`CACHE_BYTES`), least recently
    used out first; every field is cut to `FIELD_LIMIT`, so one head costs a few hundred bytes at most
    whatever its file holds."""

    def __init__(self, budget: int = CACHE_BYTES) -> None:
        self.budget = budget
        self.bytes = 0  # the estimated bytes held (keys and heads)
        self._items: OrderedDict[tuple[str, str, str], tuple[Head, int]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def head(self, mb: Mailbox, info: MessageInfo) -> Head:
        key = (mb.agent_id, info.state.value, info.name)
        hit = self._hit(key)
        if hit is not None:
            return hit
        got = read_head(mb, info)
        self._keep(key, got, got.cost() + sum(len(k) * 4 for k in key))
        return got

    def _hit(self, key: tuple[str, str, str]) -> Head | None:
        """The head cached under ``key`` (now the most recently used), or None."""
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                return None
            self._items.move_to_end(key)
            return hit[0]

    def _keep(self, key: tuple[str, str, str], head: Head, cost: int) -> None:
        """Caches ``head`` under ``key``; the least recently used go while the cache is over budget."""
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (head, cost)
            self.bytes += cost
            while self.bytes > self.budget and self._items:
                self.bytes -= self._items.popitem(last=False)[1][1]


def read_head(mb: Mailbox, info: MessageInfo) -> Head:
    """What a listing shows of a message: read only when its file is small and has one name."""
    try:
        m = read_small(mb, info, HEAD_LIMIT)
    except Withheld as exc:
        return Head(None, None, None, None, _clip(str(exc)))
    except (OSError, HybridCommsError, KeyError, ValueError):
        return _UNKNOWN
    return Head(_clip(m.topic), _clip(m.sender), _clip(m.recipient), m.priority.name)


def message_key(info: MessageInfo) -> str:
    """The key of a message in a URL: its id, or "~" + its file name in URL-safe base64."""
    if info.id is not None and _ID_RE.match(info.id):
        return info.id
    return "~" + base64.urlsafe_b64encode(os.fsencode(info.name)).decode()


def lookup_key(key: str) -> str | None:
    """What `Mailbox.get` is asked for a key from a URL (an id, or a file name compared with the
    folder's listing: never a path); None for a key that cannot be one."""
    if _ID_RE.match(key):
        return key
    if not _NAME_KEY_RE.match(key):
        return None
    return _file_name(key[1:])


def _file_name(encoded: str) -> str | None:
    """The file name a "~" key carries (URL-safe base64); None when it is not a plain name in a folder."""
    try:
        name = os.fsdecode(base64.urlsafe_b64decode(encoded))
    except (binascii.Error, ValueError):
        return None
    return name if _plain_name(name) else None


def _plain_name(name: str) -> bool:
    """Whether ``name`` names an entry of a folder: not empty, no slash, no NUL, not "." or ".."."""
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..")


@dataclass(frozen=True, slots=True)
class Item:
    info: MessageInfo
    head: Head
    key: str
    age: float

    @property
    def error(self) -> str | None:
        if self.info.reason is not None:
            value = self.info.reason.get("last_error")
            return None if value is None else str(value)
        return None if self.info.last_error is None else self.info.last_error.error

    @property
    def reason(self) -> str | None:
        if self.info.reason is None:
            return None
        value = self.info.reason.get("reason")
        return None if value is None else str(value)

    @property
    def priority(self) -> str | None:
        if self.head.priority is not None:
            return self.head.priority
        rank = self.info.name[:2]
        return {"0C": "CRITICAL", "1H": "HIGH", "2M": "MEDIUM", "3L": "LOW"}.get(rank)


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Item]
    total: int  # messages in the state
    page: int  # 1-based
    pages: int | None  # None with a topic filter (unknown without reading every message)
    has_next: bool
    scanned: int  # with a topic filter: how many topics were looked at
    capped: bool  # the filter stopped at SCAN_LIMIT


def _reason_cut(info: MessageInfo) -> MessageInfo:
    """``info`` with its dead reason cut by depth (`reason_shown`): a row never fails to print it."""
    if info.reason is None:
        return info
    return dataclasses.replace(info, reason=reason_shown(info.reason))


def ordered(infos: list[MessageInfo], state: State) -> list[MessageInfo]:
    """Waiting and in-flight messages in claim order (their names sort so); done and dead ones newest
    first (what a person looks for)."""
    if state in (State.DONE, State.DEAD):
        return sorted(infos, key=lambda i: i.changed_at, reverse=True)
    return infos


def page_of(
    mb: Mailbox,
    state: State,
    heads: HeadCache,
    *,
    page: int = 1,
    topic: str | None = None,
    size: int = PAGE_SIZE,
    now: float | None = None,
) -> Page:
    now = time.time() if now is None else now
    infos = ordered(listing(mb, state), state)  # dead reasons are read for the page's rows only
    page = max(page, 1)
    pager = _Pager(mb, heads, now, (page - 1) * size, size)
    if not topic:
        return pager.plain(infos, page)
    return pager.filtered(infos, page, topic)


@dataclass(frozen=True, slots=True)
class _Pager:
    """What one page is made with: the mailbox, the heads read, the time, where the page starts (an
    index among the messages listed, or among those that match the filter) and its size."""

    mb: Mailbox
    heads: HeadCache
    now: float
    start: int
    size: int

    def item(self, info: MessageInfo, head: Head) -> Item:
        return Item(info, head, message_key(info), max(self.now - info.changed_at, 0.0))

    def shown(self, items: list[Item]) -> list[Item]:
        """The page's items with their dead reasons read and cut (for these rows only)."""
        return [dataclasses.replace(i, info=_reason_cut(with_reason(self.mb, i.info))) for i in items]

    def plain(self, infos: list[MessageInfo], page: int) -> Page:
        """The page of the whole listing: only its own messages are read."""
        end = self.start + self.size
        items = self.shown([self.item(i, self.heads.head(self.mb, i)) for i in infos[self.start : end]])
        pages = max((len(infos) + self.size - 1) // self.size, 1)
        return Page(items, len(infos), page, pages, end < len(infos), 0, False)

    def filtered(self, infos: list[MessageInfo], page: int, topic: str) -> Page:
        """The page of the messages whose topic matches ``topic`` (a glob)."""
        matched, scanned, capped = self.matching(infos, topic)
        end = self.start + self.size
        return Page(
            self.shown(matched[self.start : end]), len(infos), page, None, len(matched) > end, scanned, capped
        )

    def matching(self, infos: list[MessageInfo], topic: str) -> tuple[list[Item], int, bool]:
        """The messages whose topic matches, up to one past the page, reading at most `SCAN_LIMIT`
        topics; how many topics were read; whether that limit stopped the scan."""
        matched: list[Item] = []
        scanned = 0
        for info in infos:
            if len(matched) > self.start + self.size:
                break
            if scanned >= SCAN_LIMIT:
                return matched, scanned, True
            scanned += 1
            head = self.heads.head(self.mb, info)
            if _topic_matches(head, topic):
                matched.append(self.item(info, head))
        return matched, scanned, False


def _topic_matches(head: Head, topic: str) -> bool:
    """Whether a message's topic (when known) matches the glob ``topic``."""
    return head.topic is not None and fnmatch.fnmatchcase(head.topic, topic)
