"""Recovery: give back what dead or hung consumers held, and sweep abandoned half-writes.

For each file in ``processing/``:

- lock free: its owner is gone (the kernel dropped the flock when the process died). The attempt
  it used is already in its name, so it goes back to ``new/`` (due after the backoff) or, when
  the attempts are used up, to ``dead/``.
- lock held and lease expired (no heartbeat for ``lease`` seconds): the owner is alive but hung.
  The hung owner keeps its flock on the file's inode, and a claimer could never lock that one, so
  the message is *stolen*: ``processing/<name>`` is renamed to ``tmp/<name>.stolen``, a fresh copy
  (a new inode) atomically replaces that file, and the copy goes to ``new/`` (or ``dead/``). At
  every instant the message is exactly one file, so a recoverer killed anywhere in between leaves
  nothing that a later pass could return twice: it finds ``<name>.stolen`` and finishes the job. If
  the owner wakes up, its ack or heartbeat fails with `DeliveryLostError`.
- lock held, lease running: left alone.

Only one recovery runs on a mailbox at a time, from any number of processes: each pass holds an
exclusive flock on the mailbox's ``processing/`` folder (a fresh open of it, so threads exclude each
other too). A pass that finds it held returns at once with ``busy`` set: the other pass does the work.

``tmp/`` files older than ``tmp_max_age`` are half-writes of producers that died; they were
never visible in ``new/`` and are removed (a folder there is reported, never removed). Last-error
records in ``errors/`` whose message is no longer waiting are removed too (`last_errors`).

Whatever a producer placed in these folders (a FIFO, a symlink, a folder, a huge file) is handled
as that entry's problem: it goes to ``dead/`` or is reported in ``errors``, and the pass goes on.
Only a failing disk (`MailboxIOError`) stops a pass.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from typing import TYPE_CHECKING

from ... import _fs, _log
from ..._locking import drop, try_lock
from ..._names import NameInfo, compact_time, parse_name
from ...errors import MailboxIOError
from ...retry import attempts_used_up
from ...states import GIVE_UP, RECOVER_DETACH, RECOVER_RETURN, STEAL_BURY, STEAL_RETURN, Move, State
from ..base import RecoveryReport
from . import last_errors

if TYPE_CHECKING:
    from .mailbox import FileMailbox

__all__ = ["recover"]

log = _log.get("hybridcomms.recovery")

#: I/O errors that say the disk or the process is failing, not that one entry is odd: they stop a pass.
_FATAL_ERRNOS = frozenset({errno.EIO, errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EMFILE, errno.ENFILE})


def recover(mb: FileMailbox, now: float) -> RecoveryReport:
    report = RecoveryReport()
    lock_fd = _open_pass_lock(mb)
    try:
        if not try_lock(lock_fd):
            report.busy = True
            return report
        _run_pass(mb, now, report)
    finally:
        drop(lock_fd)
    _log_report(mb, report)
    return report


def _open_pass_lock(mb: FileMailbox) -> int:
    """A fresh descriptor of ``processing/``, whose flock says a pass is running (see the docstring)."""
    try:
        return os.open(".", _fs.O_DIR, dir_fd=mb.folders.fd(State.PROCESSING))
    except OSError as exc:
        raise mb.folders.io_error(exc, "recover") from exc


def _run_pass(mb: FileMailbox, now: float, report: RecoveryReport) -> None:
    """One pass, under the pass lock: half-done steals, ``processing/``, ``tmp/``, ``errors/``."""
    stolen, names = _listings(mb)
    for name in stolen:  # steals a killed pass left half-done: finish them first
        _isolated(mb, report, f"tmp/{name}", _finish_steal, mb, name, now, report)
    for name in names:
        _isolated(mb, report, f"processing/{name}", _recover_one, mb, name, now, report)
    _sweep_tmp(mb, now, report)
    _isolated(mb, report, f"{last_errors.ERRORS}/", last_errors.sweep, mb.folders, now, report)


def _listings(mb: FileMailbox) -> tuple[list[str], list[str]]:
    """The steals left in ``tmp/`` (``*.stolen``) and the names of ``processing/``, sorted."""
    tmp_fd, proc_fd = mb.folders.fd(State.TMP), mb.folders.fd(State.PROCESSING)
    try:
        stolen = [n for n in _fs.listdir_at(tmp_fd) if n.endswith(_STOLEN)]
        names = sorted(_fs.listdir_at(proc_fd))
    except OSError as exc:
        raise mb.folders.io_error(exc, "recover: listing") from exc
    return stolen, names


def _log_report(mb: FileMailbox, report: RecoveryReport) -> None:
    """One log line for a pass that did anything."""
    if report:
        log.info(
            "%s: recovery returned %d, expired %d, dead %d, tmp removed %d, errors %d",
            mb.agent_id,
            len(report.returned),
            len(report.expired),
            len(report.dead),
            len(report.tmp_removed),
            len(report.errors),
        )


def _isolated(mb: FileMailbox, report: RecoveryReport, what: str, fn: object, *args: object) -> None:
    """Run one entry's step; what goes wrong with it is reported and the pass goes on, unless the
    disk itself is failing."""
    try:
        fn(*args)  # type: ignore[operator]
    except MailboxIOError as exc:
        if exc.errno in _FATAL_ERRNOS:
            raise
        _record(mb, report, what, exc)
    except OSError as exc:
        if exc.errno in _FATAL_ERRNOS:
            raise mb.folders.io_error(exc, f"recover {_fs.shown(what)}") from exc
        _record(mb, report, what, exc)
    except Exception as exc:
        _record(mb, report, what, exc)


def _record(mb: FileMailbox, report: RecoveryReport, what: str, exc: BaseException) -> None:
    text = f"{type(exc).__name__}: {exc}"
    log.log(_log.event_level(), "%s: recovery left %s in place: %s", mb.agent_id, _fs.shown(what), text)
    report.errors.append((_fs.shown(what), text))


def _recover_one(mb: FileMailbox, name: str, now: float, report: RecoveryReport) -> None:
    """``processing/<name>``: back to ``new/`` (or ``dead/``) if its owner died or its lease expired;
    given up if it is not a message file at all."""
    proc_fd = mb.folders.fd(State.PROCESSING)
    fd = _open_claimed(mb, proc_fd, name, now, report)
    if fd is None:
        return
    try:
        detached = _detach(mb, fd, name, now, report)
    finally:
        drop(fd)
    if detached is None:
        return
    if detached:  # its owner died: nobody holds the old inode, it goes back as it is
        _return_or_bury(mb, RECOVER_RETURN, name + _STOLEN, name, now, report, report.returned, True)
    else:
        _finish_steal(mb, name + _STOLEN, now, report)


def _open_claimed(mb: FileMailbox, proc_fd: int, name: str, now: float, report: RecoveryReport) -> int | None:
    """``processing/<name>`` opened; None if it is gone, someone else's to judge, or given up (a link,
    a file that cannot be opened)."""
    try:
        return os.open(name, _fs.O_READ_MSG, dir_fd=proc_fd)
    except FileNotFoundError:
        return None  # settled meanwhile
    except OSError as exc:
        if exc.errno in _FATAL_ERRNOS:
            raise
        _give_up_unopenable(mb, proc_fd, name, now, report, exc)
        return None


def _give_up_unopenable(
    mb: FileMailbox, proc_fd: int, name: str, now: float, report: RecoveryReport, exc: OSError
) -> None:
    """A claimed file that did not open (``exc``): given up, unless it may be another user's."""
    if exc.errno in (errno.EACCES, errno.EPERM) and _maybe_someone_elses(mb, proc_fd, name, now, report):
        return
    _give_up_entry(mb, GIVE_UP, name, f"{_unopenable_why(exc)} in processing/", report)


def _unopenable_why(exc: OSError) -> str:
    """How the reason of an entry that did not open (``exc``) says why."""
    return "a symlink" if exc.errno == errno.ELOOP else f"cannot be opened ({exc.strerror})"


def _detach(mb: FileMailbox, fd: int, name: str, now: float, report: RecoveryReport) -> bool | None:
    """Detach the claimed file open as ``fd`` to ``tmp/<name>.stolen`` if its owner died or its lease
    expired: whether its owner died; None if it stays (alive and within its lease, settled meanwhile,
    or given up as not a regular file). From tmp/ it goes back to new/ as one file, and a watcher sees
    it come from tmp/<name>.stolen: a recovered message."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        why = f"not a regular file in processing/ ({stat.filemode(st.st_mode)})"
        _give_up_entry(mb, GIVE_UP, name, why, report)
        return None
    owner_dead = try_lock(fd)
    if _stays(mb, st, now, owner_dead):
        return None
    try:
        mb.folders.move_and_commit(RECOVER_DETACH, name, name + _STOLEN)
    except FileNotFoundError:
        return None  # acked (or taken) meanwhile
    return owner_dead


def _stays(mb: FileMailbox, st: os.stat_result, now: float, owner_dead: bool) -> bool:
    """Whether a claimed file stays where it is: its owner alive and within its lease."""
    return not owner_dead and now - st.st_ctime < mb.lease


def _maybe_someone_elses(
    mb: FileMailbox, proc_fd: int, name: str, now: float, report: RecoveryReport
) -> bool:
    """A claimed file this process may not open (another user's, in a root shared by several): its
    lock cannot be looked at from here, so it is judged by its lease alone, and never dead-lettered
    for being unreadable to us. Within the lease it is left alone; past it, left in place and reported
    (recovery run as its owner, or a user who may read it, returns it). False if it is not a regular
    file (a hostile entry: given up as usual)."""
    try:
        st = os.stat(name, dir_fd=proc_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True  # settled meanwhile
    if not stat.S_ISREG(st.st_mode):
        return False
    if now - st.st_ctime >= mb.lease:
        _report_not_ours(mb, name, st, report)
    return True


def _report_not_ours(mb: FileMailbox, name: str, st: os.stat_result, report: RecoveryReport) -> None:
    """Report a claimed file past its lease that this user may not open (left for its owner)."""
    report.errors.append(
        (
            f"processing/{_fs.shown(name)}",
            f"past its lease of {mb.lease:g}s, but this user may not open it (owner uid {st.st_uid}); "
            "left in place for a recovery run as its owner",
        )
    )


_STOLEN = ".stolen"


def _finish_steal(mb: FileMailbox, stolen: str, now: float, report: RecoveryReport) -> None:
    """``tmp/<name>.stolen`` -> ``new/`` (or ``dead/``): replace it by a copy of itself first (the
    hung owner may still hold its lock on the original), then move that one file.

    Each step leaves the message as exactly one file, so this is safe to repeat after a crash."""
    tmp_fd = mb.folders.fd(State.TMP)
    name = stolen[: -len(_STOLEN)]
    raw = _read_stolen(mb, tmp_fd, stolen, report)
    if raw is None:
        return
    _replace_by_copy(mb, tmp_fd, stolen, name + ".copy", raw)
    _return_or_bury(mb, STEAL_RETURN, stolen, name, now, report, report.expired, False)


def _read_stolen(mb: FileMailbox, tmp_fd: int, stolen: str, report: RecoveryReport) -> bytes | None:
    """The bytes of ``tmp/<stolen>``; None if it is gone, or given up (not a regular file, too large,
    a link)."""
    try:
        return _fs.read_regular(stolen, mb.max_message_size, dir_fd=tmp_fd)
    except FileNotFoundError:
        return None
    except (_fs.NotRegularFileError, _fs.TooLargeError) as exc:
        _give_up_entry(mb, STEAL_BURY, stolen, f"taken from a hung consumer, and {exc.strerror}", report)
        return None
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        _give_up_entry(mb, STEAL_BURY, stolen, "a symlink in tmp/", report)
        return None


def _replace_by_copy(mb: FileMailbox, tmp_fd: int, stolen: str, copy: str, raw: bytes) -> None:
    """``tmp/<stolen>`` replaced by a fresh copy of its bytes ``raw`` (a new inode, which no hung
    owner holds a lock on), committed."""
    copy_name = mb.folders.write_tmp(tmp_fd, copy, raw, sync=mb.folders.sync)
    try:
        # The one deliberate replace in the library: the copy takes the place of the very file it
        # was copied from (the same message), so the message stays one file throughout.
        os.replace(copy_name, stolen, src_dir_fd=tmp_fd, dst_dir_fd=tmp_fd)
    except OSError:
        _fs.unlink_quietly(tmp_fd, copy_name)
        raise
    mb.folders.commit(tmp_fd)


def _return_or_bury(
    mb: FileMailbox,
    m: Move,
    src_name: str,
    name: str,
    now: float,
    report: RecoveryReport,
    kind: list[str],
    owner_dead: bool,
) -> None:
    """``m.src/src_name`` (the message ``name``) back to ``new/``, or to ``dead/`` past its attempts."""
    info = parse_name(name)
    attempt, key = _attempt_and_key(info, name)
    if attempts_used_up(attempt, mb.max_attempts):
        why = "its consumer died" if owner_dead else f"its lease of {mb.lease:g}s expired"
        reason = f"{why} during attempt {attempt} of {mb.max_attempts}"
        _bury_used_up(mb, m, src_name, name, (attempt, key), reason, report)
        return
    # Due after the backoff from the real clock (``now`` only says when leases and ages are judged).
    due = time.time() + mb.backoff.delay(max(attempt, 1))
    if _return(mb, m, src_name, info.with_(due=compact_time(due)) if info else name):
        kind.append(key)


def _attempt_and_key(info: NameInfo | None, name: str) -> tuple[int, str]:
    """The attempt count a claimed name says (0 if not ours), and how the report names it (its id, or
    its name shown)."""
    if info is None:
        return 0, _fs.shown(name)
    return info.attempt, info.id


def _bury_used_up(
    mb: FileMailbox,
    m: Move,
    src_name: str,
    name: str,
    attempt_and_key: tuple[int, str],
    reason: str,
    report: RecoveryReport,
) -> None:
    """A taken-back message past its attempts to ``dead/`` under its message name, with ``reason``."""
    attempt, key = attempt_and_key
    moved = mb.folders.dead_letter(
        GIVE_UP if m.src is State.PROCESSING else STEAL_BURY,
        src_name,
        {
            "reason": reason,
            "last_error": None,
            "message_file": _fs.shown(name),
            "id": key,
            "attempts": attempt,
        },
        target=name,  # its message name, not the name it had in tmp/ while being taken back
    )
    if moved is not None:
        report.dead.append(key)


def _return(mb: FileMailbox, m: Move, src_name: str, target: str) -> bool:
    """``m.src/src_name`` back to ``new/`` as ``target`` (or the next free name), committed; False if
    it was gone."""
    try:
        new_fd, target = mb.folders.place(m, src_name, target)
    except FileNotFoundError:
        return False
    mb.folders.commit(new_fd)
    mb.folders.arrived(target)
    return True


def _give_up_entry(mb: FileMailbox, m: Move, name: str, reason: str, report: RecoveryReport) -> None:
    if mb.folders.dead_letter(m, name, {"reason": reason, "message_file": _fs.shown(name), "attempts": 0}):
        report.dead.append(_fs.shown(name))


def _sweep_tmp(mb: FileMailbox, now: float, report: RecoveryReport) -> None:
    tmp_fd = mb.folders.fd(State.TMP)
    for name in _tmp_names(mb, tmp_fd):
        if name.endswith(_STOLEN):
            continue  # finished at the start of the pass (or left in errors)
        _isolated(mb, report, f"tmp/{name}", _sweep_one, mb, tmp_fd, name, now, report)


def _tmp_names(mb: FileMailbox, tmp_fd: int) -> list[str]:
    """The names in ``tmp/`` (a listing that fails stops the pass)."""
    try:
        return _fs.listdir_at(tmp_fd)
    except OSError as exc:
        raise mb.folders.io_error(exc, "recover: listing tmp/") from exc


def _sweep_one(mb: FileMailbox, tmp_fd: int, name: str, now: float, report: RecoveryReport) -> None:
    """Remove ``tmp/<name>`` if it is an abandoned half-write (older than ``tmp_max_age``)."""
    st = _abandoned(tmp_fd, name, now, mb.tmp_max_age)
    if st is None:
        return
    if stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "a folder in tmp/ (never removed by recovery)")
    try:
        os.unlink(name, dir_fd=tmp_fd)  # a symlink is removed as a link: its target is never touched
    except FileNotFoundError:
        return
    report.tmp_removed.append(_fs.shown(name))


def _abandoned(tmp_fd: int, name: str, now: float, max_age: float) -> os.stat_result | None:
    """The lstat of ``tmp/<name>`` if it was last written ``max_age`` seconds ago or more; else None
    (also once it is gone)."""
    try:
        st = os.stat(name, dir_fd=tmp_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    return None if now - st.st_mtime < max_age else st
