"""Comms: the one object an agent holds. The routing policy picks the path of every message.

    comms = Comms("Agent-1")                       # mailbox root: runtime/agent_comms/agent_mailboxes
    comms.subscribe("dreamos.agent.Agent-1.task.command", handle_task)
    with comms:                                    # start() ... stop(): a consumer thread
        comms.send("Agent-2", "dreamos.agent.Agent-2.task.command", {"task": "build"})
        comms.publish("dreamos.agent.status.updated", {"status": "busy"})
        answer = comms.request("Agent-3", "dreamos.query.agent.status", {}, timeout=5)

Durable messages (the policy says ``durable`` or ``both``) are files in the recipient's mailbox: they
reach the handler at least once, are retried with backoff when it raises, and go to ``dead/`` after
the attempt limit, with a dead-letter event on the bus. Ephemeral ones are events on the in-memory
bus: at most once, in this process, to whoever subscribes now.

When the mailbox backend fails (Redis down, the mailbox folder gone, I/O errors), the consumer logs one
warning when the outage starts and one when it ends, retries meanwhile (at most 5 s apart) and counts
it in the metrics (`hybridcomms_backend_up`, ``_outages_total``, ``_outage_seconds_total``); a `send`
meanwhile raises (`BackendUnavailableError` when a server cannot be reached).

A handler takes one argument, a `Received` message: a `Message` with ``attempt`` (1 on the first
delivery; None for an ephemeral one) and ``durable``. The ``id`` is the same on every redelivery.
Sync and async handlers both work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from . import _env, _log
from . import intake as _intake
from ._consumer import (
    DEAD_LETTER_TOPIC,
    HANDLER_STATS,
    REPLY_HEADER,
    ConsumerLoop,
    Received,
    received,
)
from ._handlers import Handler, HandlerTable
from ._requests import PendingRequests
from ._routing import Router, Sent, resolve_url
from .backends import Mailbox, fanout_url, files_of
from .backends.base import DEFAULT_BACKOFF, check_agent_id
from .backends.file import DEFAULT_ROOT
from .bus import AgentBus, Event, default_bus
from .errors import HybridCommsError, RequestTimeoutError
from .message import Message, Priority, reply_topic
from .policy import Policy, Route, find_policy
from .retry import Backoff

__all__ = ["Comms", "CommsSubscription", "Received", "RequestTimeoutError", "Sent"]

# Re-exported for the modules that read them from here (metrics, work, the Dream.OS layer).
__all__ += ["DEAD_LETTER_TOPIC", "HANDLER_STATS", "REPLY_HEADER"]

log = _log.get("hybridcomms.comms")

#: Set to 0 to keep a `Comms`'s ephemeral events in its own process.
SHARE_BUS_ENV = _env.SHARE_BUS


@dataclass(frozen=True, slots=True, eq=False)
class CommsSubscription:
    pattern: str
    handler: Handler


def _root_of(root: str | os.PathLike[str] | None) -> Path:
    """The same root the CLI uses: the argument, else $HYBRIDCOMMS_ROOT, else the Dream.OS default."""
    return Path(root if root is not None else _env.value(_env.ROOT) or DEFAULT_ROOT)


def _wait_answered(future: concurrent.futures.Future[Any], timeout: float) -> None:
    """Wait up to ``timeout`` seconds for the consumer loop to answer ``future`` (raising what it
    failed with); no answer by then is no error."""
    try:
        future.result(timeout)
    except concurrent.futures.TimeoutError:  # not the builtin one on Python 3.10
        pass


class Comms:
    """One agent's connection to the others. See the module docstring.

    A thin front over parts with one job each: `Router` (where a message goes: the policy, the
    mailboxes, the bus, durable subscriptions), `HandlerTable` (the handlers by pattern),
    `ConsumerLoop` (claim, handle, settle, recover) and `PendingRequests` (requests waiting for a
    reply). The mailboxes are any backend of `hybridcomms.backends`.

    ``Comms(agent_id, *, root=None, policy=None, bus=None, fsync="always", max_attempts=5,
    backoff=Backoff(), lease=300, dead_letter_topic="hybridcomms.deadletter", recover_every=30,
    legacy_intake=None, url=None, share_bus=None, done_retention=10_000)``
        root            the mailbox root of the file backend; default (None): ``$HYBRIDCOMMS_ROOT``,
                        else ``runtime/agent_comms/agent_mailboxes`` under the working folder (as the
                        CLI finds it)
        policy          a `Policy`, or a path to a policy file; default (None): the one `find_policy`
                        finds, as every part does: ``$HYBRIDCOMMS_POLICY``, else ``./hybridcomms.toml``,
                        else ``[tool.hybridcomms.policy]`` in ``./pyproject.toml``, else the shipped
                        rules (a file named or found that is not valid is a `PolicyError`). The source
                        is logged once, at info level, when the Comms is made (``hybridcomms.comms``)
        bus             the `AgentBus` for ephemeral messages; default: the process-wide one
        recover_every   the consumer loop runs mailbox recovery this often (seconds; 0: never)
        legacy_intake   take Dream.OS legacy drops beside the mailbox into it: None (default) when
                        configured (`hybridcomms.intake`), True or False to say so
        url             where the mailboxes are: None (default: ``$HYBRIDCOMMS_URL``, else files under
                        ``root``), ``redis://…``/``rediss://…`` (Redis Streams, a fleet across hosts) or
                        ``memory://<store>``; see `hybridcomms.backends.open_mailbox`. A policy rule may
                        name another backend for its route (``backend = "redis://…"``).
        share_bus       carry the bus's ephemeral events to the other processes of the same root (this
                        host) or the same Redis URL, and theirs to this one (`hybridcomms.fanout`);
                        default True, or ``$HYBRIDCOMMS_SHARE_BUS`` (0 turns it off)
        done_retention  how many acked messages the agent's mailbox keeps (the same option and
                        meaning on every backend: 10,000 by default, 0 keeps none, None keeps all;
                        docs/guarantees.md)
    """

    def __init__(
        self,
        agent_id: str,
        *,
        root: str | os.PathLike[str] | None = None,
        policy: Policy | str | os.PathLike[str] | None = None,
        bus: AgentBus | None = None,
        fsync: str = "always",
        max_attempts: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
        lease: float = 300.0,
        dead_letter_topic: str = DEAD_LETTER_TOPIC,
        recover_every: float = 30.0,
        legacy_intake: bool | None = None,
        url: str | None = None,
        share_bus: bool | None = None,
        done_retention: int | None = 10_000,
    ) -> None:
        self.agent_id = check_agent_id(agent_id)
        self.root = _root_of(root)
        self.url = resolve_url(url)
        policy = find_policy(policy)
        self.policy = policy
        log.info("%s: routing policy from %s", self.agent_id, policy.provenance)
        self.bus = bus if bus is not None else default_bus()
        options = {
            "max_attempts": max_attempts,
            "backoff": backoff,
            "lease": lease,
            "done_retention": done_retention,
        }
        self._router = Router(self.agent_id, self.root, self.url, policy, self.bus, fsync, options)
        self.mailbox: Mailbox = self._router.mailbox
        self._handlers = HandlerTable(self.bus)
        self._requests = PendingRequests()
        probe = self._intake_probe(policy, legacy_intake)
        self._consumer = ConsumerLoop(
            self.agent_id,
            self.mailbox,
            self._handlers,
            self._requests,
            self.bus,
            dead_letter_topic=dead_letter_topic,
            recover_every=recover_every,
            intake_probe=probe,
            outage=self._router.outage(self.url),
        )
        self._lock = threading.Lock()
        self._closed = False
        if share_bus is None:
            share_bus = _env.flag(SHARE_BUS_ENV, default=True)
        self._unshare: Callable[[], None] = lambda: None
        if share_bus:
            self._share_bus()

    def _intake_probe(
        self, policy: Policy, legacy_intake: bool | None
    ) -> Callable[[bool], _intake.Step] | None:
        """The consumer loop's step of taking legacy drops beside the mailbox in: only when an intake
        is configured (intake.py), and only beside a mailbox that lives in a folder of files."""
        plugin = _intake.get(policy, force=legacy_intake)
        files = files_of(self.mailbox) if plugin is not None else None
        return plugin.prober(files) if plugin is not None and files is not None else None

    def _share_bus(self) -> None:
        """Carry the bus's events to the other processes of the same root (or Redis URL) and theirs
        here; they stay in this process if that cannot be done."""
        if not self.mailbox.shared:  # memory:// lives in one process: nothing to share
            return
        from .bus.fanout import share_bus as _share

        root, url = self._shared_through()
        try:
            self._unshare = _share(self.bus, root=root, url=url)
        except Exception as exc:  # no /proc, no socket allowed there, Redis down: stay in-process
            log.warning("%s: ephemeral events stay in this process (%s)", self.agent_id, exc)

    def _shared_through(self) -> tuple[Path | None, str | None]:
        """Where the bus's events meet other processes': (None, the URL) on a backend with a pub/sub
        of its own (`fanout_url`: Redis), else (the root, None): the root's ``.bus/`` folder."""
        url = fanout_url(self.url)
        return (None, url) if url is not None else (self.root, None)

    @property
    def dead_letter_topic(self) -> str:
        return self._consumer.dead_letter_topic

    @property
    def recover_every(self) -> float:
        return self._consumer.recover_every

    # -- sending ------------------------------------------------------------------------------

    def send(
        self,
        to: str,
        topic: str,
        payload: Any = None,
        *,
        priority: Priority | str | int = Priority.MEDIUM,
        route: Route | str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        headers: dict[str, Any] | None = None,
        id: str | None = None,
        delay: float | None = None,
        ttl: float | timedelta | None = None,
        expires: datetime | None = None,
    ) -> Sent:
        """Send to one agent. Durable: into its mailbox. Ephemeral: on the bus, for that agent only.

        ``id``: the message's id; sending the same id again does not deliver it twice while the first
        is in the mailbox (waiting, done or dead): a resend, as ``hybridcomms send --id``.
        ``delay`` (seconds): the durable copy is not claimable before then (an ephemeral route
        cannot wait: `ValueError`). ``ttl`` (seconds or a timedelta) or ``expires`` (an aware
        datetime): past that, the message is dead-lettered as ``expired`` instead of delivered."""
        check_agent_id(to)
        message = Message(
            topic,
            payload,
            sender=self.agent_id,
            recipient=to,
            priority=priority,
            correlation_id=correlation_id,
            reply_to=reply_to,
            headers=headers,
            id=id,
            ttl=ttl,
            expires=expires,
        )
        return self._router.route(
            message, addressed=True, recipients=(to,), override=route, delay=delay, once=id is not None
        )

    def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        priority: Priority | str | int = Priority.MEDIUM,
        route: Route | str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
        id: str | None = None,
        delay: float | None = None,
        ttl: float | timedelta | None = None,
        expires: datetime | None = None,
    ) -> Sent:
        """Publish to whoever subscribes. Durable: a copy into the mailbox of every agent holding a
        durable subscription that matches the topic (recorded by `subscribe`). ``id``, ``delay``,
        ``ttl`` and ``expires`` as for `send` (with ``id``, each mailbox gets the message once)."""
        message = Message(
            topic,
            payload,
            sender=self.agent_id,
            priority=priority,
            correlation_id=correlation_id,
            headers=headers,
            id=id,
            ttl=ttl,
            expires=expires,
        )
        return self._router.route(
            message, addressed=False, recipients=None, override=route, delay=delay, once=id is not None
        )

    def durable_subscribers(self, topic: str) -> list[str]:
        """Agents whose recorded subscriptions match ``topic`` (under the root, or on Redis)."""
        return self._router.registry.subscribers(topic)

    # -- subscribing ----------------------------------------------------------------------------

    def subscribe(self, pattern: str, handler: Handler) -> CommsSubscription:
        """Receive ephemeral events and durable messages for this agent whose topic matches."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        agent = self.agent_id

        def from_bus(event: Event) -> Any:
            message = event.payload if isinstance(event.payload, Message) else _message_of(event)
            if event.durable:
                # Route "both": the durable copy reaches every Comms subscriber through its mailbox
                # (subscribe records a durable subscription), so the bus copy is for observers only.
                return None
            if event.origin is not None and self._routed_durable(event.topic, message):
                # From another process, on a topic this policy sends through mailboxes: no Comms sends
                # that on the bus alone (the bus carries no sender authentication), so it is not
                # handed to the handler as a message; bus observers still see it.
                from .bus.fanout import count

                count("refused_durable")
                return None
            if message.recipient is not None and message.recipient != agent:
                return None  # an ephemeral send to another agent
            return handler(received(message, None, False))

        if self._handlers.add(pattern, handler, from_bus):
            self._router.registry.record(self.agent_id, pattern, True)
        return CommsSubscription(pattern, handler)

    def _routed_durable(self, topic: str, message: Message) -> bool:
        """Whether this agent's policy routes ``message`` (as it arrived, on ``topic``) durably."""
        addressed = message.recipient is not None
        return any(
            self.policy.decide(t, priority=message.priority, addressed=addressed).route.durable
            for t in {topic, message.topic}
        )

    def unsubscribe(self, subscription: CommsSubscription) -> bool:
        still_used = self._handlers.remove(subscription.pattern, subscription.handler)
        if still_used is None:
            return False
        if not still_used:
            self._router.registry.record(self.agent_id, subscription.pattern, False)
        return True

    # -- consuming ------------------------------------------------------------------------------

    def process_one(self, timeout: float | None = None) -> bool:
        """Claim and handle one durable message (waiting up to ``timeout``). True if there was one.

        Where a legacy intake is on (`hybridcomms.intake`), messages that legacy Dream.OS writers drop in
        this agent's ``inbox.json`` or ``inbox/`` are first taken into ``new/`` (looked at every quarter
        second at most), one chunk per call (512 entries), never waiting for a legacy lock another
        process holds: the mailbox is delivered between the chunks of a large ``inbox.json``."""
        return self._consumer.process_one(timeout)

    def ingest_legacy(self, *, force: bool = False) -> int:
        """Take legacy drops (``inbox.json`` appends, ``inbox/`` files) into ``new/``; how many (0 when
        no intake is on). A legacy lock another process holds is not waited for: what it guards is
        taken by a later call (or by the consumer loop, once it is free)."""
        return self._consumer.ingest_legacy(force)

    # -- request / reply --------------------------------------------------------------------------

    def request(
        self, to: str, topic: str, payload: Any = None, timeout: float = 30.0, **opts: Any
    ) -> Received:
        """Send a durable request and wait for its reply; raise `RequestTimeoutError` after ``timeout``.

        The request expires when its wait ends (``Message.expires``): a replier that gets to it later
        finds it dead-lettered as ``expired`` instead of answering no one.

        If the consumer loop is not running, this call handles incoming messages itself while it
        waits (so the reply, and anything else that arrives, is processed)."""
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        message = Message(
            topic,
            payload,
            sender=self.agent_id,
            recipient=check_agent_id(to),
            priority=opts.pop("priority", Priority.MEDIUM),
            reply_to=self.agent_id,
            headers=opts.pop("headers", None),
            ttl=timeout,
        )
        if opts:
            raise TypeError(f"unexpected options: {', '.join(sorted(opts))}")
        future = self._requests.open(message.id)
        try:
            self._router.route(message, addressed=True, recipients=(to,), override=Route.DURABLE)
            self._await_reply(future, timeout)
            if future.done():
                return future.result()  # type: ignore[no-any-return]
            raise RequestTimeoutError(
                f"no reply from {to} to {topic!r} (request {message.id}) within {timeout:g}s"
            )
        finally:
            self._requests.close(message.id)

    def _await_reply(self, future: concurrent.futures.Future[Any], timeout: float) -> None:
        """Wait up to ``timeout`` seconds for ``future`` to be answered (raising what it failed
        with); while the consumer loop is not running, handle incoming messages meanwhile."""
        deadline = time.monotonic() + timeout
        while not future.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if self.running:
                _wait_answered(future, remaining)
                return
            self.process_one(timeout=min(remaining, 0.5))

    def reply(self, message: Message, payload: Any = None, **opts: Any) -> Sent:
        """Answer a request: a durable message to its sender, correlated by the request's id."""
        to = message.reply_to or message.sender
        if not to:
            raise ValueError(f"message {message.id} has no reply_to or sender to answer")
        headers = dict(opts.pop("headers", None) or {})
        headers[REPLY_HEADER] = True
        return self.send(
            to,
            reply_topic(message.topic),  # always a valid topic, however long the request's
            payload,
            correlation_id=message.id,
            headers=headers,
            route=Route.DURABLE,
            **opts,
        )

    async def arequest(
        self, to: str, topic: str, payload: Any = None, timeout: float = 30.0, **opts: Any
    ) -> Received:
        """`request` for asyncio agents (the wait runs in a worker thread)."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, lambda: self.request(to, topic, payload, timeout, **opts))

    # -- the consumer loop ------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._consumer.running

    def start(self) -> Comms:
        """Run the consumer loop in a thread: claim, handle, ack/nack, recover now and then."""
        with self._lock:
            if self._closed:
                raise HybridCommsError("this Comms is closed")
            self._consumer.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the consumer loop. A message being handled is finished (acked or nacked) first;
        if that takes longer than ``timeout``, it is left to recovery."""
        self._consumer.stop(timeout)

    def close(self) -> None:
        """Stop, unsubscribe from the bus (durable subscriptions stay recorded), release the mailboxes."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
        self.stop()
        self._handlers.close()
        self._unshare()
        self._router.close()

    def __enter__(self) -> Comms:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def astart(self) -> Comms:
        """`start` for asyncio agents: async handlers then run on this event loop."""
        self._consumer.loop = asyncio.get_running_loop()
        return self.start()

    async def astop(self, timeout: float = 30.0) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.stop, timeout)

    async def __aenter__(self) -> Comms:
        return await self.astart()

    async def __aexit__(self, *exc: object) -> None:
        await self.astop()
        self.close()

    def __repr__(self) -> str:
        return f"<Comms {self.agent_id} root={self.root} running={self.running}>"


def _message_of(event: Event) -> Message:
    """A bus event published by plain bus code, as the Message a Comms handler expects."""
    from .message import check_id

    try:
        msg_id = check_id(event.id)
    except HybridCommsError:
        msg_id = None
    return Message(
        event.topic, event.payload, sender=event.source, correlation_id=event.correlation_id, id=msg_id
    )
