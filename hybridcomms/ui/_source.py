"""The dashboard's one door into the rest of hybridcomms.

Every import the dashboard makes from the core is in this module (the layers, docs/architecture.md:
the dashboard sits on top, beside the CLI, and reaches Dream.OS only through the intake hook). What
it offers is the core's own code: the mailbox contract (`stats`, `list`, `get`, `read`, `requeue`,
`purge`), the same calls the CLI's ``stats``, ``ls``, ``show``, ``requeue`` and ``purge`` make, and the
watcher's notifications.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._log import get as get_logger
from .._text import json_text, printable, shown
from .._urls import shown_url
from ..backends import Mailbox, backend_of, open_mailbox
from ..backends.base import MailboxStats, MessageInfo, StateStats, check_agent_id
from ..backends.file import FileMailbox, inspection
from ..backends.file.inspection import survey_root
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
    "check_agent_id",
    "get_logger",
    "json_text",
    "printable",
    "shown",
    "shown_url",
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


class Source:
    """The mailboxes under one root, or on one Redis URL."""

    def __init__(self, where: str) -> None:
        kind = backend_of(where)
        if kind not in ("file", "redis"):
            raise ValueError(f"the dashboard reads files or Redis, not {shown_url(where)!r}")
        self.kind = kind
        self.where = where[len("file://") :] if where.startswith("file://") else where
        self.shown_where = shown_url(self.where) if kind == "redis" else printable(self.where)

    # -- what there is ------------------------------------------------------------------------------

    def entries(self) -> list[AgentEntry]:
        """Every mailbox (and, under a root, every legacy Dream.OS agent and broken folder), as the
        CLI's ``stats`` finds them. Raises `OSError` if the root cannot be listed."""
        if self.kind == "redis":
            from ..backends.redis.mailbox import redis_agents

            return [AgentEntry(a, a, "mailbox") for a in redis_agents(self.where)]
        out = []
        for e in survey_root(self.where):
            status = _legacy_status(self.where, e.agent) if e.agent and e.kind != "broken" else None
            if status is not None:
                out.append(AgentEntry(e.name, e.agent, "legacy", None, status))
            else:
                out.append(AgentEntry(e.name, e.agent, e.kind, e.problem))
        return out

    @contextlib.contextmanager
    def reading(self, agent: str) -> Iterator[Mailbox]:
        """The mailbox of ``agent``, opened to look (never created, never changed)."""
        agent = check_agent_id(agent)
        mb: Mailbox
        if self.kind == "redis":
            mb = open_mailbox(self.where, agent, create=False)
        else:
            if not (Path(self.where) / agent / "new").is_dir():
                raise KeyError(agent)
            mb = FileMailbox(self.where, agent, read_only=True, fsync="never", create=False)
        with mb:
            yield mb

    @contextlib.contextmanager
    def writing(self, agent: str) -> Iterator[Mailbox]:
        """The mailbox of ``agent`` opened to repair it, as the CLI's ``requeue`` and ``purge`` open it."""
        agent = check_agent_id(agent)
        mb: Mailbox
        if self.kind == "redis":
            mb = open_mailbox(self.where, agent, create=False)
        else:
            if not (Path(self.where) / agent / "new").is_dir():
                raise KeyError(agent)
            mb = FileMailbox(self.where, agent, create=False)
        with mb:
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
            if isinstance(mb, FileMailbox):
                return len(inspection.requeue_infos(mb, mb.list(State.DEAD), State.DEAD, True))
            moved = 0
            for key in dict.fromkeys(i.id or i.name for i in mb.list(State.DEAD)):
                moved += len(mb.requeue(key))
            return moved

    def purge(self, agent: str, state: State, older_than: float) -> int:
        """``hybridcomms purge AGENT --state done|dead --older-than AGE``."""
        with self.writing(agent) as mb:
            return mb.purge(state, older_than)

    # -- notifications ------------------------------------------------------------------------------

    def watch(self, on_event: Callable[[MailboxEvent], None]) -> Callable[[], None] | None:
        """Follow the mailboxes as ``hybridcomms tail`` does (the watcher's notifications, looking only:
        no recovery, no legacy intake); the function that stops it. None on Redis, which has no such
        notifications (the caller polls `stats` instead)."""
        if self.kind != "file":
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
        if self.kind != "file":
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
