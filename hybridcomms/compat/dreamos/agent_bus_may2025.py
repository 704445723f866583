"""Legacy ``dreamos.core.coordination.agent_bus`` as of Dream.OS ``814c67e`` (May 2025), on hybridcomms.

The canonical singleton ``AgentBus`` of `hybridcomms.compat.dreamos.agent_bus` (the same object: events
cross freely between the two), with the 55-member ``EventType`` of
``dreamos.core.coordination.event_types`` that this era's module used. Served at
``dreamos.core.coordination.agent_bus`` when chosen: ``install(era="814c67e")`` or
``HYBRIDCOMMS_DREAMOS_ERA=814c67e`` (the default there is the newest era, `agent_bus_head`).
"""

from __future__ import annotations

from .agent_bus import (
    AgentBus,
    AgentErrorEvent,
    BaseEvent,
    BusError,
    CursorInjectRequestEvent,
    CursorResultEvent,
    CursorRetrieveRequestEvent,
    DispatchError,
    EventHandlerError,
    MemoryEvent,
    SimpleEventBus,
    SubscriptionError,
    TaskEvent,
    ToolCallEvent,
    ToolResultEvent,
    callback_handler,
    get_agent_bus,
)
from .event_types import EventType

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
