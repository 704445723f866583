"""Comms part: the agent's handlers, by topic pattern, for both paths: durable messages (looked up by
the consumer loop) and ephemeral events (an adapter subscribed on the bus per pattern and handler)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from .bus import AgentBus, Event, pattern_matches

__all__ = ["HandlerTable"]

Handler = Callable[..., Any]


class HandlerTable:
    def __init__(self, bus: AgentBus) -> None:
        self.bus = bus
        self._handlers: dict[str, list[Handler]] = {}
        self._adapters: dict[tuple[str, Handler], Callable[[Event], Any]] = {}
        self._cache: dict[str, tuple[Handler, ...]] = {}
        self._lock = threading.Lock()

    def add(self, pattern: str, handler: Handler, adapter: Callable[[Event], Any]) -> bool:
        """Register ``handler`` for ``pattern`` (and ``adapter`` on the bus for it). False if it was
        there already."""
        with self._lock:
            key = (pattern, handler)
            if key in self._adapters:
                return False
            self.bus.subscribe(pattern, adapter)
            self._adapters[key] = adapter
            self._handlers.setdefault(pattern, []).append(handler)
            self._cache = {}
        return True

    def remove(self, pattern: str, handler: Handler) -> bool | None:
        """Unregister; None if it was not there, else whether ``pattern`` still has handlers."""
        with self._lock:
            adapter = self._adapters.pop((pattern, handler), None)
            if adapter is None:
                return None
            self.bus.unsubscribe(pattern, adapter)
            handlers = self._handlers[pattern]
            handlers.remove(handler)
            still_used = bool(handlers)
            if not still_used:
                del self._handlers[pattern]
            self._cache = {}
        return still_used

    def for_topic(self, topic: str) -> tuple[Handler, ...]:
        """The handlers whose pattern matches ``topic``, each once, in the order they came."""
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        with self._lock:
            result = self._cache[topic] = self._matching(topic)
        return result

    def _matching(self, topic: str) -> tuple[Handler, ...]:
        """The handlers for ``topic``, found pattern by pattern (called with the lock held)."""
        found: list[Handler] = []
        for pattern, handlers in self._handlers.items():
            if pattern_matches(pattern, topic):
                found.extend(h for h in handlers if h not in found)
        return tuple(found)

    def close(self) -> None:
        """Take every adapter off the bus (durable subscriptions stay recorded)."""
        with self._lock:
            for (pattern, _handler), adapter in self._adapters.items():
                self.bus.unsubscribe(pattern, adapter)
            self._adapters.clear()
