"""How many acked messages a file mailbox keeps in ``done/`` (``done_retention``), and the trim.

``done_retention=N`` keeps about the last N acked messages; ``0`` keeps none (the ack removes the
file instead of moving it into ``done/``); ``None`` keeps every one (until `purge`).

The trim, for N > 0, costs an amortised O(1) per ack:

- every ``N // 4`` (at least 32) acks of this mailbox handle, its next ack looks at ``done/`` once: one
  listing; the files beyond N, oldest first, are removed, and the next N/4 oldest are picked: each
  ack until the next look removes one of them (``done/`` stays at N, and the inode the next put needs
  is one an ack just freed: on ext4 a fresh inode costs far more, see docs/performance.md). A
  handle's first look comes within its first 64 acks, at a random one, so short-lived processes
  that ack a few messages each (the CLI's ``recv``) look now and then, together, without each paying
  a listing. Handles that have not looked yet, and handles whose picks ran out, let ``done/`` grow
  by up to about N/4 per consumer process;
- "oldest" is by the due time in the name (the time a message was sent, or became due after a delay
  or a retry): the order messages are acked in when they are claimed in order, read from the listing
  alone, without a ``stat`` per file;
- only what is surely an acked message is removed: a name of ours (``<rank>.<due>.<id>.a<n>.json``,
  or such a name with the ``.N`` a colliding ack gets) that is a regular file (the type the listing
  gives). Anything else a co-tenant put into ``done/`` (other names, links, folders, FIFOs, sockets)
  is never removed; removals go through the folder's descriptor (``unlinkat``), which never follows
  a link, and a name's removal never touches what a link points to nor another name of the file (a
  hard link elsewhere keeps it);
- one look at a time per mailbox, across threads and processes: a look holds an exclusive ``flock`` on
  a descriptor of ``done/`` of its own, taken without waiting; a look that finds it held is skipped
  (the one running does the work). A co-tenant who holds that lock for ever stops the trimming
  (``done/`` then grows as with None), never anything else;
- a trim is not committed: a power loss that undoes one brings back an acked file, which is harmless.
"""

from __future__ import annotations

import errno
import os
import random
import re
import stat

from ... import _log
from ..._fs import O_DIR
from ..._locking import try_lock
from ..._names import RANKS

__all__ = ["Retention"]

log = _log.get("hybridcomms.mailbox")

#: A handle's first look comes within this many of its acks (then every N/4).
_FIRST_LOOK = 64

#: An acked message of ours: our name, or our name with the ``.N`` of `_fs.free_name`.
_ACKED_RE = re.compile(
    rf"(?:{'|'.join(RANKS)})\.\d{{8}}T\d{{12}}Z\.[A-Za-z0-9_:@+-][A-Za-z0-9._:@+-]{{0,127}}\.a\d{{1,6}}\.json"
    r"(?:\.\d{1,9})?\Z"
)
_acked = _ACKED_RE.match


def _age_key(entry: os.DirEntry[str]) -> str:
    """Due time first (the rank left out), then the rest of the name."""
    return entry.name[3:]


class Retention:
    """The ``done/`` retention of one mailbox handle: `acked` after each ack into ``done/``."""

    __slots__ = ("_due", "_left", "every", "keep")

    def __init__(self, keep: int | None) -> None:
        self.keep = keep
        self.every = max(keep // 4, 32) if keep else 0
        #: Acks until the next look: the first within 64 acks, from a random start (see the module
        #: docstring), then every `every`.
        self._left = _first_look(self.every)
        #: Names the last look found among the oldest kept: one goes with each ack until the next look.
        self._due: list[str] = []

    def acked(self, done_fd: int) -> None:
        """One more ack into ``done/`` (whose descriptor is ``done_fd``): the oldest acked file goes
        (one the last look picked), and now and then a look."""
        self._left -= 1
        try:
            if self._left <= 0:
                self._left = self.every
                self.trim(done_fd)
            else:
                self._remove_next_pick(done_fd)
        except OSError as exc:  # the ack itself is done: a trim that fails is tried again later
            log.warning("cannot trim done/ to %s acked messages: %s", self.keep, exc)

    def _remove_next_pick(self, done_fd: int) -> None:
        """Remove the oldest of the names the last look picked that is still an acked file."""
        due = self._due
        while due and not _remove_name(done_fd, due.pop()):
            pass  # taken by another handle's trim meanwhile: the next one

    def trim(self, done_fd: int) -> int:
        """Remove the acked messages beyond `keep`, oldest first, and pick the next oldest, for the
        acks until the next look to remove one each; how many were removed (0 when another look holds
        the lock). Errors of single files are passed over (a file gone, a folder)."""
        keep = self.keep
        if keep is None:
            return 0
        fd = os.open(".", O_DIR, dir_fd=done_fd)  # its own: its own lock, and a listing offset of its own
        try:
            if not try_lock(fd):
                return 0  # another thread or process is trimming right now
            ours = _acked_entries(fd)
            excess = len(ours) - keep
            if excess < 0:
                self._due = []
                return 0
            ours.sort(key=_age_key)
            removed = _remove_all(fd, ours[:excess])
            self._due = _picks(ours[excess : excess + self.every])
            return removed
        finally:
            os.close(fd)  # drops the lock


def _acked_entries(fd: int) -> list[os.DirEntry[str]]:
    """The entries of the folder ``fd`` named as acked messages of ours (one listing)."""
    with os.scandir(fd) as entries:  # the type of each entry comes with the listing
        return [e for e in entries if _acked(e.name)]


def _remove_all(fd: int, entries: list[os.DirEntry[str]]) -> int:
    """`_remove_acked` each of ``entries``; how many were removed."""
    removed = 0
    for entry in entries:
        if _remove_acked(fd, entry):
            removed += 1
    return removed


def _picks(entries: list[os.DirEntry[str]]) -> list[str]:
    """The names the acks until the next look remove, one each: the regular files of ``entries``
    (the next oldest), the oldest last (popped first)."""
    # Each ack until the next look adds one file and removes the oldest of these: done/ stays
    # at `keep` (the newest acked), and the inode a put needs is one an ack just freed. Oldest
    # first, in order: handles of other processes hold much the same names and race for each
    # (a lost race costs one lstat); shuffled, an ack removed any of them, so with `every`
    # larger than `keep` a message acked just now could go before an older one.
    nxt = [e.name for e in entries if e.is_file(follow_symlinks=False)]
    nxt.reverse()  # popped from the end: the oldest first
    return nxt


def _first_look(every: int) -> int:
    """How many acks a new handle makes before its first look: a random number within the first
    `_FIRST_LOOK` (and within ``every``); 0 when it never trims."""
    return random.randint(1, min(every, _FIRST_LOOK)) if every else 0


def _remove_name(fd: int, name: str) -> bool:
    """Unlink ``name`` in the folder ``fd`` if it is still a regular file (between a look and this,
    someone may have put something else there under that name). False when it is gone or is not."""
    try:
        if not stat.S_ISREG(os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode):
            return False
        os.unlink(name, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EISDIR, errno.EPERM, errno.EACCES, errno.EBUSY):
            return False
        raise
    return True


def _remove_acked(fd: int, entry: os.DirEntry[str]) -> bool:
    """Unlink ``entry`` of the folder ``fd`` if it is a regular file (an acked message): never a link,
    a folder, a FIFO or a socket someone put there under a name of ours. (Unlinking a name never
    touches what a link points to, nor the other names of a hard-linked file.)"""
    try:
        if not entry.is_file(follow_symlinks=False):  # d_type from the listing; lstat if unknown
            return False
        os.unlink(entry.name, dir_fd=fd)
    except OSError as exc:
        if exc.errno in (errno.ENOENT, errno.EISDIR, errno.EPERM, errno.EACCES, errno.EBUSY):
            return False
        raise
    return True
