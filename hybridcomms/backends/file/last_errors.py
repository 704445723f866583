"""The last error of a message waiting for a retry, in a file mailbox: ``<agent>/errors/<id>.json``.

The dead letters keep why a message was given up in ``dead/<name>.reason.json``; a message that failed
and waits for its retry keeps why it failed here, one small JSON file per message id::

    {"id": "3f2a…", "error": "ValueError: bad value", "attempt": 2, "failed_at": "2026-…Z",
     "due": "2026-…Z", "message_file": "2M.….a2.json", "agent": "Agent-1", "host": "…", "pid": 1234}

How it follows the message's state (`hybridcomms.states`):

- **nack with an error**: the record is written in ``tmp/`` (fsynced where the policy says), renamed
  over the older record of the same id (a reader sees the old one or the new one, never a mix), and
  ``errors/`` is committed, all *before* the message moves back to ``new/``. A crash in between leaves
  the message in ``processing/`` with a record that is true (that attempt did fail); recovery returns
  the message and the record stays with it.
- **ack**: removed after the move to ``done/`` (only a redelivery can have one: attempt > 1).
- **dead-lettered**: the error goes into the reason file (its ``last_error``, when the settle gave
  none itself), and the record is removed after the move.
- **leftovers**: a crash between the ack or the dead-lettering and the removal leaves a record whose
  message is no longer waiting. `sweep` (run by every recovery pass, so `recover` and
  `doctor --fix`) removes records, and anything else placed in ``errors/``, whose id has no file in
  ``new/``, ``processing/`` or a recovery's ``tmp/*.stolen`` and that are older than `SWEEP_AFTER`.

The record is a diagnostic, not part of delivery: failing to write it (a full disk, a folder placed
where the file goes) is logged and the nack goes on; a record that is unreadable reads as such. The
folder is made at the first nack that records an error (older mailboxes have none).
"""

from __future__ import annotations

import os
import socket
import stat
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, TypeGuard

import orjson

from ... import _fs, _log
from ..._names import NameInfo, compact_time, parse_compact, parse_name
from ...errors import HybridCommsError
from ...message import ID_RE, iso_utc
from ...states import State
from ..base import LastError, RecoveryReport, text_of

if TYPE_CHECKING:
    from .folders import Folders

__all__ = ["ERRORS", "SWEEP_AFTER", "drop", "leftovers", "listed", "read", "record", "sweep"]

log = _log.get("hybridcomms.mailbox")

#: The folder, beside ``new/`` and the others.
ERRORS = "errors"
_SUFFIX = ".json"
#: A record is read up to this size (records are written by us, but a co-tenant can place anything).
MAX_RECORD = 64 * 1024
#: A record is removed by `sweep` only once it is this old, so a message that moves between folders
#: while recovery lists them never loses its record.
SWEEP_AFTER = 60.0


def _valid(msg_id: str | None) -> TypeGuard[str]:
    """Whether ``msg_id`` is a message id (only those have a record: its file name is the id)."""
    return msg_id is not None and ID_RE.match(msg_id) is not None


def record(folders: Folders, msg_id: str, name: str, attempt: int, error: str, due: float) -> None:
    """Keep ``error`` as the last error of ``msg_id`` (claimed as ``processing/<name>``), durably per
    the fsync policy, before the nack moves it. Never raises: a failure is logged."""
    if not _valid(msg_id):
        return
    data = _record_bytes(folders, msg_id, name, attempt, error, due)
    try:
        _store(folders, msg_id, data)
    except (OSError, HybridCommsError) as exc:
        log.warning("%s: the last error of %s is not kept: %s", folders.agent_id, msg_id, exc)


def _record_bytes(folders: Folders, msg_id: str, name: str, attempt: int, error: str, due: float) -> bytes:
    """The record of one failed attempt, as JSON (the module docstring shows one)."""
    now = time.time()
    return orjson.dumps(
        {
            "id": msg_id,
            "error": text_of(error),
            "attempt": attempt,
            "failed_at": iso_utc(datetime.fromtimestamp(now, timezone.utc)),
            "due": iso_utc(datetime.fromtimestamp(parse_compact(compact_time(due)), timezone.utc)),
            "message_file": _fs.shown(name),
            "agent": folders.agent_id,
            "host": socket.gethostname(),
            "pid": os.getpid(),
        },
        option=orjson.OPT_INDENT_2,
    )


def _store(folders: Folders, msg_id: str, data: bytes) -> None:
    """Write ``data`` in ``tmp/`` and rename it over the record of ``msg_id`` in ``errors/`` (made if
    missing), committed per the fsync policy."""
    err_fd = folders.errors_folder(create=True)
    if err_fd is None:
        return
    tmp_fd = folders.fd(State.TMP)
    tmp_name = folders.write_tmp(tmp_fd, f"{msg_id}.error{_SUFFIX}", data, sync=folders.sync)
    try:
        # A deliberate replace: the record of one id is one file, the newest error.
        os.replace(tmp_name, msg_id + _SUFFIX, src_dir_fd=tmp_fd, dst_dir_fd=err_fd)
    except OSError:
        _fs.unlink_quietly(tmp_fd, tmp_name)
        raise
    folders.commit(err_fd)


def drop(folders: Folders, msg_id: str | None) -> None:
    """Remove the record of ``msg_id`` (its message was acked or dead-lettered). Never raises; the
    removal is not committed: a power loss that brings a record back leaves it to `sweep`."""
    if not _valid(msg_id):
        return
    err_fd = _existing_folder(folders)
    if err_fd is not None:
        _fs.unlink_quietly(err_fd, f"{msg_id}{_SUFFIX}")


def _existing_folder(folders: Folders) -> int | None:
    """``errors/`` if there is one; None if not, or if it cannot be opened."""
    try:
        return folders.errors_folder(create=False)
    except (OSError, HybridCommsError):
        return None


def listed(folders: Folders) -> frozenset[str]:
    """The ids that have a record (one listing of ``errors/``; empty if there is no such folder)."""
    try:
        err_fd = folders.errors_folder(create=False)
        if err_fd is None:
            return frozenset()
        names = _fs.listdir_at(err_fd)
    except (OSError, HybridCommsError):
        return frozenset()
    return _record_ids(names)


def _record_ids(names: list[str]) -> frozenset[str]:
    """The ids whose records are among the names of ``errors/`` (anything else placed there left out)."""
    return frozenset(n[: -len(_SUFFIX)] for n in names if n.endswith(_SUFFIX))


def read(folders: Folders, msg_id: str | None) -> LastError | None:
    """The last error kept for ``msg_id``, read as a file anyone may have placed (no link followed,
    no blocking, capped); None if there is none. A record that does not read says so as its error."""

    if not _valid(msg_id):
        return None
    try:
        found = _raw_record(folders, msg_id)
    except FileNotFoundError:
        return None
    except (OSError, HybridCommsError) as exc:
        return LastError(f"(unreadable error record: {exc})", 0, time.time())
    return None if found is None else _parsed(*found)


def _raw_record(folders: Folders, msg_id: str) -> tuple[bytes, float] | None:
    """The bytes of the record of ``msg_id`` (capped, no link followed) and when it was written; None
    if there is no ``errors/`` folder."""
    err_fd = folders.errors_folder(create=False)
    if err_fd is None:
        return None
    raw = _fs.read_regular(f"{msg_id}{_SUFFIX}", MAX_RECORD, dir_fd=err_fd)
    changed = os.stat(f"{msg_id}{_SUFFIX}", dir_fd=err_fd, follow_symlinks=False).st_mtime
    return raw, changed


def _parsed(raw: bytes, changed: float) -> LastError:
    """The `LastError` a record's bytes say (written at ``changed``); one that does not read says so."""
    obj = _json_or_none(raw)
    if not _is_record(obj):
        return LastError("(unreadable error record)", 0, changed)
    return LastError(
        text_of(obj["error"]),
        _attempt_of(obj.get("attempt")),
        _time_of(obj.get("failed_at"), changed),
    )


def _json_or_none(raw: bytes) -> Any:
    """``raw`` decoded as JSON; None if it is not JSON."""
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def _is_record(obj: Any) -> TypeGuard[dict[str, Any]]:
    """Whether a decoded record has what every record has: an error text."""
    return isinstance(obj, dict) and isinstance(obj.get("error"), str)


def _attempt_of(value: Any) -> int:
    """A record's attempt count, if it is a plausible one; else 0."""
    return value if type(value) is int and 0 <= value <= 999_999 else 0


def _time_of(value: Any, fallback: float) -> float:
    """The time an ISO 8601 text ``value`` says (UTC when it names no zone); ``fallback`` if it is no
    such text."""
    if type(value) is not str:
        return fallback
    try:
        return _as_utc(datetime.fromisoformat(value)).timestamp()
    except (ValueError, OverflowError):
        return fallback


def _as_utc(ts: datetime) -> datetime:
    """``ts``, read as UTC if it has no time zone."""
    return ts.replace(tzinfo=timezone.utc) if ts.tzinfo is None else ts


def _waiting_ids(folders: Folders) -> set[str]:
    """Ids with a file in ``processing/``, ``new/`` or ``tmp/*.stolen``: listed in an order that a
    message moving between them (claim, nack) cannot slip through, and ``processing/`` again last."""
    ids: set[str] = set()
    for state, strip in (
        (State.PROCESSING, ""),
        (State.NEW, ""),
        (State.TMP, ".stolen"),
        (State.PROCESSING, ""),
    ):
        ids |= _ids_listed(folders, state, strip)
    return ids


def _ids_listed(folders: Folders, state: State, strip: str) -> set[str]:
    """The ids of the messages in one state's folder (one listing); with ``strip``, only the names
    ending so, read without it."""
    ids: set[str] = set()
    for name in _fs.listdir_at(folders.fd(state)):
        info = _info_of(name, strip)
        if info is not None:
            ids.add(info.id)
    return ids


def _info_of(name: str, strip: str) -> NameInfo | None:
    """What ``name`` says as a message name once ``strip`` is taken off its end (None if it does not
    end so, or is not ours)."""
    if strip:
        if not name.endswith(strip):
            return None
        name = name[: -len(strip)]
    return parse_name(name)


def leftovers(folders: Folders, now: float) -> list[tuple[str, bool]]:
    """The names in ``errors/`` that `sweep` would take away (older than `SWEEP_AFTER`, and not the
    record of a waiting message), each with whether it is a folder (reported, never removed)."""
    err_fd = folders.errors_folder(create=False)
    if err_fd is None:
        return []
    names = _fs.listdir_at(err_fd)
    if not names:
        return []
    waiting = _waiting_ids(folders)
    out: list[tuple[str, bool]] = []
    for name in names:
        found = _leftover(err_fd, name, now, waiting)
        if found is not None:
            out.append(found)
    return out


def _leftover(err_fd: int, name: str, now: float, waiting: set[str]) -> tuple[str, bool] | None:
    """``(name, is a folder)`` if the entry ``name`` of ``errors/`` is a leftover for `sweep`: not the
    record of a waiting message, and older than `SWEEP_AFTER`; else None."""
    if _is_waiting_record(name, waiting):
        return None
    try:
        st = os.stat(name, dir_fd=err_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return (name, stat.S_ISDIR(st.st_mode)) if now - st.st_mtime >= SWEEP_AFTER else None


def _is_waiting_record(name: str, waiting: set[str]) -> bool:
    """Whether ``name`` is the record of one of the ``waiting`` message ids."""
    return name.endswith(_SUFFIX) and name[: -len(_SUFFIX)] in waiting


def sweep(folders: Folders, now: float, report: RecoveryReport) -> None:
    """Remove the records (and whatever else was placed in ``errors/``) whose message is no longer
    waiting, once older than `SWEEP_AFTER`. Run by recovery, under its lock: recovery itself is then
    not moving messages. A folder found there is reported, never removed."""
    found = leftovers(folders, now)
    if not found:
        return
    err_fd = folders.errors_folder(create=False)
    assert err_fd is not None
    for name, folder in found:
        _sweep_one(err_fd, name, folder, report)


def _sweep_one(err_fd: int, name: str, folder: bool, report: RecoveryReport) -> None:
    """Remove one leftover of ``errors/`` (a folder is only reported), saying so in ``report``."""
    where = f"{ERRORS}/{_fs.shown(name)}"
    if folder:
        report.errors.append((where, "a folder in errors/ (never removed by recovery)"))
        return
    try:
        os.unlink(name, dir_fd=err_fd)  # a link is removed as a link
    except FileNotFoundError:
        return
    except OSError as exc:
        report.errors.append((where, f"{type(exc).__name__}: {exc}"))
        return
    report.records_removed.append(where)
