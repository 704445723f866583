"""Folder fsyncs shared by threads (a group commit), and claims that commit nothing.

A settle (ack, nack, dead letter) at ``fsync="always"`` returns only once an fsync of its folder that
started after its move has ended; threads acking at once share those fsyncs. A claim commits nothing
at any level (docs/guarantees.md)."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from hybridcomms import Backoff, FileMailbox, Message, State
from hybridcomms._fs import _SharedFsync

NO_WAIT = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)


class Clock:
    """A logical clock: every event gets the next tick."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = 0

    def tick(self) -> int:
        with self._lock:
            self._now += 1
            return self._now


def test_every_caller_is_covered_by_an_fsync_that_started_after_its_change(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    fsyncs: list[tuple[int, int]] = []  # (started, ended)

    def slow_fsync(fd: int) -> None:
        started = clock.tick()
        time.sleep(0.005)
        fsyncs.append((started, clock.tick()))

    monkeypatch.setattr(os, "fsync", slow_fsync)
    shared = _SharedFsync()
    threads = 8
    barrier = threading.Barrier(threads)
    seen: list[tuple[int, int]] = []  # (changed, returned) per caller

    def caller() -> None:
        barrier.wait()
        for _ in range(3):
            changed = clock.tick()
            shared.sync(-1)
            seen.append((changed, clock.tick()))

    workers = [threading.Thread(target=caller) for _ in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(10)
    assert len(seen) == threads * 3
    for changed, returned in seen:
        assert any(changed < started and ended < returned for started, ended in fsyncs), (changed, returned)
    assert len(fsyncs) < threads * 3  # shared: fewer fsyncs than callers


def test_a_failed_fsync_raises_to_its_caller_and_the_next_call_syncs_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []

    def failing_once(fd: int) -> None:
        calls.append(fd)
        if len(calls) == 1:
            raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", failing_once)
    shared = _SharedFsync()
    with pytest.raises(OSError):
        shared.sync(3)
    shared.sync(3)
    assert calls == [3, 3] and shared.finished == 2 and not shared.running


def test_a_claim_commits_nothing_and_an_ack_commits_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FileMailbox(tmp_path, "A", fsync="always") as mb:
        mb.put(Message("t", {}))
        synced: list[int] = []
        real = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
        d = mb.claim()
        assert d is not None and synced == []
        d.ack()
        assert synced == [mb.folders.fd(State.DONE)]


def test_with_retention_zero_the_ack_commits_processing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FileMailbox(tmp_path, "A", fsync="always", done_retention=0) as mb:
        mb.put(Message("t", {}))
        d = mb.claim()
        assert d is not None
        synced: list[int] = []
        real = os.fsync
        monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real(fd))[1])
        d.ack()
        assert synced == [mb.folders.fd(State.PROCESSING)]
        assert os.listdir(mb.path / "processing") == [] and os.listdir(mb.path / "done") == []


def test_threads_acking_at_once_share_the_commits_of_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FileMailbox(tmp_path, "A", fsync="always", done_retention=None) as mb:
        mb.put_many([Message("t", {"i": i}, id=f"m{i}") for i in range(32)])
        deliveries = [mb.claim() for _ in range(32)]
        done_fd = mb.folders.fd(State.DONE)
        synced: list[int] = []
        real = os.fsync

        def slow(fd: int) -> None:
            synced.append(fd)
            time.sleep(0.01)  # a disk's commit: long enough for the others to queue behind it
            real(fd)

        monkeypatch.setattr(os, "fsync", slow)
        barrier = threading.Barrier(8)

        def acker(k: int) -> None:
            barrier.wait()
            for d in deliveries[k::8]:
                assert d is not None
                d.ack()

        workers = [threading.Thread(target=acker, args=(k,)) for k in range(8)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(10)
        assert len(os.listdir(mb.path / "done")) == 32
        assert set(synced) == {done_fd} and len(synced) < 32


# -- killed in the middle of a shared commit ----------------------------------------------------------


def _ack_and_die(root: str, die_at: int, before: bool) -> None:
    """Four threads ack; the process is SIGKILLed at its ``die_at``-th fsync (before or after it)."""
    calls = [0]
    real = os.fsync
    lock = threading.Lock()

    def dying(fd: int) -> None:
        with lock:
            calls[0] += 1
            n = calls[0]
        if n == die_at and before:
            os.kill(os.getpid(), signal.SIGKILL)
        real(fd)
        if n == die_at:
            os.kill(os.getpid(), signal.SIGKILL)

    os.fsync = dying  # type: ignore[assignment]
    mb = FileMailbox(root, "A", fsync="always", done_retention=None)
    deliveries = [mb.claim() for _ in range(20)]

    def acker(k: int) -> None:
        for d in deliveries[k::4]:
            assert d is not None
            d.ack()

    workers = [threading.Thread(target=acker, args=(k,)) for k in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    time.sleep(30)  # not reached: killed above


@pytest.mark.parametrize(("die_at", "before"), [(1, True), (3, False)])
def test_a_process_killed_in_a_shared_commit_loses_and_duplicates_nothing(
    tmp_path: Path, die_at: int, before: bool
) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="always", done_retention=None) as mb:
        mb.put_many([Message("t", {"i": i}, id=f"m{i}") for i in range(20)])
    proc = mp.get_context("fork").Process(target=_ack_and_die, args=(str(root), die_at, before))
    proc.start()
    proc.join(20)
    assert proc.exitcode == -signal.SIGKILL
    with FileMailbox(root, "A", fsync="always", done_retention=None, backoff=NO_WAIT) as mb:
        mb.recover()  # the killed process's claims come back (its locks died with it)
        seen: list[str] = []
        while (d := mb.claim()) is not None:
            seen.append(d.message.id)
            d.ack()
        done = [info.id for info in mb.list(State.DONE)]
        assert sorted(done) == sorted(f"m{i}" for i in range(20))  # each once
        assert len(seen) + len(set(done) - set(seen)) == 20
        assert os.listdir(mb.path / "processing") == [] and os.listdir(mb.path / "new") == []
