"""The open folders of one file mailbox, and the one way a file moves between them.

`FileMailbox` holds one `Folders` (``mailbox.folders``); the modules that work on its files
(`delivery`, `recovery`, `inspection`, the CLI's `doctor`, legacy ingestion) go through this API and
never through the mailbox's private members:

- `fd(state)`: the folder's descriptor (`MailboxIOError` once the mailbox is closed, or for a folder
  a read-only mailbox found missing);
- `check_writable()`: raise `MailboxIOError` (EROFS) if the mailbox was opened read-only;
- `has(state)`: False for a folder a read-only mailbox found missing (inspection reads it as empty);
- `move(m, name, target)`: the atomic rename of `m` (a `states.Move`), never replacing a file;
- `place(m, name, target)`: the same, taking the next free name when ``target`` is taken;
- `commit(fd)`: make a folder change durable, per the fsync policy (`DirSyncer`);
- `move_and_commit(...)`: both, the common case;
- `io_error(exc, what)`: an `OSError` said as the mailbox's `MailboxIOError`.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ... import _fs
from ..._fs import DirSyncer, FsyncPolicy
from ..._names import compact_time, parse_compact, parse_name
from ...errors import MailboxIOError
from ...states import Move, State

__all__ = ["Folders"]


class Folders:
    def __init__(self, path: Path, policy: FsyncPolicy, batch_interval: float) -> None:
        self.path = path
        self.fds: dict[str, int] = {}  # folder name -> open fd (empty once closed)
        #: Folders a read-only mailbox found missing (a mailbox made by hand with only ``new/``).
        self.absent: frozenset[str] = frozenset()
        self.read_only = False  # opened for inspection: every write refuses (`check_writable`)
        self.syncer = DirSyncer(policy, batch_interval)
        self.sync = policy is not FsyncPolicy.NEVER  # folder changes are committed at all

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
                info = parse_name(target)
                if m.dst is State.NEW and info is not None:
                    target = info.with_(due=compact_time(parse_compact(info.due) + 1e-6))
                else:
                    target = _fs.free_name(self.fd(m.dst), target)
        raise MailboxIOError(errno.EEXIST, f"no free name for {target} in {m.dst_folder}/")

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

    def io_error(self, exc: OSError, what: str) -> MailboxIOError:
        if isinstance(exc, MailboxIOError):
            return exc
        return MailboxIOError(exc.errno, f"{what} in {self.path} failed: {exc.strerror or exc}", exc.filename)

    def flush(self) -> None:
        self.syncer.flush()

    def close(self) -> None:
        fds, self.fds = self.fds, {}
        for fd in fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
