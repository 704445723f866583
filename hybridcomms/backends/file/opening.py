"""Finding (or making) one file mailbox's folders: ``<root>/<agent>/`` and its state folders.

`FolderSetup` says where they are and how they are made; `open_state_folders` opens them all (a
`Folders` is built from what it returns), `open_errors_folder` the ``errors/`` folder at its first
use. Every folder is opened relative to its parent's descriptor, never through a link, and checked
for its owner (`_fs.check_owner`) unless made here.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from ... import _fs
from ...errors import MailboxIOError, UnsafePathError
from ...states import State
from ..base import AGENT_ID_RE

__all__ = ["FolderSetup", "list_agents", "open_errors_folder", "open_state_folders"]

#: The order a mailbox's folders are opened in: ``new/`` first, since it is what makes a mailbox.
OPEN_ORDER = (State.NEW, State.TMP, State.PROCESSING, State.DONE, State.DEAD)
#: What to do about a folder that is missing: make it, raise, or go on without it.
MAKE, FAIL, SKIP = "make", "fail", "skip"


@dataclass
class FolderSetup:
    """Where one mailbox's folders are and how they are made; shared by every `Folders` the mailbox
    opens (a mailbox folder made anew is opened again with the same setup)."""

    root: str  #: the mailbox root, absolute once the mailbox is open
    agent_id: str
    path: Path  #: ``<root>/<agent_id>`` as given (what messages show)
    dir_mode: int  #: mode of the folders made here
    follow_dir_mode: bool  #: no mode given: folders under a group-writable root are group folders
    allow_other_owner: bool
    create: bool  #: make what is missing (else the agent folder and ``new/`` must exist)
    read_only: bool  #: never make or write anything; a state folder missing reads as empty
    file_mode: int = 0o600  #: mode of message files (settled once ``new/`` is open)
    chmod_files: bool = False  #: the umask would take bits off `file_mode`: chmod each file

    def missing_rule(self, state: State) -> str:
        """What to do when the folder of ``state`` is missing."""
        if self.create:
            return MAKE
        if state is State.NEW:
            return FAIL  # new/ is what makes a mailbox: nothing is made in a folder that lacks it
        return SKIP if self.read_only else MAKE


def open_state_folders(setup: FolderSetup, sync: bool, root: str) -> tuple[dict[str, int], frozenset[str]]:
    """Open (making per `FolderSetup.missing_rule`) the agent's state folders under ``root``: their
    descriptors by folder name, and the folders a read-only mailbox found missing. ``sync``: the
    folders made are committed (they survive a power loss)."""
    made_root = setup.create and _make_root(setup, root)
    root_fd = _open_root(root)
    fds: dict[str, int] = {}
    try:
        _settle_dir_mode(setup, root_fd, made_root)
        if made_root:
            _commit_root(setup, root_fd, root, sync)
        agent_fd = _open_agent_folder(setup, root_fd, sync)
        try:
            absent = _open_states(setup, agent_fd, sync, fds)
        finally:
            os.close(agent_fd)
    except BaseException:
        _close_all(fds)
        raise
    finally:
        os.close(root_fd)
    return fds, frozenset(absent)


def _open_agent_folder(setup: FolderSetup, root_fd: int, sync: bool) -> int:
    """``<root>/<agent>/``, opened (made only if the setup creates what is missing)."""
    agent_fd = open_folder(
        setup, root_fd, setup.agent_id, str(setup.path), MAKE if setup.create else FAIL, sync
    )
    assert agent_fd is not None  # MAKE and FAIL never give None
    return agent_fd


def _open_states(setup: FolderSetup, agent_fd: int, sync: bool, fds: dict[str, int]) -> list[str]:
    """Open the state folders under ``agent_fd`` into ``fds`` (by folder name, in `OPEN_ORDER`); the
    folders missing and skipped."""
    absent = []
    for state in OPEN_ORDER:
        shown = str(setup.path / state.folder)
        fd = open_folder(setup, agent_fd, state.folder, shown, setup.missing_rule(state), sync)
        if fd is None:
            absent.append(state.folder)
        else:
            fds[state.folder] = fd
    return absent


def _close_all(fds: dict[str, int]) -> None:
    for fd in fds.values():
        os.close(fd)


def open_errors_folder(setup: FolderSetup, name: str, create: bool, sync: bool) -> int | None:
    """The folder ``<root>/<agent>/<name>`` (``errors/``), opened (made if ``create``); None if it
    does not exist and ``create`` is False."""
    root_fd = _open_root(setup.root)
    try:
        agent_fd = open_folder(setup, root_fd, setup.agent_id, str(setup.path), FAIL, sync)
        assert agent_fd is not None  # FAIL raises instead
        try:
            return open_folder(setup, agent_fd, name, str(setup.path / name), MAKE if create else SKIP, sync)
        finally:
            os.close(agent_fd)
    finally:
        os.close(root_fd)


def _make_root(setup: FolderSetup, root: str) -> bool:
    """Make the mailbox root if it is missing; whether it was made here."""
    if os.path.isdir(root):
        return False
    try:
        os.makedirs(root, mode=setup.dir_mode)
    except FileExistsError:
        return False
    except OSError as exc:
        raise MailboxIOError(exc.errno, f"cannot create mailbox root {root}: {exc.strerror}", root) from exc
    return True


def _open_root(root: str) -> int:
    """The mailbox root, opened as a folder."""
    try:
        return os.open(root, _fs.O_DIR)
    except OSError as exc:
        raise MailboxIOError(exc.errno, f"cannot open mailbox root {root}: {exc.strerror}", root) from exc


def _settle_dir_mode(setup: FolderSetup, root_fd: int, made_root: bool) -> None:
    """Folders made under a group-writable root are group folders too (unless a mode was given)."""
    if setup.follow_dir_mode and not made_root and stat.S_IMODE(os.fstat(root_fd).st_mode) & 0o070 == 0o070:
        setup.dir_mode = 0o770


def _commit_root(setup: FolderSetup, root_fd: int, root: str, sync: bool) -> None:
    """A root made here: exactly `dir_mode` (whatever the umask), its entry in its parent committed."""
    os.fchmod(root_fd, setup.dir_mode)
    if not sync:
        return
    try:
        _fs.fsync_dir(os.path.dirname(os.path.abspath(root)))
    except OSError as exc:
        raise MailboxIOError(exc.errno, f"cannot commit {root}: {exc.strerror}", root) from exc


def open_folder(
    setup: FolderSetup, parent_fd: int, name: str, shown: str, missing: str, sync: bool
) -> int | None:
    """The folder ``name`` under ``parent_fd``, opened; when it is missing, ``missing`` says what to
    do: `MAKE` it (with `dir_mode`), `FAIL` (`MailboxIOError` ENOENT), or `SKIP` (None)."""
    opened = _open_or_make(setup, parent_fd, name, shown, missing)
    if opened is None:
        return None
    fd, made = opened
    try:
        _set_up_folder(setup, parent_fd, fd, shown, made, sync)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_or_make(
    setup: FolderSetup, parent_fd: int, name: str, shown: str, missing: str
) -> tuple[int, bool] | None:
    """The folder ``name`` opened, and whether it was made here (`open_folder`); None if it is
    missing and skipped."""
    made = False
    while True:
        fd = _open_existing(parent_fd, name, shown)
        if fd is not None:
            return fd, made
        if missing == SKIP:
            return None
        made |= _make_missing(setup, parent_fd, name, shown, missing)


def _make_missing(setup: FolderSetup, parent_fd: int, name: str, shown: str, missing: str) -> bool:
    """A missing folder that `FAIL`s raises `MailboxIOError` (ENOENT); one to `MAKE` is made: whether
    here (False if someone else made it meanwhile)."""
    if missing == FAIL:
        raise MailboxIOError(errno.ENOENT, f"no mailbox folder {shown}", shown)
    return _make_folder(setup, parent_fd, name, shown)


def _open_existing(parent_fd: int, name: str, shown: str) -> int | None:
    """The folder ``name`` under ``parent_fd`` opened (never through a link); None if it is missing."""
    try:
        return _fs.open_dir(name, dir_fd=parent_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _refusal(exc, shown) from (None if exc.errno in (errno.ELOOP, errno.ENOTDIR) else exc)


def _make_folder(setup: FolderSetup, parent_fd: int, name: str, shown: str) -> bool:
    """mkdir ``name`` under ``parent_fd``; False if someone else made it meanwhile."""
    try:
        os.mkdir(name, setup.dir_mode, dir_fd=parent_fd)
    except FileExistsError:
        return False
    except OSError as exc:
        raise MailboxIOError(exc.errno, f"cannot create {shown}: {exc.strerror}", shown) from exc
    return True


def _refusal(exc: OSError, shown: str) -> Exception:
    """Why a folder did not open: a link or not a folder (`UnsafePathError`), else I/O."""
    if exc.errno in (errno.ELOOP, errno.ENOTDIR):
        kind = "a symlink" if os.path.islink(shown) else "not a folder"
        return UnsafePathError(f"{shown} is {kind}; a mailbox folder must be a real folder")
    return MailboxIOError(exc.errno, f"cannot open {shown}: {exc.strerror}", shown)


def _set_up_folder(setup: FolderSetup, parent_fd: int, fd: int, shown: str, made: bool, sync: bool) -> None:
    """A folder made here gets exactly `dir_mode` and its entry committed; one found is checked for
    its owner."""
    try:
        if made:
            _settle_made(setup, parent_fd, fd, sync)
        else:
            _fs.check_owner(
                fd, shown, "a mailbox", "FileMailbox(..., allow_other_owner=True)", setup.allow_other_owner
            )
    except OSError as exc:
        raise MailboxIOError(exc.errno, f"cannot set up {shown}: {exc.strerror}", shown) from exc


def _settle_made(setup: FolderSetup, parent_fd: int, fd: int, sync: bool) -> None:
    """A folder made here: exactly `dir_mode` (whatever the umask), its entry committed if ``sync``."""
    os.fchmod(fd, setup.dir_mode)
    if sync:
        os.fsync(parent_fd)  # the new folder's entry survives a power loss


def list_agents(root: str | os.PathLike[str]) -> list[str]:
    """Agent ids that have a hybridcomms mailbox (a ``new/`` folder) under ``root``."""
    try:
        entries = sorted(os.listdir(root))
    except FileNotFoundError:
        return []
    return [name for name in entries if _is_mailbox(root, name)]


def _is_mailbox(root: str | os.PathLike[str], name: str) -> bool:
    """Whether the entry ``name`` of ``root`` is an agent's mailbox: a safe agent id, with ``new/``."""
    return AGENT_ID_RE.match(name) is not None and _is_real_folder(root, name, "new")


def _is_real_folder(root: str | os.PathLike[str], *parts: str) -> bool:
    """Whether every component of ``root/parts…`` is a folder itself (a link there is not ours: a
    co-tenant's link in place of an agent folder or its ``new/`` is never followed)."""
    path = os.fspath(root)
    for part in parts:
        path = os.path.join(path, part)
        if not _is_folder_itself(path):
            return False
    return True


def _is_folder_itself(path: str) -> bool:
    """Whether ``path`` is a folder, not a link to one (False if it cannot be looked at)."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False
