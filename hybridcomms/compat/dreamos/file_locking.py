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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson

from ..._fs import replace_atomically
from ..._locking import hold_lock_file
from ...errors import LockTimeoutError

__all__ = [
    "LockAcquisitionError",
    "acquire_lock",
    "read_json_locked",
    "replace_atomically",
    "write_json_locked",
]

#: The legacy name of the timeout error (a `TimeoutError`).
LockAcquisitionError = LockTimeoutError


def lock_path_for(path: str | os.PathLike[str]) -> Path:
    return Path(os.fspath(path) + ".lock")


@contextlib.contextmanager
def acquire_lock(path: str | os.PathLike[str], timeout: float = 10.0) -> Iterator[Path]:
    """Hold the exclusive lock on ``<path>.lock`` for a ``with`` block (yields the lock file's path)."""
    lock_path = lock_path_for(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with hold_lock_file(lock_path, timeout):
        yield lock_path


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
        replace_atomically(path, encoded)
