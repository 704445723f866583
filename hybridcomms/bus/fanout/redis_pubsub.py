"""The fanout across hosts: Redis pub/sub, one channel per topic (``hc:<db>:bus:<topic>``: pub/sub is
per server, so the database is in the name). Publishes go out from a sender thread through a bounded
queue, so the publisher never waits on the network; a receiver thread delivers what arrives
(`transport.deliver`). At most once: what the queue cannot take is dropped, counted."""

from __future__ import annotations

import contextlib
import os
import queue
import threading
import time
import uuid
from typing import Any

from ... import _log
from ..._urls import shown_url
from ..core import AgentBus, Event
from .transport import HOST, count, deliver
from .wire import decode_event, encode_event

__all__ = ["RedisFanout", "channel_patterns", "redis_bus_prefix"]

log = _log.get("hybridcomms.fanout")

#: What a control channel is woken with (on close): not an event, not counted as a bad one.
_WAKE = b"wake"


def _escape(text: str) -> str:
    """``text`` as a literal in a Redis glob."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def channel_patterns(prefix: str, patterns: list[str]) -> tuple[set[str], set[str]]:
    """(channels, glob patterns) that carry the bus patterns ``patterns``, none of them covered by
    another: Redis sends a message once per matching subscription of a connection, so a topic that
    several overlapping patterns match (``a.*``, ``*``, ``a.b``) still arrives once."""
    wanted = set(patterns)
    if "*" in wanted:
        return set(), {_escape(prefix) + "*"}
    heads = _heads(wanted)
    channels: set[str] = set()
    globs: set[str] = set()
    for p in wanted:
        if p.endswith(".*"):
            _add_prefix_pattern(prefix, p, heads, channels, globs)
        elif not _covered(p, heads):
            channels.add(prefix + p)
    return channels, globs


def _heads(patterns: set[str]) -> set[str]:
    """The heads of the prefix patterns, with their dot (``a.`` for ``a.*``: it takes every ``a.<...>``)."""
    return {p[:-1] for p in patterns if p.endswith(".*")}


def _covered(topic: str, heads: set[str], own: str | None = None) -> bool:
    """Whether a pattern ``head.*`` other than ``own`` already takes ``topic``."""
    return any(topic.startswith(h) for h in heads if h != own)


def _add_prefix_pattern(
    prefix: str, pattern: str, heads: set[str], channels: set[str], globs: set[str]
) -> None:
    """The channel of ``a`` and the glob of ``a.<...>`` for the bus pattern ``a.*``, each unless
    another pattern covers it."""
    base = pattern[:-2]
    if not _covered(base, heads):
        channels.add(prefix + base)  # "a.*" matches "a" itself too
    if not _covered(pattern[:-1], heads, own=pattern[:-1]):
        globs.add(_escape(prefix + base) + ".*")


def _carries_data(msg: dict[str, Any] | None) -> bool:
    """Whether a pub/sub reply is a message of a channel or a pattern (not a subscription's reply)."""
    return msg is not None and msg.get("type") in ("message", "pmessage")


def _count_bad(data: Any) -> None:
    """Count a message that is not an event (the wake of `RedisFanout.close` aside)."""
    if data != _WAKE:
        count("dropped_bad")


def redis_bus_prefix(url: str, namespace: str = "hc") -> str:
    """The start of the pub/sub channel names of the bus events of the Redis database ``url`` names
    (``hc:<db>:bus:``). Pub/sub is one per server, not per database: the database in the name keeps
    the fleets of two databases of one server apart."""
    import redis

    client: Any = redis.Redis.from_url(url)  # no connection is made
    try:
        db = int(client.connection_pool.connection_kwargs.get("db") or 0)
    finally:
        client.close()
    return f"{namespace}:{db}:bus:"


class RedisFanout:
    """The processes that share a Redis, on any host (see the module docstring)."""

    QUEUE = 10_000

    def __init__(self, bus: AgentBus, url: str, namespace: str = "hc") -> None:
        import redis

        self.bus = bus
        self.url = url
        self.namespace = namespace
        self.origin = f"{HOST}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.prefix = redis_bus_prefix(url, namespace)
        self._client: Any = redis.Redis.from_url(url)
        make_pubsub: Any = self._client.pubsub
        self._pubsub: Any = make_pubsub(ignore_subscribe_messages=True)
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(self.QUEUE)
        self._subscribed: tuple[set[str], set[str]] = (set(), set())
        self._sub_lock = threading.Lock()
        self._closed = False
        self._control = f"{namespace}:control:{self.origin}"  # a channel to be woken on
        self._pubsub.subscribe(self._control)
        self._register()
        bus.add_outlet(self.send)
        bus.add_watcher(self._register)
        self._sender = threading.Thread(target=self._send_loop, name="hybridcomms-fanout-out", daemon=True)
        self._receiver = threading.Thread(target=self._receive, name="hybridcomms-fanout-in", daemon=True)
        self._sender.start()
        self._receiver.start()

    def _register(self) -> None:
        """Subscribe to the channels of the bus's patterns (and drop those no longer wanted)."""
        if self._closed:
            return
        wanted = channel_patterns(self.prefix, self.bus.patterns())
        with self._sub_lock:
            try:  # the new ones first: a change loses nothing, and `_receive` drops the copies
                self._resubscribe(self._subscribed, wanted)
            except Exception as exc:
                log.warning("fanout: subscribing on %s failed: %s", shown_url(self.url), exc)
                return
            self._subscribed = wanted

    def _resubscribe(self, old: tuple[set[str], set[str]], new: tuple[set[str], set[str]]) -> None:
        """(Under the subscription lock.) From the channels and globs ``old`` to ``new``: the new
        ones subscribed first, then the old ones no longer wanted dropped."""
        (old_c, old_g), (channels, globs) = old, new
        pubsub = self._pubsub
        for method, names in (
            (pubsub.subscribe, channels - old_c),
            (pubsub.psubscribe, globs - old_g),
            (pubsub.unsubscribe, old_c - channels),
            (pubsub.punsubscribe, old_g - globs),
        ):
            if names:
                method(*names)

    def send(self, event: Event) -> None:
        data = encode_event(event, self.origin)
        if data is None:
            count("unsendable")
            return
        try:
            self._queue.put_nowait((self.prefix + event.topic, data))
        except queue.Full:
            count("dropped_queue")

    def _send_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._client.publish(*item)
                count("sent")
            except Exception:
                count("dropped_full")

    def _next_message(self) -> dict[str, Any] | None:
        """The next message or pmessage from the subscriptions (None: none yet, or closed)."""
        try:
            msg: dict[str, Any] | None = self._pubsub.get_message(timeout=1.0)
        except Exception:
            if not self._closed:
                time.sleep(0.1)  # (the connection broke: redis-py reconnects at the next call)
            return None
        return msg if _carries_data(msg) else None

    def _receive(self) -> None:
        # Redis writes the copies of one publish (one per matching subscription: only while the
        # subscriptions change) one after the other: a copy of the one just seen is dropped.
        last: tuple[Any, Any] = (None, None)
        while not self._closed:
            msg = self._next_message()
            if msg is None:
                continue
            seen, last = last, (msg.get("channel"), msg.get("data"))
            if seen != last:
                self._arrived(last[1])

    def _arrived(self, data: Any) -> None:
        """Deliver one message's data: an event from another process (not this one's own, back)."""
        event = decode_event(data) if isinstance(data, bytes) else None
        if event is None:
            _count_bad(data)
            return
        if event.origin != self.origin:  # (our own publish, back from Redis: not delivered)
            deliver(self.bus, event, len(data), -1)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.bus.remove_outlet(self.send)
        self.bus.remove_watcher(self._register)
        self._queue.put(None)
        self._sender.join(5)
        with contextlib.suppress(Exception):
            self._client.publish(self._control, _WAKE)
        self._receiver.join(5)
        with contextlib.suppress(Exception):
            self._pubsub.close()
        self._client.close()
