"""A claim that does not wait (``claim()``, ``Comms.process_one()``) returns a message that was put
before it, in this process, whatever else the process does: tools/bench_comms.py found three ways it
said "none" with messages in ``new/`` (and only saw them a listing interval later)."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from hybridcomms import FileMailbox, Message, State
from hybridcomms.backends.file import index as claim_index
from hybridcomms.backends.file import wakeup

pytestmark = pytest.mark.skipif(not wakeup._DIRECT, reason="needs inotify")


def test_other_mailboxes_unread_notifications_do_not_hide_an_arrival(root: Path) -> None:
    """A mailbox of the process that claims by listing leaves its notifications unread in the one
    kernel queue of the process (over 64 KiB here); another mailbox's claim read one 64 KiB chunk of
    them and said "none"."""
    with (
        FileMailbox(root, "Busy", fsync="never") as busy,
        FileMailbox(root, "Busy", fsync="never") as busy_writer,
        FileMailbox(root, "Quiet", fsync="never") as quiet,
        FileMailbox(root, "Quiet", fsync="never") as quiet_writer,
    ):
        assert busy.claim() is None and quiet.claim() is None  # both watch their new/ now
        busy_writer.put_many([Message("t", {}) for _ in range(1200)])  # ~100 KiB of notifications
        sent = quiet_writer.put(Message("t", {}))
        d = quiet.claim()
        assert d is not None and d.message.id == sent
        d.ack()


def test_a_listing_falling_due_during_the_claim_does_not_hide_an_arrival(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The claim read the kernel's queue (the arrival now in its index), then asked the index for a
    due name; the index said "relist first" (its interval ran out meanwhile) and the claim said
    "none". The clock here runs out exactly there."""
    with FileMailbox(root, "A", fsync="never") as mb, FileMailbox(root, "A", fsync="never") as writer:
        assert mb.claim() is None
        clock = [1000.0]
        monkeypatch.setattr(claim_index, "_monotonic", lambda: clock[0])
        mb._index.rescan(mb.folders.fd(State.NEW))  # listed at the fake clock's time: fresh
        waiter = mb._waiter
        assert waiter is not None
        real_poll = waiter.poll

        def poll_then_the_interval_ends() -> None:
            real_poll()
            clock[0] += 60.0  # the index is due for a relisting from now on

        monkeypatch.setattr(waiter, "poll", poll_then_the_interval_ends)
        sent = writer.put(Message("t", {}))
        d = mb.claim()
        assert d is not None and d.message.id == sent
        d.ack()


def test_another_thread_waiting_in_a_claim_does_not_hide_an_arrival(root: Path) -> None:
    """One thread of the process waits in a claim (it is the one reading the kernel's queue); another
    thread's claim that does not wait left the reading to it and said "none" before it had handed
    out the arrival (9 in 300 here)."""
    stop = threading.Event()
    with (
        FileMailbox(root, "Idle", fsync="never") as idle,
        FileMailbox(root, "B", fsync="never") as b,
        FileMailbox(root, "B", fsync="never") as writer,
    ):
        assert b.claim() is None

        def wait_in_claims() -> None:
            while not stop.is_set():
                idle.claim(timeout=0.5, cancel=stop)

        waiting = threading.Thread(target=wait_in_claims)
        waiting.start()
        try:
            missed = []
            for i in range(200):
                sent = writer.put(Message("t", {"i": i}))
                d = b.claim()
                if d is None:
                    missed.append(i)
                    d = b.claim(timeout=5)
                assert d is not None and d.message.id == sent
                d.ack()
            assert missed == []
        finally:
            stop.set()
            idle.wake()
            waiting.join(10)
