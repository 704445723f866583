"""Comms part: where a message goes. The policy decides the route; durable copies go into the
recipients' mailboxes (on this agent's backend, or on the one a policy rule names), ephemeral ones
onto the bus. Also the mailboxes it opens for that, and the durable subscriptions (`registry`).

A put that fails raises to the sender, as always. When it failed because a server cannot be reached,
the router also tells that backend's `Outage` (shared with the consumer loop: one warning when the
outage starts, one when a later call works). An outbox whose put failed is opened again (a file
mailbox at once, and the put tried once more there: its folder may have been made anew)."""

from __future__ import annotations

import errno
import threading
from collections import OrderedDict
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import _log
from ._outage import Outage, unreachable
from ._urls import shown_url, url_from_environ
from .backends import Mailbox, backend_of, open_mailbox, put_once, registry_for
from .bus import AgentBus, Event
from .errors import MailboxIOError
from .message import Message
from .policy import Decision, Policy, Route

__all__ = ["Router", "Sent"]

log = _log.get("hybridcomms.comms")

#: Mailboxes of other agents kept open at most (folders, connections); the least recent is closed.
MAX_OUTBOXES = 64


@dataclass(frozen=True, slots=True)
class Sent:
    """What `Comms.send` / `Comms.publish` did with one message."""

    message: Message
    route: Route
    reason: str
    durable_to: tuple[str, ...]  # mailboxes it was put into
    bus_handlers: int  # bus handlers it reached (ephemeral part)
    #: subscribers whose copy could not be put (a publish goes on past them): (agent, why)
    failed: tuple[tuple[str, str], ...] = ()


class Router:
    def __init__(
        self,
        agent_id: str,
        root: Path,
        url: str | None,
        policy: Policy,
        bus: AgentBus,
        fsync: str,
        options: dict[str, Any],
    ) -> None:
        self.agent_id = agent_id
        self.root = root
        self.url = url
        self.policy = policy
        self.bus = bus
        self.fsync = fsync
        self.options = options  # what every backend takes: lease, max_attempts, backoff, done_retention
        self.mailbox = self.open(url, agent_id)
        self.registry = registry_for(root, url, getattr(self.mailbox, "file_mode", 0o600))
        self._outboxes: OrderedDict[tuple[str | None, str], Mailbox] = OrderedDict()
        self._outages: dict[str | None, Outage] = {}
        self._lock = threading.Lock()

    def outage(self, where: str | None) -> Outage:
        """The backend at ``where`` (None: files under the root) as this agent sees it."""
        where = None if where == "local" else where
        with self._lock:
            found = self._outages.get(where)
            if found is None:
                found = self._outages[where] = self._new_outage(where)
            return found

    def _new_outage(self, where: str | None) -> Outage:
        """The `Outage` of the backend at ``where``, said by its URL (secrets hidden) or by this
        agent's folder."""
        shown = shown_url(where) if where else str(self.root / self.agent_id)
        return Outage(self.agent_id, backend_of(where), shown)

    def open(self, url: str | None, agent: str) -> Mailbox:
        """The mailbox of ``agent`` at ``url`` (None or "local": files under the root)."""
        where = self.root if url is None or url == "local" else url
        return open_mailbox(where, agent, file_options={"fsync": self.fsync}, **self.options)

    def outbox(self, agent: str, backend: str | None = None) -> Mailbox:
        """The mailbox a message to ``agent`` goes into: on this agent's backend, or on the one a
        policy rule names."""
        where = self._where(backend)
        if agent == self.agent_id and where == self.url:
            return self.mailbox
        return self._kept_outbox((where, agent))

    def _where(self, backend: str | None) -> str | None:
        """The mailbox URL a copy goes to: the backend a policy rule names, else (None or "local")
        this agent's own."""
        return self.url if backend is None or backend == "local" else backend

    def _kept_outbox(self, key: tuple[str | None, str]) -> Mailbox:
        """The outbox ``key`` (where, agent) kept open, opened now if it is not; the most recent used."""
        with self._lock:
            mb = self._outboxes.get(key)
            if mb is None:
                return self._open_outbox(key)
            self._outboxes.move_to_end(key)
            return mb

    def _open_outbox(self, key: tuple[str | None, str]) -> Mailbox:
        """Open the outbox ``key`` (where, agent) and keep it; the one used longest ago is closed
        when more than `MAX_OUTBOXES` are kept. Called with the lock held."""
        mb = self.open(*key)
        self._outboxes[key] = mb
        if len(self._outboxes) > MAX_OUTBOXES:
            _, oldest = self._outboxes.popitem(last=False)
            oldest.close()
        return mb

    def _put(
        self, agent: str, backend: str | None, message: Message, *, delay: float | None, once: bool
    ) -> None:
        where = self._where(backend)
        try:
            box = self._put_into_outbox(agent, backend, where, message, delay, once)
        except Exception as exc:
            self._put_failed(where, agent, exc)
            raise
        if box.folder is None:
            # A mailbox in a folder: only the consumer loop judges its own folder (a put into another
            # agent's folder says nothing about the backend).
            self.outage(where).ok()

    def _put_into_outbox(
        self,
        agent: str,
        backend: str | None,
        where: str | None,
        message: Message,
        delay: float | None,
        once: bool,
    ) -> Mailbox:
        """Put ``message`` into ``agent``'s outbox (opened again and tried once more if its folder
        was made anew); the outbox it went into."""
        box = self.outbox(agent, backend)
        try:
            _put_into(box, message, delay, once)
        except OSError:
            if box.folder is None or not self._forget(where, agent):
                raise
            # A recipient's folder made anew (or removed) since its outbox was opened: a failed
            # put into a folder left nothing behind, so it is tried once more, on the folder
            # that is there now.
            box = self.outbox(agent, backend)
            _put_into(box, message, delay, once)
        return box

    def _put_failed(self, where: str | None, agent: str, exc: Exception) -> None:
        """What a failed put says: an unreachable backend starts an outage; after an I/O error the
        outbox is opened anew by the next put."""
        if unreachable(exc) is not None:
            self.outage(where).failed(exc)
        if isinstance(exc, OSError):
            self._forget(where, agent)

    def _forget(self, where: str | None, agent: str) -> bool:
        """Close the kept outbox of ``agent`` at ``where`` (the next put opens it again); False if
        none was kept (this agent's own mailbox is never dropped)."""
        with self._lock:
            mb = self._outboxes.pop((where, agent), None)
        if mb is None:
            return False
        try:
            mb.close()
        except OSError:
            pass
        return True

    def route(
        self,
        message: Message,
        *,
        addressed: bool,
        recipients: tuple[str, ...] | None,
        override: Route | str | None,
        delay: float | None = None,
        once: bool = False,
    ) -> Sent:
        """Send ``message`` where the policy says. ``delay``: the durable copies are not claimable for
        that long (an ephemeral-only route cannot wait: `ValueError`). ``once``: a mailbox that has a
        message of this id already does not get it again (a resend)."""
        decision = self.policy.decide(
            message.topic, priority=message.priority, addressed=addressed, override=override
        )
        route = decision.route
        if delay and not route.durable:
            raise ValueError(
                f"{message.topic} is routed {route.value} ({decision.reason}): a bus event cannot be "
                "delayed; give route='durable' to deliver it to the mailbox later"
            )
        durable_to, failed = self._durable_copies(message, decision, recipients, delay, once)
        handlers = self._notify(message, route) if route.ephemeral else 0
        return Sent(message, route, decision.reason, durable_to, handlers, failed)

    def _durable_copies(
        self,
        message: Message,
        decision: Decision,
        recipients: tuple[str, ...] | None,
        delay: float | None,
        once: bool,
    ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        """The durable part of a route, if it has one: a copy per recipient of a send, or per
        subscriber of a publish; who got one, and who did not and why."""
        if not decision.route.durable:
            return (), ()
        if recipients is not None:
            self._send_copies(message, recipients, decision.backend, delay, once)
            return tuple(recipients), ()
        return self._publish_copies(message, decision.backend, delay, once)

    def _send_copies(
        self,
        message: Message,
        recipients: tuple[str, ...],
        backend: str | None,
        delay: float | None,
        once: bool,
    ) -> None:
        """A send's durable copies: a recipient's failure is the caller's (raised)."""
        for agent in recipients:
            self._put(agent, backend, _addressed(message, agent), delay=delay, once=once)

    def _publish_copies(
        self, message: Message, backend: str | None, delay: float | None, once: bool
    ) -> tuple[tuple[str, ...], tuple[tuple[str, str], ...]]:
        """A publish's durable copies, one per subscriber of its topic: who got one, and who did not
        and why. One subscriber's broken mailbox never stops the others' copies; none at all raises."""
        delivered: list[str] = []
        failed: list[tuple[str, str]] = []
        for agent in self.registry.subscribers(message.topic):
            try:
                self._put(agent, backend, _addressed(message, agent), delay=delay, once=once)
                delivered.append(agent)
            except Exception as exc:
                failed.append((agent, f"{type(exc).__name__}: {exc}"))
                log.warning("%s: durable copy of %s to %s failed: %s", self.agent_id, message.id, agent, exc)
        if failed and not delivered:
            raise MailboxIOError(
                errno.EIO, f"no subscriber of {message.topic} got {message.id}: {failed[0][1]}"
            )
        return tuple(delivered), tuple(failed)

    def _notify(self, message: Message, route: Route) -> int:
        """Publish ``message`` on the bus (its ephemeral part); how many handlers it reached."""
        event = Event(
            message.topic,
            message,
            source=self.agent_id,
            correlation_id=message.correlation_id,
            id=message.id,
            durable=route.durable,
        )
        return self.bus.publish(event).handlers

    def close(self) -> None:
        with self._lock:
            for mb in self._outboxes.values():
                mb.close()
            self._outboxes.clear()
            outages, self._outages = list(self._outages.values()), {}
        for outage in outages:
            outage.close()
        self.mailbox.close()
        self.registry.close()


def _addressed(message: Message, agent: str) -> Message:
    """``message`` as the copy for ``agent`` (itself if it is addressed to ``agent`` already)."""
    return message if message.recipient == agent else replace(message, recipient=agent)


def _put_into(box: Mailbox, message: Message, delay: float | None, once: bool) -> None:
    """One put: ``once``, a message whose id the mailbox has already is not put again."""
    if once:
        put_once(box, message, delay=delay)
    else:
        box.put(message, delay=delay)


def resolve_url(url: str | None) -> str | None:
    """``url``, else ``$HYBRIDCOMMS_URL``, else the file ``$HYBRIDCOMMS_URL_FILE`` names; None for
    files under the root."""
    return (url if url is not None else url_from_environ()) or None
