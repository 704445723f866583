"""A claimed message of a file mailbox, and every call that settles it (ack, nack, dead-letter,
heartbeat): the mailbox only claims; what a settle needs of it is its public API (``folders``: the
moves, dead-lettering, the claim index; ``retention``; the options)."""

from __future__ import annotations

import errno
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from ... import _log
from ..._locking import unlock
from ..._names import compact_time, parse_name
from ...errors import DeliveryError, DeliveryLostError, MailboxIOError
from ...message import Message
from ...retry import attempts_used_up
from ...states import ACK, GIVE_UP, NACK, State
from ..base import Settling
from . import last_errors

_PROCESSING = State.PROCESSING.folder

log = _log.get("hybridcomms.mailbox")

if TYPE_CHECKING:
    from .folders import Folders
    from .mailbox import FileMailbox
    from .retention import Retention

__all__ = ["Delivery"]


class Delivery(Settling):
    """A claimed message. Settle it exactly once: `ack`, `nack` or `dead`.

    As a context manager it acks when the block ends normally and nacks (with backoff) when the
    block raises; the exception still propagates. ``attempt`` is 1 on the first delivery.
    """

    __slots__ = ("_fd", "_mailbox")

    def __init__(self, mailbox: FileMailbox, fd: int, name: str, message: Message, attempt: int) -> None:
        self._start(name, message, attempt)
        self._mailbox = mailbox
        self._fd = fd

    @property
    def path(self) -> Path:
        return self._mailbox.path / State.PROCESSING.folder / self.name

    def ack(self) -> None:
        """Done: the ACK move, ``processing/`` -> ``done/`` (committed per the fsync policy); with
        ``done_retention=0`` the file is removed instead (and the removal committed).

        If it raises `MailboxIOError` (the commit failed, the disk is failing), the message may already
        be acked: it will not be delivered again, though after a power loss the ack may be undone and
        it is delivered once more. `DeliveryLostError`: recovery took it back (lease expired); it will
        be delivered again.

        Written out here rather than in the mailbox: it runs once per message (docs/performance.md)."""
        self._check_open()
        self._settled = True
        name = self.name
        mb = self._mailbox
        try:
            _ack_file(mb.folders, name, mb.retention)
        except FileNotFoundError:
            raise DeliveryLostError(f"{name}: lease expired and the message was recovered") from None
        except KeyError:
            raise MailboxIOError(errno.EBADF, f"mailbox {mb.path} is closed") from None
        except OSError as exc:
            raise mb.folders.io_error(exc, f"ack {name}") from exc
        finally:
            os.close(self._fd)  # in done/ (or gone) the lock no longer matters: closing drops it
        if self.attempt > 1:  # only a redelivery can have a last error kept (errors/): done with it
            last_errors.drop(mb.folders, self.message.id)

    def nack(self, delay: float | None = None, error: str | BaseException | None = None) -> State:
        """Back to ``new/``, due after ``delay`` seconds (default: the mailbox's backoff); past
        ``max_attempts`` to ``dead/`` instead, with ``error`` in the reason. Returns the state reached."""
        self._check_open()
        if error is not None:
            self._error = str(error)
        mb = self._mailbox
        if attempts_used_up(self.attempt, mb.max_attempts):
            self._give_up(f"failed {self.attempt} of {mb.max_attempts} attempts", self._error)
            return State.DEAD
        due = self._due(delay)
        if self._error is not None:  # kept before the move: a crash in between leaves a true record
            last_errors.record(mb.folders, self.message.id, self.name, self.attempt, self._error, due)
        mb.folders.arrived(self._move_back(due))
        return State.NEW

    def _due(self, delay: float | None) -> float:
        """When a nacked message is due again: after ``delay`` seconds, else after the backoff."""
        wait = self._mailbox.backoff.delay(self.attempt) if delay is None else delay
        return time.time() + max(wait, 0.0)

    def _move_back(self, due: float) -> str:
        """The NACK move (committed), due at ``due``; the name the file got in ``new/``."""
        info = parse_name(self.name)
        assert info is not None  # processing/ names are always ours
        folders = self._mailbox.folders
        try:
            new_fd, target = folders.place(NACK, self.name, info.with_(due=compact_time(due)))
        except FileNotFoundError:
            self._release()
            raise DeliveryLostError(f"{self.name}: lease expired and the message was recovered") from None
        except OSError as exc:
            self._release()
            raise folders.io_error(exc, f"nack {self.name}") from exc
        try:
            folders.commit(new_fd)
        except OSError as exc:
            raise folders.io_error(exc, f"nack {self.name}: commit of new/ failed") from exc
        finally:
            self._release()
        return target

    def dead(self, reason: str) -> None:
        """To ``dead/`` now, with ``reason``."""
        self._give_up(reason, self._error)

    def _give_up(self, reason: str, error: str | None) -> None:
        self._check_open()
        mb = self._mailbox
        why = {
            "reason": reason,
            "last_error": error,
            "message_file": self.name,
            "id": self.message.id,
            "topic": self.message.topic,
            "attempts": self.attempt,
        }
        try:
            moved = mb.folders.dead_letter(GIVE_UP, self.name, why)
        finally:
            self._release()
        if moved is None:
            raise DeliveryLostError(f"{self.name}: lease expired and the message was recovered")
        log.log(_log.event_level(), "%s: message %s dead-lettered: %s", mb.agent_id, self.message.id, reason)

    def heartbeat(self) -> None:
        """Extend the lease. Raises `DeliveryLostError` if recovery already took the message back."""
        self._check_open()
        os.utime(self._fd)
        if os.fstat(self._fd).st_nlink == 0:
            self._release()
            raise DeliveryLostError(f"{self.name}: lease expired and the message was recovered")

    def _check_open(self) -> None:
        if self._settled:
            raise DeliveryError(f"{self.name} is already settled")

    def _release(self) -> None:
        """Give up the file: drop the lock (explicitly, in case a forked child shares the fd) and
        close it. (`ack` only closes: in done/ no one looks at locks.)"""
        if not self._settled:
            self._settled = True
            try:
                unlock(self._fd)
            finally:
                os.close(self._fd)

    def __del__(self) -> None:
        # Never settled: drop the lock so recovery can return the message.
        if not getattr(self, "_settled", True):
            try:
                os.close(self._fd)
            except OSError:
                pass


def _ack_file(folders: Folders, name: str, retention: Retention) -> None:
    """The acked file into ``done/``, or removed where ``done/`` keeps none (``done_retention=0``)."""
    if retention.keep == 0:
        _remove(folders, name)
    else:
        _move_to_done(folders, name, retention)


def _remove(folders: Folders, name: str) -> None:
    """The ack with ``done_retention=0``: the file removed from ``processing/`` (committed)."""
    proc_fd = folders.fds[_PROCESSING]
    os.unlink(name, dir_fd=proc_fd)
    if folders.sync:
        folders.commit(proc_fd)


def _move_to_done(folders: Folders, name: str, retention: Retention) -> None:
    """The ACK move into ``done/`` (committed), then ``done/`` trimmed to its retention."""
    try:
        done_fd = folders.move(ACK, name, name)
    except FileExistsError:  # a file of that name in done/ already (a hand-made copy)
        done_fd = folders.place(ACK, name, name)[0]
    if folders.sync:
        folders.commit(done_fd)
    if retention.every:
        retention.acked(done_fd)
