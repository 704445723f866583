"""Claimers of one mailbox in several processes spread over what is waiting: one that loses a race jumps
ahead (FileMailbox._jump_ahead), and still never says "nothing" while a due message waits, never loses
one, and a claimer alone keeps its exact order."""

from __future__ import annotations

from pathlib import Path

from hybridcomms import FileMailbox, Message


def test_a_claimer_that_lost_races_still_gets_every_remaining_message(tmp_path: Path) -> None:
    with (
        FileMailbox(tmp_path, "A", fsync="never", rescan_interval=60) as a,
        FileMailbox(tmp_path, "A", fsync="never", rescan_interval=60) as b,
    ):
        a.put_many([Message("t", i, id=f"m{i:02d}") for i in range(40)])
        assert b.claim() is not None  # b lists new/ (its index now holds the 39 others)
        for _ in range(20):  # a takes the 20 oldest of them: b's index still names them
            d = a.claim()
            assert d is not None
            d.ack()
        got = []
        while (d := b.claim()) is not None:
            got.append(d.message.payload)
            d.ack()
        assert sorted(got) == list(range(21, 40))  # every remaining one, none twice


def test_lost_races_to_a_held_lock_skip_without_losing(tmp_path: Path) -> None:
    with (
        FileMailbox(tmp_path, "A", fsync="never", rescan_interval=60) as a,
        FileMailbox(tmp_path, "A", fsync="never", rescan_interval=60) as b,
    ):
        a.put_many([Message("t", i, id=f"m{i:02d}") for i in range(30)])
        held = a.claim()  # the oldest, held by a
        assert held is not None and held.message.payload == 0
        got = []
        while (d := b.claim()) is not None:
            got.append(d.message.payload)
            d.ack()
        assert sorted(got) == list(range(1, 30))
        held.ack()


def test_a_claimer_alone_keeps_its_order(tmp_path: Path) -> None:
    with FileMailbox(tmp_path, "A", fsync="never") as mb:
        mb.put_many([Message("t", i, id=f"m{i:03d}") for i in range(200)])
        order = []
        while (d := mb.claim()) is not None:
            order.append(d.message.payload)
            d.ack()
        assert order == list(range(200))
