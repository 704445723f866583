"""Legacy ``dreamos.coordination.agent_bus`` (also ``dreamos.core.coordination.agent_bus``), on the
hybridcomms bus and routing policy.

``AgentBus()`` is the process-wide singleton the Dream.OS agents use (reset with
``AgentBus._instance = None``). Underneath is a `hybridcomms.bus.AgentBus` whose error topic is
``dreamos.system.error``, so the pattern rules, the error isolation and the sync/async handling are
the hybridcomms ones (docs/compatibility.md lists what that changes). Every method does its work when
called and returns something that may also be awaited, because agents call them both ways.

The routing policy is found as every part finds it (`hybridcomms.policy.find_policy`: the ``policy``
argument, ``$HYBRIDCOMMS_POLICY``, ``./hybridcomms.toml``, ``[tool.hybridcomms.policy]``, the shipped
rules), logged once when the bus is made, and used by every Dream.OS send path of the process. It
applies to what is published here:

- an *ephemeral* topic (status, heartbeats, discovery…) is dispatched in memory, as before;
- a *durable* topic addressed to one agent (``dreamos.agent.<id>.task.command``, or an event whose data
  names a ``recipient_agent_id`` / ``target_agent_id``) becomes a durable delivery into that agent's
  mailbox (or its legacy inbox while it is not adopted). A handler subscribed here to that agent's
  topic receives it from the mailbox, on a consumer thread: at least once, acked when the handler
  returns, retried with backoff when it raises, dead-lettered after the attempt limit;
- a *durable* broadcast goes to every agent holding a matching durable subscription, and is also
  dispatched in memory here (so in-process subscribers keep seeing it);
- a durable copy whose rule names a ``backend`` (``redis://…``) goes there, as a native message.

Subscribing to a durable per-agent topic adopts that agent's mailbox (its ``new/`` folder appears).
"""

from __future__ import annotations

import asyncio
import inspect
import itertools
import threading
import time
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Any

from ... import _env, _log
from ...backends.base import check_agent_id
from ...backends.file.subscriptions import durable_subscribers
from ...bus import AgentBus as _CoreBus
from ...bus import Event
from ...comms import Comms, Received
from ...message import Message, Priority
from ...policy import Policy, find_policy
from ._bus_event_types import EventType
from ._bus_events import (
    AgentErrorEvent,
    BaseEvent,
    BusError,
    CursorInjectRequestEvent,
    CursorResultEvent,
    CursorRetrieveRequestEvent,
    DispatchError,
    EventHandlerError,
    MemoryEvent,
    SubscriptionError,
    TaskEvent,
    ToolCallEvent,
    ToolResultEvent,
    topic_of,
)
from ._delivery import deliver, deliver_to, set_policy
from ._dual import NOTHING, AwaitableStr, Flag, NothingType, dual
from ._loops import running_loop
from .legacy import to_legacy_dict
from .mailbox_utils import get_mailbox_root

__all__ = [
    "AgentBus",
    "AgentErrorEvent",
    "BaseEvent",
    "BusError",
    "CursorInjectRequestEvent",
    "CursorResultEvent",
    "CursorRetrieveRequestEvent",
    "DispatchError",
    "EventHandlerError",
    "EventType",
    "MemoryEvent",
    "SimpleEventBus",
    "SubscriptionError",
    "TaskEvent",
    "ToolCallEvent",
    "ToolResultEvent",
    "callback_handler",
    "get_agent_bus",
]

log = _log.get("hybridcomms.compat.dreamos")

ERROR_TOPIC = EventType.SYSTEM_ERROR.value
SHUTDOWN_READY = "SHUTDOWN_READY"
_RECIPIENT_KEYS = ("recipient_agent_id", "target_agent_id", "recipient", "to_agent")

Handler = Callable[..., Any]


def event_type(topic: str) -> Any:
    """The `EventType` member for a topic string, or the string itself."""
    try:
        return EventType(topic)
    except ValueError:
        return topic


def callback_handler(callback: Callable[[Any, Any], Any]) -> Callable[[BaseEvent], Any]:
    """Wrap a ``callback(event_type, data)`` as a ``handler(event)``. (`AgentBus.subscribe` also
    recognises such callbacks by their two required parameters.)"""

    def handler(event: BaseEvent) -> Any:
        return callback(event.event_type, event.data)

    handler.__qualname__ = getattr(callback, "__qualname__", "callback")
    return handler


def _wants_two(handler: Handler) -> bool:
    try:
        params = inspect.signature(handler).parameters.values()
    except (TypeError, ValueError):
        return False
    return len([p for p in params if _is_required_positional(p)]) == 2


def _is_required_positional(p: inspect.Parameter) -> bool:
    """Is the parameter positional and without a default (one a caller must pass)?"""
    return p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)


def _as_base_event(value: Any, topic: str, source: str | None) -> BaseEvent:
    if isinstance(value, BaseEvent):
        return value
    data = value if isinstance(value, dict) else ({} if value is None else {"payload": value})
    return BaseEvent(event_type(topic), source or "AgentBus", data)


def _event_from_message(m: Message) -> BaseEvent:
    data = m.payload if isinstance(m.payload, dict) else {"payload": m.payload}
    event = BaseEvent(
        event_type(m.topic),
        m.sender or "unknown",
        data,
        m.created_at.timestamp(),
        m.id,
        m.correlation_id,
    )
    return event


def _agent_of_topic(topic: str) -> str | None:
    """``<id>`` of the per-agent command topic ``dreamos.agent.<id>.task.command[.…]`` (or of such a
    pattern), if it is a concrete, safe agent id."""
    parts = topic.split(".")
    if _is_agent_command(parts):
        try:
            return check_agent_id(parts[2])
        except ValueError:
            return None
    return None


def _is_agent_command(parts: list[str]) -> bool:
    """Are these the parts of a per-agent command topic (or pattern) naming one agent (not ``*``)?"""
    return (
        len(parts) >= 5
        and parts[:2] == ["dreamos", "agent"]
        and parts[3:5] == ["task", "command"]
        and parts[2] != "*"
    )


class _Adapter:
    """One per legacy handler: what the core bus calls. Shared by all of the handler's patterns, so
    the core bus's "each handler at most once per event" holds for the legacy handler too.

    ``refuses(event)``: whether an event is not handed to the handler at all (the `AgentBus` refuses
    events from other processes on topics its policy routes durably: `AgentBus.forged_durable`)."""

    __slots__ = ("__qualname__", "handler", "patterns", "refuses", "two")

    def __init__(self, handler: Handler, refuses: Callable[[Event], bool] | None = None) -> None:
        self.handler = handler
        self.two = _wants_two(handler)
        self.patterns: set[str] = set()
        self.refuses = refuses
        self.__qualname__ = getattr(handler, "__qualname__", repr(handler))

    def __call__(self, event: Event) -> Any:
        if self.refuses is not None and self.refuses(event):
            return None
        be = _as_base_event(event.payload, event.topic, event.source)
        if self.two:
            return self.handler(be.event_type, be.data)
        return self.handler(be)


def _routing_claims(event: Event) -> tuple[set[str], list[tuple[bool, Priority]]]:
    """What an event says the policy should route it by: its topics, and for each of its views
    (a `Message`; a dict and its ``data``) whether it names a recipient and its priority."""
    payload = event.payload
    if isinstance(payload, Message):
        return {event.topic, payload.topic}, [(payload.recipient is not None, payload.priority)]
    return {event.topic}, [_view_claim(data) for data in _dict_views(payload) or [{}]]


def _dict_views(payload: Any) -> list[dict[str, Any]]:
    """The dicts of an event's payload that may name a recipient: the payload, and its ``data``."""
    if not isinstance(payload, dict):
        return []
    views = [payload]
    if isinstance(payload.get("data"), dict):
        views.append(payload["data"])  # a BaseEvent of another process: its fields
    return views


def _view_claim(data: dict[str, Any]) -> tuple[bool, Priority]:
    """Whether one view of an event names a recipient, and its priority (MEDIUM if none parses)."""
    return any(isinstance(data.get(k), str) for k in _RECIPIENT_KEYS), _priority_of(data)


def _priority_of(data: dict[str, Any]) -> Priority:
    """The priority an event's fields give (MEDIUM if none parses)."""
    try:
        return Priority.parse(data.get("priority", Priority.MEDIUM))
    except ValueError:
        return Priority.MEDIUM


def _recipient_of(topic: str, data: dict[str, Any]) -> str | None:
    """The agent an event is addressed to: the one its per-agent command topic names, else the first
    recipient field that is a string (None: to nobody in particular)."""
    agent = _agent_of_topic(topic)
    if agent is not None:
        return agent
    return next((data[k] for k in _RECIPIENT_KEYS if isinstance(data.get(k), str)), None)


def _status_text(status: Any) -> str:
    """A legacy status as text: an ``AgentStatus`` member's value, anything else as ``str``."""
    return status.value if isinstance(status, Enum) else str(status)


def _status_change(agent_id: str, status: str, task_id: str | None, error: str | None) -> dict[str, Any]:
    """The data of ``SYSTEM_AGENT_STATUS_CHANGE``: the agent, its status, and a task or error if given."""
    data: dict[str, Any] = {"agent_id": agent_id, "status": status}
    if task_id:
        data["task_id"] = task_id
    if error:
        data["error"] = error
    return data


def _same_handler(h: Handler, handler: Handler) -> bool:
    """The very handler, or one equal to it (a bound method taken again)."""
    return h is handler or h == handler


def _event_data(payload: Any) -> dict[str, Any]:
    """The data of a published payload: a dict as it is (a copy), nothing as ``{}``, anything else
    under ``"payload"``."""
    return dict(payload or {}) if isinstance(payload, dict) or payload is None else {"payload": payload}


class AgentBus:
    """The Dream.OS AgentBus singleton, on hybridcomms. See the module docstring."""

    _instance: AgentBus | None = None
    _create_lock = threading.Lock()
    _initialized: bool

    def __new__(cls, *args: Any, **kwargs: Any) -> AgentBus:
        with cls._create_lock:
            if cls._instance is None:
                instance = super().__new__(cls)
                instance._initialized = False
                cls._instance = instance
            return cls._instance

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if self._initialized:
            return
        self._initialized = True
        self._bus = _CoreBus(error_topic=ERROR_TOPIC)
        # Found as every part finds it (argument, $HYBRIDCOMMS_POLICY, ./hybridcomms.toml, pyproject.toml,
        # the shipped rules), and the one of every Dream.OS send path of this process from now on.
        self.policy: Policy = find_policy(kwargs.get("policy"))
        set_policy(self.policy)
        root = kwargs.get("root")
        self._root: Path | None = Path(root) if root is not None else None
        self._lock = threading.RLock()
        self._adapters: dict[Any, _Adapter] = {}  # legacy handler -> its adapter
        self._ids: dict[str, tuple[str, Handler]] = {}  # sub_id -> (pattern, handler)
        self._sub_seq = itertools.count(1)
        self._durable: dict[tuple[str, Handler], tuple[Comms, Any]] = {}
        self._consumers: dict[str, Comms] = {}
        self.active_agents: dict[str, dict[str, Any]] = {}
        self.shutdown_in_progress = False
        self.shutdown_ready: set[str] = set()
        self._ready_cond = threading.Condition(self._lock)
        self._running = False
        self._unshare: Any = None
        self._share()
        log.info(
            "AgentBus singleton initialised (hybridcomms); routing policy from %s", self.policy.provenance
        )

    def _share(self) -> None:
        """Carry this bus's events to the other processes of the same mailbox root, and theirs here
        (`hybridcomms.fanout`), so a status published by one agent process reaches the monitor in
        another. Only for a root that exists, and unless ``$HYBRIDCOMMS_SHARE_BUS`` is 0."""
        from ...bus.fanout import share_bus

        self._stop_sharing()
        if not self._may_share():
            return
        try:
            self._unshare = share_bus(self._bus, root=self.root)
        except Exception as exc:  # no /proc, or no socket allowed there: stay in-process
            log.warning("AgentBus: events stay in this process (%s: %s)", self.root, exc)

    def _stop_sharing(self) -> None:
        """Stop carrying events to and from the other processes (of the root shared before), if it did."""
        if self._unshare is not None:
            self._unshare()
            self._unshare = None

    def _may_share(self) -> bool:
        """Is sharing on (``$HYBRIDCOMMS_SHARE_BUS``, on by default) and is the root there?"""
        return _env.flag(_env.SHARE_BUS, default=True) and self.root.is_dir()

    @classmethod
    def get_instance(cls) -> AgentBus:
        return cls()

    @property
    def root(self) -> Path:
        """The mailbox root for durable deliveries: ``MAILBOX_ROOT`` of ``mailbox_utils`` unless set."""
        return self._root if self._root is not None else get_mailbox_root()

    def configure(self, *, root: str | Path | None = None, policy: Policy | None = None) -> None:
        """Set the mailbox root and the routing policy (before the first durable use)."""
        with self._lock:
            if root is not None:
                self._root = Path(root)
                self._share()
            if policy is not None:
                self.policy = policy
                set_policy(policy)  # its adopt list applies to every Dream.OS send path

    # -- subscriptions ----------------------------------------------------------------------------

    def subscribe(self, event_type_pattern: Any, handler: Handler) -> AwaitableStr:
        """Call ``handler(event)`` (or ``handler(event_type, data)``) for every matching event;
        returns the subscription id. A duplicate (pattern, handler) is ignored (same id)."""
        if not callable(handler):
            raise SubscriptionError(f"handler must be callable, not {type(handler).__name__}")
        pattern = topic_of(event_type_pattern)
        with self._lock:
            existing = self._ids_of(pattern, handler)
            if existing:
                return dual(existing[0])
            return dual(self._new_subscription(pattern, handler))

    def _new_subscription(self, pattern: str, handler: Handler) -> str:
        """Attach ``handler`` to ``pattern`` (`SubscriptionError` if it cannot be) and name the
        subscription; its id. The caller holds the lock."""
        try:
            self._attach(pattern, handler)
        except ValueError as exc:
            raise SubscriptionError(str(exc)) from exc
        sub_id = f"sub-{next(self._sub_seq)}"
        self._ids[sub_id] = (pattern, handler)
        return sub_id

    def _ids_of(self, pattern: str, handler: Handler) -> list[str]:
        """The subscription ids of ``(pattern, handler)``, oldest first. The caller holds the lock."""
        return [i for i, (p, h) in self._ids.items() if p == pattern and _same_handler(h, handler)]

    def _attach(self, pattern: str, handler: Handler) -> None:
        """Start delivering ``pattern`` to ``handler``: through its agent's mailbox if the pattern is
        routed durably, else through its adapter on the bus. The caller holds the lock."""
        if self._is_durable_pattern(pattern):
            self._subscribe_durable(pattern, handler)
            return
        adapter = self._adapters.get(handler)
        if adapter is None:
            adapter = self._adapters[handler] = _Adapter(handler, self.forged_durable)
        self._bus.subscribe(pattern, adapter)
        adapter.patterns.add(pattern)

    def register_handler(self, event_type: Any, handler: Handler) -> AwaitableStr:
        """`subscribe`, under its other legacy name."""
        return self.subscribe(event_type, handler)

    def unsubscribe(self, pattern_or_id: Any, handler: Handler | None = None) -> Flag:
        """Remove ``(pattern, handler)`` or a subscription id. Unknown: no error (False)."""
        with self._lock:
            entry = self._subscription(pattern_or_id, handler)
            found = self._ids_of(*entry) if entry is not None else []
            if entry is None or not found:
                return Flag(False)
            for sub_id in found:
                del self._ids[sub_id]
            self._detach(*entry)
            return Flag(True)

    def _subscription(self, pattern_or_id: Any, handler: Handler | None) -> tuple[str, Handler] | None:
        """``(pattern, handler)`` as given, or (no handler) the one a subscription id names (None if
        unknown). The caller holds the lock."""
        if handler is not None:
            return topic_of(pattern_or_id), handler
        return self._ids.get(str(pattern_or_id))

    def _detach(self, pattern: str, handler: Handler) -> None:
        """Stop delivering ``pattern`` to ``handler``: its durable consumer's subscription, or its
        adapter's on the bus (the adapter dropped with its last pattern). The caller holds the lock."""
        durable = self._durable.pop((pattern, handler), None)
        if durable is not None:
            comms, sub = durable
            comms.unsubscribe(sub)
            return
        adapter = self._adapters.get(handler)
        if adapter is not None:
            self._bus.unsubscribe(pattern, adapter)
            adapter.patterns.discard(pattern)
            if not adapter.patterns:
                del self._adapters[handler]

    @property
    def core_bus(self) -> _CoreBus:
        """The hybridcomms `AgentBus` underneath (the head era's module subscribes its forwarders there)."""
        return self._bus

    def forged_durable(self, event: Event) -> bool:
        """An event from another process (it came through the fanout: ``event.origin``) on a topic this
        bus's policy routes durably, as it arrived (its recipient, priority and topics; for a `Message`
        its own, as `Comms` decides). Nobody vouches for who sent it (the bus carries no
        authentication, and every co-tenant can write ``.bus/``): such an event is never handed to a
        legacy handler, whose durable events come through a mailbox or from this process (counted
        ``refused_durable``, as `Comms` counts what it refuses)."""
        if event.origin is None or not self._claims_durable(event):
            return False
        from ...bus.fanout import count

        count("refused_durable")
        return True

    def _claims_durable(self, event: Event) -> bool:
        """Would the policy route the event durably by any of its topics and any of its views?"""
        topics, candidates = _routing_claims(event)
        for topic in topics:
            for named, prio in candidates:
                addressed = named or _agent_of_topic(topic) is not None
                if self.policy.decide(topic, priority=prio, addressed=addressed).route.durable:
                    return True
        return False

    def _is_durable_pattern(self, pattern: str) -> bool:
        agent = _agent_of_topic(pattern)
        if agent is None:
            return False
        literal = pattern[:-2] if pattern.endswith(".*") else pattern
        return self.policy.decide(literal, addressed=True).route.durable

    def _subscribe_durable(self, pattern: str, handler: Handler) -> None:
        agent = _agent_of_topic(pattern)
        assert agent is not None
        comms = self._consumers.get(agent)
        if comms is None:
            comms = Comms(agent, root=self.root, bus=self._bus, policy=self.policy, legacy_intake=True)
            self._consumers[agent] = comms
        two = _wants_two(handler)

        def from_mailbox(message: Received) -> Any:
            event = _event_from_message(message)
            return handler(event.event_type, event.data) if two else handler(event)

        from_mailbox.__qualname__ = getattr(handler, "__qualname__", "handler")
        sub = comms.subscribe(pattern, from_mailbox)
        self._durable[(pattern, handler)] = (comms, sub)
        comms.start()

    # -- publishing -------------------------------------------------------------------------------

    def dispatch_event(self, event: Any) -> Any:
        """Dispatch a `BaseEvent` (routed by the policy: see the module docstring)."""
        if not isinstance(event, BaseEvent):
            raise DispatchError(f"dispatch_event needs a BaseEvent, not {type(event).__name__}")
        return self.route(event)

    def publish(self, topic_or_event: Any, payload: Any = None, **kwargs: Any) -> Any:
        """Publish ``(topic, payload)`` or a `BaseEvent`; ``await`` waits for async handlers."""
        if isinstance(topic_or_event, BaseEvent):
            return self.route(topic_or_event)
        topic = topic_of(topic_or_event)
        if not topic:
            raise DispatchError("a topic must be a non-empty string or an EventType member")
        source = kwargs.get("source_id") or kwargs.get("source") or "AgentBus"
        event = BaseEvent(
            event_type(topic), str(source), _event_data(payload), correlation_id=kwargs.get("correlation_id")
        )
        return self.route(event)

    def route(self, event: BaseEvent) -> Any:
        """Deliver an event as the policy routes it: durably to its recipient (or the durable
        subscribers of its topic), and in memory to this process's handlers."""
        topic = event.topic
        data = event.data if isinstance(event.data, dict) else {}
        recipient = _recipient_of(topic, data)
        prio = _priority_of(data)
        decision = self.policy.decide(topic, priority=prio, addressed=recipient is not None)
        route = decision.route
        if route.durable:
            for agent in self._durable_targets(topic, recipient):
                self._deliver(event, agent, prio, decision.backend)
        # In memory too: for an addressed durable event this copy is marked durable, so observers
        # (monitors, "*" subscribers) see it while its recipient's handlers take the mailbox copy.
        result = self._bus.publish(
            Event(
                topic,
                event,
                source=event.source_id,
                correlation_id=event.correlation_id,
                id=event.event_id,
                durable=route.durable and recipient is not None,
            )
        )
        return result

    def _durable_targets(self, topic: str, recipient: str | None) -> list[str]:
        """Whose mailboxes a durable event goes to: its recipient's, else its topic's durable subscribers'."""
        return [recipient] if recipient is not None else durable_subscribers(self.root, topic)

    def _deliver(self, event: BaseEvent, agent: str, prio: Priority, backend: str | None = None) -> None:
        message = Message(
            event.topic,
            event.data,
            sender=event.source_id if _safe(event.source_id) else None,
            recipient=agent,
            priority=prio,
            id=event.event_id,
            correlation_id=event.correlation_id,
            headers={"dreamos_event": type(event).__name__, "dreamos_timestamp": event.timestamp},
        )
        if backend is not None:  # the rule sends its durable copies to another backend, as Comms does
            deliver_to(backend, agent, message)
        else:
            deliver(self.root, agent, to_legacy_dict(message))

    # -- the agent registry -------------------------------------------------------------------------

    def register_agent(self, agent_id: str, capabilities: list[str] | None = None) -> NothingType:
        with self._lock:
            if agent_id in self.active_agents:
                log.warning("agent %s is already registered", agent_id)
                return NOTHING
            self.active_agents[agent_id] = {
                "agent_id": agent_id,
                "status": "REGISTERED",
                "capabilities": list(capabilities or []),
                "current_task": None,
                "error_message": None,
            }
        self._system_event(
            EventType.SYSTEM_AGENT_REGISTERED,
            {"agent_id": agent_id, "capabilities": list(capabilities or [])},
        )
        return NOTHING

    def unregister_agent(self, agent_id: str) -> NothingType:
        with self._lock:
            if self.active_agents.pop(agent_id, None) is None:
                log.warning("cannot unregister unknown agent %s", agent_id)
                return NOTHING
            self.shutdown_ready.discard(agent_id)
            self._ready_cond.notify_all()
        self._system_event(EventType.SYSTEM_AGENT_UNREGISTERED, {"agent_id": agent_id})
        return NOTHING

    def get_agent_info(self, agent_id: str) -> dict[str, Any] | None:
        with self._lock:
            info = self.active_agents.get(agent_id)
            return dict(info) if info is not None else None

    def update_agent_status(
        self, agent_id: str, status: str, task_id: str | None = None, error: str | None = None
    ) -> NothingType:
        with self._lock:
            info = self.active_agents.get(agent_id)
            if info is None:
                log.warning("cannot update the status of unknown agent %s", agent_id)
                return NOTHING
            status = _status_text(status)
            info.update(status=status, current_task=task_id, error_message=error)
            if status.upper() == SHUTDOWN_READY:
                self.shutdown_ready.add(agent_id)
                self._ready_cond.notify_all()
        data = _status_change(agent_id, status, task_id, error)
        self._system_event(EventType.SYSTEM_AGENT_STATUS_CHANGE, data, source=agent_id)
        return NOTHING

    def _system_event(self, kind: EventType, data: dict[str, Any], source: str = "AgentBus") -> None:
        self.route(BaseEvent(kind, source, data))

    # -- lifecycle ----------------------------------------------------------------------------------

    def start(self) -> NothingType:
        self._running = True
        return NOTHING

    def _all_ready(self) -> bool:
        return set(self.active_agents) <= self.shutdown_ready

    def shutdown(self, timeout: float = 10.0) -> Any:
        """``dreamos.system.shutdown.initiated`` → every registered agent reports ``SHUTDOWN_READY``
        (``update_agent_status``) or ``timeout`` passes → ``dreamos.system.shutdown.completed`` →
        consumers stopped. Blocks when called plainly outside an event loop; inside one, returns at
        once and ``await`` waits for the end."""
        if not self._begin_shutdown(timeout):
            return NOTHING
        deadline = time.monotonic() + timeout
        loop = running_loop()
        if loop is None:
            self._wait_ready(deadline)
            self._complete()
            return NOTHING
        return loop.create_task(self._finish_when_ready(deadline))

    def _begin_shutdown(self, timeout: float) -> bool:
        """Mark the shutdown begun and say so to the agents; False if one was already under way."""
        with self._lock:
            if self.shutdown_in_progress:
                return False
            self.shutdown_in_progress = True
            agents = sorted(self.active_agents)
        self._system_event(EventType.SYSTEM_SHUTDOWN_INITIATED, {"agents": agents, "timeout": timeout})
        return True

    def _wait_ready(self, deadline: float) -> None:
        """Block until every registered agent is ready, or until ``deadline`` (monotonic)."""
        with self._lock:
            while not self._all_ready():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._ready_cond.wait(remaining)

    async def _finish_when_ready(self, deadline: float) -> None:
        """Inside an event loop: poll until every agent is ready or ``deadline``, then complete."""
        while not self._all_ready() and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        self._complete()

    def _complete(self) -> None:
        with self._lock:
            missing = sorted(set(self.active_agents) - self.shutdown_ready)
        if missing:
            log.warning("shutdown: no SHUTDOWN_READY from %s", ", ".join(missing))
        self._system_event(
            EventType.SYSTEM_SHUTDOWN_COMPLETED, {"ready": sorted(self.shutdown_ready), "missing": missing}
        )
        self.stop()

    def stop(self) -> NothingType:
        """Stop the mailbox consumers and the bus's background loop. Safe to repeat."""
        with self._lock:
            consumers = list(self._consumers.values())
            self._consumers.clear()
            self._durable.clear()
            self._running = False
        for comms in consumers:
            comms.close()
        if self._unshare is not None:
            self._unshare()
            self._unshare = None
        self._bus.close()
        return NOTHING

    close = stop

    def __repr__(self) -> str:
        return f"<AgentBus (hybridcomms) agents={len(self.active_agents)} root={self.root}>"


def _safe(agent: str) -> bool:
    try:
        check_agent_id(agent)
    except ValueError:
        return False
    return True


def get_agent_bus(*args: Any, **kwargs: Any) -> AgentBus:
    """The process-wide `AgentBus`."""
    return AgentBus(*args, **kwargs)


class SimpleEventBus:
    """The legacy standalone pub/sub (not a singleton): the same patterns and error isolation, in
    memory only."""

    def __init__(self) -> None:
        self._bus = _CoreBus(error_topic=ERROR_TOPIC)
        self._adapters: dict[Any, _Adapter] = {}
        self._lock = threading.Lock()

    def subscribe(self, event_type_pattern: Any, handler: Handler) -> NothingType:
        pattern = topic_of(event_type_pattern)
        with self._lock:
            adapter = self._adapters.get(handler)
            if adapter is None:
                adapter = self._adapters[handler] = _Adapter(handler)
            try:
                self._bus.subscribe(pattern, adapter)
            except ValueError as exc:
                raise SubscriptionError(str(exc)) from exc
            adapter.patterns.add(pattern)
        return NOTHING

    def unsubscribe(self, event_type_pattern: Any, handler: Handler) -> NothingType:
        pattern = topic_of(event_type_pattern)
        with self._lock:
            adapter = self._adapters.get(handler)
            if adapter is not None and self._bus.unsubscribe(pattern, adapter):
                adapter.patterns.discard(pattern)
                if not adapter.patterns:
                    del self._adapters[handler]
        return NOTHING

    def dispatch_event(self, event: BaseEvent) -> Any:
        if not isinstance(event, BaseEvent):
            log.error("attempted to dispatch a non-BaseEvent object: %s", type(event).__name__)
            return NOTHING
        return self._bus.publish(
            Event(
                event.topic,
                event,
                source=event.source_id,
                id=event.event_id,
                correlation_id=event.correlation_id,
            )
        )
