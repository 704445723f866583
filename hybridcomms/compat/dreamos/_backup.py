"""The copy `migrate` makes of a root before it changes anything, through descriptors only.

The root is shared ground: every agent of the group can write in it, so any name in it can become a
link, a FIFO or a folder between the moment it is listed and the moment it is read. A copy by path
(``shutil.copytree``) follows a link swapped in over a file it has just listed, and would copy a secret
from outside the root into the backup. Here every folder is opened relative to the folder descriptor
it was listed from, without following a link (``O_NOFOLLOW | O_DIRECTORY``), and every file the same
way (``O_NOFOLLOW | O_NONBLOCK``), then checked with ``fstat`` on what was opened: what is copied is
always what is under the root, whatever was swapped meanwhile.

- Links, FIFOs, sockets and devices are not copied: each is reported (`Skipped`), as are files over
  `MAX_FILE` bytes (the cap the legacy intake reads ``inbox.json`` with) or that grow past it while
  copied, and folders nested deeper than `MAX_DEPTH`.
- A file with more than one name (``st_nlink`` > 1: a hard link) and a sparse file (its blocks on disk
  far fewer than its size, a hole found by ``SEEK_HOLE``) are not copied either, and reported: a
  co-tenant's file of no disk cost linked N times would otherwise become N full copies (legacy writers
  make neither).
- The whole copy is capped (`backup_limit`: half the free space of the backup's filesystem, and never
  more than `MAX_TOTAL`): past it the copy stops and `BackupIncompleteError` is raised, naming the
  partial backup left on disk; `migrate` then changes nothing (it never goes on without a complete
  backup, except with ``--no-backup``).
- The backup folder is made 0700 (by ``mkdir`` itself, never changed after): nobody else can read what
  is in it. What is inside keeps its mode (without set-id bits) and times; files belong to whoever
  runs ``migrate``.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from ... import _fs
from ...errors import HybridCommsError, UnsafePathError
from .legacy import DEFAULT_MAX_INBOX_JSON

__all__ = [
    "MAX_DEPTH",
    "MAX_FILE",
    "MAX_TOTAL",
    "BackupIncompleteError",
    "Skipped",
    "backup_limit",
    "backup_root",
]

#: The largest file the backup copies (bytes): the cap the legacy intake reads ``inbox.json`` with.
MAX_FILE = DEFAULT_MAX_INBOX_JSON
#: The most a backup copies in all (bytes), whatever the free space (`backup_limit`).
MAX_TOTAL = 8 << 30
#: A file of at least this size is looked at for holes (a smaller one is copied as it is).
SPARSE_MIN = 64 << 10
#: Folders nested deeper than this under the root are not copied (each level holds two descriptors).
MAX_DEPTH = 32
_BLOCK = 1 << 20
_O_SOURCE = _fs.O_READ_MSG | getattr(os, "O_NOCTTY", 0)
#: ``progress(done, total)`` in bytes.
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Skipped:
    """Something under the root the backup left out: its path under the root (printable), and why."""

    path: str
    why: str


class BackupIncompleteError(HybridCommsError):
    """The backup stopped at its limit (`backup_limit`): ``path`` is the partial copy left on disk."""

    def __init__(self, path: Path, limit: int, at: str) -> None:
        super().__init__(
            f"the backup {_fs.shown(str(path))} is incomplete: its limit of {limit} bytes was reached at "
            f"{_fs.shown(at)}; nothing was migrated (free space, move away what does not belong under "
            "the root, or make a backup of your own and run migrate --no-backup)"
        )
        self.path = path
        self.limit = limit
        self.at = at


def backup_limit(dir_fd: int) -> int:
    """The most a backup made in the folder ``dir_fd`` copies: half the space free there (for whoever
    runs ``migrate``), and at most `MAX_TOTAL`."""
    try:
        st = os.fstatvfs(dir_fd)
    except OSError:
        return MAX_TOTAL
    return min(MAX_TOTAL, st.f_bavail * st.f_frsize // 2)


def backup_root(
    base: Path, progress: Progress | None = None, *, limit: int | None = None
) -> tuple[Path, list[Skipped]]:
    """Copy the root ``base`` to ``<root>.backup-<UTC time>`` (``-2``, ``-3``… after it when that name
    is taken: two runs in one second), never into an existing folder. Returns the backup's path and
    what was left out. ``progress`` is told how many bytes are copied. Past ``limit`` bytes in all
    (None: `backup_limit`) the copy stops: `BackupIncompleteError`."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    parent = os.open(base.parent, _fs.O_DIR)
    try:
        name = _new_backup_folder(parent, base.name, stamp)
        target = base.parent / name
        # Opened where it was made, checked to be ours and closed to others: in a shared parent
        # folder it could have been renamed away and something else put in its place.
        dst = _fs.open_dir(name, dir_fd=parent)
        try:
            _check_private(dst, target)
            cap = backup_limit(dst) if limit is None else limit
            copier = _Copier([], progress, cap)
            _copy_root(base, dst, copier)
            if copier.stopped_at is not None:
                raise BackupIncompleteError(target, cap, copier.stopped_at)
            return target, copier.skipped
        finally:
            os.close(dst)
    finally:
        os.close(parent)


def _new_backup_folder(parent: int, root_name: str, stamp: str) -> str:
    """Make the backup folder (0700) in ``parent`` under the first name not taken; that name."""
    for n in itertools.count(1):
        name = f"{root_name}.backup-{stamp}{f'-{n}' if n > 1 else ''}"
        try:
            os.mkdir(name, 0o700, dir_fd=parent)  # taken atomically: a concurrent run picks the next
        except FileExistsError:
            continue
        return name
    raise AssertionError("unreachable")  # pragma: no cover


def _check_private(dst: int, target: Path) -> None:
    """The open backup folder must be ours and a folder (`UnsafePathError`); it is closed to others."""
    st = os.fstat(dst)
    if st.st_uid != os.geteuid() or not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(f"the backup folder {target} was replaced while it was made")
    if st.st_mode & 0o077:  # a default ACL of the parent let others in: not into a backup
        os.fchmod(dst, 0o700)


def _copy_root(base: Path, dst: int, copier: _Copier) -> None:
    progress = copier.progress
    src = os.open(base, _fs.O_DIR)  # the root itself is the operator's choice: a link to it is followed
    try:
        if progress is not None:
            copier.total = _size(src, 0)
            progress(0, copier.total)
        copier.folder(src, dst, "", 0)
        if progress is not None:
            progress(copier.done, max(copier.total, copier.done))
    finally:
        os.close(src)


def _names(dir_fd: int) -> list[str]:
    """The names in an open folder, sorted (only names: what each is, is looked at when it is opened)."""
    with os.scandir(dir_fd) as entries:
        return sorted(e.name for e in entries)


def _why(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symlink (never followed): not copied"
    if exc.errno == errno.ENOTDIR:
        return "no longer a folder (replaced while copied): not copied"
    return f"cannot be read ({exc.strerror or exc}): not copied"


def _what(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symlink (never followed): not copied"
    return f"not a regular file ({stat.filemode(mode)}): not copied"


def _unshared(fd: int, st: os.stat_result) -> str | None:
    """Why a regular file is not copied although it is readable (a hard link, a sparse file), or None."""
    if st.st_nlink > 1:
        return f"a file with {st.st_nlink} names (hard links): not copied"
    if _is_sparse(fd, st):
        return f"a sparse file ({st.st_size} bytes, {st.st_blocks * 512} on disk): not copied"
    return None


def _is_sparse(fd: int, st: os.stat_result) -> bool:
    """Is the open file sparse: large, less than half of it on disk, and a hole before its end?"""
    if not _looks_sparse(st):
        return False
    return _first_hole(fd, st.st_size) < st.st_size


def _looks_sparse(st: os.stat_result) -> bool:
    """Is the file large enough to matter and under half of it on disk (maybe holes, maybe not)?"""
    return st.st_size >= SPARSE_MIN and st.st_blocks * 512 < st.st_size // 2


def _first_hole(fd: int, size: int) -> int:
    """Where the open file's first hole starts (``size`` if that cannot be asked); the offset is put
    back at 0."""
    try:
        hole = os.lseek(fd, 0, os.SEEK_HOLE)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        hole = size
    return hole


class _Copier:
    def __init__(self, skipped: list[Skipped], progress: Progress | None, limit: int = MAX_TOTAL) -> None:
        self.skipped = skipped
        self.progress = progress
        self.total = 0
        self.done = 0
        self.limit = limit
        self.copied = 0  # bytes copied in all
        self.stopped_at: str | None = None  # the path where the limit was reached

    def skip(self, path: str, why: str) -> None:
        self.skipped.append(Skipped(_fs.shown(path), why))

    def folder(self, src: int, dst: int, rel: str, depth: int) -> None:
        """Copy what is in the open folder ``src`` into the open (new, empty) folder ``dst``."""
        for name in _names(src):
            if self.stopped_at is not None:
                return
            st = self._lstat(src, name, rel + name)
            if st is not None:
                self.entry(src, dst, name, rel + name, st, depth)

    def _lstat(self, src: int, name: str, path: str) -> os.stat_result | None:
        """The entry ``name`` of ``src`` looked at, unfollowed; None if it is gone or skipped."""
        try:
            return os.stat(name, dir_fd=src, follow_symlinks=False)
        except FileNotFoundError:
            return None  # gone since it was listed
        except OSError as exc:
            self.skip(path, _why(exc))
            return None

    def entry(self, src: int, dst: int, name: str, path: str, st: os.stat_result, depth: int) -> None:
        """Copy one entry of ``src`` by its kind: a folder, a regular file; anything else is skipped."""
        if stat.S_ISDIR(st.st_mode):
            self.subfolder(src, dst, name, path, depth + 1)
        elif stat.S_ISREG(st.st_mode):
            self.file(src, dst, name, path)
        else:
            self.skip(path, _what(st.st_mode))

    def subfolder(self, src: int, dst: int, name: str, path: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            self.skip(path + "/", f"nested deeper than {MAX_DEPTH} folders: not copied")
            return
        try:
            child = _fs.open_dir(name, dir_fd=src)  # a link swapped in since the stat: ELOOP
        except FileNotFoundError:
            return
        except OSError as exc:
            self.skip(path + "/", _why(exc))
            return
        try:
            st = os.fstat(child)
            os.mkdir(name, 0o700, dir_fd=dst)
            copy = _fs.open_dir(name, dir_fd=dst)
            try:
                self.folder(child, copy, path + "/", depth)
                os.fchmod(copy, stat.S_IMODE(st.st_mode) & 0o2777)  # (a setgid folder stays one)
                os.utime(copy, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(copy)
        finally:
            os.close(child)

    def file(self, src: int, dst: int, name: str, path: str) -> None:
        """Copy the regular file ``name`` of ``src`` into ``dst``, unless it is skipped."""
        opened = self._open(src, name, path)
        if opened is None:
            return
        fd, st = opened
        try:
            if self._may_copy(fd, st, path):
                self._write(fd, st, dst, name, path)
        finally:
            os.close(fd)

    def _open(self, src: int, name: str, path: str) -> tuple[int, os.stat_result] | None:
        """The file opened for reading; None if it is gone, or skipped (too large, not a regular file)."""
        try:
            return _fs.open_regular(name, MAX_FILE, dir_fd=src)
        except FileNotFoundError:
            return None
        except _fs.TooLargeError as exc:
            self.skip(path, f"{exc.size} bytes, over the {MAX_FILE} a backup copies: not copied")
            return None
        except OSError as exc:  # a link swapped in (ELOOP), a FIFO or a device (not a regular file)
            why = f"{exc.strerror}: not copied" if isinstance(exc, _fs.NotRegularFileError) else _why(exc)
            self.skip(path, why)
            return None

    def _may_copy(self, fd: int, st: os.stat_result, path: str) -> bool:
        """Is the open file copied? Not a hard link nor a sparse file, and only within the limit (the
        first file past it stops the copy)."""
        unshared = _unshared(fd, st)
        if unshared is not None:
            self.skip(path, unshared)
            return False
        if self.copied + st.st_size > self.limit:
            self.stopped_at = path
            why = f"the backup's limit of {self.limit} bytes reached: not copied, nor anything after"
            self.skip(path, why)
            return False
        return True

    def _write(self, fd: int, st: os.stat_result, dst: int, name: str, path: str) -> None:
        """The copy of the open file as ``name`` in ``dst``, its mode (no set-id bit) and times kept;
        removed again if the file grew past `MAX_FILE` while it was copied."""
        out = os.open(name, _fs.O_CREATE_MSG, 0o600, dir_fd=dst)
        try:
            copied = self.blocks(fd, out)
            self.copied += copied
            if copied > MAX_FILE:
                os.close(out)
                out = -1
                _fs.unlink_quietly(dst, name)
                self.skip(path, f"grew past the {MAX_FILE} bytes a backup copies while copied: not copied")
                return
            os.fchmod(out, stat.S_IMODE(st.st_mode) & 0o777)  # never a set-id bit
            os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
        finally:
            if out >= 0:
                os.close(out)

    def blocks(self, fd: int, out: int) -> int:
        """Copy ``fd`` into ``out`` a block at a time, at most `MAX_FILE` + 1 bytes; how many."""
        copied = 0
        for block in _read_blocks(fd, MAX_FILE + 1):
            _fs.write_all(out, block)
            copied += len(block)
            if self.progress is not None:
                self.done += len(block)
                self.progress(min(self.done, self.total), max(self.total, self.done))
        return copied


def _read_blocks(fd: int, limit: int) -> Iterator[bytes]:
    left = limit
    while left > 0:
        block = os.read(fd, min(_BLOCK, left))
        if not block:
            return
        left -= len(block)
        yield block


def _size(src: int, depth: int) -> int:
    """Bytes of the regular files the backup would copy (for progress), looked at as it copies."""
    return sum(_entry_size(src, name, depth) for name in _names(src))


def _entry_size(src: int, name: str, depth: int) -> int:
    """`_size` of one entry of ``src``: a file's size if copied, a sub-folder's sum, else 0."""
    try:
        st = os.stat(name, dir_fd=src, follow_symlinks=False)
    except OSError:
        return 0
    if _would_copy(st):
        return st.st_size
    if stat.S_ISDIR(st.st_mode) and depth < MAX_DEPTH:
        return _subfolder_size(src, name, depth + 1)
    return 0


def _would_copy(st: os.stat_result) -> bool:
    """Is it a file the backup would copy (regular, within `MAX_FILE`, of one name)? (Sparse files
    are not told apart here: the estimate only drives progress.)"""
    return stat.S_ISREG(st.st_mode) and st.st_size <= MAX_FILE and st.st_nlink == 1


def _subfolder_size(src: int, name: str, depth: int) -> int:
    """`_size` of the sub-folder ``name`` (0 if it cannot be opened)."""
    try:
        child = _fs.open_dir(name, dir_fd=src)
    except OSError:
        return 0
    try:
        return _size(child, depth)
    finally:
        os.close(child)
