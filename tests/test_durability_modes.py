"""Power-loss gaps and modes: new folders are committed in their parents, modes are exact whatever
the umask, a mailbox folder of another user is refused unless allowed, a policy nested thousands
deep is a PolicyError with file and line."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from hybridcomms import FileMailbox, Message, UnsafePathError
from hybridcomms._locking import hold_lock_file
from hybridcomms.policy import Policy, PolicyError


@pytest.fixture
def loose_umask() -> Iterator[None]:
    old = os.umask(0o002)
    try:
        yield
    finally:
        os.umask(old)


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def test_created_folders_and_lock_files_get_their_modes_whatever_the_umask(
    tmp_path: Path, loose_umask: None
) -> None:
    root = tmp_path / "deep" / "root"
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        assert mode(root) == 0o700
        assert mode(mb.path) == 0o700
        assert all(mode(mb.path / s) == 0o700 for s in ("tmp", "new", "processing", "done", "dead"))
    with hold_lock_file(tmp_path / "x.lock"):
        pass
    assert mode(tmp_path / "x.lock") == 0o660
    os.umask(0o077)
    with FileMailbox(tmp_path / "g", "A", fsync="never", dir_mode=0o770) as mb:
        assert mode(mb.path / "new") == 0o770


def test_every_created_folder_is_committed_in_its_parent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[tuple[int, int]] = []
    real = os.fsync

    def record(fd: int) -> None:
        st = os.fstat(fd)
        synced.append((st.st_dev, st.st_ino))
        real(fd)

    monkeypatch.setattr(os, "fsync", record)
    root = tmp_path / "parent" / "root"
    (tmp_path / "parent").mkdir()
    FileMailbox(root, "Agent-1", fsync="always").close()
    ident = {(os.stat(p).st_dev, os.stat(p).st_ino) for p in (tmp_path / "parent", root, root / "Agent-1")}
    assert ident <= set(synced)


def test_a_failed_put_withdrawal_is_committed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from hybridcomms import MailboxIOError, Message

    mb = FileMailbox(tmp_path / "r", "A", fsync="always")
    new_ino = os.stat(mb.path / "new").st_ino
    calls: list[int] = []
    real = os.fsync

    def fsync(fd: int) -> None:
        ino = os.fstat(fd).st_ino
        calls.append(ino)
        if ino == new_ino and calls.count(new_ino) == 1:
            raise OSError(errno.EIO, "injected")  # the commit of new/ fails
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(MailboxIOError):
        mb.put(Message("t"))
    assert calls.count(new_ino) == 2  # and the removal of the withdrawn file was committed
    assert os.listdir(mb.path / "new") == []
    mb.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")
def test_a_mailbox_folder_of_another_user_is_refused_unless_allowed(tmp_path: Path) -> None:
    root = tmp_path / "r"
    FileMailbox(root, "A", fsync="never").close()
    os.chown(root / "A" / "new", 12345, 12345)
    with pytest.raises(UnsafePathError, match="another user"):
        FileMailbox(root, "A", fsync="never")
    FileMailbox(root, "A", fsync="never", allow_other_owner=True).close()


def test_a_policy_nested_thousands_deep_is_a_policy_error_with_its_line(tmp_path: Path) -> None:
    p = tmp_path / "policy.toml"
    p.write_text("default = 'durable'\n\nx = " + "[" * 20000 + "]" * 20000 + "\n")
    with pytest.raises(PolicyError) as info:
        Policy.load(p)
    assert "policy.toml:3" in str(info.value) and "nested too deeply" in str(info.value)


def test_a_policy_path_that_is_a_fifo_is_an_error_not_a_hang(tmp_path: Path) -> None:
    p = tmp_path / "policy.toml"
    os.mkfifo(p)
    with pytest.raises(PolicyError, match="not a regular file"):
        Policy.load(p)


def test_writers_follow_a_group_mailbox_so_group_members_can_read(tmp_path: Path, loose_umask: None) -> None:
    root = tmp_path / "shared"
    root.mkdir()
    os.chmod(root, 0o2770)  # a group root (setgid, as a Dream.OS group setup has it)
    with FileMailbox(root, "Agent-1", fsync="never") as mb:  # no modes given
        assert mode(mb.path / "new") == 0o770
        mb.put(Message("t"))
    [name] = os.listdir(root / "Agent-1" / "new")
    assert mode(root / "Agent-1" / "new" / name) == 0o660  # readable by the group
    out = subprocess.run(
        [sys.executable, "-m", "hybridcomms", "--root", str(root), "send", "--to", "Agent-1", "--topic", "t"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert {mode(p) for p in (root / "Agent-1" / "new").iterdir()} == {0o660}
    private = tmp_path / "private"
    with FileMailbox(private, "A", fsync="never") as mb:
        mb.put(Message("t"))
        assert mode(mb.path / "new") == 0o700
        assert {mode(p) for p in (mb.path / "new").iterdir()} == {0o600}
