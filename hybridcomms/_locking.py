"""Liveness locks on claimed message files.

A consumer holds an exclusive flock(2) on the file it claimed for as long as it works on it. The
kernel drops the lock when the process dies, however it dies, so recovery can tell a dead owner
(lock free) from a slow one (lock held) at once.

On POSIX this calls ``fcntl.flock`` directly: it is the same lock portalocker takes there (and the
one the ``filelock`` library takes), but portalocker's wrapper costs ~15 µs per lock/unlock pair
against ~1 µs (measured on this project's machine), which matters on the claim path. Elsewhere,
portalocker does the locking.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Iterator

from .errors import LockTimeoutError

__all__ = ["LOCK_TRY", "drop", "flock", "hold_lock_file", "try_lock", "unlock"]

try:
    import fcntl

    #: ``flock(fd, LOCK_TRY)`` takes an exclusive lock without waiting, or raises `BlockingIOError`
    #: (the claim path calls it directly: one Python call fewer than `try_lock`).
    flock = fcntl.flock
    LOCK_TRY = fcntl.LOCK_EX | fcntl.LOCK_NB

    def try_lock(fd: int) -> bool:
        """Take an exclusive lock without waiting; False if someone else holds it."""
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        return True

    def unlock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # pragma: no cover - not POSIX
    import portalocker

    LOCK_TRY = portalocker.LOCK_EX | portalocker.LOCK_NB

    def flock(fd: int, flags: int) -> None:  # type: ignore[misc]
        try:
            portalocker.lock(fd, portalocker.LockFlags(flags))
        except portalocker.AlreadyLocked:
            raise BlockingIOError(fd, "locked by another process") from None

    def try_lock(fd: int) -> bool:
        try:
            portalocker.lock(fd, portalocker.LOCK_EX | portalocker.LOCK_NB)
        except portalocker.AlreadyLocked:
            return False
        return True

    def unlock(fd: int) -> None:
        portalocker.unlock(fd)


def drop(fd: int) -> None:
    """Release a lock (ignoring a failure to) and close the file."""
    try:
        unlock(fd)
    except OSError:
        pass
    os.close(fd)


_O_LOCKFILE = (
    os.O_RDWR
    | os.O_CREAT
    | getattr(os, "O_NOFOLLOW", 0)
    | getattr(os, "O_NONBLOCK", 0)
    | getattr(os, "O_CLOEXEC", 0)
)


@contextlib.contextmanager
def hold_lock_file(
    path: str | os.PathLike[str], timeout: float = 10.0, *, dir_fd: int | None = None, mode: int = 0o660
) -> Iterator[None]:
    """Hold an exclusive lock on the lock file ``path`` (created if missing) for a block.

    This is the lock that Dream.OS writers take on ``inbox.json.lock`` with the ``filelock``
    library; both take flock(2) on the lock file, so they exclude each other. The lock file is
    opened as a file another agent may have placed: never following a symlink and never blocking
    (a FIFO or a folder there is an `UnsafePathError`). Raises `LockTimeoutError` if it stays taken
    for ``timeout`` seconds.
    """
    import stat

    from .errors import UnsafePathError

    shown = os.fspath(path)
    fd = _open_lock_file(path, dir_fd, mode, shown)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise UnsafePathError(f"lock file {shown} is not a regular file")
        _lock_within(fd, timeout, shown)
        try:
            yield
        finally:
            unlock(fd)
    finally:
        os.close(fd)


def _open_lock_file(path: str | os.PathLike[str], dir_fd: int | None, mode: int, shown: str) -> int:
    """The lock file opened (created with exactly ``mode`` if missing), never through a symlink and
    never blocking on what is not a regular file (`UnsafePathError`)."""
    from .errors import UnsafePathError

    try:
        try:  # a lock file we create gets exactly ``mode``, whatever the umask
            fd = os.open(path, _O_LOCKFILE | os.O_EXCL, mode, dir_fd=dir_fd)
            os.fchmod(fd, mode)
        except FileExistsError:
            fd = os.open(path, _O_LOCKFILE, mode, dir_fd=dir_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENXIO, errno.EISDIR):
            raise UnsafePathError(f"lock file {shown} is a symlink or not a regular file") from None
        raise
    return fd


def _lock_within(fd: int, timeout: float, shown: str) -> None:
    """Take the exclusive lock on ``fd``, trying again (a growing wait) for up to ``timeout`` seconds;
    `LockTimeoutError` if it stays taken."""
    import time

    deadline = time.monotonic() + max(timeout, 0.0)
    delay = 0.001
    while True:
        try:
            flock(fd, LOCK_TRY)
            return
        except BlockingIOError:
            if time.monotonic() >= deadline:
                raise LockTimeoutError(
                    f"could not lock {shown} within {timeout:g}s (held by another process)"
                ) from None
            time.sleep(delay)
            delay = min(delay * 2, 0.02)
