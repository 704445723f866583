"""Recovery tells a dead owner from a live one by its lock, and a hung one by its lease."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import workers
from waiting import eventually

from hybridcomms import DeliveryLostError, FileMailbox, Message, State

Make = Callable[..., FileMailbox]
spawn = mp.get_context("spawn")


def run_child(target: Callable[..., None], *args: object, timeout: float = 60) -> int:
    p = spawn.Process(target=target, args=args)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        pytest.fail("child process did not finish")
    return p.exitcode or 0


@pytest.mark.parametrize("how", ["sigkill", "exit"])
def test_a_message_claimed_by_a_consumer_that_died_comes_back_with_the_attempt_counted(
    make_mailbox: Make, root: Path, how: str
) -> None:
    mb = make_mailbox()
    m = Message("t")
    mb.put(m)
    run_child(workers.claim_and_die, str(root), "Agent-1", how)
    assert mb.claim() is None  # in processing/, owned by nobody
    report = mb.recover()
    assert report.returned == [m.id]
    d = mb.claim()
    assert d is not None and d.message == m and d.attempt == 2
    d.ack()


def test_recovery_leaves_a_live_consumers_claim_alone(make_mailbox: Make) -> None:
    owner = make_mailbox()
    owner.put(Message("t"))
    d = owner.claim()
    assert d is not None
    report = make_mailbox().recover()
    assert not report
    d.ack()


def test_a_consumer_that_died_on_its_last_attempt_sends_the_message_to_dead(
    make_mailbox: Make, root: Path
) -> None:
    mb = make_mailbox(max_attempts=1)
    m = Message("t")
    mb.put(m)
    run_child(workers.claim_and_die, str(root), "Agent-1", "sigkill")
    report = mb.recover()
    assert report.dead == [m.id]
    (info,) = mb.list(State.DEAD)
    assert info.reason is not None and "consumer died during attempt 1 of 1" in info.reason["reason"]


def test_an_expired_lease_takes_the_message_from_a_hung_owner(make_mailbox: Make) -> None:
    owner = make_mailbox(lease=10.0)
    m = Message("t")
    owner.put(m)
    claimed_at = time.time()  # at or before the claim: leases are judged at chosen times
    hung = owner.claim()
    assert hung is not None
    reaper = make_mailbox(lease=10.0)
    assert not reaper.recover(now=claimed_at + 5)  # within the lease
    assert reaper.recover(now=time.time() + 11).expired == [m.id]
    again = reaper.claim()  # not blocked by the hung owner's lock on the old file
    assert again is not None and again.message == m and again.attempt == 2
    with pytest.raises(DeliveryLostError):
        hung.heartbeat()
    again.ack()


def test_the_hung_owners_late_ack_fails_clearly(make_mailbox: Make) -> None:
    owner = make_mailbox(lease=0.1)
    owner.put(Message("t"))
    hung = owner.claim()
    assert hung is not None
    make_mailbox(lease=0.1).recover(now=time.time() + 0.2)
    with pytest.raises(DeliveryLostError, match="lease expired"):
        hung.ack()
    assert len(os.listdir(owner.path / "new")) == 1


def test_a_heartbeat_keeps_the_lease(make_mailbox: Make) -> None:
    """Judged at chosen times (``recover(now=...)``), not by racing the clock: on a loaded machine a
    0.1 s sleep can outlast a 0.3 s lease."""
    owner = make_mailbox(lease=1.0)
    owner.put(Message("t"))
    claimed_at = time.time()
    d = owner.claim()
    assert d is not None
    other = make_mailbox(lease=1.0)
    assert not other.recover(now=claimed_at + 0.5)  # within the lease
    while time.time() < claimed_at + 0.6:  # the condition: a heartbeat well into the lease
        time.sleep(0.01)
    beat_at = time.time()
    d.heartbeat()
    # Past the first lease (1.0 s from the claim) but within the renewed one (1.0 s from the beat).
    assert not other.recover(now=claimed_at + 1.5)
    d.heartbeat()  # still ours
    assert other.recover(now=max(time.time(), beat_at) + 1.5).expired  # past the renewed lease
    with pytest.raises(DeliveryLostError):
        d.ack()


def test_a_hung_process_loses_its_message_to_recovery_and_another_consumer_gets_it(
    make_mailbox: Make, root: Path, tmp_path: Path
) -> None:
    mb = make_mailbox(lease=10.0)
    m = Message("t")
    mb.put(m)
    ready = tmp_path / "ready"
    p = spawn.Process(target=workers.claim_and_hold, args=(str(root), "Agent-1", str(ready)))
    p.start()
    try:
        eventually(ready.exists, "the other process to claim the message", 30)
        assert ready.read_text() == m.id
        assert not mb.recover()  # within the lease (10 s: however slow the handshake was)
        assert mb.recover(now=time.time() + 11).expired == [m.id]
        d = mb.claim()
        assert d is not None and d.message == m
        d.ack()
    finally:
        p.kill()
        p.join()


def test_stale_tmp_files_are_swept_and_fresh_ones_kept(make_mailbox: Make) -> None:
    mb = make_mailbox(tmp_max_age=60)
    old = mb.path / "tmp" / "half-written.json"
    old.write_bytes(b'{"partial')
    os.utime(old, (time.time() - 120, time.time() - 120))
    fresh = mb.path / "tmp" / "being-written.json"
    fresh.write_bytes(b"{")
    assert mb.recover().tmp_removed == ["half-written.json"]
    assert fresh.exists() and not old.exists()


def test_an_interrupted_steal_is_finished_by_the_next_recovery(make_mailbox: Make) -> None:
    mb = make_mailbox(tmp_max_age=0)
    m = Message("t")
    mb.put(m)
    d = mb.claim()
    assert d is not None
    # What a reaper killed right after detaching a hung owner's file leaves behind:
    os.rename(d.path, mb.path / "tmp" / (d.name + ".stolen"))
    report = mb.recover()
    assert report.expired == [m.id] and report.tmp_removed == []
    again = mb.claim()
    assert again is not None and again.message == m
    again.ack()
    assert os.listdir(mb.path / "tmp") == []


def test_a_foreign_file_left_in_processing_goes_back_to_new(mailbox: FileMailbox) -> None:
    (mailbox.path / "processing" / "by-hand.json").write_bytes(b'{"type": "t", "body": 1}')
    assert mailbox.recover().returned == ["by-hand.json"]
    d = mailbox.claim()
    assert d is not None and d.message.payload == 1
    d.ack()
