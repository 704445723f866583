"""Dead-lettering in a file mailbox: a file goes to ``dead/`` with ``<name>.reason.json`` beside it.

The reason file is written in ``tmp/`` and placed first, then the file is moved (the move of the
`states.Move` given); on failure nothing is left behind: no reason file in ``tmp/`` or ``dead/``, the
file where it was, and `MailboxIOError` raised. A message that failed before keeps its last error
(`last_errors`) in the reason, when the settle that dead-letters it gives none itself; the record
goes once the message is in ``dead/``. Called through `Folders.dead_letter`.
"""

from __future__ import annotations

import errno
import os
import socket
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

import orjson

from ... import _fs
from ..._names import REASON_SUFFIX
from ...errors import MailboxIOError
from ...states import Move, State
from . import last_errors

if TYPE_CHECKING:
    from .folders import Folders

__all__ = ["dead_letter"]

#: Tries at a free name in ``dead/`` (each lost to another dead-lettering of the same name).
_TRIES = 100


def dead_letter(
    folders: Folders, m: Move, name: str, reason: dict[str, Any], target: str | None
) -> str | None:
    """``m.src``/name -> dead/ (as ``target``, default ``name``, or the next free name), with its
    reason file written first. None if the file was gone."""
    folders.check_writable()
    msg_id = _message_id(reason)
    dead_fd = folders.fd(State.DEAD)
    data = _reason_bytes(folders, m, _with_kept_error(folders, reason, msg_id))
    for _ in range(_TRIES):
        dead_name = _fs.free_name(dead_fd, target or name, len(REASON_SUFFIX))
        try:
            placed = _place(folders, m, name, dead_name, data)
        except FileNotFoundError:
            return None
        if placed:
            _commit(folders, dead_fd, name)
            last_errors.drop(folders, msg_id)  # (nothing for None: only a message id has a record)
            return dead_name
    raise MailboxIOError(errno.EEXIST, f"dead-letter {_fs.shown(name)}: no free name in dead/")


def _message_id(reason: dict[str, Any]) -> Any:
    """The id of a message that may have a kept last error: one whose settle says ``last_error``
    (its own, or None); None for files that are no message of ours."""
    return reason.get("id") if "last_error" in reason else None


def _commit(folders: Folders, dead_fd: int, name: str) -> None:
    """The dead-lettering of ``name`` committed (``dead/``), per the fsync policy."""
    try:
        folders.commit(dead_fd)
    except OSError as exc:
        raise folders.io_error(exc, f"dead-letter {_fs.shown(name)}: commit of dead/ failed") from exc


def _with_kept_error(folders: Folders, reason: dict[str, Any], msg_id: Any) -> dict[str, Any]:
    """``reason`` with the message's kept last error, when the settle gives none itself."""
    if msg_id is None or reason["last_error"] is not None:
        return reason
    kept = last_errors.read(folders, msg_id)
    if kept is None:
        return reason
    return {**reason, "last_error": kept.error, "last_error_attempt": kept.attempt}


def _reason_bytes(folders: Folders, m: Move, reason: dict[str, Any]) -> bytes:
    """The reason file: ``reason`` and where, when and by whom."""
    reason = {
        **reason,
        "agent": folders.agent_id,
        "from_state": m.src_folder,
        "dead_at": datetime.now(timezone.utc).isoformat(timespec="microseconds")[:26] + "Z",
        "host": socket.gethostname(),
        "pid": os.getpid(),
    }
    try:
        return orjson.dumps(reason, option=orjson.OPT_INDENT_2)
    except TypeError:  # a value that is not JSON (a name with bytes that are not UTF-8, …)
        return orjson.dumps({k: _fs.shown(str(v)) for k, v in reason.items()}, option=orjson.OPT_INDENT_2)


def _place(folders: Folders, m: Move, name: str, dead_name: str, data: bytes) -> bool:
    """The reason file, then the file, into ``dead/`` as ``dead_name``; False if that name was taken
    meanwhile (nothing left behind), `FileNotFoundError` if the file is gone (nothing left either)."""
    dead_fd, tmp_fd = folders.fd(State.DEAD), folders.fd(State.TMP)
    reason_name = dead_name + REASON_SUFFIX
    tmp_name = folders.write_tmp(tmp_fd, reason_name, data, sync=folders.sync)
    placed = False
    try:
        _fs.rename_noreplace(tmp_name, reason_name, src_dir_fd=tmp_fd, dst_dir_fd=dead_fd)
        placed = True
        folders.move(m, name, dead_name)
    except FileExistsError:
        _undo_reason(placed, dead_fd, reason_name, tmp_fd, tmp_name)
        return False
    except OSError as exc:
        _undo_reason(placed, dead_fd, reason_name, tmp_fd, tmp_name)
        if isinstance(exc, FileNotFoundError):
            raise
        raise folders.io_error(exc, f"dead-letter {_fs.shown(name)}") from exc
    except BaseException:
        _undo_reason(placed, dead_fd, reason_name, tmp_fd, tmp_name)
        raise
    return True


def _undo_reason(placed: bool, dead_fd: int, reason_name: str, tmp_fd: int, tmp_name: str) -> None:
    """Take the reason file back from where it got to."""
    if placed:
        _fs.unlink_quietly(dead_fd, reason_name)
    else:
        _fs.unlink_quietly(tmp_fd, tmp_name)
