"""Filesystem steps that durability depends on, in one place.

Notes for anyone touching this:
- A directory entry (a rename, a create) survives power loss only once the *directory* is
  fsynced; a file's bytes only once the *file* is fsynced. CPython's Maildir does the first and
  not the second; we do both.
- A rename is one journal transaction on ext4, xfs and btrfs, so fsyncing the destination folder
  commits both sides of a move. hybridcomms relies on this (see docs/guarantees.md).
- ``syncfs`` commits every dirty file of the filesystem with one barrier: the group commit of
  ``put_many``. Where it does not exist, each file is fsynced instead.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import hashlib
import os
import stat
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any

from . import _env
from ._names import REASON_SUFFIX
from ._text import printable as printable  # text for people is defined once, in _text
from ._text import shown as shown
from .errors import NotRegularFileError, TooLargeError, UnsafePathError

__all__ = [
    "ALLOW_OTHER_OWNER_ENV",
    "FS_ENCODING",
    "FS_ERRORS",
    "NAME_MAX",
    "ByteRange",
    "FsyncPolicy",
    "NotRegularFileError",
    "TooLargeError",
    "allow_other_owner",
    "check_owner",
    "current_umask",
    "fit_name",
    "free_name",
    "fsync_dir",
    "get_libc",
    "open_dir",
    "open_regular",
    "read_all",
    "read_regular",
    "rename_noreplace",
    "replace_atomically",
    "replace_atomically_at",
    "shown",
    "syncfs",
    "unlink_quietly",
    "write_new_file",
]

O_DIR = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_CLOEXEC", 0)
O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
O_READ_MSG = os.O_RDONLY | O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
_O_READ_FOLLOW = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
O_CREATE_MSG = os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class FsyncPolicy(str, Enum):
    """How hard each state change is pushed to the disk.

    - ``always``: every call returns only after its change is on stable storage (file fsync
      before a message becomes visible, directory fsync after every move), except a claim, which
      is never committed (undone by a power loss, it leaves the message waiting, as recovery would).
    - ``batch``: a message's bytes are fsynced before it becomes visible (no torn file after a
      power loss), but folder changes are committed in groups: by the first operation after
      ``batch_interval`` seconds, by ``flush()``/``close()``, and otherwise by the filesystem's own
      periodic commit (5 s on ext4).
    - ``never``: no fsync at all. Survives kill -9 (the kernel has everything), not power loss.
    """

    ALWAYS = "always"
    BATCH = "batch"
    NEVER = "never"


def open_dir(path: str, *, dir_fd: int | None = None) -> int:
    """Open a folder for ``*at`` calls and fsync, refusing to follow a symlink at the last step."""
    return os.open(path, O_DIR | O_NOFOLLOW, dir_fd=dir_fd)


def read_beneath(root: str, parts: tuple[str, ...], limit: int) -> bytes:
    """`read_regular` of ``root/parts[0]/…/parts[-1]``, every component below ``root`` opened without
    following a link: a co-tenant who puts a link in place of an agent's folder or its ``new/`` never
    makes the library read outside the root (a path would follow links at every step but the last)."""
    fd = os.open(root, O_DIR)
    try:
        for part in parts[:-1]:
            child = open_dir(part, dir_fd=fd)
            os.close(fd)
            fd = child
        return read_regular(parts[-1], limit, dir_fd=fd)
    finally:
        os.close(fd)


def listdir_beneath(root: str, parts: tuple[str, ...]) -> list[str]:
    """The names in ``root/parts…``, each folder below ``root`` opened without following a link."""
    fd = os.open(root, O_DIR)
    try:
        for part in parts:
            child = open_dir(part, dir_fd=fd)
            os.close(fd)
            fd = child
        return listdir_at(fd)
    finally:
        os.close(fd)


_libc: ctypes.CDLL | None = None
_libc_lock = threading.Lock()


def get_libc() -> ctypes.CDLL | None:
    """The C library, loaded once (None where it cannot be: the callers fall back)."""
    global _libc
    with _libc_lock:
        if _libc is None:
            name = ctypes.util.find_library("c")
            try:
                _libc = ctypes.CDLL(name, use_errno=True)
            except OSError:
                return None
        return _libc


RENAME_NOREPLACE = 1
_AT_FDCWD = -100
#: How file names are turned into bytes and back (the raw syscalls, the inotify events).
FS_ENCODING, FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _find_renameat2() -> Any:
    libc = get_libc()
    return getattr(libc, "renameat2", None) if libc is not None else None


#: The libc function, or None where it is missing (old libc/kernel): link-then-unlink is used then.
#: Resolved once; a kernel or filesystem that refuses the flag turns it to None too.
_renameat2: Any = _find_renameat2()
_get_errno = ctypes.get_errno


def rename_noreplace(
    src: str, dst: str, *, src_dir_fd: int | None = None, dst_dir_fd: int | None = None
) -> None:
    """``rename(src, dst)`` that never replaces an existing ``dst``: raises `FileExistsError` instead.

    Uses renameat2(RENAME_NOREPLACE) (Linux >= 3.15 on ext4, xfs, btrfs, tmpfs, …). Where the call or
    the filesystem does not support the flag, a regular file is moved by link(2) then unlink(2): also
    never replacing, but a crash between the two leaves the file under both names (see
    docs/guarantees.md). Other file types are then renamed after a check, which a concurrent creator
    can race. This runs twice per message (claim, ack): it is kept to one C call in the common case."""
    fn = _renameat2
    if fn is not None:
        if (
            fn(
                _AT_FDCWD if src_dir_fd is None else src_dir_fd,
                src.encode(FS_ENCODING, FS_ERRORS),
                _AT_FDCWD if dst_dir_fd is None else dst_dir_fd,
                dst.encode(FS_ENCODING, FS_ERRORS),
                RENAME_NOREPLACE,
            )
            == 0
        ):
            return
        _renameat2_unsupported(_get_errno(), src, dst)
    _rename_by_link(src, dst, src_dir_fd, dst_dir_fd)


def _renameat2_unsupported(err: int, src: str, dst: str) -> None:
    """Raise the error renameat2 failed with, unless it says that the call (ENOSYS: then it is not
    tried again) or the flag on this filesystem (EINVAL) is not supported."""
    global _renameat2
    if err not in (errno.ENOSYS, errno.EINVAL):
        raise OSError(err, os.strerror(err), src, None, dst)
    if err == errno.ENOSYS:
        _renameat2 = None


def _rename_by_link(src: str, dst: str, src_dir_fd: int | None, dst_dir_fd: int | None) -> None:
    """`rename_noreplace` where renameat2 cannot: link(2) then unlink(2) for a regular file, a
    checked rename for other file types."""
    try:
        os.link(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, follow_symlinks=False)
    except (PermissionError, IsADirectoryError, NotImplementedError):
        if os.path.lexists(dst) if dst_dir_fd is None else _exists_at(dst_dir_fd, dst):
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), dst) from None
        os.rename(src, dst, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd)
        return
    os.unlink(src, dir_fd=src_dir_fd)


def listdir_at(dir_fd: int) -> list[str]:
    """The names in the folder ``dir_fd``, read through a descriptor of its own.

    ``os.listdir(fd)`` reads through a dup of ``fd``, and dups share the directory offset: two threads
    listing one folder's descriptor at once would each get a part of it (a claimer's index then
    missed messages that were there). A fresh open has an offset of its own."""
    fd = os.open(".", O_DIR, dir_fd=dir_fd)
    try:
        return os.listdir(fd)
    finally:
        os.close(fd)


def _exists_at(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def syncfs(fd: int) -> bool:
    """Commit the whole filesystem holding ``fd``. False where syncfs(2) is not available."""
    libc = get_libc()
    fn = getattr(libc, "syncfs", None) if libc is not None else None
    if fn is None:
        return False
    if fn(fd) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return True


@dataclass(frozen=True)
class ByteRange:
    """Bytes of an open file, to be copied without holding them: ``length`` bytes from ``offset``."""

    fd: int
    offset: int
    length: int

    def blocks(self, size: int = 1 << 20) -> Iterator[bytes]:
        """The bytes, ``size`` at a time (a file that got shorter meanwhile is an ``OSError``)."""
        done = 0
        while done < self.length:
            block = os.pread(self.fd, min(size, self.length - done), self.offset + done)
            if not block:
                raise OSError(errno.EIO, "the file got shorter while it was copied")
            done += len(block)
            yield block


def write_new_file(dir_fd: int, name: str, data: bytes | ByteRange, mode: int, *, sync: bool) -> None:
    """Create ``name`` under ``dir_fd`` exclusively and write all of ``data`` (bytes, or a range of
    another file copied a block at a time).

    On any failure the partial file is removed and the error re-raised: nothing is left behind.
    """
    fd = os.open(name, O_CREATE_MSG, mode, dir_fd=dir_fd)
    try:
        if isinstance(data, ByteRange):
            _copy_range(fd, data)
            data = b""
        written = os.write(fd, data)
        if written < len(data):  # rare for a regular file: finish the rest
            write_all(fd, memoryview(data)[written:])
        if sync:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        unlink_quietly(dir_fd, name)
        raise
    os.close(fd)


def _copy_range(fd: int, data: ByteRange) -> None:
    """Write the bytes of ``data`` (a range of another file) to ``fd``, a block at a time."""
    for block in data.blocks():
        write_all(fd, block)


def write_all(fd: int, data: bytes | memoryview) -> None:
    """Write all of ``data``, however many calls it takes."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        if written <= 0:  # pragma: no cover - a regular file never does this
            raise OSError(errno.EIO, "short write")
        view = view[written:]


def unlink_quietly(dir_fd: int, name: str) -> None:
    """Remove ``name`` under ``dir_fd`` if it is there; an error is ignored (cleanup after a failure)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        pass


#: Set to 1 to let hybridcomms open folders that belong to another user (a shared-group setup).
ALLOW_OTHER_OWNER_ENV = _env.ALLOW_OTHER_OWNER


def allow_other_owner(value: bool | None) -> bool:
    """``value``, or (None) whether ``$HYBRIDCOMMS_ALLOW_OTHER_OWNER`` allows folders of other users."""
    if value is None:
        return _env.flag(ALLOW_OTHER_OWNER_ENV)
    return value


def check_owner(fd: int, shown: str, what: str, how: str, allowed: bool) -> None:
    """Refuse (`UnsafePathError`) the folder ``fd`` if another user owns it, unless ``allowed``: one
    rule for every folder hybridcomms keeps its files in (mailbox folders, the bus folder). ``what``
    names the kind of folder, ``how`` the option that allows it."""
    if allowed:
        return
    owner = os.fstat(fd).st_uid
    if owner != os.geteuid():
        raise UnsafePathError(
            f"{shown} belongs to another user (uid {owner}); {what} of another user is refused unless "
            f"allowed ({how} or {ALLOW_OTHER_OWNER_ENV}=1, for a Dream.OS group setup)"
        )


def current_umask() -> int:
    """The process umask, read without changing it where /proc allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o077)
    os.umask(old)
    return old


class DirSyncer:
    """Applies an `FsyncPolicy` to folder changes.

    ``changed(fd)`` is called after every move into (or out of) a folder. With ``always`` it
    fsyncs at once; with ``batch`` it remembers the folder and fsyncs every remembered folder
    once ``interval`` has passed; with ``never`` it does nothing.

    At ``always`` the contract lets settles share a commit (any fsync of the folder that started
    after a move commits it). The kernel already shares them: ext4's journal commits once for all
    the fsyncs that wait on it, from any thread or process. A commit leader in Python (one fsync per
    round for the threads that queued behind it) was measured and dropped: no faster on the disk,
    and at 8 threads on tmpfs 2x slower (docs/performance.md, 2026-12-04).
    """

    def __init__(self, policy: FsyncPolicy, interval: float) -> None:
        self.policy = policy
        self.interval = interval
        self._dirty: set[int] = set()
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def changed(self, fd: int) -> None:
        if self.policy is FsyncPolicy.ALWAYS:
            os.fsync(fd)
        elif self.policy is FsyncPolicy.BATCH:
            with self._lock:
                self._dirty.add(fd)
                due = time.monotonic() - self._last >= self.interval
            if due:
                self.flush()

    def flush(self) -> None:
        with self._lock:
            dirty, self._dirty = self._dirty, set()
            self._last = time.monotonic()
        for fd in dirty:
            os.fsync(fd)


def read_all(fd: int, size_hint: int, limit: int) -> bytes | None:
    """Read a whole file; None if it turns out bigger than ``limit``."""
    first = os.read(fd, size_hint + 1)
    if len(first) > size_hint:  # it grew since its size was taken: read on to its end
        return _read_on(fd, first, limit)
    return first if len(first) <= limit else None


def _read_on(fd: int, first: bytes, limit: int) -> bytes | None:
    """``first`` and the rest of the file, to its end; None as soon as that is more than ``limit``."""
    chunks = [first]
    total = len(first)
    while total <= limit:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
    return None


def open_regular(
    name: str | os.PathLike[str], limit: int, *, dir_fd: int | None = None, follow: bool = False
) -> tuple[int, os.stat_result]:
    """A file a producer may have placed, opened as a hostile one (see `read_regular`): its
    descriptor (the caller closes it) and its `fstat`, checked to be a regular file of at most
    ``limit`` bytes."""
    fd = os.open(name, _O_READ_FOLLOW if follow else O_READ_MSG, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(
                errno.EINVAL, f"not a regular file ({stat.filemode(st.st_mode)})", os.fspath(name)
            )
        if st.st_size > limit:
            raise TooLargeError(st.st_size, limit, os.fspath(name))
    except BaseException:
        os.close(fd)
        raise
    return fd, st


def read_regular(
    name: str | os.PathLike[str], limit: int, *, dir_fd: int | None = None, follow: bool = False
) -> bytes:
    """The bytes of a file a producer may have placed, read as a hostile one: never following a
    symlink (`OSError` ELOOP), never blocking on a FIFO or a device (`NotRegularFileError`), and never
    more than ``limit`` bytes (`TooLargeError`). `FileNotFoundError` if it is gone.

    ``follow``: for a path a person chose (a config file): a link is followed, the rest holds."""
    fd, st = open_regular(name, limit, dir_fd=dir_fd, follow=follow)
    try:
        data = read_all(fd, st.st_size, limit)
        if data is None:  # grew while we read it
            raise TooLargeError(limit + 1, limit, os.fspath(name))
        return data
    finally:
        os.close(fd)


#: The longest file name most filesystems take (bytes).
NAME_MAX = 255


def fit_name(name: str, room: int = 0) -> str:
    """``name`` itself if it and ``room`` more bytes fit in `NAME_MAX`; else a shorter name that is
    still unique to it: its first bytes, ``~`` and a digest of the whole name."""
    raw = os.fsencode(name)
    if len(raw) + room <= NAME_MAX:
        return name
    digest = hashlib.sha256(raw).hexdigest()[:16]
    keep = max(NAME_MAX - room - len(digest) - 1, 1)
    head = raw[:keep].decode("utf-8", "ignore").replace("/", "_") or "x"
    while len(os.fsencode(head)) > keep:
        head = head[:-1]
    return os.fsdecode(os.fsencode(head)) + "~" + digest


def free_name(dir_fd: int, name: str, room: int = 0) -> str:
    """``name``, or ``name.N`` if that is taken in the folder, so a move never overwrites a file.

    The result leaves ``room`` bytes for a suffix within `NAME_MAX` (a long name is shortened)."""
    if name.endswith(REASON_SUFFIX):
        name += ".data"
    name = fit_name(name, room + 8)
    candidate = name
    n = 1
    while True:
        try:
            os.stat(candidate, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return candidate
        candidate = f"{name}.{n}"
        n += 1


def replace_atomically(path: str | os.PathLike[str], data: bytes, mode: int = 0o644) -> None:
    """Replace the file ``path`` with ``data``: temp file in the same folder, fsync, rename, fsync
    the folder. Readers see the old file or the new one, never a mix; on failure the old one stays."""
    target = os.fspath(path)
    folder = os.path.dirname(target) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            # Exactly this mode, whatever the umask, set through the descriptor of the file made
            # here: a name in a shared folder can be swapped for a link before a chmod by path.
            os.fchmod(f.fileno(), mode)
            os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    fsync_dir(folder)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Commit a folder's entries (a file created, renamed or removed in it) to stable storage."""
    fd = os.open(path, O_DIR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_atomically_at(
    dir_fd: int, name: str, data: bytes, mode: int | None = None, *, sync: bool = True
) -> None:
    """`replace_atomically` for ``name`` in an open folder (no path walked again, no link followed).

    The new file gets ``mode`` exactly (whatever the umask), or, with None, the mode of the file it
    replaces (0o600 if there was none): a legacy ``inbox.json`` that other agents append to keeps
    its group bits. ``sync=False``: atomic but not committed (for files that matter only while
    their writer runs)."""
    if mode is None:
        mode = _mode_at(dir_fd, name)
    # A name no one can guess: in a shared folder a co-tenant who made a predictable temporary name
    # first (O_EXCL) would block every update of the file.
    tmp = f".{name}.{os.urandom(8).hex()}.tmp"
    fd = os.open(tmp, O_CREATE_MSG, 0o600, dir_fd=dir_fd)
    try:
        _fill_and_close(fd, data, mode, sync)
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        unlink_quietly(dir_fd, tmp)
        raise
    if sync:
        os.fsync(dir_fd)


def _mode_at(dir_fd: int, name: str) -> int:
    """The permission bits of ``name`` in ``dir_fd`` (no link followed); 0o600 if there is none."""
    try:
        return stat.S_IMODE(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        return 0o600


def _fill_and_close(fd: int, data: bytes, mode: int, sync: bool) -> None:
    """Write all of ``data`` into the new file ``fd``, give it exactly ``mode``, commit it if
    ``sync``; ``fd`` is closed whatever happens."""
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
