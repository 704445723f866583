"""The dashboard's one door into the rest of hybridcomms.

Every import the dashboard makes from the core is in this module (the layers, docs/architecture.md:
the dashboard sits on top, beside the CLI, and reaches Dream.OS only through the intake hook). What
it offers is the core's own code: the mailbox contract (`stats`, `list`, `get`, `read`, `requeue`,
`purge`), the same calls the CLI's ``stats``, ``ls``, ``show``, ``requeue`` and ``purge`` make, and the
watcher's notifications.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import stat
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .. import _fs
from .._log import get as get_logger
from .._names import REASON_SUFFIX
from .._text import json_text, printable, shown
from .._urls import shown_url
from ..backends import (
    Mailbox,
    backend_of,
    file_root,
    files_of,
    in_one_process,
    list_without_reasons,
    open_mailbox,
    served,
    url_agents,
)
from ..backends.base import MailboxStats, MessageInfo, StateStats, check_agent_id
from ..backends.file.inspection import RootEntry, survey_root
from ..errors import HybridCommsError
from ..message import Message
from ..states import State
from ..watcher import MailboxEvent, MailboxWatcher

__all__ = [
    "STATES",
    "AgentEntry",
    "HybridCommsError",
    "Mailbox",
    "MailboxEvent",
    "MailboxStats",
    "Message",
    "MessageInfo",
    "Source",
    "State",
    "StateStats",
    "Withheld",
    "check_agent_id",
    "get_logger",
    "json_text",
    "listing",
    "mailbox_agents",
    "printable",
    "read_small",
    "shown",
    "shown_url",
    "with_reason",
]

#: The states a person looks at, in the order a message meets them.
STATES = (State.NEW, State.PROCESSING, State.DONE, State.DEAD)


@dataclass(frozen=True, slots=True)
class AgentEntry:
    """One agent folder of the fleet (or one mailbox on a Redis)."""

    shown: str  # its name as printable text
    agent: str | None  # the agent id (None: a name that is not one)
    kind: str  # "mailbox", "legacy" (a Dream.OS layout, not adopted) or "broken"
    problem: str | None = None  # why a broken one cannot be read
    legacy: dict[str, Any] | None = None  # for "legacy": its layout and how many wait there


def mailbox_agents(entries: list[AgentEntry]) -> list[str]:
    """The agents of ``entries`` that have a mailbox (not legacy, not broken)."""
    return [e.agent for e in entries if e.kind == "mailbox" and e.agent is not None]


class Source:
    """The mailboxes under one root, or on one Redis URL."""

    def __init__(self, where: str) -> None:
        if not served(where) or in_one_process(where):
            raise ValueError(f"the dashboard reads files or Redis, not {shown_url(where)!r}")
        root = file_root(where)
        #: The backend's name, as the pages show it (never asked what the backend can do).
        self.kind = backend_of(where)
        #: Whether the mailboxes are files under a root (then `watch` notifies; else the caller polls).
        self.files = root is not None
        self.where = root if root is not None else where
        self.shown_where = printable(self.where) if self.files else shown_url(self.where)

    # -- what there is ------------------------------------------------------------------------------

    def entries(self) -> list[AgentEntry]:
        """Every mailbox (and, under a root, every legacy Dream.OS agent and broken folder), as the
        CLI's ``stats`` finds them. Raises `OSError` if the root cannot be listed."""
        if not self.files:
            return [AgentEntry(a, a, "mailbox") for a in url_agents(self.where)]
        return [self._entry(e) for e in survey_root(self.where)]

    def _entry(self, e: RootEntry) -> AgentEntry:
        """One folder of the root as the fleet shows it: a legacy agent when it still reads a legacy
        Dream.OS layout, else what the survey found."""
        status = _legacy_status(self.where, e.agent) if e.agent and e.kind != "broken" else None
        if status is not None:
            return AgentEntry(e.name, e.agent, "legacy", None, status)
        return AgentEntry(e.name, e.agent, e.kind, e.problem)

    def reading(self, agent: str) -> contextlib.AbstractContextManager[Mailbox]:
        """The mailbox of ``agent``, opened to look (never created, never changed)."""
        return self._opened(agent, read_only=True)

    def writing(self, agent: str) -> contextlib.AbstractContextManager[Mailbox]:
        """The mailbox of ``agent`` opened to repair it, as the CLI's ``requeue`` and ``purge`` open it."""
        return self._opened(agent, read_only=False)

    @contextlib.contextmanager
    def _opened(self, agent: str, read_only: bool) -> Iterator[Mailbox]:
        agent = check_agent_id(agent)
        if self.files and not (Path(self.where) / agent / "new").is_dir():
            raise KeyError(agent)
        options: dict[str, Any] = {"read_only": True, "fsync": "never"} if read_only else {}
        # A root as a Path: its string (a file:// URL's rest) is never read as a URL a second time.
        where: str | Path = Path(self.where) if self.files else self.where
        with open_mailbox(where, agent, create=False, file_options=options) as mb:
            yield mb

    def stats(self, agent: str) -> MailboxStats:
        with self.reading(agent) as mb:
            return mb.stats()

    # -- repairs: the CLI's code paths --------------------------------------------------------------

    def requeue(self, agent: str, key: str) -> list[str]:
        """``hybridcomms requeue AGENT ID``: a dead message back to ``new``."""
        with self.writing(agent) as mb:
            return mb.requeue(key)

    def requeue_all_dead(self, agent: str) -> int:
        """``hybridcomms requeue AGENT --all-dead``: every dead message of the mailbox back to ``new``."""
        with self.writing(agent) as mb:
            return len(mb.requeue_all(State.DEAD))

    def purge(self, agent: str, state: State, older_than: float) -> int:
        """``hybridcomms purge AGENT --state done|dead --older-than AGE``."""
        with self.writing(agent) as mb:
            return mb.purge(state, older_than)

    # -- notifications ------------------------------------------------------------------------------

    def watch(self, on_event: Callable[[MailboxEvent], None]) -> Callable[[], None] | None:
        """Follow the mailboxes as ``hybridcomms tail`` does (the watcher's notifications, looking only:
        no recovery, no legacy intake); the function that stops it. None on Redis, which has no such
        notifications (the caller polls `stats` instead)."""
        if not self.files:
            return None
        watcher = MailboxWatcher(
            self.where,
            on_event=on_event,
            recover_every=0,
            rescan_every=10,
            waiting="skip",
            ingest_legacy=False,
        )
        watcher.start()
        return watcher.stop

    def watch_bus(self, on_event: Callable[[str | None, str | None, str], None]) -> Callable[[], None] | None:
        """Follow the ephemeral bus events of the processes sharing the root (``tail --bus '*'``):
        ``on_event(sender, recipient, topic)`` for each one from another process. None on Redis."""
        if not self.files:
            return None
        from ..bus import AgentBus, Event
        from ..bus.fanout import share_bus

        bus = AgentBus()

        def seen(event: Event) -> None:
            if event.origin is None:
                return
            record = event.to_dict()
            sender, recipient = record.get("sender"), record.get("recipient")
            on_event(
                sender if isinstance(sender, str) else None,
                recipient if isinstance(recipient, str) else None,
                str(record.get("topic")),
            )

        bus.subscribe("*", seen)
        release = share_bus(bus, root=self.where)
        lock = threading.Lock()

        def stop() -> None:
            with lock:
                release()
                bus.close()

        return stop


def _legacy_status(root: str, agent: str) -> dict[str, Any] | None:
    """The legacy Dream.OS layout an agent still reads, as ``hybridcomms stats`` reports it (None if it
    has a hybridcomms mailbox or no legacy files)."""
    folder = Path(root) / agent
    if not (folder / "inbox.json").exists() and not (folder / "inbox").exists():
        return None  # the cheap look first: the plug-in is imported only for agents with legacy files
    from ..intake import adoption

    return adoption().status(root, agent)


# -- reading for a listing, bounded (docs/ui.md, "How it is secured") ------------------------------
#
# A co-tenant can hard-link one big file under thousands of valid names: every name read costs the
# whole file again. So what a listing reads is read once per file it is (a file with more than one link
# is not read: it says so), up to a size. Better in the library (backends/file/inspection.py): a
# `list_state(..., reasons=False)` and a reader that refuses ``st_nlink > 1`` after its ``fstat``.

#: A dead reason larger than this is not read for a listing (the message page reads it whole).
REASON_LIMIT = 64 * 1024


class Withheld(Exception):
    """A file a listing does not read: hard-linked, too large, or not a regular file."""


def _check_single(st: os.stat_result, limit: int) -> None:
    if not stat.S_ISREG(st.st_mode):
        raise Withheld("not a regular file")
    if st.st_nlink > 1:
        raise Withheld(f"hard-linked ({st.st_nlink} names): not read")
    if st.st_size > limit:
        raise Withheld(f"{st.st_size} bytes: not read for the list")


def _read_single(fd: int, st: os.stat_result, limit: int) -> bytes | None:
    """The bytes of an opened file that has one name and at most ``limit`` bytes (else `Withheld`);
    None when it grew while it was read. The descriptor is closed."""
    try:
        _check_single(st, limit)
        return _fs.read_all(fd, st.st_size, limit)
    finally:
        os.close(fd)


def read_small(mb: Mailbox, info: MessageInfo, limit: int) -> Message:
    """The message of ``info`` for a listing: `Withheld` if its file has more than one link or is over
    ``limit`` bytes (checked on the descriptor it is read from: no race with a new link)."""
    if info.size > limit:
        raise Withheld(f"{info.size} bytes: not read for the list")
    files = files_of(mb)
    if files is None:
        return mb.read(info)
    fd, st = _fs.open_regular(info.name, limit, dir_fd=files.folders.fd(info.state))
    raw = _read_single(fd, st, limit)
    if raw is None:
        raise Withheld("grew while it was read")
    return Message.decode(raw, path=str(files.path / info.state.folder / info.name))


def listing(mb: Mailbox, state: State) -> list[MessageInfo]:
    """``mb.list(state)``, except that on files the dead letters' reason files are not read (a page
    reads the reasons of the rows it shows: `with_reason`): names, sizes and times only."""
    return list_without_reasons(mb, state)


def with_reason(mb: Mailbox, info: MessageInfo) -> MessageInfo:
    """``info`` with its dead reason read (files: a reason file with more than one link or over
    `REASON_LIMIT` is not read, and says so)."""
    files = files_of(mb) if info.state is State.DEAD and info.reason is None else None
    if files is None:
        return info
    try:
        dead_fd = files.folders.fd(State.DEAD)
    except OSError:  # the folder gone, the mailbox closed: as an unreadable reason, not a failed page
        return dataclasses.replace(info, reason={"reason": "(unreadable reason file)"})
    return dataclasses.replace(info, reason=_dead_reason(dead_fd, info.name))


def _dead_reason(dead_fd: int, name: str) -> dict[str, Any] | None:
    """The reason file of the dead letter ``name`` (None when there is none), or a reason that says
    why it was not read."""
    try:
        fd, st = _fs.open_regular(name + REASON_SUFFIX, REASON_LIMIT, dir_fd=dead_fd)
    except FileNotFoundError:
        return None
    except _fs.TooLargeError:
        return {"reason": f"(reason file over {REASON_LIMIT} bytes: not read)"}
    except OSError:
        return {"reason": "(unreadable reason file)"}
    try:
        raw = _read_single(fd, st, REASON_LIMIT)
    except Withheld as exc:
        return {"reason": f"(reason file {exc})"}
    return _reason_value(raw)


def _reason_value(raw: bytes | None) -> dict[str, Any] | None:
    """A reason file's content: its JSON object (None for other JSON), or a note when it is not JSON."""
    try:
        value = orjson.loads(raw or b"")
    except orjson.JSONDecodeError:
        return {"reason": "(unreadable reason file)"}
    return value if isinstance(value, dict) else None
