"""AgentBus: pattern rules, isolation of failures, sync and async handlers, threads."""

from __future__ import annotations

import asyncio
import enum
import gc
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from hybridcomms.bus import AgentBus, Event, pattern_matches


@pytest.fixture
def bus() -> Iterator[AgentBus]:
    b = AgentBus()
    yield b
    b.close()


PATTERN_TABLE = [
    # pattern, topic, matches
    ("a.b.c", "a.b.c", True),
    ("a.b.c", "a.b", False),
    ("a.b.c", "a.b.c.d", False),
    ("a.b.*", "a.b", True),
    ("a.b.*", "a.b.c", True),
    ("a.b.*", "a.b.c.d", True),
    ("a.b.*", "a.bc", False),
    ("a.b.*", "a", False),
    ("a.b.*", "x.a.b.c", False),
    ("a.*", "a", True),
    ("*", "anything.at.all", True),
    ("*", "x", True),
    ("dreamos.agent.Agent-1.task.command", "dreamos.agent.Agent-1.task.command", True),
    ("dreamos.agent.*", "dreamos.agent.Agent-1.task.command", True),
    ("dreamos.agent.*", "dreamos.agents", False),
]


@pytest.mark.parametrize(("pattern", "topic", "expected"), PATTERN_TABLE)
def test_patterns_match_exactly_as_dreamos_agents_rely_on(
    bus: AgentBus, pattern: str, topic: str, expected: bool
) -> None:
    seen: list[str] = []
    bus.subscribe(pattern, lambda e: seen.append(e.topic))
    bus.publish(topic)
    assert (seen == [topic]) is expected
    assert pattern_matches(pattern, topic) is expected


@pytest.mark.parametrize("bad", ["a.*.c", "*.b", "a*", "", ".a", "a..b", "a.b."])
def test_malformed_patterns_are_refused(bus: AgentBus, bad: str) -> None:
    with pytest.raises(ValueError):
        bus.subscribe(bad, print)


def test_a_handler_matching_by_several_patterns_runs_once_per_event(bus: AgentBus) -> None:
    calls: list[str] = []

    def handler(e: Event) -> None:
        calls.append(e.topic)

    for p in ("a.b.c", "a.b.*", "a.*", "*"):
        bus.subscribe(p, handler)
    assert bus.publish("a.b.c").handlers == 1
    assert calls == ["a.b.c"]


def test_a_duplicate_subscription_is_ignored(bus: AgentBus) -> None:
    calls: list[int] = []

    def handler(e: Event) -> None:
        calls.append(1)

    first = bus.subscribe("t", handler)
    assert bus.subscribe("t", handler) is first
    bus.publish("t")
    assert calls == [1]
    assert len(bus.subscriptions()) == 1


def test_handlers_run_in_subscription_order(bus: AgentBus) -> None:
    order: list[str] = []
    bus.subscribe("a.*", lambda e: order.append("prefix"))
    bus.subscribe("a.b", lambda e: order.append("exact"))
    bus.subscribe("*", lambda e: order.append("all"))
    bus.publish("a.b")
    assert order == ["prefix", "exact", "all"]


def test_unsubscribe_by_subscription_by_id_and_by_pattern_and_handler(bus: AgentBus) -> None:
    calls: list[str] = []

    def h1(e: Event) -> None:
        calls.append("h1")

    def h2(e: Event) -> None:
        calls.append("h2")

    def h3(e: Event) -> None:
        calls.append("h3")

    s1 = bus.subscribe("t", h1)
    s2 = bus.subscribe("t.*", h2)
    bus.subscribe("*", h3)
    assert bus.unsubscribe(s1)
    assert bus.unsubscribe(s2.id)
    assert bus.unsubscribe("*", h3)
    bus.publish("t")
    assert calls == []
    assert bus.unsubscribe("*", h3) is False  # unknown pair: no error
    assert bus.unsubscribe(s1) is False


def test_publish_takes_an_event_or_a_topic_with_payload_source_and_correlation(bus: AgentBus) -> None:
    got: list[Event] = []
    bus.subscribe("t", got.append)
    bus.publish("t", {"x": 1}, source="Agent-1", correlation_id="c-1")
    event = Event("t", 2, source="Agent-2")
    bus.publish(event)
    assert (got[0].payload, got[0].source, got[0].correlation_id) == ({"x": 1}, "Agent-1", "c-1")
    assert got[1] is event
    assert got[0].id != got[1].id


def test_enum_members_are_accepted_as_topics_and_patterns(bus: AgentBus) -> None:
    class Kind(str, enum.Enum):
        DONE = "dreamos.task.completed"

    got: list[str] = []
    bus.subscribe(Kind.DONE, lambda e: got.append(e.topic))
    bus.publish(Kind.DONE)
    assert got == ["dreamos.task.completed"]


def test_a_failing_handler_does_not_stop_the_others_and_is_published_once_as_an_error(bus: AgentBus) -> None:
    calls: list[str] = []
    errors: list[Event] = []
    bus.subscribe(bus.error_topic, errors.append)

    def bad(e: Event) -> None:
        raise RuntimeError("boom")

    bus.subscribe("t", lambda e: calls.append("before"))
    bus.subscribe("t", bad)
    bus.subscribe("t", lambda e: calls.append("after"))
    result = bus.publish("t")
    assert calls == ["before", "after"]
    assert len(result.errors) == 1
    (err,) = errors
    assert err.payload["topic"] == "t" and err.payload["error"] == "RuntimeError: boom"
    assert "Traceback" in err.payload["traceback"] and err.correlation_id == result.event.id


def test_the_error_topic_is_configurable() -> None:
    bus = AgentBus(error_topic="dreamos.system.error")
    got: list[Event] = []
    bus.subscribe("dreamos.system.error", got.append)
    bus.subscribe("t", lambda e: 1 / 0)
    bus.publish("t")
    assert len(got) == 1 and "ZeroDivisionError" in got[0].payload["error"]


def test_a_failing_error_handler_is_logged_and_never_recurses(
    bus: AgentBus, caplog: pytest.LogCaptureFixture
) -> None:
    error_calls: list[Event] = []

    def bad_error_handler(e: Event) -> None:
        error_calls.append(e)
        raise ValueError("error handler broke too")

    bus.subscribe("*", bad_error_handler)  # also sees the error events it causes
    bus.publish("t")
    assert [e.topic for e in error_calls] == ["t", bus.error_topic]
    assert "error handler broke too" in caplog.text


def test_a_lambda_subscriber_is_not_garbage_collected(bus: AgentBus) -> None:
    got: list[int] = []
    bus.subscribe("t", lambda e: got.append(1))
    gc.collect()
    bus.publish("t")
    assert got == [1]


async def test_awaiting_publish_returns_after_every_async_handler_finished() -> None:
    bus = AgentBus()
    done: list[str] = []

    async def slow(e: Event) -> None:
        await asyncio.sleep(0.05)
        done.append("slow")

    bus.subscribe("t", slow)
    bus.subscribe("t", lambda e: done.append("sync"))
    await bus.publish("t")
    assert done == ["sync", "slow"]
    bus.close()


async def test_without_await_async_handlers_are_scheduled_on_the_running_loop() -> None:
    bus = AgentBus()
    done = asyncio.Event()

    async def handler(e: Event) -> None:
        done.set()

    bus.subscribe("t", handler)
    result = bus.publish("t")
    assert not done.is_set()  # scheduled, not run inline
    await asyncio.wait_for(done.wait(), 2)
    assert result.done
    bus.close()


async def test_an_async_handler_that_raises_produces_an_error_event() -> None:
    bus = AgentBus()
    errors: list[Event] = []
    bus.subscribe(bus.error_topic, errors.append)

    async def bad(e: Event) -> None:
        raise KeyError("async boom")

    bus.subscribe("t", bad)
    result = await bus.publish("t")
    assert len(result.errors) == 1 and len(errors) == 1
    bus.close()


def test_with_no_event_loop_async_handlers_still_run(bus: AgentBus) -> None:
    ran = threading.Event()

    async def handler(e: Event) -> None:
        await asyncio.sleep(0)
        ran.set()

    bus.subscribe("t", handler)
    assert bus.publish("t").wait(5)
    assert ran.is_set()


def test_a_sync_handler_returning_a_coroutine_is_awaited(bus: AgentBus) -> None:
    ran: list[int] = []

    async def work() -> None:
        ran.append(1)

    bus.subscribe("t", lambda e: work())
    assert bus.publish("t").wait(5)
    assert ran == [1]


def test_an_object_with_an_async_call_is_an_async_handler(bus: AgentBus) -> None:
    ran = threading.Event()

    class Handler:
        async def __call__(self, e: Event) -> None:
            ran.set()

    bus.subscribe("t", Handler())
    assert bus.publish("t").wait(5) and ran.is_set()


def test_concurrent_publish_and_subscribe_from_threads_is_safe(bus: AgentBus) -> None:
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def make(name: str) -> Any:
        def handler(e: Event) -> None:
            with lock:
                counts[name] = counts.get(name, 0) + 1

        return handler

    stop = threading.Event()
    bus.subscribe("load.*", make("stable"))

    def churn() -> None:
        i = 0
        while not stop.is_set():
            sub = bus.subscribe(f"load.{i % 7}", make(f"churn{i}"))
            bus.unsubscribe(sub)
            i += 1

    def publish(n: int) -> None:
        for i in range(n):
            bus.publish(f"load.{i % 7}")

    churner = threading.Thread(target=churn)
    churner.start()
    publishers = [threading.Thread(target=publish, args=(2000,)) for _ in range(4)]
    for t in publishers:
        t.start()
    for t in publishers:
        t.join(30)
    stop.set()
    churner.join(30)
    assert counts["stable"] == 8000


def test_publish_cost_does_not_depend_on_unrelated_subscriptions(bus: AgentBus) -> None:
    # Behaviour, not timing: the resolved handler list for a topic holds only its matches.
    for i in range(1000):
        bus.subscribe(f"other.{i}", lambda e: None)
        bus.subscribe(f"other{i}.*", lambda e: None)
    got: list[int] = []
    bus.subscribe("mine.x", lambda e: got.append(1))
    assert bus.publish("mine.x").handlers == 1
    assert bus._resolve("mine.x") == bus._cache["mine.x"]
    time.sleep(0)


def test_an_event_whose_topic_is_an_enum_member_reaches_exact_and_prefix_subscribers(bus: AgentBus) -> None:
    class Kind(str, enum.Enum):
        DONE = "dreamos.task.completed"

    got: list[str] = []
    bus.subscribe("dreamos.task.completed", lambda e: got.append("exact"))
    bus.subscribe("dreamos.task.*", lambda e: got.append("prefix"))
    bus.publish(Event(Kind.DONE, {"id": 1}))  # type: ignore[arg-type]
    assert sorted(got) == ["exact", "prefix"]
