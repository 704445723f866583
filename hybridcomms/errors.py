"""Every exception hybridcomms raises on purpose.

Caller mistakes are also ``ValueError`` or ``TypeError``; I/O failures are also
``OSError``, so code written against the legacy Dream.OS API (which caught those)
keeps working.

    HybridCommsError
    ├── InvalidAgentIdError          (also ValueError)  unsafe or malformed agent id
    ├── MessageError                 (also ValueError)  a message that cannot be built or sent
    │   ├── MessageTooLargeError                        encoded size over the configured limit
    │   └── MessageDecodeError                          bytes that are not a message (keeps raw + path)
    ├── LockTimeoutError         (also TimeoutError) a lock file stayed locked for the whole timeout
    ├── RequestTimeoutError      (also TimeoutError) no reply to `Comms.request` within its timeout
    ├── PolicyError              (also ValueError)  a policy file or rule that cannot be used
    └── MailboxError                                     mailbox-level failures
        ├── MailboxIOError           (also OSError)     an I/O step failed; nothing was half-done
        │   └── BackendUnavailableError                  the backend cannot be reached (refused, timed
        │                                                out, credentials refused, no such host)
        ├── UnsafePathError                              a mailbox folder is a symlink or not a folder
        └── DeliveryError            (also RuntimeError) a settle call on a delivery that can't be settled
            └── DeliveryLostError                       the delivery was taken away (lease expired)

Two ``OSError`` subclasses, internal (not in ``__all__``), say what a file found under a mailbox is,
for the readers inside the package (they become dead letters or refusals, never reach a caller):

    NotRegularFileError  (OSError)   a FIFO, folder, device… where a file was expected
    TooLargeError        (OSError)   a file bigger than its reader's cap
"""

from __future__ import annotations

import errno as _errno

__all__ = [
    "BackendUnavailableError",
    "DeliveryError",
    "DeliveryLostError",
    "HybridCommsError",
    "InvalidAgentIdError",
    "LockTimeoutError",
    "MailboxError",
    "MailboxIOError",
    "MessageDecodeError",
    "MessageError",
    "MessageTooLargeError",
    "PolicyError",
    "RequestTimeoutError",
    "UnsafePathError",
]


class HybridCommsError(Exception):
    """Root of every hybridcomms error."""


class InvalidAgentIdError(HybridCommsError, ValueError):
    """An agent id that is not a safe, single path component."""


class LockTimeoutError(HybridCommsError, TimeoutError):
    """A lock file stayed locked by someone else for the whole timeout."""


class MessageError(HybridCommsError, ValueError):
    """A message that cannot be built, encoded or sent as given."""


class MessageTooLargeError(MessageError):
    """The encoded message is larger than the configured limit; nothing was written."""

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"message is {size} bytes encoded, over the limit of {limit} bytes")
        self.size = size
        self.limit = limit


class MessageDecodeError(MessageError):
    """Bytes that are not a valid message. ``raw`` and ``path`` say what and where."""

    def __init__(self, reason: str, *, raw: bytes = b"", path: str | None = None) -> None:
        where = f" in {path}" if path else ""
        super().__init__(f"cannot decode message{where}: {reason}")
        self.reason = reason
        self.raw = raw
        self.path = path


class MailboxError(HybridCommsError):
    """A mailbox operation failed."""


class MailboxIOError(MailboxError, OSError):
    """An I/O step of a mailbox operation failed. The operation left nothing half-done."""

    def __init__(self, errno: int | None, message: str, filename: str | None = None) -> None:
        OSError.__init__(self, errno, message, filename)


class BackendUnavailableError(MailboxIOError):
    """The backend cannot be reached: the connection was refused or timed out, the credentials were
    refused, the host name does not resolve. The call did nothing; the same call may work once the
    backend is back. ``url`` (never with its password) and ``reason`` say where and why."""

    def __init__(self, url: str, reason: str, what: str = "") -> None:
        where = what if url in what else f"{what} on {url}" if what else url  # the URL said once
        MailboxIOError.__init__(self, _errno.EIO, f"{where} failed: cannot reach it: {reason}")
        self.url = url
        self.reason = reason

    def __str__(self) -> str:
        """The sentence alone: not ``[Errno 5]`` (EIO), which says nothing of a server out of reach."""
        return str(self.strerror)


class UnsafePathError(MailboxError):
    """A mailbox folder is a symlink, or not a folder, where a real folder must be."""


class DeliveryError(MailboxError, RuntimeError):
    """A delivery cannot be settled (acked, nacked, dead-lettered) in its current state."""


class DeliveryLostError(DeliveryError):
    """The claimed message is no longer ours: its lease expired and recovery returned it to ``new/``."""


class RequestTimeoutError(HybridCommsError, TimeoutError):
    """No reply came within the timeout. Nothing of the request is left waiting in this process."""


class PolicyError(HybridCommsError, ValueError):
    """A policy file or rule that cannot be used. ``path`` and ``line`` say where, when known."""

    def __init__(self, reason: str, *, path: str | None = None, line: int | None = None) -> None:
        super().__init__(f"{_policy_place(path, line)}{reason}")
        self.reason = reason
        self.path = path
        self.line = line


def _policy_place(path: str | None, line: int | None) -> str:
    """Where a policy error is, as the ``file:line: `` prefix of its message ("" when not known)."""
    if not (path or line):
        return ""
    return f"{path or '<policy>'}{f':{line}' if line else ''}: "


class NotRegularFileError(OSError):
    """What a producer placed where a file was expected is a FIFO, a folder, a device, …"""


class TooLargeError(OSError):
    """A file is bigger than the cap its reader set."""

    def __init__(self, size: int, limit: int, filename: str | None = None) -> None:
        super().__init__(_errno.EFBIG, f"{size} bytes, over the limit of {limit}", filename)
        self.size = size
        self.limit = limit
