"""Legacy ``dreamos.core.utils.file_locking``: JSON files read and written under a lock file.

``acquire_lock(path)`` holds an exclusive lock on ``<path>.lock``. It is flock(2), taken through
portalocker: the same lock the ``filelock`` library takes, which Dream.OS writers use, so the two
exclude each other across processes. Writes are atomic: temp file in the same folder, fsync, rename
over the target, fsync of the folder; a reader never sees half a file, and a failed write leaves the
old file as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..._fs import replace_atomically
from ..._locking import hold_lock_file
from ...errors import LockTimeoutError

__all__ = [
    "LockAcquisitionError",
    "Timeout",
    "acquire_lock",
    "read_json_locked",
    "replace_atomically",
    "write_json_locked",
]


def _timeout_class() -> type[LockTimeoutError]:
    """The error a lock timeout raises: a `LockTimeoutError` (a `TimeoutError`) that is also a
    ``filelock.Timeout`` where the ``filelock`` library is importable, so that the legacy callers'
    ``except filelock.Timeout`` (the library ``acquire_lock`` used) keeps catching it."""
    try:
        import filelock
    except ImportError:  # pragma: no cover - filelock is in the dev extra
        return LockTimeoutError

    class Timeout(LockTimeoutError, filelock.Timeout):
        def __init__(self, message: str, lock_file: str = "") -> None:
            LockTimeoutError.__init__(self, message)
            self._lock_file = lock_file
            self._holder = None

        def __reduce__(self) -> Any:
            return self.__class__, (str(self), self._lock_file)

        def __str__(self) -> str:
            return str(self.args[0]) if self.args else f"could not lock {self._lock_file}"

    return Timeout


#: The error a lock timeout raises (see `_timeout_class`); ``Timeout`` is its legacy name.
Timeout = _timeout_class()
#: Another legacy name of the same error.
LockAcquisitionError = Timeout


def lock_path_for(path: str | os.PathLike[str]) -> Path:
    return Path(os.fspath(path) + ".lock")


@contextlib.contextmanager
def acquire_lock(path: str | os.PathLike[str], timeout: float = 10.0) -> Iterator[Path]:
    """Hold the exclusive lock on ``<path>.lock`` for a ``with`` block (yields the lock file's path)."""
    lock_path = lock_path_for(path)
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    stack = contextlib.ExitStack()
    try:
        stack.enter_context(hold_lock_file(lock_path, timeout))
    except LockTimeoutError as exc:
        raise Timeout(str(exc), str(lock_path)) from None
    with stack:
        yield lock_path


def read_json_locked(path: str | os.PathLike[str], timeout: float = 10.0) -> Any:
    """The JSON value in ``path``, read under its lock; ``None`` if the file does not exist.

    A file that is not valid JSON raises ``json.JSONDecodeError`` (a ``ValueError``), as the legacy
    function did; nothing is changed. Read with the stdlib ``json``, as legacy writers wrote it."""
    with acquire_lock(path, timeout):
        try:
            raw = Path(path).read_bytes()
        except FileNotFoundError:
            return None
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise json.JSONDecodeError(
            f"{os.fspath(path)} is not valid JSON: {exc.msg}", exc.doc, exc.pos
        ) from None


def write_json_locked(path: str | os.PathLike[str], data: Any, timeout: float = 10.0) -> None:
    """Replace ``path`` with ``data`` as JSON, atomically and durably, under its lock."""
    encoded = json.dumps(data, indent=2).encode()  # TypeError for what is not JSON, as before
    with acquire_lock(path, timeout):
        replace_atomically(path, encoded)
