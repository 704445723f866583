"""``done_retention`` of the file mailbox: the trim keeps about the last N acked messages, touches
nothing that is not an acked message of ours, runs one at a time, costs a listing now and then (not
per ack), and a trimmer killed at any point leaves only acked files removed."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
from pathlib import Path
from typing import Any

import pytest
from waiting import eventually

from hybridcomms import FileMailbox, Message, State
from hybridcomms._locking import LOCK_TRY, flock
from hybridcomms.backends.file import retention as retention_mod
from hybridcomms.backends.file.retention import Retention


def acked_name(i: int, msg_id: str | None = None) -> str:
    """A name of ours in done/, due at second ``i`` of 2026-01-01 (older for a smaller ``i``)."""
    return f"2M.20260101T{i // 3600:02d}{i // 60 % 60:02d}{i % 60:02d}000000Z.{msg_id or f'm{i}'}.a1.json"


def fill(done: Path, count: int, start: int = 0) -> list[str]:
    names = [acked_name(i) for i in range(start, start + count)]
    for name in names:
        (done / name).write_bytes(b"{}")
    return names


def done_dir(tmp_path: Path, **options: Any) -> tuple[FileMailbox, Path]:
    mb = FileMailbox(tmp_path / "root", "A", fsync="never", **options)
    return mb, mb.path / "done"


def test_the_default_keeps_ten_thousand_and_the_option_is_checked(tmp_path: Path) -> None:
    with FileMailbox(tmp_path, "A", fsync="never") as mb:
        assert mb.done_retention == 10_000
    for bad, error in ((-1, ValueError), (1.5, TypeError), (True, TypeError), ("5", TypeError)):
        with pytest.raises(error):
            FileMailbox(tmp_path, "B", fsync="never", done_retention=bad)


def test_with_zero_the_ack_removes_the_file_and_nothing_else(tmp_path: Path) -> None:
    mb, done = done_dir(tmp_path, done_retention=0)
    with mb:
        for i in range(3):
            mb.put(Message("t", {"i": i}, id=f"m{i}"))
        d1, d2 = mb.claim(), mb.claim()
        assert d1 is not None and d2 is not None
        d1.ack()
        assert os.listdir(done) == [] and os.listdir(mb.path / "processing") == [d2.name]
        d2.nack(delay=0)
        assert sorted(os.listdir(mb.path / "new")) and len(os.listdir(mb.path / "new")) == 2
        assert mb.stats().states[State.DONE].count == 0


def test_with_none_every_acked_file_stays(tmp_path: Path) -> None:
    mb, done = done_dir(tmp_path, done_retention=None)
    with mb:
        fill(done, 50)
        mb.put_many([Message("t", {}, id=f"x{i}") for i in range(40)])
        while (d := mb.claim()) is not None:
            d.ack()
        assert len(os.listdir(done)) == 90
        assert mb.retention.trim(mb.folders.fd(State.DONE)) == 0


def test_the_trim_removes_the_oldest_beyond_the_count(tmp_path: Path) -> None:
    mb, done = done_dir(tmp_path, done_retention=10)
    with mb:
        names = fill(done, 25)
        os.rename(done / names[0], done / (names[0] + ".1"))  # a colliding ack's name is ours too
        assert mb.retention.trim(mb.folders.fd(State.DONE)) == 15
        assert sorted(os.listdir(done)) == sorted(names[15:])


def test_the_trim_never_touches_what_is_not_an_acked_message_of_ours(tmp_path: Path) -> None:
    mb, done = done_dir(tmp_path, done_retention=2)
    outside = tmp_path / "outside.json"
    outside.write_bytes(b"precious")
    elsewhere = tmp_path / "hardlinked.json"
    elsewhere.write_bytes(b"also precious")
    with mb:
        names = fill(done, 6, start=100)
        # Hostile entries, all with names of ours and older than every real one, and foreign names.
        hostile = [acked_name(i) for i in range(5)]
        os.symlink(outside, done / hostile[0])
        os.mkdir(done / hostile[1])
        os.mkfifo(done / hostile[2])
        os.link(elsewhere, done / hostile[3])
        (done / hostile[4]).mkdir()
        (done / hostile[4] / acked_name(0)).write_bytes(b"inside a folder")
        foreign = ["notes.txt", "2M.bad\x1b[2J.a1.json", ".hidden", "2M.20260101T000000000000Z.x.a1.json.tmp"]
        for name in foreign:
            (done / name).write_bytes(b"x")
        (done / os.fsdecode(b"\xff\xfe.a1.json")).write_bytes(b"x")
        mb.retention.trim(mb.folders.fd(State.DONE))
        left = set(os.listdir(done))
        # The hard link is a regular file under a name of ours: its name in done/ may go, the file
        # keeps its other name (below); every other entry stays.
        assert set(hostile) - {hostile[3]} <= left and set(foreign) <= left
        assert os.fsdecode(b"\xff\xfe.a1.json") in left
        # The hostile names counted (they sort oldest) but were passed over: of the 9 oldest beyond
        # the count, only the 4 real ones went.
        assert left & set(names) == set(names[4:])
        assert outside.read_bytes() == b"precious" and elsewhere.read_bytes() == b"also precious"
        assert (done / hostile[4] / acked_name(0)).read_bytes() == b"inside a folder"


def test_one_trim_at_a_time_a_busy_lock_skips(tmp_path: Path) -> None:
    mb, done = done_dir(tmp_path, done_retention=5)
    with mb:
        fill(done, 20)
        other = os.open(done, os.O_RDONLY | os.O_DIRECTORY)
        try:
            flock(other, LOCK_TRY)  # another trimmer (any process) at work
            assert mb.retention.trim(mb.folders.fd(State.DONE)) == 0
            assert len(os.listdir(done)) == 20
        finally:
            os.close(other)
        assert mb.retention.trim(mb.folders.fd(State.DONE)) == 15


def test_acks_look_at_done_only_now_and_then(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    looks: list[int] = []
    real = Retention.trim

    def counting(self: Retention, done_fd: int) -> int:
        looks.append(1)
        return real(self, done_fd)

    monkeypatch.setattr(Retention, "trim", counting)
    mb, done = done_dir(tmp_path, done_retention=8)
    with mb:
        assert mb.retention.every == 32
        mb.put_many([Message("t", {}, id=f"m{i}") for i in range(200)])
        for _ in range(200):
            d = mb.claim()
            assert d is not None
            d.ack()
        assert 6 <= len(looks) <= 7  # 200 acks, a look every 32 (from a random start)
        assert 8 <= len(os.listdir(done)) <= 8 + 32


def test_short_lived_handles_trim_together(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Handles that ack one message each (the CLI's recv) still keep done/ bounded: each starts its
    count at a random point, so about one in `every` of their acks looks."""
    monkeypatch.setattr(retention_mod, "random", random.Random(7))  # the same points every run
    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never", done_retention=None) as mb:  # only the handles trim
        mb.put_many([Message("t", {}, id=f"m{i}") for i in range(200)])
        handles = [Retention(4) for _ in range(200)]
        done_fd = mb.folders.fd(State.DONE)
        for handle in handles:  # what 200 handles' first acks do
            d = mb.claim()
            assert d is not None
            d.ack()
            handle.acked(done_fd)
        assert sum(h._left == h.every for h in handles) >= 2  # some of them looked
        assert len(os.listdir(mb.path / "done")) < 100


def test_a_failing_trim_never_fails_the_ack(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(self: Retention, done_fd: int) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(Retention, "trim", broken)
    mb, done = done_dir(tmp_path, done_retention=1)
    with mb:
        mb.put_many([Message("t", {}, id=f"m{i}") for i in range(40)])
        for _ in range(40):
            d = mb.claim()
            assert d is not None
            d.ack()
        assert len(os.listdir(done)) == 40


# -- a trimmer killed at chosen points --------------------------------------------------------------


def _trim_and_die(root: str, after: int) -> None:
    """Trim, and SIGKILL this process after ``after`` files were removed (or before the first)."""
    count = [0]
    real = retention_mod._remove_acked

    def dying(fd: int, name: str) -> bool:
        if count[0] == after:
            os.kill(os.getpid(), signal.SIGKILL)
        count[0] += 1
        return real(fd, name)

    retention_mod._remove_acked = dying  # type: ignore[assignment]
    mb = FileMailbox(root, "A", fsync="never", done_retention=10)
    mb.retention.trim(mb.folders.fd(State.DONE))


@pytest.mark.parametrize("after", [0, 7])
def test_a_trimmer_killed_mid_trim_removes_only_acked_files(tmp_path: Path, after: int) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never", done_retention=10) as mb:
        mb.put_many([Message("t", {}, id=f"w{i}") for i in range(5)])
        held = mb.claim()
        assert held is not None
        done = mb.path / "done"
        names = fill(done, 30)
        proc = mp.get_context("fork").Process(target=_trim_and_die, args=(str(root), after))
        proc.start()
        proc.join(20)
        assert proc.exitcode == -signal.SIGKILL
        left = sorted(os.listdir(done))
        assert left == sorted(names)[after:]  # the oldest `after` went, in order, and nothing else
        assert len(os.listdir(mb.path / "new")) == 4 and os.listdir(mb.path / "processing") == [held.name]
        # The lock died with the trimmer: the next trim finishes the job.
        assert mb.retention.trim(mb.folders.fd(State.DONE)) == 20 - after
        assert sorted(os.listdir(done)) == sorted(names)[20:]
        held.ack()


def test_top_counts_acks_by_what_entered_done_not_by_its_size(tmp_path: Path) -> None:
    """With done/ trimmed its size stays flat: top's acks/s counts the files that entered it."""
    import time

    from hybridcomms.cli.top import _snapshot, top_lines

    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never", done_retention=None) as mb:
        names = fill(mb.path / "done", 5)
        before = _snapshot(root)
        # After the filled files' change time (the kernel's clock for it is coarse): wait it out.
        since = max(os.stat(mb.path / "done" / n).st_ctime for n in names) + 0.001
        while time.time() < since + 0.02:
            time.sleep(0.002)
        mb.put_many([Message("t", {}, id=f"m{i}") for i in range(3)])
        for _ in range(3):
            d = mb.claim()
            assert d is not None
            d.ack()
        for name in sorted(os.listdir(mb.path / "done"))[:3]:  # a trim of the same size meanwhile
            os.unlink(mb.path / "done" / name)
        now = _snapshot(root, since)
    assert now["A"]["done"]["count"] == before["A"]["done"]["count"] == 5
    assert now["A"]["acked_since"] == 3
    assert top_lines(before, now, 1.5)[1].split()[-1] == "2.0"


def test_the_watcher_reports_an_ack_that_removes_the_file(tmp_path: Path) -> None:
    """With done_retention=0 the ack is a removal from processing/, not a move: still "acked"."""
    import threading

    from hybridcomms.watcher import MailboxEvent, MailboxWatcher

    root = tmp_path / "root"
    seen: list[MailboxEvent] = []
    lock = threading.Lock()

    def record(event: MailboxEvent) -> None:
        with lock:
            seen.append(event)

    def kinds() -> list[str]:
        with lock:
            return [e.kind for e in seen]

    with (
        FileMailbox(root, "A", fsync="never", done_retention=0) as mb,
        MailboxWatcher(root, on_event=record, rescan_every=30, recover_every=0),
    ):
        m = Message("task.x", {})
        mb.put(m)
        d = mb.claim()
        assert d is not None
        d.ack()
        eventually(
            kinds, "the watcher's three events", until=lambda k: k == ["delivered", "claimed", "acked"]
        )
    assert kinds() == ["delivered", "claimed", "acked"]
    acked = seen[-1]
    assert (acked.id, acked.state) == (m.id, "done")


def test_after_a_look_each_ack_removes_one_of_the_oldest(tmp_path: Path) -> None:
    """done/ stays at N between looks: each ack frees the inode the next put needs."""
    mb, done = done_dir(tmp_path, done_retention=None)
    with mb:
        names = fill(done, 60)
        handle = Retention(20)  # every = 32
        done_fd = mb.folders.fd(State.DONE)
        assert handle.trim(done_fd) == 40 and sorted(os.listdir(done)) == names[40:]
        handle._left = 1000  # no other look in this test
        for i in range(10):
            (done / acked_name(1000 + i)).write_bytes(b"{}")  # an ack of another handle or ours
            handle.acked(done_fd)
            assert len(os.listdir(done)) == 20
        left = set(os.listdir(done))
        assert {acked_name(1000 + i) for i in range(10)} <= left  # the newest stay
        assert len(left & set(names[40:])) == 10  # ten of the twenty oldest went


def test_an_entry_swapped_for_a_link_after_the_look_is_left_alone(tmp_path: Path) -> None:
    mb, done = done_dir(tmp_path, done_retention=None)
    target = tmp_path / "precious.json"
    target.write_bytes(b"precious")
    with mb:
        names = fill(done, 40)
        handle = Retention(8)
        done_fd = mb.folders.fd(State.DONE)
        handle.trim(done_fd)  # 32 removed, the remaining 8 picked for the next acks
        handle._left = 1000
        for name in names[32:]:
            os.unlink(done / name)
            os.symlink(target, done / name)  # a co-tenant's links where the picks were
        for _ in range(8):
            handle.acked(done_fd)
        assert sorted(os.listdir(done)) == names[32:]  # every link still there
        assert target.read_bytes() == b"precious"


@pytest.mark.parametrize("keep", [1, 3, 7, 40])
def test_the_newest_acked_always_stay_whatever_the_first_look(tmp_path: Path, keep: int) -> None:
    """After every ack, the last ``keep`` acked are in done/ (never fewer, never an older one in their
    place), for every first look a handle may draw (it starts at a random ack): each ack removes the
    oldest (a shuffled pick once removed a message acked just before, keeping an older one)."""
    every = max(keep // 4, 32)
    for first in range(1, min(every, 64) + 1, 5):
        mb, _done = done_dir(tmp_path / f"k{keep}-{first}", done_retention=keep)
        with mb:
            mb.retention._left = first
            mb.put_many([Message("t.x", {"n": i}) for i in range(keep + 90)])
            acked: list[str] = []
            for _ in range(keep + 90):
                d = mb.claim()
                assert d is not None
                d.ack()
                acked.append(d.message.id)
                kept = {info.id for info in mb.list(State.DONE)}
                newest = set(acked[-keep:])
                assert newest <= kept, (first, len(acked), sorted(newest - kept))
                assert len(kept) <= keep + every + 1
