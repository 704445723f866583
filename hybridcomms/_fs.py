"""Filesystem steps that durability depends on, in one place.

Notes for anyone touching this:
- A directory entry (a rename, a create) survives power loss only once the *directory* is
  fsynced; a file's bytes only once the *file* is fsynced. CPython's Maildir does the first and
  not the second; we do both.
- A rename is one journal transaction on ext4, xfs and btrfs, so fsyncing the destination folder
  commits both sides of a move. hybridcomms relies on this (see docs/guarantees.md).
- ``syncfs`` commits every dirty file of the filesystem with one barrier: the group commit of
  ``put_many``. Where it does not exist, each file is fsynced instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import tempfile
import threading
import time
from enum import Enum

from ._names import REASON_SUFFIX

__all__ = [
    "FsyncPolicy",
    "current_umask",
    "free_name",
    "open_dir",
    "read_all",
    "replace_atomically",
    "syncfs",
    "write_new_file",
]

O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_READ_MSG = os.O_RDONLY | O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
O_CREATE_MSG = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class FsyncPolicy(str, Enum):
    """How hard each state change is pushed to the disk.

    - ``always``: every call returns only after its change is on stable storage (file fsync
      before a message becomes visible, directory fsync after every move).
    - ``batch``: a message's bytes are fsynced before it becomes visible (no torn file after a
      power loss), but folder changes are committed in groups: by the first operation after
      ``batch_interval`` seconds, by ``flush()``/``close()``, and otherwise by the filesystem's own
      periodic commit (5 s on ext4).
    - ``never``: no fsync at all. Survives kill -9 (the kernel has everything), not power loss.
    """

    ALWAYS = "always"
    BATCH = "batch"
    NEVER = "never"


def open_dir(path: str, *, dir_fd: int | None = None) -> int:
    """Open a folder for ``*at`` calls and fsync, refusing to follow a symlink at the last step."""
    return os.open(path, O_DIR | O_NOFOLLOW, dir_fd=dir_fd)


_libc: ctypes.CDLL | None = None
_libc_lock = threading.Lock()


def _get_libc() -> ctypes.CDLL | None:
    global _libc
    with _libc_lock:
        if _libc is None:
            name = ctypes.util.find_library("c")
            try:
                _libc = ctypes.CDLL(name, use_errno=True)
            except OSError:
                return None
        return _libc


def syncfs(fd: int) -> bool:
    """Commit the whole filesystem holding ``fd``. False where syncfs(2) is not available."""
    libc = _get_libc()
    fn = getattr(libc, "syncfs", None) if libc is not None else None
    if fn is None:
        return False
    if fn(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


def write_new_file(dir_fd: int, name: str, data: bytes, mode: int, *, sync: bool) -> None:
    """Create ``name`` under ``dir_fd`` exclusively and write all of ``data``.

    On any failure the partial file is removed and the error re-raised: nothing is left behind.
    """
    fd = os.open(name, O_CREATE_MSG, mode, dir_fd=dir_fd)
    try:
        written = os.write(fd, data)
        if written < len(data):  # rare for a regular file: finish the rest
            view = memoryview(data)[written:]
            while view:
                written = os.write(fd, view)
                if written <= 0:  # pragma: no cover - a regular file never does this
                    raise OSError(errno.EIO, "short write")
                view = view[written:]
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        _unlink_quietly(dir_fd, name)
        raise
    os.close(fd)


def _unlink_quietly(dir_fd: int, name: str) -> None:
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


class DirSyncer:
    """Applies an `FsyncPolicy` to folder changes.

    ``changed(fd)`` is called after every move into (or out of) a folder. With ``always`` it
    fsyncs at once; with ``batch`` it remembers the folder and fsyncs every remembered folder
    once ``interval`` has passed; with ``never`` it does nothing.
    """

    def __init__(self, policy: FsyncPolicy, interval: float) -> None:
        self.policy = policy
        self.interval = interval
        self._dirty: set[int] = set()
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def changed(self, fd: int) -> None:
        if self.policy is FsyncPolicy.ALWAYS:
            os.fsync(fd)
        elif self.policy is FsyncPolicy.BATCH:
            with self._lock:
                self._dirty.add(fd)
                due = time.monotonic() - self._last >= self.interval
            if due:
                self.flush()

    def flush(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            self._last = time.monotonic()
        for fd in dirty:
            os.fsync(fd)


def read_all(fd: int, size_hint: int, limit: int) -> bytes | None:
    """Read a whole file; None if it turns out bigger than ``limit``."""
    chunks = [os.read(fd, size_hint + 1)]
    total = len(chunks[0])
    while chunks[-1] and total <= limit and total > size_hint:
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > limit:
        return None
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def free_name(dir_fd: int, name: str) -> str:
    """``name``, or ``name.N`` if that is taken in the folder, so a move never overwrites a file."""
    if name.endswith(REASON_SUFFIX):
        name += ".data"
    candidate = name
    n = 1
    while True:
        try:
            os.stat(candidate, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return candidate
        candidate = f"{name}.{n}"
        n += 1


def replace_atomically(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace the file ``path`` with ``data``: temp file in the same folder, fsync, rename, fsync
    the folder. Readers see the old file or the new one, never a mix; on failure the old one stays."""
    target = os.fspath(path)
    folder = os.path.dirname(target) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    dir_fd = os.open(folder, O_DIR)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
