"""What is committed at ``fsync="always"``: a settle (ack, nack, dead letter) commits its folder before
it returns (several may share one journal commit: the kernel's); a claim commits nothing, at any
level (docs/guarantees.md); and a process killed in the middle of committing acks loses and duplicates
nothing."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading
import time
from pathlib import Path

import pytest

from hybridcomms import Backoff, FileMailbox, Message, State

NO_WAIT = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)


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


# -- killed in the middle of committing acks ----------------------------------------------------------


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
def test_a_process_killed_while_committing_acks_loses_and_duplicates_nothing(
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
