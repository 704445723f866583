"""I/O failures (injected, and a real full disk) leave a mailbox exactly as it was."""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hybridcomms import FileMailbox, MailboxIOError, Message, State

Make = Callable[..., FileMailbox]


def listing(mb: FileMailbox) -> dict[str, list[str]]:
    return {s.folder: sorted(os.listdir(mb.path / s.folder)) for s in State}


def failing(real: Callable[..., object], err: int, after: int = 0) -> Callable[..., object]:
    calls = {"n": 0}

    def fake(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] > after:
            raise OSError(err, os.strerror(err))
        return real(*args, **kwargs)

    return fake


def patch_os(monkeypatch: pytest.MonkeyPatch, call: str, err: int, after: int = 0) -> None:
    """Make ``os.<call>`` fail; "rename" also covers the library's no-replace rename (renameat2)."""
    if call == "rename":
        import hybridcomms._fs as fs

        monkeypatch.setattr(fs, "rename_noreplace", failing(fs.rename_noreplace, err, after))
    monkeypatch.setattr(os, call, failing(getattr(os, call), err, after))


@pytest.mark.parametrize("policy", ["always", "batch"])
@pytest.mark.parametrize(
    ("call", "err", "after"),
    [
        ("write", errno.ENOSPC, 0),  # the disk is full
        ("write", errno.EIO, 0),
        ("fsync", errno.EIO, 0),  # the file's fsync
        ("rename", errno.EIO, 0),
        ("open", errno.EMFILE, 0),
    ],
)
def test_a_failing_put_raises_and_leaves_nothing_in_new_or_tmp(
    make_mailbox: Make, monkeypatch: pytest.MonkeyPatch, policy: str, call: str, err: int, after: int
) -> None:
    mb = make_mailbox(fsync=policy)
    mb.put(Message("before"))
    before = listing(mb)
    patch_os(monkeypatch, call, err, after)
    with pytest.raises(MailboxIOError) as info:
        mb.put(Message("t", "x" * 1000))
    monkeypatch.undo()
    assert info.value.errno == err
    assert isinstance(info.value, OSError)
    assert listing(mb) == before
    d = mb.claim()  # still usable
    assert d is not None and d.message.topic == "before"
    d.ack()


def test_a_failing_commit_of_new_takes_the_message_back(
    make_mailbox: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    mb = make_mailbox(fsync="always")
    before = listing(mb)
    # put: fsync(file) succeeds, then fsync(new/) fails.
    monkeypatch.setattr(os, "fsync", failing(os.fsync, errno.EIO, after=1))
    with pytest.raises(MailboxIOError, match="commit of new/ failed"):
        mb.put(Message("t"))
    monkeypatch.undo()
    assert listing(mb) == before


@pytest.mark.parametrize(("call", "after"), [("write", 3), ("rename", 2), ("fsync", 0)])
def test_a_failing_put_many_leaves_nothing_behind(
    make_mailbox: Make, monkeypatch: pytest.MonkeyPatch, call: str, after: int
) -> None:
    import hybridcomms._fs as fs

    mb = make_mailbox(fsync="always")
    before = listing(mb)
    monkeypatch.setattr(fs, "syncfs", lambda fd: False)  # use the per-file fsync path so fsync can fail
    patch_os(monkeypatch, call, errno.EIO, after)
    with pytest.raises(MailboxIOError):
        mb.put_many([Message("t", i) for i in range(6)])
    monkeypatch.undo()
    assert listing(mb) == before


def test_a_claim_commits_nothing_so_a_failing_fsync_does_not_fail_it(
    make_mailbox: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A claim undone by a power loss leaves the message in new/, as recovery would: it needs no
    commit, at any fsync level (docs/guarantees.md), and a disk whose fsync fails does not stop it."""
    mb = make_mailbox(fsync="always")
    m = Message("t")
    mb.put(m)
    monkeypatch.setattr(os, "fsync", failing(os.fsync, errno.EIO))
    d = mb.claim()
    assert d is not None and d.message == m
    with pytest.raises(MailboxIOError, match="ack"):  # the ack's commit fails: it says so
        d.ack()
    monkeypatch.undo()
    assert mb.claim() is None  # the rename into done/ happened: not delivered again


def test_a_failing_ack_raises_and_the_message_is_not_lost(
    make_mailbox: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    mb = make_mailbox()
    m = Message("t")
    mb.put(m)
    d = mb.claim()
    assert d is not None
    patch_os(monkeypatch, "rename", errno.EIO)
    with pytest.raises(MailboxIOError, match="ack"):
        d.ack()
    monkeypatch.undo()
    assert mb.recover().returned == [m.id]
    again = mb.claim()
    assert again is not None and again.message == m


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    """A real 256 KiB filesystem (tmpfs), for a real ENOSPC. Needs root and mount(2)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_really_full_disk_refuses_puts_cleanly_and_keeps_every_message(tiny_disk: Path) -> None:
    with FileMailbox(tiny_disk, "Agent-1", fsync="always") as mb:
        accepted = []
        failures = 0
        for i in range(200):
            try:
                accepted.append(mb.put(Message("fill", {"i": i, "pad": "p" * 4000})))
            except MailboxIOError as exc:
                assert exc.errno == errno.ENOSPC
                failures += 1
        assert accepted and failures, "the disk should have filled up part way"
        assert os.listdir(mb.path / "tmp") == []
        got = []
        while (d := mb.claim()) is not None:
            got.append(d.message.id)
            d.ack()
        assert sorted(got) == sorted(accepted)
