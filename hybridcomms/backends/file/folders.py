"""The open folders of one file mailbox, and everything done to files between them.

`FileMailbox` holds one `Folders` (``mailbox.folders``); the modules that work on its files
(`delivery`, `recovery`, `inspection`, `last_errors`, the CLI's `doctor`, legacy ingestion) go
through this API and never through the mailbox's private members:

- `open(setup, …)`: the agent's folders, found or made (`opening`); `errors_folder(create=…)`:
  ``errors/``, opened at its first use;
- `fd(state)`: the folder's descriptor (`MailboxIOError` once the mailbox is closed, or for a folder
  a read-only mailbox found missing);
- `check_writable()`: raise `MailboxIOError` (EROFS) if the mailbox was opened read-only;
- `has(state)`: False for a folder a read-only mailbox found missing (inspection reads it as empty);
- `move(m, name, target)`: the atomic rename of `m` (a `states.Move`), never replacing a file;
- `place(m, name, target)`: the same, taking the next free name when ``target`` is taken;
- `commit(fd)`: make a folder change durable, per the fsync policy (`DirSyncer`);
- `move_and_commit(...)`: both, the common case;
- `write_tmp(...)`: a new file in ``tmp/``; `publish(...)`: the PUBLISH move; `withdraw(names)`:
  take back files just published;
- `claim_move(name, target, problem)`: the CLAIM move (or the file rejected); `reject_unopenable`,
  `expire`: what a claim does with a file it cannot hand out;
- `dead_letter(m, name, reason)`: a file to ``dead/`` with its reason file (`dead_letters`);
  `reject(name, reason)`: a file of ``new/`` that can never be delivered; `bury`, `import_done`:
  legacy messages taken over (`FileMailbox.bury`, `FileMailbox.import_done`);
- `arrived(name)`: tell this mailbox handle's claim index of a file moved into ``new/``;
- `io_error(exc, what)`: an `OSError` said as the mailbox's `MailboxIOError`.
"""

from __future__ import annotations

import errno
import os
import threading
import uuid
from collections.abc import Iterable
from typing import Any

from ... import _fs, _log
from ..._fs import DirSyncer, FsyncPolicy, write_new_file
from ..._names import REASON_SUFFIX, compact_time, parse_compact, parse_name
from ...errors import MailboxIOError
from ...message import Message
from ...states import CLAIM, EXPIRE, IMPORT_DEAD, IMPORT_DONE, PUBLISH, REJECT, Move, State
from ..base import expiry_reason
from . import dead_letters
from .index import ClaimIndex
from .last_errors import ERRORS
from .opening import FolderSetup, open_errors_folder, open_state_folders

__all__ = ["Folders", "is_plain_name"]

log = _log.get("hybridcomms.mailbox")


def is_plain_name(name: str) -> bool:
    """Whether ``name`` can only be a file right inside a folder: not empty, no ``/``, no leading dot
    (``.``, ``..`` and hidden names are never messages)."""
    return bool(name) and "/" not in name and not name.startswith(".")


def _check_dead_name(name: str) -> None:
    """Raise `ValueError` unless ``name`` can be a dead letter's name (a plain name, not a reason file's)."""
    if not is_plain_name(name) or name.endswith(REASON_SUFFIX):
        raise ValueError(f"unusable file name for dead/: {name!r}")


class Folders:
    """One opening of a mailbox's folders (a mailbox folder made anew is opened again as another)."""

    def __init__(
        self, setup: FolderSetup, policy: FsyncPolicy, batch_interval: float, index: ClaimIndex
    ) -> None:
        self.setup = setup
        self.path = setup.path
        self.agent_id = setup.agent_id
        self.fds: dict[str, int] = {}  # folder name -> open fd (empty once closed)
        #: Folders a read-only mailbox found missing (a mailbox made by hand with only ``new/``).
        self.absent: frozenset[str] = frozenset()
        self.read_only = setup.read_only  # opened for inspection: every write refuses (`check_writable`)
        self.syncer = DirSyncer(policy, batch_interval)
        self.sync = policy is not FsyncPolicy.NEVER  # folder changes are committed at all
        #: The claim order of the mailbox handle: told of every file moved into ``new/`` (`arrived`).
        self.index = index
        self.closed = False
        self._errors_lock = threading.Lock()

    @classmethod
    def open(
        cls, setup: FolderSetup, policy: FsyncPolicy, batch_interval: float, index: ClaimIndex, root: str
    ) -> Folders:
        """The mailbox's folders under ``root``, all open (made as `setup` says) before anyone sees them."""
        folders = cls(setup, policy, batch_interval, index)
        folders.fds, folders.absent = open_state_folders(setup, folders.sync, root)
        return folders

    def errors_folder(self, *, create: bool) -> int | None:
        """The descriptor of ``errors/`` (the last errors of messages waiting for a retry,
        `hybridcomms.backends.file.last_errors`), opened at its first use; None if it does not exist and
        ``create`` is False."""
        fd = self.fds.get(ERRORS)
        if fd is not None:
            return fd
        with self._errors_lock:
            return self._open_errors_folder(create)

    def _open_errors_folder(self, create: bool) -> int | None:
        """Under the lock: ``errors/`` opened (unless another thread just did) and kept open."""
        fd = self.fds.get(ERRORS)
        if fd is not None:
            return fd
        if self.closed:
            raise MailboxIOError(errno.EBADF, f"mailbox {self.path} is closed")
        fd = open_errors_folder(self.setup, ERRORS, create, self.sync)
        if fd is not None:
            self.fds[ERRORS] = fd
        return fd

    def fd(self, state: State) -> int:
        try:
            return self.fds[state.folder]
        except KeyError:
            if state.folder in self.absent:
                shown = self.path / state.folder
                raise MailboxIOError(errno.ENOENT, f"no mailbox folder {shown}", str(shown)) from None
            raise MailboxIOError(errno.EBADF, f"mailbox {self.path} is closed") from None

    def check_writable(self) -> None:
        """Raise if the mailbox was opened read-only (for inspection, which never writes)."""
        if self.read_only:
            raise MailboxIOError(
                errno.EROFS, f"mailbox {self.path} is opened read-only (for inspection); nothing is written"
            )

    def has(self, state: State) -> bool:
        """False for a folder a read-only mailbox found missing (to be read as empty)."""
        return state.folder not in self.absent

    def move(self, m: Move, name: str, target: str) -> int:
        """Move ``m.src/name`` to ``m.dst/target``: the one way a file changes state. Returns dst's fd.

        The rename is atomic and never replaces a file (`FileExistsError` if ``target`` is taken; see
        `place`); committing it is `commit`."""
        fds = self.fds
        try:
            src_fd, dst_fd = fds[m.src_folder], fds[m.dst_folder]
        except KeyError:
            raise MailboxIOError(errno.EBADF, f"mailbox {self.path} is closed") from None
        _fs.rename_noreplace(name, target, src_dir_fd=src_fd, dst_dir_fd=dst_fd)
        return dst_fd

    def place(self, m: Move, name: str, target: str) -> tuple[int, str]:
        """`move`, and if ``target`` is taken by another file (a hand-made copy, the same id and time
        twice), the next free name: 1 µs later in ``new/`` (still the same id), ``.N`` elsewhere.
        Returns dst's fd and the name the file got."""
        for _ in range(1000):
            try:
                return self.move(m, name, target), target
            except FileExistsError:
                target = self._next_free(m.dst, target)
        raise MailboxIOError(errno.EEXIST, f"no free name for {target} in {m.dst_folder}/")

    def _next_free(self, state: State, target: str) -> str:
        """The name to try after ``target`` was taken in ``state``'s folder: 1 µs later in ``new/``
        (still the same id, a message name of ours), the next ``.N`` elsewhere."""
        info = parse_name(target)
        if state is State.NEW and info is not None:
            return info.with_(due=compact_time(parse_compact(info.due) + 1e-6))
        return _fs.free_name(self.fd(state), target)

    def commit(self, fd: int) -> None:
        """A change in the folder ``fd`` survives a power loss (now, at the next batch, or never,
        per the policy)."""
        self.syncer.changed(fd)

    def move_and_commit(self, m: Move, name: str, target: str, *, place: bool = False) -> str:
        """`move` (or `place`) and `commit` the destination; the name the file got."""
        if place:
            fd, target = self.place(m, name, target)
        else:
            fd = self.move(m, name, target)
        self.commit(fd)
        return target

    def arrived(self, name: str) -> None:
        """A file was moved into ``new/`` as ``name``: the claim index of this handle hears of it."""
        self.index.push(name)

    def write_tmp(self, tmp_fd: int, name: str, data: bytes | _fs.ByteRange, *, sync: bool) -> str:
        """Write ``data`` as a new file in ``tmp/`` (``name``, or a free variant of it); its name.
        On failure nothing is left in ``tmp/``."""
        setup = self.setup
        tmp_name = name
        try:
            try:
                write_new_file(tmp_fd, tmp_name, data, setup.file_mode, sync=sync)
            except FileExistsError:
                tmp_name = f"{name}.{uuid.uuid4().hex[:12]}"
                write_new_file(tmp_fd, tmp_name, data, setup.file_mode, sync=sync)
            if setup.chmod_files:
                os.chmod(tmp_name, setup.file_mode, dir_fd=tmp_fd)
        except OSError as exc:
            _fs.unlink_quietly(tmp_fd, tmp_name)
            raise self.io_error(exc, f"put {name}") from exc
        return tmp_name

    def publish(self, tmp_fd: int, tmp_name: str, name: str) -> int:
        """The PUBLISH move; ``new/``'s fd. A file of the same name in ``new/`` is this very message
        (same id, same due time: a put repeated after an error) and stays the one copy: ours is dropped."""
        try:
            return self.move(PUBLISH, tmp_name, name)
        except FileExistsError:
            _fs.unlink_quietly(tmp_fd, tmp_name)
            return self.fd(State.NEW)

    def withdraw(self, names: Iterable[str]) -> None:
        """Take back files just published whose commit failed (unless already claimed), and commit
        the removal where fsync is on (else a power loss could bring back a put that raised)."""
        new_fd = self.fd(State.NEW)
        for name in names:
            _fs.unlink_quietly(new_fd, name)  # ENOENT: already claimed, it will be delivered
        if self.sync:
            try:
                os.fsync(new_fd)
            except OSError:
                pass  # the put raises anyway; the disk is failing

    def dead_letter(
        self, m: Move, name: str, reason: dict[str, Any], target: str | None = None
    ) -> str | None:
        """``m.src``/name -> dead/ (as ``target``, default ``name``, or the next free name), with its
        reason file written first; the name it got, None if the file was gone (`dead_letters`)."""
        return dead_letters.dead_letter(self, m, name, reason, target)

    def reject(self, name: str, reason: str) -> None:
        """new/ -> dead/ for a file that can never be delivered; its bytes stay as they are."""
        log.log(_log.event_level(), "%s: new/%s goes to dead/: %s", self.agent_id, _fs.shown(name), reason)
        self.dead_letter(REJECT, name, {"reason": reason, "message_file": _fs.shown(name), "attempts": 0})

    def claim_move(self, name: str, target: str, problem: str) -> bool:
        """The CLAIM move, ``new/<name>`` -> ``processing/<target>``, never over a file already in
        processing/ (a copy of the same id: rejected). False if it did not happen: no ``target``
        (rejected for ``problem``), or the file is gone (moved by hand under our feet)."""
        if not target:
            self.reject(name, problem)
            return False
        try:
            self.move(CLAIM, name, target)
        except FileNotFoundError:
            return False
        except FileExistsError:
            self.reject(name, f"a file of the same name ({target}) is already in processing/")
            return False
        return True

    def reject_unopenable(self, name: str, exc: OSError) -> None:
        """A file of ``new/`` that did not open: rejected when it never will (a link, a FIFO, a file
        we may not read), else the error raised."""
        if exc.errno == errno.ELOOP:
            self.reject(name, "a symlink, not a regular file")
        elif exc.errno in (errno.ENXIO, errno.EOPNOTSUPP, errno.EACCES, errno.EPERM):
            self.reject(name, f"cannot be opened: {exc.strerror}")
        else:
            raise self.io_error(exc, f"claim {name}") from exc

    def expire(self, name: str, message: Message, seen: int) -> None:
        """``new/<name>`` is past its expiry (found by a claim, after ``seen`` deliveries): dead-lettered,
        never handed out."""
        self.dead_letter(EXPIRE, name, expiry_reason(message, seen, name))
        log.info("%s: message %s expired before it was claimed", self.agent_id, message.id)

    def bury(self, data: bytes | _fs.ByteRange, name: str, reason: dict[str, Any]) -> str | None:
        """`FileMailbox.bury`: bytes into ``dead/`` as ``name`` with ``reason``; None if there already."""
        _check_dead_name(name)
        self.check_writable()
        if self._in_dead(name):
            return None
        tmp_name = self.write_tmp(self.fd(State.TMP), name, data, sync=self.sync)
        return None if self.dead_letter(IMPORT_DEAD, tmp_name, reason) is None else name

    def _in_dead(self, name: str) -> bool:
        """Whether ``dead/`` holds an entry named ``name`` (a link is not followed)."""
        try:
            os.stat(name, dir_fd=self.fd(State.DEAD), follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True

    def import_done(self, files: list[tuple[str, bytes]]) -> None:
        """`FileMailbox.import_done`: each (name, encoded message) of ``files`` into ``done/``."""
        tmp_fd, done_fd = self.fd(State.TMP), self.fd(State.DONE)
        try:
            for name, data in files:
                self.place(IMPORT_DONE, self.write_tmp(tmp_fd, name, data, sync=False), name)
            self._sync_imported(done_fd, files)
        except OSError as exc:
            raise self.io_error(exc, f"import of {len(files)} processed messages") from exc

    def _sync_imported(self, done_fd: int, files: list[tuple[str, bytes]]) -> None:
        """The ``files`` imported into ``done/`` on disk, with their names (one syncfs, one commit),
        where the fsync policy syncs at all."""
        if files and self.sync:
            _fs.syncfs(done_fd)
            self.commit(done_fd)

    def io_error(self, exc: OSError, what: str) -> MailboxIOError:
        if isinstance(exc, MailboxIOError):
            return exc
        return MailboxIOError(exc.errno, f"{what} in {self.path} failed: {exc.strerror or exc}", exc.filename)

    def flush(self) -> None:
        self.syncer.flush()

    def close(self) -> None:
        self.closed = True
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
