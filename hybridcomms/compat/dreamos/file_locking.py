"""Legacy ``dreamos.core.utils.file_locking``: JSON files read and written under a lock file.

``acquire_lock(path)`` holds an exclusive lock on ``<path>.lock``. It is flock(2), taken through
portalocker: the same lock the ``filelock`` library takes, which Dream.OS writers use, so the two
exclude each other across processes. Writes are atomic: temp file in the same folder, fsync, rename
over the target, fsync of the folder; a reader never sees half a file, and a failed write leaves the
old file as it was.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import portalocker

__all__ = ["LockAcquisitionError", "acquire_lock", "read_json_locked", "write_json_locked"]


class LockAcquisitionError(TimeoutError):
    """The lock file stayed locked by someone else for the whole timeout."""


def lock_path_for(path: str | os.PathLike[str]) -> Path:
    return Path(os.fspath(path) + ".lock")


@contextlib.contextmanager
def acquire_lock(path: str | os.PathLike[str], timeout: float = 10.0) -> Iterator[Path]:
    """Hold the exclusive lock on ``<path>.lock`` for a ``with`` block (yields the lock file's path)."""
    lock_path = lock_path_for(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    lock = portalocker.Lock(str(lock_path), mode="a", timeout=max(timeout, 0.0), check_interval=0.01)
    try:
        lock.acquire()
    except portalocker.exceptions.LockException:
        raise LockAcquisitionError(
            f"could not lock {lock_path} within {timeout:g}s (held by another process)"
        ) from None
    try:
        yield lock_path
    finally:
        lock.release()


def read_json_locked(path: str | os.PathLike[str], timeout: float = 10.0) -> Any:
    """The JSON value in ``path``, read under its lock; ``None`` if the file does not exist.

    A file that is not valid JSON raises ``ValueError`` naming the file (nothing is changed)."""
    with acquire_lock(path, timeout):
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise ValueError(f"{os.fspath(path)} is not valid JSON: {exc}") from None


def write_json_locked(path: str | os.PathLike[str], data: Any, timeout: float = 10.0) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically and durably, under its lock."""
    encoded = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    with acquire_lock(path, timeout):
        replace_atomically(Path(path), encoded)


def replace_atomically(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` through a temp file in the same folder: fsync, rename, fsync the folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
