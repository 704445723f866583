"""Legacy ``dreamos.core.coordination.agent_bus`` as of Dream.OS ``e563f46`` (June 2025, the newest era),
on hybridcomms. After `hybridcomms.compat.dreamos.install` this is what that import path gives by default
(``install(era="814c67e")`` or ``HYBRIDCOMMS_DREAMOS_ERA=814c67e`` serves the May-2025 module there instead).

The API of that era, kept as it was:

- ``EventType``: its own 14 members (``AGENT_STARTED = "agent.started"`` … ``CURSOR_STUCK =
  "system.cursor.stuck"``);
- ``BaseEvent(event_type, source_id, data={})``: a pydantic model (a plain class with the same fields and
  keyword construction where pydantic is not installed);
- ``AgentBus()``: an ordinary class, *not* a singleton: each instance is its own bus. Its methods are
  coroutines: ``start()``, ``stop()``, ``publish(event_type, data)`` (queued, delivered by the task that
  ``start()`` runs), ``subscribe(event_type, callback)``, ``unsubscribe(event_type, callback)``. Topics
  match exactly (no wildcards); an ``EventType`` member and its value are the same topic. Callbacks are
  called as ``callback(event_type, data)`` (and awaited when they return an awaitable); one that raises
  is logged and the others still run.

What it meant to do, where the legacy code broke: ``unsubscribe`` of an unknown callback is no error
(it raised ``ValueError``); ``reconnect()`` and ``is_connected()``, which the era's agent loop calls,
exist; a callback subscribed twice to one topic runs once per event.

Between the eras: what is published here also goes through the routing policy and the process-wide
Dream.OS bus (`hybridcomms.compat.dreamos.agent_bus`): a durable topic addressed to one agent (``data``
names ``recipient_agent_id`` / ``target_agent_id``) is delivered into that agent's mailbox, and
subscribers of the canonical era see the event. A callback subscribed here also receives the events
published on the process-wide bus under its exact topic. Two instances of this class never see each
other's events (as in the legacy code).
"""

from __future__ import annotations

import asyncio
import inspect
import threading
from collections import deque
from collections.abc import Callable
from enum import Enum
from typing import Any

from ... import _log
from ...bus import Event
from . import agent_bus as _canonical
from ._loops import running_loop

__all__ = ["AgentBus", "BaseEvent", "EventType"]

logger = _log.get("hybridcomms.compat.dreamos.head")


class EventType(Enum):
    """Types of events that can be published (the e563f46 members, exact strings)."""

    AGENT_STARTED = "agent.started"
    AGENT_STOPPED = "agent.stopped"
    AGENT_ERROR = "agent.error"
    AGENT_HEARTBEAT = "agent.heartbeat"
    AGENT_RESPONSE = "agent.response"
    VOTE_INITIATED = "vote.initiated"
    AGENT_VOTE = "agent.vote"
    VOTE_COMPLETED = "vote.completed"
    TASK_CREATED = "task.created"
    TASK_UPDATED = "task.updated"
    TASK_COMPLETED = "task.completed"
    TASK_FAILED = "task.failed"
    CURSOR_STATE = "system.cursor"
    CURSOR_STUCK = "system.cursor.stuck"


try:
    from pydantic import BaseModel, Field

    class BaseEvent(BaseModel):
        """Base event model."""

        event_type: str
        source_id: str
        data: dict[str, Any] = Field(default_factory=dict)

except ImportError:  # pragma: no cover - pydantic is in the dev and dreamos extras

    class BaseEvent:  # type: ignore[no-redef]
        """Base event model (pydantic is not installed: a plain class with the same fields)."""

        def __init__(self, *, event_type: str, source_id: str, data: dict[str, Any] | None = None) -> None:
            self.event_type = event_type
            self.source_id = source_id
            self.data = dict(data or {})

        def model_dump(self) -> dict[str, Any]:
            return {"event_type": self.event_type, "source_id": self.source_id, "data": self.data}

        dict = model_dump

        def __eq__(self, other: object) -> bool:
            return isinstance(other, BaseEvent) and self.model_dump() == other.model_dump()

        def __repr__(self) -> str:
            return (
                f"BaseEvent(event_type={self.event_type!r}, source_id={self.source_id!r}, data={self.data!r})"
            )


def _topic(event_type: Any) -> str:
    return str(event_type.value) if isinstance(event_type, Enum) else str(event_type)


# While this thread publishes a copy on the process-wide bus, its forwarders do not bring it back.
_mirroring = threading.local()


async def _call_handler(callback: Callable[..., Any], event_type: Any, data: Any) -> None:
    """One handler of an event, awaited if it is async; its error logged (it never stops the loop)."""
    try:
        result = callback(event_type, data)
        if inspect.isawaitable(result):
            await result
    except Exception as e:
        logger.error(f"Error in event handler: {e}")


class AgentBus:
    """Message bus for agent communication (one instance, one bus). See the module docstring."""

    def __init__(self) -> None:
        self._subscribers: dict[str, list[Callable[..., Any]]] = {}
        self._forwarders: dict[str, Callable[[Event], None]] = {}
        self._running = False
        self._queue: asyncio.Queue[tuple[Any, Any]] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._backlog: deque[tuple[Any, Any]] = deque()  # published before start(): kept, in order
        self._process_task: asyncio.Task[None] | None = None
        self._lock = threading.Lock()

    # -- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Start processing events (the queued ones first)."""
        if self._running:
            return
        self._loop = asyncio.get_running_loop()
        self._queue = asyncio.Queue()
        with self._lock:
            while self._backlog:
                self._queue.put_nowait(self._backlog.popleft())
        self._running = True
        self._process_task = asyncio.create_task(self._process_events())
        logger.info("AgentBus started")

    async def stop(self) -> None:
        """Stop processing events."""
        if not self._running:
            return
        self._running = False
        await self._cancel_processing()
        self._keep_unprocessed()
        logger.info("AgentBus stopped")

    async def _cancel_processing(self) -> None:
        """Cancel the processing task, if there is one, and wait for it to end."""
        if self._process_task is not None:
            self._process_task.cancel()
            try:
                await self._process_task
            except asyncio.CancelledError:
                pass

    def _keep_unprocessed(self) -> None:
        """What was queued but not processed waits in the backlog for the next start()."""
        with self._lock:
            queue = self._queue
            while queue is not None and not queue.empty():
                self._backlog.append(queue.get_nowait())
            self._queue, self._loop = None, None

    async def reconnect(self) -> None:
        """Stop and start again (the era's agent loop calls this after a recovery)."""
        await self.stop()
        await self.start()

    def is_connected(self) -> bool:
        return self._running

    # -- publishing and subscribing -------------------------------------------------------------

    async def publish(self, event_type: Any, data: Any) -> None:
        """Publish an event: queued for this bus's subscribers, and routed by the policy (see the
        module docstring)."""
        self._enqueue((event_type, data))
        topic = _topic(event_type)
        payload = data if isinstance(data, dict) else {"payload": data}
        bus = _canonical.AgentBus()
        event = _canonical.BaseEvent(_canonical.event_type(topic), "AgentBus", payload)
        _mirroring.active = True
        try:
            bus.route(event)
        except Exception as exc:  # the local delivery is the legacy contract; the crossing is extra
            logger.error("Error routing %s beyond this bus: %s", topic, exc)
        finally:
            _mirroring.active = False

    def _enqueue(self, item: tuple[Any, Any]) -> None:
        with self._lock:
            loop, queue = self._loop, self._queue
            if queue is None or loop is None:
                self._backlog.append(item)
                return
        if running_loop() is loop:
            queue.put_nowait(item)
        else:
            loop.call_soon_threadsafe(queue.put_nowait, item)

    async def subscribe(self, event_type: Any, callback: Callable[..., Any]) -> None:
        """Subscribe ``callback(event_type, data)`` to one topic (exact match)."""
        topic = _topic(event_type)
        with self._lock:
            callbacks = self._subscribers.setdefault(topic, [])
            if any(c == callback for c in callbacks):
                return
            callbacks.append(callback)
            first = topic not in self._forwarders
            if first:
                self._forwarders[topic] = self._forwarder(topic)
        if first:
            _canonical.AgentBus().core_bus.subscribe(topic, self._forwarders[topic])
        logger.debug("Subscribed to %s", topic)

    async def unsubscribe(self, event_type: Any, callback: Callable[..., Any]) -> None:
        """Unsubscribe ``callback`` from a topic; an unknown pair is no error."""
        topic = _topic(event_type)
        with self._lock:
            callbacks = self._subscribers.get(topic, [])
            self._subscribers[topic] = [c for c in callbacks if c != callback]
            forwarder = None
            if not self._subscribers[topic]:
                del self._subscribers[topic]
                forwarder = self._forwarders.pop(topic, None)
        if forwarder is not None:
            _canonical.AgentBus().core_bus.unsubscribe(topic, forwarder)
        logger.debug("Unsubscribed from %s", topic)

    def _forwarder(self, topic: str) -> Callable[[Event], None]:
        def forward(event: Event) -> None:
            if getattr(_mirroring, "active", False):
                return  # our own publication (or another instance's): not brought back
            if _canonical.AgentBus().forged_durable(event):
                return  # from another process on a durable topic: not handed on (see agent_bus)
            payload = event.payload
            data = payload.data if isinstance(payload, _canonical.BaseEvent) else payload
            self._enqueue((topic, data))

        forward.__qualname__ = f"AgentBus(e563f46).forward[{topic}]"
        return forward

    async def _process_events(self) -> None:
        """Process events from the queue."""
        assert self._queue is not None
        queue = self._queue
        while self._running:
            try:
                event_type, data = await queue.get()
                await self._dispatch(event_type, data)
            except asyncio.CancelledError:
                break
            except Exception as e:  # pragma: no cover - defensive, as the legacy loop
                logger.error(f"Error processing event: {e}")
        logger.info("Event processing stopped")

    async def _dispatch(self, event_type: Any, data: Any) -> None:
        """Hand one event to each callback subscribed to its topic, in turn."""
        for callback in list(self._subscribers.get(_topic(event_type), ())):
            await _call_handler(callback, event_type, data)
