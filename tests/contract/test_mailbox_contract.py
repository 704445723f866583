"""The mailbox contract (hybridcomms.backends.base), run against every backend: files, memory, Redis.

This is the one place the contract is tested; each backend's own tests cover only what is its own.
The file backend runs at fsync "never" and "always" (see BACKENDS).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from waiting import eventually

from hybridcomms import (
    Backoff,
    DeliveryError,
    DeliveryLostError,
    InvalidAgentIdError,
    MailboxIOError,
    Message,
    MessageTooLargeError,
    Priority,
    State,
)
from hybridcomms.backends import Mailbox, MailboxDelivery

FAST = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)


def count(mb: Mailbox, state: State) -> int:
    return mb.stats().states[state].count


def msg(topic: str = "task.build", payload: Any = None, **kw: Any) -> Message:
    return Message(topic, {"n": 1} if payload is None else payload, sender="Producer", **kw)


# -- put, claim, ack --------------------------------------------------------------------------------


def test_put_claim_ack_round_trip(make: Callable[..., Mailbox]) -> None:
    mb = make()
    sent = msg(payload={"k": [1, 2.5, "é", None]}, headers={"h": "v"}, correlation_id="c1", reply_to="R")
    mb.put(sent)
    d = mb.claim()
    assert isinstance(d, MailboxDelivery)
    assert d.message == sent  # every field, created_at included
    assert (d.message.id, d.message.topic, d.message.payload) == (sent.id, sent.topic, sent.payload)
    assert (d.message.headers, d.message.correlation_id, d.message.reply_to) == ({"h": "v"}, "c1", "R")
    assert d.attempt == 1 and not d.settled
    assert count(mb, State.PROCESSING) == 1 and count(mb, State.NEW) == 0
    d.ack()
    assert d.settled
    assert mb.claim() is None
    assert (count(mb, State.NEW), count(mb, State.PROCESSING), count(mb, State.DONE)) == (0, 0, 1)


def test_a_second_handle_sees_the_same_mailbox(make: Callable[..., Mailbox]) -> None:
    producer, consumer = make(), make()
    producer.put(msg())
    d = consumer.claim()
    assert d is not None
    d.ack()


def test_empty_claim_returns_none_at_once(make: Callable[..., Mailbox]) -> None:
    mb = make()
    t0 = time.monotonic()
    assert mb.claim() is None
    assert mb.claim(timeout=0) is None
    assert time.monotonic() - t0 < 1.0


@pytest.mark.clock
def test_claim_with_timeout_waits_that_long(make: Callable[..., Mailbox]) -> None:
    mb = make()
    t0 = time.monotonic()
    assert mb.claim(timeout=0.3) is None
    assert time.monotonic() - t0 >= 0.25


def test_claim_with_timeout_gets_a_message_put_by_another_thread(make: Callable[..., Mailbox]) -> None:
    consumer, producer = make(), make()
    got: list[MailboxDelivery | None] = []
    t = threading.Thread(target=lambda: got.append(consumer.claim(timeout=10)))
    t.start()
    producer.put(msg())
    t.join(15)
    assert got and got[0] is not None
    got[0].ack()


def test_wake_with_cancel_ends_a_blocking_claim(make: Callable[..., Mailbox]) -> None:
    mb = make()
    cancel = threading.Event()
    done = threading.Event()
    result: list[Any] = []

    def consume() -> None:
        result.append(mb.claim(timeout=30, cancel=cancel))
        done.set()

    t = threading.Thread(target=consume)
    t0 = time.monotonic()
    t.start()
    cancel.set()
    mb.wake()
    assert done.wait(10), "the claim did not end"
    t.join()
    assert result == [None]
    assert time.monotonic() - t0 < 10


def test_put_returns_a_name_and_put_many_keeps_order(make: Callable[..., Mailbox]) -> None:
    mb = make()
    names = mb.put_many([msg(id=f"m{i}") for i in range(5)])
    assert len(names) == 5 and all(isinstance(n, str) and n for n in names)
    assert isinstance(mb.put(msg(id="m5")), str)
    got = []
    while (d := mb.claim()) is not None:
        got.append(d.message.id)
        d.ack()
    assert got == [f"m{i}" for i in range(6)]


def test_put_many_stores_all_or_nothing(make: Callable[..., Mailbox]) -> None:
    mb = make(max_message_size=2000)
    with pytest.raises(MessageTooLargeError):
        mb.put_many([msg(id="ok1"), msg(id="big", payload="x" * 5000), msg(id="ok2")])
    assert count(mb, State.NEW) == 0
    assert mb.claim() is None
    assert mb.put_many([]) == []


def test_a_too_large_message_is_refused(make: Callable[..., Mailbox]) -> None:
    mb = make(max_message_size=1000)
    with pytest.raises(MessageTooLargeError):
        mb.put(msg(payload="y" * 2000))
    assert count(mb, State.NEW) == 0


def test_nan_and_infinities_are_refused_never_stored_as_null(make: Callable[..., Mailbox]) -> None:
    mb = make()
    for bad in (float("nan"), float("inf"), {"deep": [1, {"x": -float("inf")}]}):
        with pytest.raises(TypeError, match="NaN or an infinity"):
            mb.put(msg(payload=bad))
    with pytest.raises(TypeError):
        mb.put_many([msg(id="ok1"), msg(id="nan", payload=[float("nan")])])
    assert count(mb, State.NEW) == 0


def test_unsafe_agent_ids_are_refused(make: Callable[..., Mailbox]) -> None:
    for bad in ("../x", "a/b", "", ".hidden", "x" * 300):
        with pytest.raises(InvalidAgentIdError):
            make(bad)


def test_a_closed_mailbox_refuses_work(make: Callable[..., Mailbox]) -> None:
    mb = make()
    mb.close()
    with pytest.raises(MailboxIOError):
        mb.put(msg())
    with pytest.raises(MailboxIOError):
        mb.claim()


# -- order ------------------------------------------------------------------------------------------


def test_priority_first_then_age(make: Callable[..., Mailbox]) -> None:
    mb = make()
    mb.put(msg(id="low", priority=Priority.LOW))
    mb.put(msg(id="med1"))
    mb.put(msg(id="crit", priority=Priority.CRITICAL))
    mb.put(msg(id="med2"))
    mb.put(msg(id="high", priority=Priority.HIGH))
    got = []
    while (d := mb.claim()) is not None:
        got.append(d.message.id)
        d.ack()
    assert got == ["crit", "high", "med1", "med2", "low"]


@pytest.mark.clock
def test_a_message_not_due_yet_waits(make: Callable[..., Mailbox]) -> None:
    mb = make()
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    d.nack(delay=0.6)
    assert mb.claim() is None, "delivered before its due time"
    stats = mb.stats()
    assert stats.states[State.NEW].count == 1 and stats.delayed == 1
    t0 = time.monotonic()
    again = mb.claim(timeout=10)
    assert again is not None and again.message.id == "m"
    assert time.monotonic() - t0 < 5, "a blocking claim missed the due time"
    assert again.attempt == 2
    again.ack()


def test_a_message_created_in_the_future_by_a_skewed_clock_is_due_at_once(
    make: Callable[..., Mailbox],
) -> None:
    mb = make()
    sent = msg(created_at=datetime.now(timezone.utc) + timedelta(hours=1))
    mb.put(sent)
    d = mb.claim()
    assert d is not None and d.message == sent
    d.ack()


@pytest.mark.clock
def test_nack_without_a_delay_waits_the_backoff(make: Callable[..., Mailbox]) -> None:
    mb = make(backoff=Backoff(initial=0.4, factor=2.0, maximum=10.0, jitter=0.0))
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    t0 = time.monotonic()
    d.nack()
    assert mb.claim() is None
    again = mb.claim(timeout=10)
    assert again is not None and again.attempt == 2
    assert time.monotonic() - t0 >= 0.35
    again.ack()


def test_a_delayed_message_does_not_hold_back_others(make: Callable[..., Mailbox]) -> None:
    mb = make()
    mb.put(msg(id="first", priority=Priority.HIGH))
    d = mb.claim()
    assert d is not None
    d.nack(delay=60)
    mb.put(msg(id="second", priority=Priority.LOW))
    d2 = mb.claim()
    assert d2 is not None and d2.message.id == "second"
    d2.ack()


# -- failing, attempts, dead letters ------------------------------------------------------------------


def test_nack_redelivers_with_the_next_attempt(make: Callable[..., Mailbox]) -> None:
    mb = make(max_attempts=3)
    mb.put(msg(id="m"))
    for attempt in (1, 2):
        d = mb.claim()
        assert d is not None and d.attempt == attempt
        d.nack(error="boom")
    d = mb.claim()
    assert d is not None and d.attempt == 3
    d.ack()
    assert count(mb, State.DONE) == 1 and count(mb, State.DEAD) == 0


def test_the_last_failed_attempt_goes_to_dead_with_why(make: Callable[..., Mailbox]) -> None:
    mb = make(max_attempts=2)
    mb.put(msg(id="m", topic="task.x"))
    for _ in range(2):
        d = mb.claim()
        assert d is not None
        d.nack(error=ValueError("bad input"))
    assert mb.claim() is None
    dead = mb.list(State.DEAD)
    assert [i.id for i in dead] == ["m"]
    reason = dead[0].reason
    assert reason is not None
    assert reason["reason"] == "failed 2 of 2 attempts"
    assert "bad input" in reason["last_error"]
    assert reason["id"] == "m" and reason["topic"] == "task.x" and reason["attempts"] == 2
    assert mb.read(dead[0]).id == "m"


def test_dead_now_with_a_reason(make: Callable[..., Mailbox]) -> None:
    mb = make()
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    d.dead("not for us")
    info = mb.get("m")
    assert info is not None and info.state is State.DEAD
    assert info.reason is not None and info.reason["reason"] == "not for us"


def test_settling_twice_is_an_error(make: Callable[..., Mailbox]) -> None:
    mb = make()
    mb.put(msg())
    d = mb.claim()
    assert d is not None
    d.ack()
    for settle in (d.ack, d.nack, lambda: d.dead("x"), d.heartbeat):
        with pytest.raises(DeliveryError):
            settle()


def test_as_a_context_manager_acks_or_nacks(make: Callable[..., Mailbox]) -> None:
    mb = make()
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    with pytest.raises(RuntimeError), d:
        raise RuntimeError("handler failed")
    assert d.settled
    again = mb.claim()
    assert again is not None and again.attempt == 2
    with again:
        pass
    assert count(mb, State.DONE) == 1


def test_the_handlers_error_reaches_the_dead_letter_through_the_context_manager(
    make: Callable[..., Mailbox],
) -> None:
    mb = make(max_attempts=1)
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    with pytest.raises(ValueError), d:
        raise ValueError("bad value 42")
    (info,) = mb.list(State.DEAD)
    assert info.reason is not None and info.reason["last_error"] == "ValueError: bad value 42"


def test_requeue_from_dead_gives_a_fresh_count(make: Callable[..., Mailbox]) -> None:
    mb = make(max_attempts=1)
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    d.nack(error="x")
    assert count(mb, State.DEAD) == 1
    names = mb.requeue("m")
    assert len(names) == 1
    assert count(mb, State.DEAD) == 0 and count(mb, State.NEW) == 1
    again = mb.claim()
    assert again is not None and again.attempt == 1 and again.message.id == "m"
    again.ack()
    assert mb.requeue("m", from_state=State.DONE) and count(mb, State.NEW) == 1
    with pytest.raises(ValueError):
        mb.requeue("m", from_state=State.PROCESSING)
    assert mb.requeue("no-such-id") == []


def test_purge_removes_done_and_dead(make: Callable[..., Mailbox]) -> None:
    mb = make(max_attempts=1)
    mb.put_many([msg(id="a"), msg(id="b"), msg(id="c")])
    for settle in ("ack", "ack", "nack"):
        d = mb.claim()
        assert d is not None
        getattr(d, settle)()
    assert mb.purge(State.DONE, older_than=3600) == 0
    assert mb.purge(State.DONE) == 2
    assert mb.purge(State.DEAD) == 1
    assert count(mb, State.DONE) == 0 and count(mb, State.DEAD) == 0
    with pytest.raises(ValueError):
        mb.purge(State.NEW)


# -- leases and recovery -----------------------------------------------------------------------------


def test_recovery_takes_back_what_outlived_its_lease(make: Callable[..., Mailbox]) -> None:
    mb = make(lease=5)
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    assert not mb.recover(now=time.time() + 1)  # lease not over: nothing to do
    report = mb.recover(now=time.time() + 30)
    assert report.returned + report.expired == ["m"]
    with pytest.raises(DeliveryLostError):
        d.ack()
    again = mb.claim(timeout=5)
    assert again is not None and again.attempt == 2
    again.ack()
    assert count(mb, State.DONE) == 1


def test_recovery_buries_a_message_whose_last_attempt_was_taken_back(make: Callable[..., Mailbox]) -> None:
    mb = make(lease=5, max_attempts=1)
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    report = mb.recover(now=time.time() + 30)
    assert report.dead == ["m"]
    info = mb.get("m")
    assert info is not None and info.state is State.DEAD and info.reason is not None
    assert "attempt 1 of 1" in info.reason["reason"]


def test_heartbeat_extends_the_lease_and_tells_when_it_is_lost(make: Callable[..., Mailbox]) -> None:
    mb = make(lease=2)
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    d.heartbeat()
    assert not mb.recover(now=time.time() + 1)
    mb.recover(now=time.time() + 30)
    with pytest.raises(DeliveryLostError):
        d.heartbeat()


def test_a_nack_after_recovery_is_lost_too(make: Callable[..., Mailbox]) -> None:
    mb = make(lease=5)
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    mb.recover(now=time.time() + 30)
    with pytest.raises(DeliveryLostError):
        d.nack(error="late")
    assert count(mb, State.NEW) == 1 and count(mb, State.DEAD) == 0


# -- looking ----------------------------------------------------------------------------------------


def test_list_get_and_read_follow_the_states(make: Callable[..., Mailbox]) -> None:
    mb = make()
    mb.put_many([msg(id="a"), msg(id="b")])
    assert [i.id for i in mb.list(State.NEW)] == ["a", "b"]
    d = mb.claim()
    assert d is not None
    info = mb.get("a")
    assert info is not None and info.state is State.PROCESSING and info.attempt == 1
    assert [i.id for i in mb.list("processing")] == ["a"]
    assert mb.read(info).payload == {"n": 1}
    d.ack()
    info = mb.get("a")
    assert info is not None and info.state is State.DONE
    assert mb.get("nothing") is None
    stats = mb.stats()
    assert stats.agent_id == "A"
    assert stats.states[State.NEW].count == 1 and stats.states[State.DONE].count == 1
    assert stats.states[State.NEW].oldest_age is not None and stats.states[State.NEW].oldest_age >= 0
    assert stats.states[State.DEAD].oldest_age is None


# -- many consumers -----------------------------------------------------------------------------------


def test_many_consumer_threads_take_each_message_once(make: Callable[..., Mailbox]) -> None:
    producer = make()
    n = 200
    producer.put_many([msg(id=f"m{i}") for i in range(n)])
    taken: list[str] = []
    lock = threading.Lock()

    def consume() -> None:
        mb = make()
        while (d := mb.claim(timeout=0.2)) is not None:
            with lock:
                taken.append(d.message.id)
            d.ack()

    threads = [threading.Thread(target=consume) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert sorted(taken) == sorted(f"m{i}" for i in range(n))
    assert count(producer, State.DONE) == n


# -- the last error of a failed attempt (issue 20, section 4) ----------------------------------------


def test_a_nack_keeps_its_error_with_the_waiting_message(make: Callable[..., Mailbox]) -> None:
    mb = make()
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    before = time.time()
    d.nack(delay=60, error="ValueError: the disk is on fire")
    info = mb.get("m")
    assert info is not None and info.state is State.NEW
    assert info.last_error is not None
    assert info.last_error.error == "ValueError: the disk is on fire"
    assert info.last_error.attempt == 1
    assert before - 1 <= info.last_error.failed_at <= time.time() + 1
    assert info.due_at is not None and before + 59 <= info.due_at <= time.time() + 61
    (listed,) = mb.list(State.NEW)
    assert listed.last_error == info.last_error
    assert info.reason is None


def test_the_last_error_follows_the_retry_and_goes_with_its_ack(make: Callable[..., Mailbox]) -> None:
    mb = make()
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    d.nack(delay=0.05, error="first failure")
    again = mb.claim(timeout=10)
    assert again is not None and again.attempt == 2
    held = mb.get("m")
    assert held is not None and held.state is State.PROCESSING
    assert held.last_error is not None and (held.last_error.error, held.last_error.attempt) == (
        "first failure",
        1,
    )
    again.nack(delay=0.05)  # no error this time: the one kept is still the last one known
    third = mb.claim(timeout=10)
    assert third is not None and third.attempt == 3
    info = mb.get("m")
    assert info is not None and info.last_error is not None and info.last_error.error == "first failure"
    third.ack()
    done = mb.get("m")
    assert done is not None and done.state is State.DONE and done.last_error is None


def test_the_handlers_exception_is_kept_as_the_last_error(make: Callable[..., Mailbox]) -> None:
    mb = make()
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    with pytest.raises(KeyError), d:
        raise KeyError("missing")
    info = mb.get("m")
    assert info is not None and info.last_error is not None
    assert info.last_error.error == "KeyError: 'missing'" and info.last_error.attempt == 1


def test_dead_lettering_takes_the_kept_error_into_its_reason(make: Callable[..., Mailbox]) -> None:
    mb = make(max_attempts=5)
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    d.nack(delay=0, error="TimeoutError: upstream")
    again = mb.claim(timeout=10)
    assert again is not None
    again.dead("gave up by hand")  # no error of its own: the kept one is the last one known
    info = mb.get("m")
    assert info is not None and info.state is State.DEAD and info.last_error is None
    assert info.reason is not None
    assert info.reason["reason"] == "gave up by hand"
    assert info.reason["last_error"] == "TimeoutError: upstream"
    # requeued, it starts afresh: nothing kept
    mb.requeue("m")
    fresh = mb.get("m")
    assert fresh is not None and fresh.state is State.NEW and fresh.last_error is None


def test_the_last_attempts_own_error_wins_in_the_dead_letter(make: Callable[..., Mailbox]) -> None:
    mb = make(max_attempts=2)
    mb.put(msg(id="m"))
    d = mb.claim()
    assert d is not None
    d.nack(delay=0, error="first")
    again = mb.claim(timeout=10)
    assert again is not None
    again.nack(error="second")
    info = mb.get("m")
    assert info is not None and info.state is State.DEAD and info.reason is not None
    assert info.reason["last_error"] == "second" and info.last_error is None


# -- delayed puts and expiry (issue 20, section 5) ------------------------------------------------------


@pytest.mark.clock
def test_a_delayed_put_is_not_claimable_before_its_time(make: Callable[..., Mailbox]) -> None:
    mb = make()
    t0 = time.monotonic()
    mb.put(msg(id="later"), delay=0.6)
    mb.put_many([msg(id="later2")], delay=0.6)
    mb.put(msg(id="now"))
    d = mb.claim()
    assert d is not None and d.message.id == "now"
    d.ack()
    assert mb.claim() is None, "a delayed message was delivered before its time"
    assert mb.stats().delayed == 2
    info = mb.get("later")
    assert info is not None and info.state is State.NEW and info.due_at is not None
    assert info.due_at > time.time()
    got = set()
    while len(got) < 2:
        d = mb.claim(timeout=10)
        assert d is not None
        assert time.monotonic() - t0 >= 0.55, "delivered before its delay"
        assert d.attempt == 1
        got.add(d.message.id)
        d.ack()
    assert got == {"later", "later2"}


@pytest.mark.parametrize("delay", [-1.0, float("nan"), float("inf"), 1e12])
def test_a_delay_out_of_range_is_refused_before_anything_is_stored(
    make: Callable[..., Mailbox], delay: float
) -> None:
    mb = make()
    with pytest.raises(ValueError):
        mb.put(msg(), delay=delay)
    with pytest.raises(ValueError):
        mb.put_many([msg()], delay=delay)
    assert count(mb, State.NEW) == 0


def test_an_expired_message_is_dead_lettered_at_claim_never_handed_out(
    make: Callable[..., Mailbox],
) -> None:
    mb = make()
    past = datetime.now(timezone.utc) - timedelta(seconds=1)
    mb.put(msg(id="stale", priority=Priority.HIGH, expires=past))
    mb.put(msg(id="fresh", ttl=3600))
    d = mb.claim()
    assert d is not None and d.message.id == "fresh"
    assert d.message.expires is not None
    d.ack()
    assert mb.claim() is None
    info = mb.get("stale")
    assert info is not None and info.state is State.DEAD and info.reason is not None
    assert info.reason["reason"] == "expired" and info.reason["attempts"] == 0


def test_a_blocking_claim_passes_over_an_expired_message_and_waits_for_the_next(
    make: Callable[..., Mailbox],
) -> None:
    consumer, producer = make(), make()
    got: list[MailboxDelivery | None] = []
    t = threading.Thread(target=lambda: got.append(consumer.claim(timeout=20)))
    t.start()
    producer.put(msg(id="stale", ttl=0))
    # The waiting claim dead-letters it, and waits on.
    eventually(lambda: count(producer, State.DEAD), "the expired message dead-lettered", 15)
    assert t.is_alive() and not got
    producer.put(msg(id="next"))
    t.join(20)
    assert got and got[0] is not None and got[0].message.id == "next"
    got[0].ack()


@pytest.mark.clock
def test_a_message_that_expires_while_it_waits_for_its_retry_dies_with_its_last_error(
    make: Callable[..., Mailbox],
) -> None:
    mb = make()
    mb.put(msg(id="m", ttl=0.3))
    d = mb.claim()
    assert d is not None
    d.nack(delay=0.5, error="RuntimeError: not yet")
    assert mb.claim(timeout=1.5) is None  # due at 0.5 s, expired at 0.3 s: never handed out again
    info = mb.get("m")
    assert info is not None and info.state is State.DEAD and info.reason is not None
    assert info.reason["reason"] == "expired"
    assert info.reason["last_error"] == "RuntimeError: not yet" and info.reason["attempts"] == 1


def test_put_once_stores_an_id_once(make: Callable[..., Mailbox]) -> None:
    from hybridcomms.backends import put_once

    mb = make()
    first = msg(id="same")
    assert put_once(mb, first) is None
    again = put_once(mb, msg(id="same", payload={"n": 2}), delay=5)
    assert again is not None and again.state is State.NEW
    d = mb.claim()
    assert d is not None and d.message == first
    d.ack()
    done = put_once(mb, msg(id="same"))
    assert done is not None and done.state is State.DONE
    assert mb.claim() is None and count(mb, State.NEW) == 0


# -- done_retention: one option, one meaning, on every backend --------------------------------------


def _ack_all(mb: Mailbox, n: int) -> list[str]:
    """Put ``n`` messages, claim and ack each; their ids, in the order they were acked."""
    ids = [f"r{i:03d}" for i in range(n)]
    mb.put_many([msg(id=i) for i in ids])
    for _ in range(n):
        d = mb.claim()
        assert d is not None
        d.ack()
    return ids


def test_done_retention_defaults_to_ten_thousand_and_is_checked(make: Callable[..., Mailbox]) -> None:
    assert make().done_retention == 10_000
    for bad, error in ((-1, ValueError), (2.5, TypeError), (True, TypeError)):
        with pytest.raises(error):
            make(done_retention=bad)


def test_done_retention_zero_keeps_no_acked_message(make: Callable[..., Mailbox]) -> None:
    mb = make(done_retention=0)
    ids = _ack_all(mb, 3)
    assert count(mb, State.DONE) == 0 and mb.list(State.DONE) == []
    assert all(mb.get(i) is None for i in ids)
    assert mb.claim() is None  # acked all the same: never delivered again


def test_done_retention_none_keeps_every_acked_message(make: Callable[..., Mailbox]) -> None:
    mb = make(done_retention=None)
    ids = _ack_all(mb, 5)
    assert count(mb, State.DONE) == 5
    assert all(info is not None and info.state is State.DONE for info in map(mb.get, ids))


def test_done_retention_keeps_the_last_acked_within_its_bound(make: Callable[..., Mailbox]) -> None:
    """About the last N: never fewer than N of the acked (when there were N), and at most N plus the
    backend's slack (the file backend trims every N/4 acks, at least 32, of a handle)."""
    mb = make(done_retention=3)
    ids = _ack_all(mb, 80)
    kept = {info.id for info in mb.list(State.DONE)}
    assert 3 <= len(kept) <= 3 + 32 + 1 and set(ids[-3:]) <= kept
