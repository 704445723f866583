"""AgentBus: in-memory publish/subscribe on dotted topics.

Delivery on the bus is **at most once and in memory**: an event reaches the handlers subscribed when
it is published, in this process, and is gone if the process dies. There is no retry and no dead letter
here; messages that need those go through a durable mailbox (see `hybridcomms.policy`).

Patterns, as Dream.OS agents use them:

    "a.b.c"   exactly that topic
    "a.b.*"   "a.b" itself and everything below it at a dot boundary ("a.b.c", "a.b.c.d"), not "a.bc"
    "*"       every topic

Each handler runs at most once per event, however many of its patterns match; subscribing the same
(pattern, handler) twice is ignored. Handlers are held by strong references (a lambda stays subscribed).

Sync handlers run inline, in subscription order. Async handlers (coroutine functions, or handlers that
return an awaitable) are started at once: on the running event loop if the publisher has one, else on a
private background loop, so they are never dropped. ``await bus.publish(...)`` returns once every
handler, sync or async, has finished; ``bus.publish(...).wait()`` does the same from plain threads.

A handler that raises never stops the others: the failure is logged with its traceback and published
once as an event on ``error_topic``, whose payload names the topic, the event id, the handler and the
error. A failing handler of an error event is only logged, so errors never recurse.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import inspect
import itertools
import os
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Coroutine, Generator
from dataclasses import dataclass, field, replace
from enum import Enum
from typing import Any, TypeVar

from .. import _log
from ..message import pattern_matches

__all__ = [
    "AgentBus",
    "Event",
    "PublishResult",
    "Subscription",
    "default_bus",
    "pattern_matches",
    "published_count",
]

log = _log.get("hybridcomms.bus")

DEFAULT_ERROR_TOPIC = "hybridcomms.bus.error"
_CACHE_LIMIT = 10_000
#: At most this many async handler runs started by events from other processes (``event.origin``
#: set, `hybridcomms.bus.fanout`) are unfinished at once, per bus, holding events of this many bytes in
#: all (as they came, encoded: decoded, an event takes up to ~25 times its bytes). Past either, such an
#: event starts no async handler (its sync handlers still run): counted in `PublishResult.dropped`,
#: and by the fanout as ``dropped_busy``. Once half of either is in use, the events of a sending
#: process (as the kernel names it) that holds a quarter of either start no more runs: one process
#: flooding a bus takes half of the room at most, and it takes four to take it all, so the events of
#: the others are not the ones dropped first. A flood from other processes then costs a bounded
#: number of tasks and bytes, not memory without end. Events published in this process are never
#: dropped.
MAX_RECEIVED_RUNS = 1024
MAX_RECEIVED_BYTES = 4 << 20
#: The sender of events whose process is not known (Redis, or an `Event` given an origin here).
UNKNOWN_SENDER = -1

_ids = itertools.count(1)
_id_prefix = ""


def _new_id_prefix() -> None:
    """A random prefix and the pid: ids are unique across processes, forks included."""
    global _id_prefix
    _id_prefix = f"{os.urandom(6).hex()}{os.getpid():x}"


_new_id_prefix()
os.register_at_fork(after_in_child=_new_id_prefix)


#: Events published on any bus of this process (for the metrics); a list so the hot path adds in place.
_published = [0]


def published_count() -> int:
    """How many events buses of this process have published (all buses together)."""
    return _published[0]


def _same(a: Any, b: Any) -> bool:
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:
        return False


def _event_id() -> str:
    # Unique in this process and, thanks to the random prefix, across processes; cheaper than uuid4.
    return f"{_id_prefix}{next(_ids):x}"


@dataclass(frozen=True, slots=True)
class Event:
    """One event on the bus."""

    topic: str
    payload: Any = None
    source: str | None = None
    correlation_id: str | None = None
    id: str = field(default_factory=_event_id)
    timestamp: float = field(default_factory=time.time)
    #: True when this event only notifies of a message that is also delivered durably (route
    #: "both"): observers see it here, the recipient handles the durable copy.
    durable: bool = False
    #: Where it was published when it came from another process (``host:pid``, `hybridcomms.bus.fanout`);
    #: None for an event published in this process. Events from elsewhere are never sent on again.
    origin: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON with the field names of a message (`hybridcomms.message.FIELDS`, as
        `Message.to_dict` writes them), plus ``durable`` and ``origin``.

        ``payload`` is always the event's payload. An event that carries a `Message` (a send on an
        ephemeral or "both" route) gives that message's fields, its ``payload`` being the message's
        payload, never the whole message. Another event has its id, topic, ``sender`` (its source),
        ``created_at`` (its time, ISO 8601 UTC), ``correlation_id`` and payload; ``recipient``,
        ``priority`` and ``reply_to`` are null and ``headers`` is empty."""
        from datetime import datetime, timezone

        from ..message import FIELDS, Message

        payload = self.payload
        if isinstance(payload, Message):
            out = payload.to_dict()
            del out["version"]
        else:
            out = dict.fromkeys(FIELDS)
            at = datetime.fromtimestamp(self.timestamp, timezone.utc)
            out.update(
                id=self.id,
                topic=self.topic,
                sender=self.source,
                created_at=at.isoformat(timespec="microseconds")[:26] + "Z",
                correlation_id=self.correlation_id,
                headers={},
                payload=payload,
            )
        out["durable"] = self.durable
        out["origin"] = self.origin
        return out


_NOTHING: Any = object()


def _fast_init() -> Callable[..., None]:
    """The dataclass's own __init__ (same signature), without its eight ``object.__setattr__`` calls
    (a frozen dataclass sets each field through them): the slots are set directly. Every event, in
    this process or from another, is built here; this halves its cost."""
    set_topic, set_payload, set_source, set_corr, set_id, set_ts, set_durable, set_origin = (
        Event.__dict__[name].__set__
        for name in ("topic", "payload", "source", "correlation_id", "id", "timestamp", "durable", "origin")
    )
    new_id, now = _event_id, time.time

    def __init__(
        self: Event,
        topic: str,
        payload: Any = None,
        source: str | None = None,
        correlation_id: str | None = None,
        id: str = _NOTHING,
        timestamp: float = _NOTHING,
        durable: bool = False,
        origin: str | None = None,
    ) -> None:
        set_topic(self, topic)
        set_payload(self, payload)
        set_source(self, source)
        set_corr(self, correlation_id)
        set_id(self, new_id() if id is _NOTHING else id)
        set_ts(self, now() if timestamp is _NOTHING else timestamp)
        set_durable(self, durable)
        set_origin(self, origin)

    __init__.__qualname__ = "Event.__init__"
    __init__.__signature__ = inspect.signature(Event.__init__)  # type: ignore[attr-defined]
    return __init__


setattr(Event, "__init__", _fast_init())  # noqa: B010 (the dataclass keeps its signature for typing)


Handler = Callable[[Any], Any]


@dataclass(frozen=True, slots=True, eq=False)
class Subscription:
    pattern: str
    handler: Handler
    id: str
    seq: int
    is_async: bool


def _topic_of(value: object) -> str:
    if isinstance(value, Enum):
        value = value.value
    if not isinstance(value, str) or not value:
        raise ValueError(f"a topic must be a non-empty string (or a str Enum member), not {value!r}")
    return value


_C = TypeVar("_C", bound=Callable[..., Any])


def _without_callable(callables: tuple[_C, ...], gone: _C) -> tuple[_C, ...]:
    """``callables`` without ``gone`` (the same object, or one equal to it: a bound method)."""
    return tuple(c for c in callables if c is not gone and c != gone)


def _awaitable(
    future: asyncio.Future[None] | concurrent.futures.Future[None],
) -> asyncio.Future[None]:
    """A handler's run as this loop awaits it (one on another thread's loop wrapped)."""
    return future if isinstance(future, asyncio.Future) else asyncio.wrap_future(future)


def _star_misplaced(pattern: str) -> bool:
    """Whether a '*' stands elsewhere than as the whole pattern or as a last '.*'."""
    star = pattern.find("*")
    if star == -1 or pattern == "*":
        return False
    return not (pattern.endswith(".*") and star == len(pattern) - 1)


def _segment_empty(pattern: str) -> bool:
    """Whether the pattern has an empty topic segment (a leading, doubled or trailing dot)."""
    return pattern.startswith(".") or ".." in pattern or (pattern.endswith(".") and pattern != ".")


def _check_pattern(pattern: str) -> str:
    if _star_misplaced(pattern):
        raise ValueError(
            f"bad pattern {pattern!r}: '*' is allowed only as the whole pattern or as a last '.*'"
        )
    if _segment_empty(pattern):
        raise ValueError(f"bad pattern {pattern!r}: empty topic segment")
    return pattern


class PublishResult:
    """What `AgentBus.publish` returns. The work is already done or started when you get it.

    ``await result`` waits until every async handler has finished; ``result.wait(timeout)`` does the
    same from a plain thread. ``handlers`` is how many handlers the event reached, ``errors`` the
    exceptions they raised so far, ``dropped`` the async handlers it did not start (an event from
    another process while `MAX_RECEIVED_RUNS` such runs were unfinished).
    """

    __slots__ = ("_cost", "_pending", "dropped", "errors", "event", "handlers")
    _cost: tuple[int, int]  # (bytes, sending process) of an event from another process (set by it)

    def __init__(self, event: Event, handlers: int) -> None:
        self.event = event
        self.handlers = handlers
        self.errors: list[BaseException] = []
        self.dropped = 0
        self._pending: list[asyncio.Future[None] | concurrent.futures.Future[None]] = []

    def __await__(self) -> Generator[Any, None, PublishResult]:
        return self._wait_async().__await__()

    async def _wait_async(self) -> PublishResult:
        if self._pending:
            await asyncio.gather(*(_awaitable(f) for f in self._pending), return_exceptions=True)
        return self

    def wait(self, timeout: float | None = None) -> bool:
        """Block until every async handler finished; False on timeout. Not for use inside the event
        loop that runs them (``await`` the result there)."""
        if self._loop_pending():
            raise RuntimeError("handlers run on this thread's event loop: await the publish result instead")
        threaded = [f for f in self._pending if isinstance(f, concurrent.futures.Future)]
        _, not_done = concurrent.futures.wait(threaded, timeout=timeout)
        return not not_done

    def _loop_pending(self) -> bool:
        """Whether a handler still runs on an event loop (a task, which `wait` cannot block on)."""
        return any(isinstance(f, asyncio.Future) and not f.done() for f in self._pending)

    @property
    def done(self) -> bool:
        return all(f.done() for f in self._pending)

    def __repr__(self) -> str:
        return f"<PublishResult {self.event.topic!r} handlers={self.handlers} errors={len(self.errors)}>"


class AgentBus:
    """In-memory, at-most-once publish/subscribe. Thread-safe. See the module docstring."""

    def __init__(self, *, error_topic: str = DEFAULT_ERROR_TOPIC) -> None:
        self.error_topic = error_topic
        self._lock = threading.RLock()
        self._seq = itertools.count()
        self._exact: dict[str, tuple[Subscription, ...]] = {}
        self._prefix: dict[str, tuple[Subscription, ...]] = {}
        self._all: tuple[Subscription, ...] = ()
        self._by_key: dict[tuple[str, Handler], Subscription] = {}
        self._by_id: dict[str, Subscription] = {}
        self._cache: dict[str, tuple[Subscription, ...]] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: threading.Thread | None = None
        # Where this process's events also go (`hybridcomms.bus.fanout`), and who wants to know when the
        # subscribed patterns change. Empty unless the bus is shared: publish pays one truth test.
        self._outlets: tuple[Callable[[Event], None], ...] = ()
        self._watchers: tuple[Callable[[], None], ...] = ()
        # Unfinished async runs started by events from other processes: how many, the bytes of their
        # events, and both by sending process (MAX_RECEIVED_RUNS).
        self._received_runs = 0
        self._received_bytes = 0
        self._held_by: dict[int, list[int]] = {}
        self._runs_lock = threading.Lock()

    # -- subscriptions ------------------------------------------------------------------------

    def subscribe(self, pattern: str | Enum, handler: Handler) -> Subscription:
        """Call ``handler(event)`` for every event whose topic matches ``pattern``."""
        if not callable(handler):
            raise TypeError(f"handler must be callable, not {type(handler).__name__}")
        pattern = _check_pattern(_topic_of(pattern))
        with self._lock:
            existing = self._by_key.get((pattern, handler))
            if existing is not None:
                return existing
            seq = next(self._seq)
            sub = Subscription(pattern, handler, f"sub-{seq}", seq, _is_async(handler))
            self._by_key[(pattern, handler)] = sub
            self._by_id[sub.id] = sub
            self._index(sub)
            self._cache = {}
        self._changed()
        return sub

    def unsubscribe(self, subscription: Subscription | str | Enum, handler: Handler | None = None) -> bool:
        """Remove a subscription: the `Subscription`, its id, or ``(pattern, handler)``.
        Returns False (no error) if there was no such subscription."""
        with self._lock:
            sub = self._find(subscription, handler)
            if sub is None:
                return False
            del self._by_key[(sub.pattern, sub.handler)]
            del self._by_id[sub.id]
            self._unindex(sub)
            self._cache = {}
        self._changed()
        return True

    def _find(self, subscription: Subscription | str | Enum, handler: Handler | None) -> Subscription | None:
        """(Under the lock.) The subscription `unsubscribe` names, if there is one."""
        if isinstance(subscription, Subscription):
            return self._by_id.get(subscription.id)
        if handler is not None:
            return self._by_key.get((_topic_of(subscription), handler))
        return self._by_id.get(_topic_of(subscription))

    def _index(self, sub: Subscription) -> None:
        """(Under the lock.) Put ``sub`` in the table of its pattern's kind, after those there."""
        if sub.pattern == "*":
            self._all = (*self._all, sub)
            return
        table, key = self._table_of(sub.pattern)
        table[key] = (*table.get(key, ()), sub)

    def _unindex(self, sub: Subscription) -> None:
        """(Under the lock.) Take ``sub`` out of the table of its pattern's kind."""
        if sub.pattern == "*":
            self._all = _without(self._all, sub)
            return
        table, key = self._table_of(sub.pattern)
        rest = _without(table[key], sub)
        if rest:
            table[key] = rest
        else:
            del table[key]

    def _table_of(self, pattern: str) -> tuple[dict[str, tuple[Subscription, ...]], str]:
        """The table (prefix or exact) holding a pattern other than "*", and its key there."""
        if pattern.endswith(".*"):
            return self._prefix, pattern[:-2]
        return self._exact, pattern

    def subscriptions(self) -> list[Subscription]:
        with self._lock:
            return sorted(self._by_id.values(), key=lambda s: s.seq)

    def patterns(self) -> list[str]:
        """The distinct patterns subscribed to, in order of first subscription."""
        with self._lock:
            return list(dict.fromkeys(s.pattern for s in sorted(self._by_id.values(), key=lambda s: s.seq)))

    # -- sharing with other processes (hybridcomms.bus.fanout) ----------------------------------------

    def add_outlet(self, outlet: Callable[[Event], None]) -> None:
        """Also hand every event published here (not those from other processes) to ``outlet``,
        after the local handlers. An outlet must not block; what it raises is logged, not raised."""
        with self._lock:
            self._outlets = (*self._outlets, outlet)

    def remove_outlet(self, outlet: Callable[[Event], None]) -> None:
        with self._lock:
            self._outlets = _without_callable(self._outlets, outlet)

    def add_watcher(self, watcher: Callable[[], None]) -> None:
        """Call ``watcher()`` after every subscribe and unsubscribe."""
        with self._lock:
            self._watchers = (*self._watchers, watcher)

    def remove_watcher(self, watcher: Callable[[], None]) -> None:
        with self._lock:
            self._watchers = _without_callable(self._watchers, watcher)

    def _changed(self) -> None:
        for watcher in self._watchers:
            try:
                watcher()
            except Exception:
                log.exception("bus: a subscription watcher failed")

    def _send_out(self, event: Event) -> None:
        """Hand an event published here to the outlets (one from another process is never sent on)."""
        if event.origin is not None:
            return
        for outlet in self._outlets:
            try:
                outlet(event)
            except Exception:
                log.exception("bus: sending %s to other processes failed", event.topic)

    def _resolve(self, topic: str) -> tuple[Subscription, ...]:
        cached = self._cache.get(topic)
        if cached is not None:
            return cached
        with self._lock:
            found: list[Subscription] = list(self._all)
            found.extend(self._exact.get(topic, ()))
            found.extend(self._prefix_matches(topic))
            found.sort(key=lambda s: s.seq)
            result = _one_per_handler(found)
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache = {}
            self._cache[topic] = result
        return result

    def _prefix_matches(self, topic: str) -> list[Subscription]:
        """(Under the lock.) The subscriptions of every "p.*" whose p is the topic or a dot-bounded
        start of it."""
        prefix = self._prefix
        found: list[Subscription] = []
        if prefix:
            end = topic.find(".")
            while end != -1:
                found.extend(prefix.get(topic[:end], ()))
                end = topic.find(".", end + 1)
            found.extend(prefix.get(topic, ()))
        return found

    # -- publishing ---------------------------------------------------------------------------

    def publish(
        self,
        topic: str | Enum | Event,
        payload: Any = None,
        *,
        source: str | None = None,
        correlation_id: str | None = None,
    ) -> PublishResult:
        """Deliver an event to the matching handlers now. Returns a `PublishResult` (awaitable)."""
        if isinstance(topic, Event):
            event = topic
            if type(event.topic) is not str:  # an Enum member hashes by its name, not its value
                event = replace(event, topic=_topic_of(event.topic))
        else:
            event = Event(_topic_of(topic), payload, source, correlation_id)
        subs = self._cache.get(event.topic) or self._resolve(event.topic)
        _published[0] += 1
        result = PublishResult(event, len(subs))
        # (The loop of `publish_received`, written out: as a shared method it cost publish 4%.)
        for sub in subs:
            try:
                if sub.is_async:
                    self._schedule(sub.handler(event), event, sub, result)
                else:
                    ret = sub.handler(event)
                    if ret is not None and inspect.isawaitable(ret):
                        self._schedule(ret, event, sub, result)
            except Exception as exc:
                result.errors.append(exc)
                self._failed(event, sub, exc)
        if self._outlets:
            self._send_out(event)
        return result

    def publish_received(self, event: Event, size: int, sender: int) -> PublishResult:
        """Deliver an event that came from another process (`hybridcomms.bus.fanout`), as `publish` does
        (it is never sent on): ``size`` (its encoded bytes) and ``sender`` (the process that sent it,
        as the kernel said, or `UNKNOWN_SENDER`) bound the async handler runs it may start
        (`MAX_RECEIVED_RUNS`, `MAX_RECEIVED_BYTES`)."""
        subs = self._cache.get(event.topic) or self._resolve(event.topic)
        _published[0] += 1
        result = PublishResult(event, len(subs))
        result._cost = (size, sender)
        for sub in subs:
            try:
                if sub.is_async:
                    self._schedule(sub.handler(event), event, sub, result)
                else:
                    ret = sub.handler(event)
                    if ret is not None and inspect.isawaitable(ret):
                        self._schedule(ret, event, sub, result)
            except Exception as exc:
                result.errors.append(exc)
                self._failed(event, sub, exc)
        return result

    def _room_for(self, size: int, sender: int) -> bool:
        """(Under the runs lock.) Whether a received event (``size`` bytes, from ``sender``) may start
        one more async run (`MAX_RECEIVED_RUNS`): never past the bounds, and once half of either is
        in use, only if its sender holds less than a quarter of both."""
        runs, held = self._received_runs, self._received_bytes
        if _past(runs, held + size, 1):
            return False
        mine = self._held_by.get(sender)
        greedy = mine is not None and _past(mine[0], mine[1] + size, 4)
        return not (greedy and _past(runs, held + size, 2))

    def _admit(self, size: int, sender: int) -> bool:
        """Whether a received event may start one more async run (`_room_for`); if so, it is counted
        until `_run_ended`."""
        with self._runs_lock:
            if not self._room_for(size, sender):
                return False
            mine = self._held_by.get(sender)
            if mine is None:
                mine = self._held_by[sender] = [0, 0]
            mine[0] += 1
            mine[1] += size
            self._received_runs += 1
            self._received_bytes += size
            return True

    def refuses(self, topic: str, size: int, sender: int) -> bool:
        """Whether an event from another process on ``topic`` (``size`` bytes, from ``sender``) would
        reach nothing now: every handler of the topic is async, and none may start (`_room_for`). The
        fanout then drops it before decoding it (a flood costs no decoding past the bounds)."""
        subs = self._cache.get(topic) or self._resolve(topic)
        if not subs or not all(sub.is_async for sub in subs):
            return False
        with self._runs_lock:
            return not self._room_for(size, sender)

    def _schedule(
        self, awaitable: Awaitable[Any], event: Event, sub: Subscription, result: PublishResult
    ) -> None:
        """Start the run of an async handler (`_guarded`); one for an event from another process
        within the bounds only (`_schedule_received`)."""
        if event.origin is not None:
            self._schedule_received(awaitable, event, sub, result)
            return
        result._pending.append(self._start(self._guarded(awaitable, event, sub, result)))

    def _schedule_received(
        self, awaitable: Awaitable[Any], event: Event, sub: Subscription, result: PublishResult
    ) -> None:
        """Start the run of an async handler of a received event if it may start (`_admit`), counted
        until it ends, however it ends (done, failed, cancelled); else it is not started."""
        cost: tuple[int, int] = getattr(result, "_cost", (0, UNKNOWN_SENDER))
        if not self._admit(*cost):  # a flood from other processes: this run is not started
            _not_started(awaitable, result)
            return
        try:
            future = self._start(self._guarded(awaitable, event, sub, result))
        except BaseException:
            self._run_ended(cost)
            raise
        future.add_done_callback(lambda _future: self._run_ended(cost))
        result._pending.append(future)

    async def _guarded(
        self, awaitable: Awaitable[Any], event: Event, sub: Subscription, result: PublishResult
    ) -> None:
        """Await a handler's run; what it raises is recorded and published, never raised."""
        try:
            await awaitable
        except Exception as exc:
            result.errors.append(exc)
            self._failed(event, sub, exc)

    def _start(
        self, run: Coroutine[Any, Any, None]
    ) -> asyncio.Future[None] | concurrent.futures.Future[None]:
        """Start a run on the publisher's event loop if it has one, else on the background loop."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run_coroutine_threadsafe(run, self.background_loop())
        return loop.create_task(run)

    def _run_ended(self, cost: tuple[int, int]) -> None:
        size, sender = cost
        with self._runs_lock:
            self._received_runs -= 1
            self._received_bytes -= size
            mine = self._held_by.get(sender)
            if mine is not None:
                mine[0] -= 1
                mine[1] -= size
                if mine[0] <= 0:
                    del self._held_by[sender]

    def _failed(self, event: Event, sub: Subscription, exc: BaseException) -> None:
        name = getattr(sub.handler, "__qualname__", repr(sub.handler))
        log.error(
            "bus handler %s for %r (event %s) failed",
            name,
            event.topic,
            event.id,
            exc_info=(type(exc), exc, exc.__traceback__),
        )
        if event.topic == self.error_topic and event.source == "hybridcomms.bus":
            return  # an error handler failed: logged, never republished
        self.publish(
            Event(
                self.error_topic,
                {
                    "topic": event.topic,
                    "event_id": event.id,
                    "handler": name,
                    "pattern": sub.pattern,
                    "error": f"{type(exc).__name__}: {exc}",
                    "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
                },
                source="hybridcomms.bus",
                correlation_id=event.id,
            )
        )

    # -- the background loop for async handlers published from plain threads -----------------

    def background_loop(self) -> asyncio.AbstractEventLoop:
        """The bus's own event loop (a daemon thread, started at its first use) that runs async
        handlers called from a thread without a running loop; the consumer loop uses it too."""
        with self._lock:
            if self._loop is None:
                loop = asyncio.new_event_loop()
                ready = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(ready.set)
                    loop.run_forever()

                thread = threading.Thread(target=run, name="hybridcomms-bus-loop", daemon=True)
                thread.start()
                ready.wait()
                self._loop, self._loop_thread = loop, thread
            return self._loop

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background loop (if one was started), letting running handlers finish first."""
        with self._lock:
            loop, thread = self._loop, self._loop_thread
            self._loop = self._loop_thread = None
        if loop is None or thread is None:
            return

        async def drain() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            if tasks:
                await asyncio.wait(tasks, timeout=timeout)

        asyncio.run_coroutine_threadsafe(drain(), loop).result(timeout + 1)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout)
        loop.close()

    def __enter__(self) -> AgentBus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _without(subs: tuple[Subscription, ...], sub: Subscription) -> tuple[Subscription, ...]:
    """The subscriptions but ``sub``."""
    return tuple(s for s in subs if s is not sub)


def _not_started(awaitable: Awaitable[Any], result: PublishResult) -> None:
    """Count an async run the bounds refused, closing its coroutine (no "never awaited" warning)."""
    close = getattr(awaitable, "close", None)
    if callable(close):
        close()
    result.dropped += 1


def _past(runs: int, size: int, share: int) -> bool:
    """Whether ``runs`` runs holding ``size`` bytes reach 1/share of either bound of received runs
    (`MAX_RECEIVED_RUNS`, `MAX_RECEIVED_BYTES`)."""
    return runs >= MAX_RECEIVED_RUNS // share or size > MAX_RECEIVED_BYTES // share


def _one_per_handler(found: list[Subscription]) -> tuple[Subscription, ...]:
    """The first subscription of each handler: each handler runs at most once per event."""
    unique: list[Subscription] = []
    for sub in found:  # handlers told apart by equality: ``obj.method`` is a new bound-method
        # object at every access, equal to the others
        if not any(_same(sub.handler, u.handler) for u in unique):
            unique.append(sub)
    return tuple(unique)


def _is_async(handler: Handler) -> bool:
    if inspect.iscoroutinefunction(handler):
        return True
    call = getattr(type(handler), "__call__", None)  # noqa: B004  (an object with an async __call__)
    return call is not None and inspect.iscoroutinefunction(call)


_default_bus: AgentBus | None = None
_default_lock = threading.Lock()


def default_bus() -> AgentBus:
    """The process-wide bus that `hybridcomms.Comms` uses unless given another."""
    global _default_bus
    with _default_lock:
        if _default_bus is None:
            _default_bus = AgentBus()
        return _default_bus
