"""Recovery: give back what dead or hung consumers held, and sweep abandoned half-writes.

For each file in ``processing/``:

- lock free: its owner is gone (the kernel dropped the flock when the process died). The attempt
  it used is already in its name, so it goes back to ``new/`` (due after the backoff) or, when
  the attempts are used up, to ``dead/``.
- lock held and lease expired (no heartbeat for ``lease`` seconds): the owner is alive but hung.
  Its file is replaced by a copy (a new inode) before it is moved, because the hung owner keeps
  its flock on the old inode, and a claimer could never lock that one. If the owner wakes up,
  its ack or heartbeat fails with `DeliveryLostError`.
- lock held, lease running: left alone.

``tmp/`` files older than ``tmp_max_age`` are half-writes of producers that died; they were
never visible in ``new/`` and are removed.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from . import _fs
from ._locking import drop, try_lock
from ._names import compact_time, parse_name
from .states import GIVE_UP, RECOVER, STEAL_DETACH, STEAL_PLACE, State

if TYPE_CHECKING:
    from .mailbox import FileMailbox

__all__ = ["RecoveryReport", "recover"]

log = logging.getLogger("hybridcomms.recovery")


@dataclass
class RecoveryReport:
    """What one `FileMailbox.recover` pass did (message ids, or file names for foreign files)."""

    returned: list[str] = field(default_factory=list)  # owner died: back to new/
    expired: list[str] = field(default_factory=list)  # lease ran out on a live owner: back to new/
    dead: list[str] = field(default_factory=list)  # attempts exhausted: to dead/
    tmp_removed: list[str] = field(default_factory=list)  # stale half-writes removed from tmp/

    def __bool__(self) -> bool:
        return bool(self.returned or self.expired or self.dead or self.tmp_removed)


def recover(mb: FileMailbox, now: float) -> RecoveryReport:
    report = RecoveryReport()
    proc_fd = mb._fd(State.PROCESSING)
    for name in sorted(os.listdir(proc_fd)):
        try:
            fd = os.open(name, _fs.O_READ_MSG, dir_fd=proc_fd)
        except FileNotFoundError:
            continue  # settled meanwhile
        except OSError as exc:
            if exc.errno != errno.ELOOP:
                raise
            _give_up_entry(mb, name, "a symlink in processing/", report)
            continue
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                _give_up_entry(
                    mb, name, f"not a regular file in processing/ ({stat.filemode(st.st_mode)})", report
                )
                continue
            owner_dead = try_lock(fd)
            if not owner_dead:
                if now - st.st_ctime < mb.lease:
                    continue  # alive and within its lease
                # Hung owner: detach its file, put a copy we hold the lock on in its place.
                raw = _fs.read_all(fd, st.st_size, max(mb.max_message_size, st.st_size)) or b""
                copy_fd = _steal(mb, name, raw)
                if copy_fd is None:
                    continue
                os.close(fd)
                fd = copy_fd
            _return_or_bury(
                mb, name, now, report, report.returned if owner_dead else report.expired, owner_dead
            )
        finally:
            drop(fd)
    _sweep_tmp(mb, now, report)
    if report:
        log.info(
            "%s: recovery returned %d, expired %d, dead %d, tmp removed %d",
            mb.agent_id,
            len(report.returned),
            len(report.expired),
            len(report.dead),
            len(report.tmp_removed),
        )
    return report


_STOLEN = ".stolen"


def _steal(mb: FileMailbox, name: str, raw: bytes) -> int | None:
    """Take processing/<name> away from a hung owner; return the fd of the locked copy in its place.

    The rename out of processing/ is atomic, so either the owner's ack wins (we get ENOENT and
    leave it) or ours does (its ack gets ENOENT and raises `DeliveryLostError`). The detached
    file waits in tmp/ as ``<name>.stolen`` until the copy is in place; recovery finishes the job
    if it is interrupted (``_sweep_tmp`` never deletes a ``.stolen`` file).
    """
    try:
        mb._rename(STEAL_DETACH, name, name + _STOLEN)
    except FileNotFoundError:
        return None
    return _restore_stolen(mb, name + _STOLEN, raw)


def _restore_stolen(mb: FileMailbox, stolen: str, raw: bytes) -> int:
    tmp_fd = mb._fd(State.TMP)
    name = stolen[: -len(_STOLEN)]
    copy_name = mb._write_tmp(tmp_fd, name + ".copy", raw, sync=mb.fsync is not _fs.FsyncPolicy.NEVER)
    fd = os.open(copy_name, _fs.O_READ_MSG, dir_fd=tmp_fd)
    try_lock(fd)  # a file nobody else knows yet: always succeeds
    mb._syncer.changed(mb._rename(STEAL_PLACE, copy_name, name))
    _fs._unlink_quietly(tmp_fd, stolen)
    return fd


def _return_or_bury(
    mb: FileMailbox, name: str, now: float, report: RecoveryReport, kind: list[str], owner_dead: bool
) -> None:
    info = parse_name(name)
    attempt = info.attempt if info else 0
    key = info.id if info else name
    why = "its consumer died" if owner_dead else f"its lease of {mb.lease:g}s expired"
    if attempt >= mb.max_attempts:
        moved = mb._move_to_dead(
            GIVE_UP,
            name,
            {
                "reason": f"{why} during attempt {attempt} of {mb.max_attempts}",
                "last_error": None,
                "message_file": name,
                "id": key,
                "attempts": attempt,
            },
        )
        if moved is not None:
            report.dead.append(key)
        return
    target = info.with_(due=compact_time(now + mb.backoff.delay(max(attempt, 1)))) if info else name
    try:
        new_fd = mb._rename(RECOVER, name, target)
    except FileNotFoundError:
        return
    mb._syncer.changed(new_fd)
    mb._index.push(target)
    kind.append(key)


def _give_up_entry(mb: FileMailbox, name: str, reason: str, report: RecoveryReport) -> None:
    if mb._move_to_dead(GIVE_UP, name, {"reason": reason, "message_file": name, "attempts": 0}):
        report.dead.append(name)


def _sweep_tmp(mb: FileMailbox, now: float, report: RecoveryReport) -> None:
    tmp_fd = mb._fd(State.TMP)
    for name in os.listdir(tmp_fd):
        if name.endswith(_STOLEN):  # an interrupted steal: finish it, never delete it
            try:
                fd = os.open(name, _fs.O_READ_MSG, dir_fd=tmp_fd)
            except FileNotFoundError:
                continue
            try:
                raw = _fs.read_all(fd, os.fstat(fd).st_size, 1 << 40) or b""
            finally:
                os.close(fd)
            copy_fd = _restore_stolen(mb, name, raw)
            try:
                _return_or_bury(mb, name[: -len(_STOLEN)], now, report, report.expired, False)
            finally:
                drop(copy_fd)
            continue
        try:
            st = os.stat(name, dir_fd=tmp_fd, follow_symlinks=False)
        except FileNotFoundError:
            continue
        if now - st.st_mtime < mb.tmp_max_age:
            continue
        try:
            os.unlink(name, dir_fd=tmp_fd)
        except FileNotFoundError:
            continue
        report.tmp_removed.append(name)
