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

A handler takes one argument, a `Received` message: a `Message` with ``attempt`` (1 on the first
delivery; None for an ephemeral one) and ``durable``. The ``id`` is the same on every redelivery.
Sync and async handlers both work.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import logging
import os
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from . import intake as _intake
from .backend import URL_ENV, Mailbox, MailboxDelivery, open_mailbox
from .bus import AgentBus, Event, default_bus, pattern_matches
from .errors import HybridCommsError
from .mailbox import DEFAULT_BACKOFF, DEFAULT_ROOT, FileMailbox, check_agent_id
from .message import Message, Priority
from .policy import Policy, Route
from .registry import registry_for
from .retry import Backoff, attempts_used_up

__all__ = ["Comms", "CommsSubscription", "Received", "RequestTimeoutError", "Sent"]

log = logging.getLogger("hybridcomms.comms")

REPLY_HEADER = "hybridcomms.reply"
EXPIRES_HEADER = "hybridcomms.expires_at"
DEAD_LETTER_TOPIC = "hybridcomms.deadletter"

Handler = Callable[["Received"], Any]


class RequestTimeoutError(HybridCommsError, TimeoutError):
    """No reply came within the timeout. Nothing of the request is left waiting in this process."""


class Received(Message):
    """A message as a handler receives it: the `Message`, plus ``attempt`` (1 on the first durable
    delivery, None for an ephemeral one) and ``durable``."""

    attempt: int | None
    durable: bool


def _received(message: Message, attempt: int | None, durable: bool) -> Received:
    r = object.__new__(Received)
    object.__setattr__(r, "__dict__", {**message.__dict__, "attempt": attempt, "durable": durable})
    return r


@dataclass(frozen=True, slots=True)
class Sent:
    """What `Comms.send` / `Comms.publish` did with one message."""

    message: Message
    route: Route
    reason: str
    durable_to: tuple[str, ...]  # mailboxes it was put into
    bus_handlers: int  # bus handlers it reached (ephemeral part)


@dataclass(frozen=True, slots=True, eq=False)
class CommsSubscription:
    pattern: str
    handler: Handler


#: Durable handler runs of this process, per agent: [succeeded, failed, seconds in all] (for the metrics).
HANDLER_STATS: dict[str, list[float]] = {}
_stats_lock = threading.Lock()


def _record_handler(agent: str, ok: bool, seconds: float) -> None:
    with _stats_lock:
        row = HANDLER_STATS.setdefault(agent, [0, 0, 0.0])
        row[0 if ok else 1] += 1
        row[2] += seconds


class Comms:
    """One agent's connection to the others. See the module docstring.

    ``Comms(agent_id, *, root=DEFAULT_ROOT, policy=None, bus=None, fsync="always", max_attempts=5,
    backoff=Backoff(), lease=300, dead_letter_topic="hybridcomms.deadletter", recover_every=30)``
        policy          a `Policy`, or a path to a policy file; default: the built-in rules
        bus             the `AgentBus` for ephemeral messages; default: the process-wide one
        recover_every   the consumer loop runs mailbox recovery this often (seconds; 0: never)
        legacy_intake   take Dream.OS legacy drops beside the mailbox into it: None (default) when
                        configured (`hybridcomms.intake`), True or False to say so
        url             where the mailboxes are: None (default: ``$HYBRIDCOMMS_URL``, else files under
                        ``root``), ``redis://…``/``rediss://…`` (Redis Streams, a fleet across hosts) or
                        ``memory://<store>``; see `hybridcomms.backend.open_mailbox`. A policy rule may
                        name another backend for its route (``backend = "redis://…"``).
    """

    def __init__(
        self,
        agent_id: str,
        *,
        root: str | os.PathLike[str] = DEFAULT_ROOT,
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
    ) -> None:
        self.agent_id = check_agent_id(agent_id)
        self.root = Path(root)
        self.url = (url if url is not None else os.environ.get(URL_ENV, "")) or None
        if policy is None:
            policy = Policy()
        elif not isinstance(policy, Policy):
            policy = Policy.load(Path(policy))
        self.policy = policy
        self.bus = bus if bus is not None else default_bus()
        self.dead_letter_topic = dead_letter_topic
        self.recover_every = recover_every
        self.fsync = fsync
        self._mailbox_options: dict[str, Any] = {
            "max_attempts": max_attempts,
            "backoff": backoff,
            "lease": lease,
        }
        self.mailbox: Mailbox = self._open(self.url, agent_id)
        self._registry = registry_for(self.root, self.url, getattr(self.mailbox, "file_mode", 0o600))
        self._outboxes: OrderedDict[tuple[str | None, str], Mailbox] = OrderedDict()
        self._outbox_lock = threading.Lock()
        self._handlers: dict[str, list[Handler]] = {}
        self._bus_adapters: dict[tuple[str, Handler], Callable[[Event], Any]] = {}
        self._dispatch_cache: dict[str, tuple[Handler, ...]] = {}
        self._lock = threading.RLock()
        self._pending: dict[str, concurrent.futures.Future[Received]] = {}
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None  # the agent's loop, for async handlers
        self._closed = False
        # Legacy drops beside the mailbox are looked at only when an intake is configured (intake.py).
        plugin = _intake.get(policy, force=legacy_intake)
        self._intake_probe = (
            plugin.prober(self.mailbox)
            if plugin is not None and isinstance(self.mailbox, FileMailbox)
            else None
        )
        self._next_legacy_look = 0.0

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
    ) -> Sent:
        """Send to one agent. Durable: into its mailbox. Ephemeral: on the bus, for that agent only."""
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
        )
        return self._route(message, addressed=True, recipients=(to,), override=route)

    def publish(
        self,
        topic: str,
        payload: Any = None,
        *,
        priority: Priority | str | int = Priority.MEDIUM,
        route: Route | str | None = None,
        correlation_id: str | None = None,
        headers: dict[str, Any] | None = None,
    ) -> Sent:
        """Publish to whoever subscribes. Durable: a copy into the mailbox of every agent holding a
        durable subscription that matches the topic (recorded on disk by `subscribe`)."""
        message = Message(
            topic,
            payload,
            sender=self.agent_id,
            priority=priority,
            correlation_id=correlation_id,
            headers=headers,
        )
        return self._route(message, addressed=False, recipients=None, override=route)

    def _route(
        self,
        message: Message,
        *,
        addressed: bool,
        recipients: tuple[str, ...] | None,
        override: Route | str | None,
    ) -> Sent:
        decision = self.policy.decide(
            message.topic, priority=message.priority, addressed=addressed, override=override
        )
        route = decision.route
        durable_to: tuple[str, ...] = ()
        if route.durable:
            targets = recipients if recipients is not None else self.durable_subscribers(message.topic)
            backend = decision.rule.backend if decision.rule is not None else None
            for agent in targets:
                copy = message if message.recipient == agent else replace(message, recipient=agent)
                self._outbox(agent, backend).put(copy)
            durable_to = tuple(targets)
        handlers = 0
        if route.ephemeral:
            event = Event(
                message.topic,
                message,
                source=self.agent_id,
                correlation_id=message.correlation_id,
                id=message.id,
                durable=route.durable,
            )
            handlers = self.bus.publish(event).handlers
        return Sent(message, route, decision.reason, durable_to, handlers)

    def _open(self, url: str | None, agent: str) -> Mailbox:
        if url is None or url == "local":
            return FileMailbox(self.root, agent, fsync=self.fsync, **self._mailbox_options)
        if "://" not in url or url.startswith("file://"):
            return open_mailbox(url, agent, fsync=self.fsync, **self._mailbox_options)
        return open_mailbox(url, agent, **self._mailbox_options)

    def _outbox(self, agent: str, backend: str | None = None) -> Mailbox:
        """The mailbox a message to ``agent`` goes into: on this Comms's backend, or on the one a
        policy rule names."""
        where = self.url if backend is None or backend == "local" else backend
        if agent == self.agent_id and where == self.url:
            return self.mailbox
        key = (where, agent)
        with self._outbox_lock:
            mb = self._outboxes.get(key)
            if mb is None:
                mb = self._open(where, agent)
                self._outboxes[key] = mb
                if len(self._outboxes) > 64:  # keep open folders and connections bounded
                    _, oldest = self._outboxes.popitem(last=False)
                    oldest.close()
            else:
                self._outboxes.move_to_end(key)
            return mb

    # -- durable subscriptions on disk ------------------------------------------------------------

    def durable_subscribers(self, topic: str) -> list[str]:
        """Agents whose recorded subscriptions match ``topic`` (under the root, or on Redis)."""
        return self._registry.subscribers(topic)

    def _record_pattern(self, pattern: str, add: bool) -> None:
        self._registry.record(self.agent_id, pattern, add)

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
            if message.recipient is not None and message.recipient != agent:
                return None  # an ephemeral send to another agent
            return handler(_received(message, None, False))

        with self._lock:
            key = (pattern, handler)
            if key in self._bus_adapters:
                return CommsSubscription(pattern, handler)
            self.bus.subscribe(pattern, from_bus)
            self._bus_adapters[key] = from_bus
            self._handlers.setdefault(pattern, []).append(handler)
            self._dispatch_cache = {}
        self._record_pattern(pattern, add=True)
        return CommsSubscription(pattern, handler)

    def unsubscribe(self, subscription: CommsSubscription) -> bool:
        with self._lock:
            adapter = self._bus_adapters.pop((subscription.pattern, subscription.handler), None)
            if adapter is None:
                return False
            self.bus.unsubscribe(subscription.pattern, adapter)
            handlers = self._handlers[subscription.pattern]
            handlers.remove(subscription.handler)
            still_used = bool(handlers)
            if not still_used:
                del self._handlers[subscription.pattern]
            self._dispatch_cache = {}
        if not still_used:
            self._record_pattern(subscription.pattern, add=False)
        return True

    def _handlers_for(self, topic: str) -> tuple[Handler, ...]:
        cached = self._dispatch_cache.get(topic)
        if cached is not None:
            return cached
        with self._lock:
            found: list[Handler] = []
            for pattern, handlers in self._handlers.items():
                if pattern_matches(pattern, topic):
                    found.extend(h for h in handlers if h not in found)
            result = tuple(found)
            self._dispatch_cache[topic] = result
        return result

    # -- consuming ------------------------------------------------------------------------------

    def process_one(self, timeout: float | None = None) -> bool:
        """Claim and handle one durable message (waiting up to ``timeout``). True if there was one.

        Where a legacy intake is on (`hybridcomms.intake`), messages that legacy Dream.OS writers drop in
        this agent's ``inbox.json`` or ``inbox/`` are first taken into ``new/`` (looked at every quarter
        second at most)."""
        if self._intake_probe is not None:
            now = time.monotonic()
            if now >= self._next_legacy_look:
                self._next_legacy_look = now + 0.25
                self.ingest_legacy()
        delivery = self.mailbox.claim(timeout=timeout, cancel=self._stop)
        if delivery is None:
            return False
        self._dispatch(delivery)
        return True

    def ingest_legacy(self, *, force: bool = False) -> int:
        """Take legacy drops (``inbox.json`` appends, ``inbox/`` files) into ``new/``; how many (0 when
        no intake is on)."""
        if self._intake_probe is None:
            return 0
        try:
            taken = self._intake_probe(force)
        except (OSError, HybridCommsError) as exc:
            log.warning("%s: legacy drops not ingested this time: %s", self.agent_id, exc)
            return 0
        return int(taken or 0)

    def _dispatch(self, d: MailboxDelivery) -> None:
        message = d.message
        headers = message.headers
        if headers:
            if headers.get(REPLY_HEADER) and message.correlation_id is not None:
                self._take_reply(d)
                return
            expires = headers.get(EXPIRES_HEADER)
            if isinstance(expires, (int, float)) and expires < time.time():
                d.dead(f"expired at {expires:.3f} before it was handled")
                self._dead_letter_event(d, "expired before it was handled", None)
                return
        handlers = self._handlers_for(message.topic)
        if not handlers:
            self._fail(d, f"no handler subscribed for topic {message.topic!r} in {self.agent_id}")
            return
        received = _received(message, d.attempt, True)
        started = time.perf_counter()
        try:
            for handler in handlers:
                result = handler(received)
                if inspect.isawaitable(result):
                    self._run_awaitable(result)
        except Exception as exc:
            _record_handler(self.agent_id, False, time.perf_counter() - started)
            log.warning(
                "%s: handler failed on %s (attempt %d): %s",
                self.agent_id,
                message.id,
                d.attempt,
                exc,
                exc_info=True,
            )
            self._fail(d, f"{type(exc).__name__}: {exc}")
            return
        _record_handler(self.agent_id, True, time.perf_counter() - started)
        d.ack()

    def _run_awaitable(self, awaitable: Any) -> None:
        async def run() -> Any:
            return await awaitable

        loop = self._loop
        if loop is None or loop.is_closed():
            loop = self.bus._background_loop()
        asyncio.run_coroutine_threadsafe(run(), loop).result()

    def _fail(self, d: MailboxDelivery, error: str) -> None:
        last = attempts_used_up(d.attempt, self.mailbox.max_attempts)
        d.nack(error=error)
        if last:
            self._dead_letter_event(d, f"failed {d.attempt} of {self.mailbox.max_attempts} attempts", error)

    def _dead_letter_event(self, d: MailboxDelivery, reason: str, error: str | None) -> None:
        m = d.message
        self.bus.publish(
            self.dead_letter_topic,
            {
                "agent": self.agent_id,
                "id": m.id,
                "topic": m.topic,
                "sender": m.sender,
                "attempts": d.attempt,
                "reason": reason,
                "last_error": error,
            },
            source=self.agent_id,
            correlation_id=m.id,
        )

    def _take_reply(self, d: MailboxDelivery) -> None:
        with self._lock:
            future = self._pending.pop(d.message.correlation_id or "", None)
        d.ack()
        if future is None:
            log.warning(
                "%s: reply %s to request %s came after its timeout; dropped",
                self.agent_id,
                d.message.id,
                d.message.correlation_id,
            )
        elif not future.done():
            future.set_result(_received(d.message, d.attempt, True))

    # -- request / reply --------------------------------------------------------------------------

    def request(
        self, to: str, topic: str, payload: Any = None, timeout: float = 30.0, **opts: Any
    ) -> Received:
        """Send a durable request and wait for its reply; raise `RequestTimeoutError` after ``timeout``.

        If the consumer loop is not running, this call handles incoming messages itself while it
        waits (so the reply, and anything else that arrives, is processed)."""
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        headers = dict(opts.pop("headers", None) or {})
        headers[EXPIRES_HEADER] = time.time() + timeout
        message = Message(
            topic,
            payload,
            sender=self.agent_id,
            recipient=check_agent_id(to),
            priority=opts.pop("priority", Priority.MEDIUM),
            reply_to=self.agent_id,
            headers=headers,
        )
        if opts:
            raise TypeError(f"unexpected options: {', '.join(sorted(opts))}")
        future: concurrent.futures.Future[Received] = concurrent.futures.Future()
        with self._lock:
            self._pending[message.id] = future
        try:
            self._route(message, addressed=True, recipients=(to,), override=Route.DURABLE)
            deadline = time.monotonic() + timeout
            while not future.done():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                if self.running:
                    try:
                        return future.result(remaining)
                    except concurrent.futures.TimeoutError:
                        break
                self.process_one(timeout=min(remaining, 0.5))
            if future.done():
                return future.result()
            raise RequestTimeoutError(
                f"no reply from {to} to {topic!r} (request {message.id}) within {timeout:g}s"
            )
        finally:
            with self._lock:
                self._pending.pop(message.id, None)

    def reply(self, message: Message, payload: Any = None, **opts: Any) -> Sent:
        """Answer a request: a durable message to its sender, correlated by the request's id."""
        to = message.reply_to or message.sender
        if not to:
            raise ValueError(f"message {message.id} has no reply_to or sender to answer")
        headers = dict(opts.pop("headers", None) or {})
        headers[REPLY_HEADER] = True
        return self.send(
            to,
            f"{message.topic}.reply",
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
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> Comms:
        """Run the consumer loop in a thread: claim, handle, ack/nack, recover now and then."""
        with self._lock:
            if self._closed:
                raise HybridCommsError("this Comms is closed")
            if self.running:
                return self
            self._stop.clear()
            self._thread = threading.Thread(
                target=self._run, name=f"hybridcomms-{self.agent_id}", daemon=True
            )
            self._thread.start()
        return self

    def _run(self) -> None:
        next_recovery = time.monotonic() + self.recover_every if self.recover_every else float("inf")
        while not self._stop.is_set():
            try:
                self.process_one(timeout=0.5)
                if time.monotonic() >= next_recovery:
                    self.mailbox.recover()
                    next_recovery = time.monotonic() + self.recover_every
            except Exception:
                log.exception("%s: consumer loop error; continuing", self.agent_id)
                self._stop.wait(0.5)

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the consumer loop. A message being handled is finished (acked or nacked) first;
        if that takes longer than ``timeout``, it is left to recovery."""
        self._stop.set()
        self.mailbox.wake()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "%s: consumer still busy after %gs; its claim is left to recovery", self.agent_id, timeout
                )
            else:
                self._thread = None

    def close(self) -> None:
        """Stop, unsubscribe from the bus (durable subscriptions stay on disk), release the folders."""
        if self._closed:
            return
        self.stop()
        with self._lock:
            self._closed = True
            for (pattern, _handler), adapter in self._bus_adapters.items():
                self.bus.unsubscribe(pattern, adapter)
            self._bus_adapters.clear()
        with self._outbox_lock:
            for mb in self._outboxes.values():
                mb.close()
            self._outboxes.clear()
        self.mailbox.close()
        self._registry.close()

    def __enter__(self) -> Comms:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def astart(self) -> Comms:
        """`start` for asyncio agents: async handlers then run on this event loop."""
        self._loop = asyncio.get_running_loop()
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
