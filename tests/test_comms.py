"""Comms: the policy picks the route; durable handlers get retries and dead letters; request/reply."""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import workers
from waiting import eventually

from hybridcomms import AgentBus, Backoff, Comms, Event, Received, RequestTimeoutError, Route, State

FAST = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)
spawn = mp.get_context("spawn")


@pytest.fixture
def bus() -> Iterator[AgentBus]:
    b = AgentBus()
    yield b
    b.close()


@pytest.fixture
def make(root: Path, bus: AgentBus) -> Iterator[Callable[..., Comms]]:
    made: list[Comms] = []

    def factory(agent: str, **kw: Any) -> Comms:
        kw.setdefault("fsync", "never")
        kw.setdefault("backoff", FAST)
        c = Comms(agent, root=root, bus=bus, **kw)
        made.append(c)
        return c

    yield factory
    for c in made:
        c.close()


def files(root: Path, agent: str, state: str) -> list[str]:
    return [n for n in os.listdir(root / agent / state) if not n.endswith(".reason.json")]


def test_a_durable_send_lands_in_the_recipients_mailbox_and_is_handled_then_acked(
    make: Callable[..., Comms], root: Path
) -> None:
    a, b = make("Agent-1"), make("Agent-2")
    got: list[Received] = []
    b.subscribe("dreamos.agent.Agent-2.task.command", got.append)
    sent = a.send("Agent-2", "dreamos.agent.Agent-2.task.command", {"task": "build"})
    assert sent.route is Route.DURABLE and sent.durable_to == ("Agent-2",)
    assert len(files(root, "Agent-2", "new")) == 1
    assert b.process_one()
    (m,) = got
    assert (m.id, m.topic, m.sender, m.payload, m.attempt, m.durable) == (
        sent.message.id,
        "dreamos.agent.Agent-2.task.command",
        "Agent-1",
        {"task": "build"},
        1,
        True,
    )
    assert len(files(root, "Agent-2", "done")) == 1


def test_an_ephemeral_publish_reaches_subscribers_in_memory_and_writes_no_file(
    make: Callable[..., Comms], root: Path
) -> None:
    a, b = make("Agent-1"), make("Agent-2")
    got: list[Received] = []
    b.subscribe("dreamos.agent.status.*", got.append)
    sent = a.publish("dreamos.agent.status.updated", {"status": "busy"})
    assert sent.route is Route.EPHEMERAL and sent.bus_handlers == 1
    assert [(m.payload, m.attempt, m.durable, m.sender) for m in got] == [
        ({"status": "busy"}, None, False, "Agent-1")
    ]
    assert files(root, "Agent-2", "new") == []


def test_an_ephemeral_send_reaches_only_its_recipient(make: Callable[..., Comms]) -> None:
    a, b, c = make("Agent-1"), make("Agent-2"), make("Agent-3")
    got_b: list[Received] = []
    got_c: list[Received] = []
    b.subscribe("chat.*", got_b.append)
    c.subscribe("chat.*", got_c.append)
    a.send("Agent-2", "chat.hello", "hi", route="ephemeral")
    assert [m.payload for m in got_b] == ["hi"] and got_c == []


def test_a_both_route_delivers_durably_once_and_notifies_observers(
    make: Callable[..., Comms], bus: AgentBus
) -> None:
    a, b = make("Agent-1"), make("Agent-2")
    handled: list[Received] = []
    observed: list[Event] = []
    b.subscribe("orders.*", handled.append)
    bus.subscribe("orders.*", observed.append)
    sent = a.send("Agent-2", "orders.new", {"n": 1}, route="both")
    assert sent.route is Route.BOTH
    assert len(observed) == 1 and observed[0].durable
    assert handled == []  # not from the bus: the durable copy is the one to handle
    assert b.process_one()
    assert [(m.payload, m.durable) for m in handled] == [({"n": 1}, True)]


def test_a_durable_publish_goes_to_every_agent_with_a_matching_durable_subscription(
    make: Callable[..., Comms], root: Path
) -> None:
    pub, s1, s2, other = make("Publisher"), make("Sub-1"), make("Sub-2"), make("Other")
    s1.subscribe("dreamos.task.*", lambda m: None)
    s2.subscribe("dreamos.task.command", lambda m: None)
    other.subscribe("dreamos.agent.status.*", lambda m: None)
    sent = pub.publish("dreamos.task.command", {"task": "x"})
    assert sent.route is Route.DURABLE
    assert sorted(sent.durable_to) == ["Sub-1", "Sub-2"]
    for agent in ("Sub-1", "Sub-2"):
        (name,) = files(root, agent, "new")
        assert orjson.loads((root / agent / "new" / name).read_bytes())["recipient"] == agent
    assert files(root, "Other", "new") == []


def test_durable_subscriptions_are_recorded_on_disk_and_survive_a_restart(
    make: Callable[..., Comms], root: Path, bus: AgentBus
) -> None:
    sub = make("Sub-1")
    sub.subscribe("dreamos.task.*", lambda m: None)
    sub.close()
    data = orjson.loads((root / "Sub-1" / "subscriptions.json").read_bytes())
    assert data == {"agent": "Sub-1", "patterns": ["dreamos.task.*"]}
    pub = make("Publisher")
    assert pub.publish("dreamos.task.command").durable_to == ("Sub-1",)  # delivered while Sub-1 is down
    back = make("Sub-1")
    got: list[Received] = []
    back.subscribe("dreamos.task.*", got.append)
    assert back.process_one() and got[0].topic == "dreamos.task.command"


def test_unsubscribing_the_last_handler_removes_the_durable_subscription(
    make: Callable[..., Comms], root: Path
) -> None:
    c = make("Sub-1")
    h1 = c.subscribe("a.*", lambda m: None)
    h2 = c.subscribe("a.*", lambda m: 1)
    assert c.unsubscribe(h1)
    assert orjson.loads((root / "Sub-1" / "subscriptions.json").read_bytes())["patterns"] == ["a.*"]
    assert c.unsubscribe(h2)
    assert orjson.loads((root / "Sub-1" / "subscriptions.json").read_bytes())["patterns"] == []
    assert c.unsubscribe(h2) is False


def test_a_failing_handler_is_retried_then_dead_lettered_and_the_event_fires_once(
    make: Callable[..., Comms], root: Path, bus: AgentBus
) -> None:
    a, b = make("Agent-1"), make("Agent-2", max_attempts=3)
    attempts: list[int | None] = []
    dead_events: list[Event] = []
    bus.subscribe("hybridcomms.deadletter", dead_events.append)

    def flaky(m: Received) -> None:
        attempts.append(m.attempt)
        raise ValueError(f"cannot do {m.payload}")

    b.subscribe("dreamos.task.command", flaky)
    sent = a.send("Agent-2", "dreamos.task.command", "the impossible")
    while b.process_one():
        pass
    assert attempts == [1, 2, 3]
    (dead,) = b.mailbox.list(State.DEAD)
    assert dead.id == sent.message.id
    assert dead.reason is not None and dead.reason["last_error"] == "ValueError: cannot do the impossible"
    (ev,) = dead_events
    assert ev.payload["id"] == sent.message.id and ev.payload["reason"] == "failed 3 of 3 attempts"
    assert ev.payload["last_error"] == "ValueError: cannot do the impossible"


def test_a_failed_attempt_waits_for_the_backoff(make: Callable[..., Comms]) -> None:
    a, b = make("Agent-1"), make("Agent-2", backoff=Backoff(initial=0.3, jitter=0))
    calls: list[float] = []

    def fail_once(m: Received) -> None:
        calls.append(time.monotonic())
        if m.attempt == 1:
            raise RuntimeError("transient")

    b.subscribe("dreamos.task.command", fail_once)
    a.send("Agent-2", "dreamos.task.command")
    with b:
        eventually(lambda: len(calls) == 2, "the handler's second run, after the retry")
    assert calls[1] - calls[0] >= 0.25


def test_a_message_nobody_handles_ends_in_dead_with_that_reason(make: Callable[..., Comms]) -> None:
    a, b = make("Agent-1"), make("Agent-2", max_attempts=2)
    a.send("Agent-2", "dreamos.task.command")
    while b.process_one():
        pass
    (dead,) = b.mailbox.list(State.DEAD)
    assert dead.reason is not None and "no handler subscribed" in dead.reason["last_error"]


def test_the_consumer_loop_handles_messages_as_they_arrive(make: Callable[..., Comms]) -> None:
    a, b = make("Agent-1"), make("Agent-2")
    got: list[Any] = []
    b.subscribe("dreamos.task.command", lambda m: got.append(m.payload))
    with b:
        for i in range(20):
            a.send("Agent-2", "dreamos.task.command", i)
        eventually(lambda: len(got) == 20, "the 20 messages handled")
    assert sorted(got) == list(range(20))
    assert not b.running


def test_stopping_finishes_the_message_in_hand(make: Callable[..., Comms], root: Path) -> None:
    a, b = make("Agent-1"), make("Agent-2")
    started, release = threading.Event(), threading.Event()

    def slow(m: Received) -> None:
        started.set()
        assert release.wait(30)  # still working when stop() is called

    b.subscribe("dreamos.task.command", slow)
    a.send("Agent-2", "dreamos.task.command")
    b.start()
    assert started.wait(5)
    stopper = threading.Thread(target=b.stop)
    stopper.start()
    assert b._consumer.stopping.wait(10)  # handshake: the stop has begun, with the message in hand
    release.set()
    stopper.join(30)
    assert len(files(root, "Agent-2", "done")) == 1
    assert files(root, "Agent-2", "processing") == []


def test_request_and_reply_in_one_process(make: Callable[..., Comms]) -> None:
    a, b = make("Agent-1"), make("Agent-2")
    b.subscribe("dreamos.query.*", lambda m: b.reply(m, {"answer": m.payload["q"] * 2}))
    with b:
        reply = a.request("Agent-2", "dreamos.query.double", {"q": 21}, timeout=10)
    assert reply.payload == {"answer": 42} and reply.sender == "Agent-2"


def test_request_and_reply_across_two_processes(
    make: Callable[..., Comms], root: Path, tmp_path: Path
) -> None:
    ready = tmp_path / "ready"
    p = spawn.Process(target=workers.reply_server, args=(str(root), "Server", str(ready), 3))
    p.start()
    try:
        eventually(ready.exists, "the reply server ready", 60)
        client = make("Client")
        with client:
            replies = [client.request("Server", "dreamos.query.echo", {"n": i}, timeout=30) for i in range(3)]
        assert [r.payload["echo"] for r in replies] == [{"n": 0}, {"n": 1}, {"n": 2}]
        assert all(r.payload["pid"] == p.pid for r in replies)
    finally:
        p.join(60)
        if p.is_alive():
            p.kill()
    assert p.exitcode == 0


def test_a_request_without_a_reply_times_out_cleanly_and_a_late_reply_is_dropped(
    make: Callable[..., Comms], root: Path
) -> None:
    a, b = make("Agent-1"), make("Agent-2")
    start = time.monotonic()
    with pytest.raises(RequestTimeoutError, match="no reply from Agent-2"):
        a.request("Agent-2", "dreamos.query.slow", timeout=0.3)
    assert 0.29 <= time.monotonic() - start < 3
    assert len(a._requests) == 0
    # the request itself expires in Agent-2's mailbox instead of being answered late: the claim
    # dead-letters it and hands nothing to the handler
    b.subscribe("dreamos.query.*", lambda m: b.reply(m, "too late"))
    assert not b.process_one()
    (dead,) = b.mailbox.list(State.DEAD)
    assert dead.reason is not None and dead.reason["reason"] == "expired"
    # a reply that comes anyway is acked and dropped, not left behind
    a.send(
        "Agent-1",
        "dreamos.query.slow.reply",
        "late",
        headers={"hybridcomms.reply": True},
        correlation_id="gone",
    )
    assert a.process_one()
    assert files(root, "Agent-1", "new") == [] and len(files(root, "Agent-1", "done")) == 1


async def test_asyncio_agents_use_async_handlers_and_arequest(root: Path) -> None:
    bus = AgentBus()
    loop_thread: list[int] = []
    async with Comms("Agent-2", root=root, bus=bus, fsync="never") as b:

        async def answer(m: Received) -> None:
            loop_thread.append(threading.get_ident())
            await asyncio.sleep(0.01)
            b.reply(m, m.payload + 1)

        b.subscribe("dreamos.query.*", answer)
        async with Comms("Agent-1", root=root, bus=bus, fsync="never") as a:
            reply = await a.arequest("Agent-2", "dreamos.query.inc", 41, timeout=10)
    assert reply.payload == 42
    assert loop_thread == [threading.get_ident()]  # the async handler ran on the agent's own loop
    bus.close()


def test_sync_agents_can_use_async_handlers_too(make: Callable[..., Comms]) -> None:
    a, b = make("Agent-1"), make("Agent-2")
    got: list[Any] = []

    async def handler(m: Received) -> None:
        await asyncio.sleep(0)
        got.append(m.payload)

    b.subscribe("dreamos.task.command", handler)
    a.send("Agent-2", "dreamos.task.command", "x")
    assert b.process_one() and got == ["x"]


def test_the_policy_can_come_from_a_file(root: Path, tmp_path: Path, bus: AgentBus) -> None:
    f = tmp_path / "policy.toml"
    f.write_text('[[rules]]\nmatch = "chat.*"\nroute = "durable"\n')
    with Comms("Agent-1", root=root, bus=bus, policy=f, fsync="never") as a:
        assert a.publish("chat.hello").route is Route.DURABLE


def test_the_subscriptions_file_is_private_like_the_messages(make: Callable[..., Comms], root: Path) -> None:
    import stat

    make("Agent-1").subscribe("a.*", lambda m: None)
    assert stat.S_IMODE(os.stat(root / "Agent-1" / "subscriptions.json").st_mode) == 0o600
    assert not [n for n in os.listdir(root / "Agent-1") if n.endswith(".tmp")]


def test_a_both_publish_is_handled_once_by_each_subscriber(make: Callable[..., Comms], bus: AgentBus) -> None:
    pub, sub = make("Publisher"), make("Sub-1")
    handled: list[Received] = []
    observed: list[Event] = []
    sub.subscribe("alerts.*", handled.append)
    bus.subscribe("alerts.*", observed.append)
    sent = pub.publish("alerts.fire", {"room": 7}, route="both")
    assert sent.route is Route.BOTH and sent.durable_to == ("Sub-1",)
    assert len(observed) == 1 and handled == []  # observers see the bus copy; Comms waits for the durable one
    while sub.process_one():
        pass
    assert [(m.payload, m.durable) for m in handled] == [({"room": 7}, True)]
