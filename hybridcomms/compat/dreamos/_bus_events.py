"""The event classes and errors of legacy ``dreamos.coordination.agent_bus`` (re-exported by the compat
``agent_bus`` module).

``BaseEvent(event_type, source_id, data={}, timestamp=<now>, event_id=<uuid4 hex>, correlation_id=None)``
is a dataclass; positional arguments work. The specific events take ``(event_type, source_id, payload)``,
check that the event type fits, and keep the payload's fields as ``data`` (a payload dataclass or
object, as the legacy code passed, or a plain dict). Where the legacy code was broken, this does what it
meant: ``AgentErrorEvent`` referred to an ``EventType.AGENT_ERROR`` that does not exist, and crashed;
here it takes ``SYSTEM_ERROR`` quietly and any other type with a warning.
"""

from __future__ import annotations

import dataclasses
import time
import uuid
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from ... import _log
from ._bus_event_types import EventType

__all__ = [
    "AgentErrorEvent",
    "BaseEvent",
    "BusError",
    "CursorInjectRequestEvent",
    "CursorResultEvent",
    "CursorRetrieveRequestEvent",
    "DispatchError",
    "EventHandlerError",
    "MemoryEvent",
    "SubscriptionError",
    "TaskEvent",
    "ToolCallEvent",
    "ToolResultEvent",
    "topic_of",
]

log = _log.get("hybridcomms.compat.dreamos")


class BusError(Exception):
    """Base class for AgentBus related errors."""


class SubscriptionError(BusError):
    """Raised for errors during handler subscription or unsubscription."""


class DispatchError(BusError):
    """Raised for errors during the event dispatch process itself (e.g. an invalid event)."""


class EventHandlerError(DispatchError):
    """An exception raised inside a subscribed handler; ``original_exception``, ``handler`` and
    ``event`` say which."""

    def __init__(
        self,
        message: str,
        original_exception: BaseException | None = None,
        handler: Any = None,
        event: Any = None,
    ) -> None:
        super().__init__(message)
        self.original_exception = original_exception
        self.handler = handler
        self.event = event


def topic_of(event_type: Any) -> str:
    """The topic string of an ``EventType`` member (of either legacy enum) or of a plain string."""
    return str(event_type.value) if isinstance(event_type, Enum) else str(event_type)


@dataclass
class BaseEvent:
    """Base class for all events on the AgentBus."""

    event_type: Any  # an EventType member, or a topic string
    source_id: str  # the agent or component dispatching
    data: dict[str, Any] = field(default_factory=dict)
    timestamp: float = field(default_factory=time.time)
    event_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    correlation_id: str | None = None  # ties requests and responses together

    @property
    def topic(self) -> str:
        return topic_of(self.event_type)


def _payload_dict(data: Any) -> dict[str, Any]:
    if data is None:
        return {}
    if isinstance(data, dict):
        return dict(data)
    if _is_dataclass_instance(data):
        return dict(vars(data))
    if hasattr(data, "__dict__"):
        return dict(vars(data))
    raise TypeError(f"event data must be a dict or a payload object, not {type(data).__name__}")


def _is_dataclass_instance(data: Any) -> bool:
    """Is ``data`` an instance of a dataclass (not a dataclass itself)?"""
    return dataclasses.is_dataclass(data) and not isinstance(data, type)


class _SpecificEvent(BaseEvent):
    allowed: frozenset[EventType] = frozenset()  # empty: any type

    def __init__(self, event_type: Any, source_id: str, data: Any = None, **kwargs: Any) -> None:
        self._check_type(event_type)
        super().__init__(event_type, source_id, _payload_dict(data), **kwargs)

    def _check_type(self, event_type: Any) -> None:
        """``ValueError`` unless the event type is one this class allows (any, if it names none)."""
        if self.allowed and _as_member(event_type) not in self.allowed:
            names = ", ".join(sorted(m.name for m in self.allowed))
            raise ValueError(
                f"Invalid event_type {event_type!r} for {type(self).__name__} (expected {names})."
            )


def _as_member(event_type: Any) -> EventType | None:
    if isinstance(event_type, EventType):
        return event_type
    try:
        return EventType(topic_of(event_type))
    except ValueError:
        return None


class MemoryEvent(_SpecificEvent):
    """A memory operation (update, read, delete, query, error)."""

    allowed = frozenset(
        {
            EventType.MEMORY_UPDATE,
            EventType.MEMORY_READ,
            EventType.MEMORY_DELETE,
            EventType.MEMORY_QUERY,
            EventType.MEMORY_ERROR,
        }
    )


class TaskEvent(_SpecificEvent):
    """A task lifecycle event (any event type, as in the legacy code)."""


class ToolCallEvent(_SpecificEvent):
    allowed = frozenset({EventType.TOOL_CALL})


class ToolResultEvent(_SpecificEvent):
    allowed = frozenset({EventType.TOOL_RESULT})


class CursorInjectRequestEvent(_SpecificEvent):
    allowed = frozenset({EventType.CURSOR_INJECT_REQUEST})


class CursorRetrieveRequestEvent(_SpecificEvent):
    allowed = frozenset({EventType.CURSOR_RETRIEVE_REQUEST})


class CursorResultEvent(_SpecificEvent):
    allowed = frozenset(
        {
            EventType.CURSOR_INJECT_SUCCESS,
            EventType.CURSOR_INJECT_FAILURE,
            EventType.CURSOR_RETRIEVE_SUCCESS,
            EventType.CURSOR_RETRIEVE_FAILURE,
        }
    )


class AgentErrorEvent(_SpecificEvent):
    """An agent or system error. ``SYSTEM_ERROR`` is the expected type; others are accepted with a warning."""

    def __init__(self, event_type: Any, source_id: str, data: Any = None, **kwargs: Any) -> None:
        if _as_member(event_type) is not EventType.SYSTEM_ERROR:
            log.warning("AgentErrorEvent created with event type %r (expected SYSTEM_ERROR)", event_type)
        super().__init__(event_type, source_id, data, **kwargs)
