"""A claimed message, and the calls that settle it."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from . import _last_errors
from ._locking import unlock
from .errors import DeliveryError, DeliveryLostError, MailboxIOError
from .message import Message
from .states import ACK, State

_PROCESSING = State.PROCESSING.folder

if TYPE_CHECKING:
    from .mailbox import FileMailbox

__all__ = ["Delivery", "SettledByMailbox", "Settling"]

_D = TypeVar("_D", bound="Settling")


class Settling:
    """What the delivery of every backend shares: one settle only, and the context manager (ack when
    the block ends normally, nack with backoff and the error when it raises; the exception still
    propagates). Subclasses set the slots below and define ``ack``, ``nack``, ``dead``, ``heartbeat``."""

    __slots__ = ("_error", "_mailbox", "_settled", "attempt", "message", "name")

    _error: str | None
    _settled: bool
    attempt: int
    message: Message
    name: str

    def _start(self, mailbox: Any, name: str, message: Message, attempt: int) -> None:
        self._mailbox = mailbox
        self.name = name
        self.message = message
        self.attempt = attempt
        self._settled = False
        self._error = None

    @property
    def settled(self) -> bool:
        return self._settled

    def ack(self) -> None:
        raise NotImplementedError

    def nack(self, delay: float | None = None, error: str | BaseException | None = None) -> None:
        raise NotImplementedError

    def __enter__(self: _D) -> _D:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._settled:
            return
        if exc is None:
            self.ack()
        else:
            self._error = f"{type(exc).__name__}: {exc}"
            self.nack(error=self._error)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.message.id} topic={self.message.topic!r} attempt={self.attempt}>"
        )


class SettledByMailbox(Settling):
    """A delivery whose settles are its mailbox's ``_ack``, ``_nack``, ``_bury`` and ``_heartbeat``
    (the in-memory and Redis backends)."""

    __slots__ = ()

    def _check(self) -> None:
        if self._settled:
            raise DeliveryError(f"{self.name} is already settled")

    def ack(self) -> None:
        self._check()
        self._settled = True
        self._mailbox._ack(self)

    def nack(self, delay: float | None = None, error: str | BaseException | None = None) -> None:
        self._check()
        self._settled = True
        if error is not None:
            self._error = str(error)
        self._mailbox._nack(self, delay, self._error)

    def dead(self, reason: str) -> None:
        self._check()
        self._settled = True
        self._mailbox._bury(self, reason, self._error)

    def heartbeat(self) -> None:
        self._check()
        self._mailbox._heartbeat(self)


class Delivery(Settling):
    """A claimed message. Settle it exactly once: `ack`, `nack` or `dead`.

    As a context manager it acks when the block ends normally and nacks (with backoff) when the
    block raises; the exception still propagates. ``attempt`` is 1 on the first delivery.
    """

    __slots__ = ("_fd",)
    _mailbox: FileMailbox

    def __init__(self, mailbox: FileMailbox, fd: int, name: str, message: Message, attempt: int) -> None:
        self._start(mailbox, name, message, attempt)
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
        if self._settled:
            raise DeliveryError(f"{self.name} is already settled")
        self._settled = True
        name = self.name
        mb = self._mailbox
        folders = mb.folders
        retention = mb.retention
        try:
            if retention.keep == 0:
                proc_fd = folders.fds[_PROCESSING]
                os.unlink(name, dir_fd=proc_fd)
                if folders.sync:
                    folders.commit(proc_fd)
            else:
                try:
                    done_fd = folders.move(ACK, name, name)
                except FileExistsError:  # a file of that name in done/ already (a hand-made copy)
                    done_fd = folders.place(ACK, name, name)[0]
                if folders.sync:
                    folders.commit(done_fd)
                if retention.every:
                    retention.acked(done_fd)
        except FileNotFoundError:
            raise DeliveryLostError(f"{name}: lease expired and the message was recovered") from None
        except KeyError:
            raise MailboxIOError(errno.EBADF, f"mailbox {mb.path} is closed") from None
        except OSError as exc:
            raise mb.folders.io_error(exc, f"ack {name}") from exc
        finally:
            os.close(self._fd)  # in done/ (or gone) the lock no longer matters: closing drops it
        if self.attempt > 1:  # only a redelivery can have a last error kept (errors/): done with it
            _last_errors.drop(mb, self.message.id)

    def nack(self, delay: float | None = None, error: str | BaseException | None = None) -> None:
        """Back to ``new/``, due after ``delay`` seconds (default: the mailbox's backoff); past
        ``max_attempts`` to ``dead/`` instead, with ``error`` in the reason."""
        self._mailbox._nack(self, delay, None if error is None else str(error))

    def dead(self, reason: str) -> None:
        self._mailbox._give_up(self, reason, self._error)

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
