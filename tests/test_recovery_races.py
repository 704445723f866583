"""Recovery never makes a second copy: two recoverers at once, a recoverer killed at any step of a
steal, a claim onto a name already taken, and failures while dead-lettering."""

from __future__ import annotations

import errno
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import workers

from hybridcomms import DeliveryLostError, FileMailbox, MailboxIOError, Message
from hybridcomms._fs import O_DIR
from hybridcomms._locking import drop, try_lock
from hybridcomms.backends.base import RecoveryReport

Make = Callable[..., FileMailbox]
STATES = ("tmp", "new", "processing", "done", "dead")


def copies(mb: FileMailbox, msg_id: str) -> dict[str, list[str]]:
    """Every file that holds the message ``msg_id`` (reason files not counted)."""
    out: dict[str, list[str]] = {}
    for state in STATES:
        for name in os.listdir(mb.path / state):
            if msg_id in name and not name.endswith(".reason.json") and not name.endswith(".copy"):
                out.setdefault(state, []).append(name)
    return out


def test_a_recovery_pass_finding_another_one_running_does_nothing(make_mailbox: Make) -> None:
    mb = make_mailbox()
    mb.put(Message("t"))
    d = mb.claim()
    assert d is not None
    d._release()  # the owner "died": its lock is free
    fd = os.open(mb.path / "processing", O_DIR)  # another recoverer holds the mailbox
    try:
        assert try_lock(fd)
        report = mb.recover()
        assert report.busy and not report
    finally:
        drop(fd)
    assert mb.recover().returned == [d.message.id]


@pytest.mark.parametrize("rounds", [40])
def test_two_recoverers_at_the_same_moment_return_a_hung_consumers_message_once(
    root: Path, make_mailbox: Make, rounds: int
) -> None:
    owner = make_mailbox(lease=0.001)
    recoverers = [make_mailbox(lease=0.001) for _ in range(2)]
    for i in range(rounds):
        m = Message("t", i)
        owner.put(m)
        d = owner.claim()
        assert d is not None  # held: a hung (alive) owner
        time.sleep(0.002)  # its lease of 1 ms runs out
        gate = threading.Barrier(2)
        reports: list[RecoveryReport] = []

        def run(mb: FileMailbox, gate: threading.Barrier, reports: list[RecoveryReport]) -> None:
            gate.wait()
            reports.append(mb.recover())

        threads = [threading.Thread(target=run, args=(mb, gate, reports)) for mb in recoverers]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sum(len(r.expired) for r in reports) == 1
        assert list(copies(owner, m.id)) == ["new"] and len(copies(owner, m.id)["new"]) == 1
        with pytest.raises(DeliveryLostError):
            d.ack()  # the hung owner wakes up: its claim was taken
        again = owner.claim()
        assert again is not None and again.message == m
        again.ack()
        assert owner.claim() is None


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after_detach", "after_copy", "after_replace", "after_return"])
def test_a_recoverer_killed_at_any_step_of_a_steal_leaves_exactly_one_copy(
    root: Path, make_mailbox: Make, point: str
) -> None:
    mb = make_mailbox(lease=0.001, fsync="always")
    m = Message("t", point)
    mb.put(m)
    hung = mb.claim()  # held by this process: a live, hung owner
    assert hung is not None
    ctx = multiprocessing.get_context("spawn")
    p = ctx.Process(target=workers.recover_and_die_at, args=(str(root), mb.agent_id, point))
    p.start()
    p.join(60)
    assert p.exitcode == -9, f"the recoverer was to be killed at {point}, exit code {p.exitcode}"
    found = copies(mb, m.id)
    assert sum(len(v) for v in found.values()) == 1, found
    for _ in range(3):  # later passes (the next ones see the same message wherever it was left)
        mb.recover()
        found = copies(mb, m.id)
        assert sum(len(v) for v in found.values()) == 1, found
    assert list(found) == ["new"]
    d = mb.claim()
    assert d is not None and d.message == m
    d.ack()
    assert mb.claim() is None
    assert [n for n in os.listdir(mb.path / "tmp") if not n.endswith(".copy")] == []


def test_a_claim_never_replaces_a_file_already_in_processing(mailbox: FileMailbox) -> None:
    m = Message("t", "first")
    mailbox.put(m)
    [name] = os.listdir(mailbox.path / "new")
    held = mailbox.claim()
    assert held is not None
    # A hand-made copy of the claimed file, named as the claim's source was:
    (mailbox.path / "new" / name).write_bytes((mailbox.path / "processing" / held.name).read_bytes())
    assert mailbox.claim() is None  # the copy is refused (to dead/), the held claim stays
    assert (mailbox.path / "processing" / held.name).exists()
    assert (mailbox.path / "dead" / name).exists()
    reason = (mailbox.path / "dead" / (name + ".reason.json")).read_text()
    assert "already in processing/" in reason
    held.ack()


def test_a_failed_dead_lettering_leaves_no_reason_file_anywhere(
    mailbox: FileMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    import hybridcomms._fs as fs

    mailbox.put(Message("t"))
    d = mailbox.claim()
    assert d is not None
    real = fs.rename_noreplace
    calls = {"n": 0}

    def second_rename_fails(*args: object, **kw: object) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the reason file is in dead/, the message move fails
            raise OSError(errno.EIO, "injected")
        real(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(fs, "rename_noreplace", second_rename_fails)
    with pytest.raises(MailboxIOError) as info:
        d.dead("by hand")
    assert info.value.errno == errno.EIO
    monkeypatch.undo()
    assert os.listdir(mailbox.path / "dead") == []
    assert os.listdir(mailbox.path / "tmp") == []
    assert len(os.listdir(mailbox.path / "processing")) == 1  # still there: recovery gives it back


def test_recover_raises_mailbox_io_error_when_the_disk_fails(
    mailbox: FileMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    mailbox.put(Message("t"))
    d = mailbox.claim()
    assert d is not None
    d._release()
    real = os.listdir

    def failing(*args: object, **kw: object) -> list[str]:
        raise OSError(errno.EIO, "injected")

    monkeypatch.setattr(os, "listdir", failing)
    with pytest.raises(MailboxIOError):
        mailbox.recover()
    monkeypatch.setattr(os, "listdir", real)
    assert len(mailbox.recover().returned) == 1


@pytest.mark.parametrize("kind", ["dir", "symlink", "fifo", "dangling"])
@pytest.mark.parametrize("where", ["tmp-stolen", "tmp-old", "processing"])
def test_odd_entries_where_recovery_looks_never_make_it_raise(
    tmp_path: Path, make_mailbox: Make, kind: str, where: str
) -> None:
    mb = make_mailbox(tmp_max_age=0)
    good = Message("good")
    mb.put(good)
    d = mb.claim()
    assert d is not None
    d._release()  # a dead consumer's message to return, beside the odd entry
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep")
    name = {
        "tmp-stolen": "2M.20260101T000000000000Z.x.a1.json.stolen",
        "tmp-old": "junk",
        "processing": "2M.20260101T000000000000Z.y.a1.json",
    }[where]
    folder = mb.path / ("processing" if where == "processing" else "tmp")
    entry = folder / name
    if kind == "dir":
        entry.mkdir()
    elif kind == "symlink":
        entry.symlink_to(outside / "precious")
    elif kind == "fifo":
        os.mkfifo(entry)
    else:
        entry.symlink_to(outside / "missing")
    old = time.time() - 3600
    os.utime(entry, (old, old), follow_symlinks=False)
    report = mb.recover()
    assert report.returned == [good.id]
    assert (outside / "precious").read_text() == "keep"
    report2 = mb.recover()  # and again: nothing raises, nothing loops
    assert not report2.returned
    again = mb.claim()
    assert again is not None and again.message == good
    again.ack()
