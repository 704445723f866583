"""The bus: in-process publish/subscribe (`core`: `AgentBus`, `Event`) and, beneath it, the fanout
that carries a shared bus's events to other processes (`hybridcomms.bus.fanout`).

The bus layer sits above the foundation modules and below the agent (`Comms`, the watcher, the
metrics): it imports nothing from the layers above it (docs/architecture.md).
"""

from __future__ import annotations

from .core import AgentBus, Event, PublishResult, Subscription, default_bus, pattern_matches, published_count

__all__ = [
    "AgentBus",
    "Event",
    "PublishResult",
    "Subscription",
    "default_bus",
    "pattern_matches",
    "published_count",
]
