"""The durable file mailbox: one agent's messages as files in ``tmp/ new/ processing/ done/ dead/``.

Notes for anyone changing this (the backend contract):
- Publish = write in ``tmp/`` with O_EXCL, fsync the file, rename into ``new/``, fsync ``new/``.
  A name in ``new/`` therefore always holds a complete message, even after kill -9.
- Claim = open + flock the file in ``new/``, then rename it into ``processing/`` with its attempt
  count raised. The rename is the arbiter: exactly one claimer can move a name. The flock,
  taken *before* the rename and held until the file leaves ``processing/``, tells recovery that
  the owner is alive; the kernel releases it when the owner dies. A claim commits nothing, at any
  fsync level: a claim undone by a power loss leaves the message in ``new/``, where recovery puts
  the claim of an owner that died (only the attempt count may then under-count).
- Every other move is checked against `hybridcomms.states.TRANSITIONS` and followed by the folder
  fsync the `FsyncPolicy` asks for (settles may share a commit: `_fs.DirSyncer`).
- Ack = the ACK move into ``done/``, which keeps about the last ``done_retention`` acked messages
  (`hybridcomms.backends.file.retention`); with ``done_retention=0`` the ack removes the file instead.
- A bad file never stops a consumer: it goes to ``dead/`` with its bytes intact and a
  ``<name>.reason.json`` next to it. So does a message whose ``expires`` has passed (the EXPIRE move,
  reason ``expired``), found by the claim that would have handed it out.
- A nack with an error keeps it in ``errors/<id>.json`` (`last_errors`), written before
  the NACK move; the ack and the dead-lettering take it away.
"""

from __future__ import annotations

import builtins
import errno
import os
import random
import re
import stat
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, TypeGuard

from ... import _fs, _log
from ..._fs import FsyncPolicy
from ..._locking import LOCK_TRY, drop, flock
from ..._names import (
    NAME_RE,
    RANK_OF,
    compact_time,
    compact_time_of,
    make_name,
    parse_compact,
)
from ...errors import (
    MailboxIOError,
    UnsafePathError,
)
from ...message import DEFAULT_MAX_MESSAGE_SIZE, Message
from ...retry import Backoff
from ...states import (
    CLAIM,
    State,
)
from ..base import (
    DEFAULT_BACKOFF,
    DEFAULT_DONE_RETENTION,
    MailboxStats,
    MessageInfo,
    RecoveryReport,
    check_agent_id,
    check_delay,
    check_retention,
    common_options,
    set_common_options,
)
from . import inspection, recovery
from .delivery import Delivery
from .folders import Folders, is_plain_name
from .index import ClaimIndex
from .opening import FolderSetup, list_agents
from .reading import claim_target, read_claimed
from .retention import Retention
from .wakeup import ArrivalWaiter

__all__ = ["DEFAULT_ROOT", "FileMailbox", "list_agents"]

log = _log.get("hybridcomms.mailbox")

#: Seconds the folders of a mailbox made anew stay open after their replacement (`_reopen_folders`).
_RETIRED_FOR = 60.0

#: The Dream.OS location, relative to the current directory.
DEFAULT_ROOT = Path("runtime/agent_comms/agent_mailboxes")

#: Set to 1 to let mailboxes open folders that belong to another user (a shared-group setup).
ALLOW_OTHER_OWNER_ENV = _fs.ALLOW_OTHER_OWNER_ENV

# The hot paths (claim, ack) use these module constants instead of attribute lookups.
_CLAIM_SRC = CLAIM.src_folder
_O_READ_MSG = _fs.O_READ_MSG
_O_NOATIME = getattr(os, "O_NOATIME", 0)
_flock, _LOCK_TRY = flock, LOCK_TRY
_randrange = random.randrange
#: How far ahead (at most) a claimer that lost a race jumps: see `_claim_once`.
SPREAD = 32


class FileMailbox:
    """One agent's durable mailbox under ``<root>/<agent_id>/``.

    ``FileMailbox(root, agent_id, *, fsync="always", lease=300, max_attempts=5, backoff=Backoff(),
    done_retention=10000)``
        fsync             `FsyncPolicy`: always | batch | never (see docs/guarantees.md)
        lease             seconds a claim stays ours without a heartbeat before recovery may take it back
        max_attempts      claims (deliveries) before a failing message goes to dead/
        backoff           delay before a nacked message is due again
        max_message_size  encoded bytes; bigger messages are refused before anything is written
        done_retention    acked messages kept in ``done`` (the contract's "Retention"): about the last
                          N, 10,000 by default (a trim every N/4 acks keeps a little more); 0 keeps
                          none (the ack drops the message), None keeps every one (until `purge`)
        file_mode         mode of message files; default: what the mailbox's folders say (0o660 when its
                          new/ is group-writable, a group setup such as Dream.OS's; else 0o600)
        dir_mode          mode of the folders it creates; default: 0o770 under a group-writable root
                          (or agent folder), else 0o700
        batch_interval    with fsync="batch", folder changes are committed by the first call after this long
        tmp_max_age       recovery removes tmp/ files older than this (abandoned half-writes)
        rescan_interval   a claimer relists new/ at least this often to see other writers in order
        create            create the folders if missing. With False, the mailbox must exist (its agent
                          folder and ``new/``: ``mkdir -p <root>/<agent>/new`` adopts an agent by hand);
                          the other state folders it lacks are made, with the modes below
        read_only         open for inspection: nothing is ever created or written (the listings,
                          `stats`, `get` and `read` work; writing raises `MailboxIOError` EROFS); the
                          mailbox must exist, and a state folder it lacks besides ``new/`` reads as empty
        allow_other_owner open folders that belong to another user (a Dream.OS group setup); default
                          from $HYBRIDCOMMS_ALLOW_OTHER_OWNER, else refused with `UnsafePathError`

    Safe to share between threads, and any number of processes may open the same mailbox.
    """

    kind = "file"
    shared = True  # any process of the host that can open the root
    lease: float
    max_attempts: int
    backoff: Backoff
    max_message_size: int

    def __init__(
        self,
        root: str | os.PathLike[str],
        agent_id: str,
        *,
        fsync: FsyncPolicy | str = FsyncPolicy.ALWAYS,
        lease: float = 300.0,
        max_attempts: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        done_retention: int | None = DEFAULT_DONE_RETENTION,
        file_mode: int | None = None,
        dir_mode: int | None = None,
        batch_interval: float = 1.0,
        tmp_max_age: float = 3600.0,
        rescan_interval: float = 1.0,
        create: bool = True,
        allow_other_owner: bool | None = None,
        read_only: bool = False,
    ) -> None:
        self.agent_id = check_agent_id(agent_id)
        self.fsync = FsyncPolicy(fsync)
        set_common_options(self, lease, max_attempts, backoff, max_message_size)
        self.done_retention = check_retention(done_retention)
        self.retention = Retention(self.done_retention)
        self.tmp_max_age = float(tmp_max_age)
        self.allow_other_owner = _fs.allow_other_owner(allow_other_owner)
        self.root = Path(root)
        self.path = self.root / agent_id
        self.read_only = read_only
        # Absolute: the folders stay where they were opened, whatever the working directory becomes.
        self._setup = FolderSetup(
            root=os.path.abspath(self.root),
            agent_id=self.agent_id,
            path=self.path,
            dir_mode=0o700 if dir_mode is None else dir_mode,
            follow_dir_mode=dir_mode is None,
            allow_other_owner=self.allow_other_owner,
            create=create and not read_only,
            read_only=read_only,
        )
        self._batch_interval = batch_interval
        self._new_path = os.path.join(self._setup.root, self.agent_id, "new")
        # Folders of a mailbox made anew (`_check_folders`), with when: kept open for a while (another
        # thread may still be working with their descriptors; a number reused too early would point
        # its work at another folder), closed by a later reopening or by close().
        self._retired: builtins.list[tuple[float, Folders]] = []
        self._reopen_lock = threading.Lock()
        self._index = ClaimIndex(rescan_interval)
        self._spread = SPREAD
        self._lost_race = False  # set by a claim that lost its race (a hint for `_jump_ahead`)
        # Claims read without updating the access time (one inode write less per message), where
        # the kernel allows it: O_NOATIME needs the file's owner, else the first EPERM drops it.
        self._claim_flags = _O_READ_MSG | _O_NOATIME
        self._waiter: ArrivalWaiter | None = None
        self._waiter_lock = threading.Lock()
        self.folders = Folders.open(
            self._setup, self.fsync, batch_interval, self._index, os.fspath(self.root)
        )
        self._setup.file_mode = _file_mode(file_mode, self.folders.fd(State.NEW))
        self._setup.chmod_files = bool(self._setup.file_mode & _fs.current_umask())
        self._closed = False  # (set once open: a mailbox that failed to open has nothing to close)

    @property
    def file_mode(self) -> int:
        """Mode of the message files it writes (see the class docstring)."""
        return self._setup.file_mode

    @property
    def dir_mode(self) -> int:
        """Mode of the folders it makes (see the class docstring)."""
        return self._setup.dir_mode

    def errors_folder(self, *, create: bool) -> int | None:
        """`Folders.errors_folder` (for the CLI's doctor)."""
        return self.folders.errors_folder(create=create)

    def close(self) -> None:
        """Commit pending folder changes (fsync="batch"), stop the watcher, release the folders."""
        if self._closed:
            return
        self._closed = True
        self._drop_waiter()
        with self._reopen_lock:
            try:
                self.folders.flush()
            finally:
                self._close_folders()

    def _drop_waiter(self) -> None:
        """Stop the arrival waiter, if there is one (the next claim that waits makes another)."""
        with self._waiter_lock:
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            waiter.close()

    def _close_folders(self) -> None:
        """Release the folders, and those of a mailbox folder made anew that are still kept open."""
        self.folders.close()
        for _, old in getattr(self, "_retired", ()):
            old.close()

    def flush(self) -> None:
        """Commit folder changes that fsync="batch" is still holding back."""
        self.folders.flush()

    def __enter__(self) -> FileMailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        if not getattr(self, "_closed", True):
            waiter = getattr(self, "_waiter", None)
            if waiter is not None:  # never closed: give its inotify watch back too
                try:
                    waiter.close()
                except Exception:
                    pass
            self._close_folders()

    @property
    def folder(self) -> Path:
        """The agent's folder under the root (the contract's ``folder``)."""
        return self.path

    def __repr__(self) -> str:
        return f"<FileMailbox {self.path} fsync={self.fsync.value}>"

    # -- publish ------------------------------------------------------------------------------

    def put(self, message: Message, *, delay: float | None = None) -> str:
        """Deliver ``message`` durably (per the fsync policy) into ``new/``; return its id.
        ``delay``: not claimable for that many seconds (its due time is in the future)."""
        self.put_file(message, delay=delay)
        return message.id

    def put_file(self, message: Message, *, delay: float | None = None) -> str:
        """`put`, returning the name of the file in ``new/`` (for callers that report a path)."""
        if self.read_only:
            self.folders.check_writable()
        wait = check_delay(delay)
        data = message.encode(self.max_message_size)
        name = _publish_name(message, time.time(), wait)
        tmp_fd = self.folders.fd(State.TMP)
        tmp_name = self._write_tmp(tmp_fd, name, data, sync=self.folders.sync)
        try:
            new_fd = self._publish(tmp_fd, tmp_name, name)
        except OSError as exc:
            _fs.unlink_quietly(tmp_fd, tmp_name)
            raise self.folders.io_error(exc, f"put {name}") from exc
        if self.folders.sync:
            self._commit_published(new_fd, name)
        self.folders.arrived(name)
        return name

    def _commit_published(self, new_fd: int, name: str) -> None:
        """Commit ``new/`` after a put; if that fails, the file is taken back and the put raises."""
        try:
            self.folders.commit(new_fd)
        except OSError as exc:
            self.folders.withdraw([name])
            raise self.folders.io_error(exc, f"put {name}: commit of new/ failed") from exc

    def _publish(self, tmp_fd: int, tmp_name: str, name: str) -> int:
        """`Folders.publish` (a name the tests hook into)."""
        return self.folders.publish(tmp_fd, tmp_name, name)

    def _write_tmp(self, tmp_fd: int, name: str, data: bytes | _fs.ByteRange, *, sync: bool) -> str:
        """`Folders.write_tmp` (a name the tests hook into)."""
        return self.folders.write_tmp(tmp_fd, name, data, sync=sync)

    def put_many(self, messages: Iterable[Message], *, delay: float | None = None) -> list[str]:
        """Store all of ``messages`` or none of them, with one durability barrier (one ``syncfs`` + one
        ``new/`` fsync); their ids, in order. ``delay`` holds every one of them back, as in `put`.

        Once it returns, every message has the same guarantee as after `put`. If it raises, every
        file it had published is taken back (unlinked, and the removal committed) unless a consumer
        claimed it already in between: so a failure may still deliver some of them (at least once),
        and a resend of the same ids is for handlers to deduplicate.
        """
        self.folders.check_writable()
        wait = check_delay(delay)
        msgs = list(messages)
        batch = self._encoded(msgs, wait)
        if not batch:
            return []
        tmp_fd, new_fd = self.folders.fd(State.TMP), self.folders.fd(State.NEW)
        written: list[tuple[str, str]] = []
        moved: list[str] = []
        try:
            self._write_all(tmp_fd, batch, written)
            self._sync_written(tmp_fd, written)
            self._publish_all(tmp_fd, written, moved)
            self.folders.commit(new_fd)
        except OSError as exc:
            self._take_back(tmp_fd, written, moved)
            raise self.folders.io_error(exc, f"put_many of {len(batch)} messages") from exc
        for name in moved:
            self.folders.arrived(name)
        return [m.id for m in msgs]

    def _encoded(self, msgs: list[Message], wait: float) -> list[tuple[str, bytes]]:
        """Each message's name in ``new/`` and its bytes (all encoded before anything is written)."""
        now = time.time()
        return [(_publish_name(m, now, wait), m.encode(self.max_message_size)) for m in msgs]

    def _write_all(self, tmp_fd: int, batch: list[tuple[str, bytes]], written: list[tuple[str, str]]) -> None:
        """Write each of ``batch`` in ``tmp/`` (not synced); (its name there, its name) go to ``written``."""
        for name, data in batch:
            written.append((self._write_tmp(tmp_fd, name, data, sync=False), name))

    def _sync_written(self, tmp_fd: int, written: list[tuple[str, str]]) -> None:
        """The files ``written`` in ``tmp/`` on disk, at once (where the fsync policy syncs at all)."""
        if self.folders.sync:
            _sync_files(tmp_fd, [tmp_name for tmp_name, _ in written])

    def _publish_all(self, tmp_fd: int, written: list[tuple[str, str]], moved: list[str]) -> None:
        """The PUBLISH move of each file ``written``, adding its name to ``moved`` (not committed)."""
        for tmp_name, name in written:
            self._publish(tmp_fd, tmp_name, name)
            moved.append(name)

    def _take_back(self, tmp_fd: int, written: list[tuple[str, str]], moved: list[str]) -> None:
        """A failed `put_many`: the files it published withdrawn, those still in ``tmp/`` removed."""
        self.folders.withdraw(moved)
        for tmp_name, _ in written:
            _fs.unlink_quietly(tmp_fd, tmp_name)

    # -- taking over legacy messages (ingestion, migrate) ---------------------------------------

    def import_done(self, messages: Iterable[Message]) -> list[str]:
        """Record messages that a legacy layout already marked processed straight into ``done/``
        (for `hybridcomms migrate`: kept for audit, never delivered). Returns their ids."""
        self.folders.check_writable()
        msgs = list(messages)
        now = time.time()
        self.folders.import_done([(_publish_name(m, now), m.encode(self.max_message_size)) for m in msgs])
        return [m.id for m in msgs]

    def bury(self, data: bytes | _fs.ByteRange, name: str, reason: dict[str, Any]) -> str | None:
        """Put bytes that can never become a message (a legacy file or ``inbox.json`` entry that does
        not convert) into ``dead/`` as ``name``, unchanged, with ``reason`` beside it. ``data`` may be
        a range of an open file (`_fs.ByteRange`), copied a block at a time, never held whole.

        Idempotent by name: if ``dead/<name>`` exists already, nothing is written and None is returned
        (a crash between burying and removing the original must not bury it twice)."""
        return self.folders.bury(data, name, reason)

    # -- claim --------------------------------------------------------------------------------

    def claim(
        self, timeout: float | None = None, *, cancel: threading.Event | None = None
    ) -> Delivery | None:
        """The due message with the highest priority, oldest first; ``None`` if there is none.

        With ``timeout`` (seconds), wait that long for one to arrive, woken by file
        notifications (no busy polling). Setting ``cancel`` (then calling `wake`) ends the wait early.
        """
        if timeout and timeout > 0:
            return self._claim_waiting(timeout, cancel)
        # The common case first, without the loop of _claim_once: the next name is claimable.
        name = self._index.pop_due()
        if name is not None:
            delivery = self._try_claim(name)
            if delivery is not None:
                return delivery
            self._after_miss(False)
        return self._claim_once()

    def _claim_waiting(self, timeout: float, cancel: threading.Event | None) -> Delivery | None:
        """`claim` with a timeout: look, then wait for an arrival (or the next due time) and look again."""
        deadline = time.monotonic() + timeout
        while True:
            waiter = self._get_waiter()  # (a new one once the mailbox folder was made anew)
            waiter.clear()
            if _cancelled(cancel):
                return None
            delivery = self._claim_once()
            if delivery is not None:
                return delivery
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            waiter.wait(min(remaining, self._until_next_due()))

    def wake(self) -> None:
        """Wake every `claim` waiting on this mailbox so it looks again (and sees its ``cancel``)."""
        with self._waiter_lock:
            waiter = self._waiter
        if waiter is not None:
            waiter.wake()

    def _until_next_due(self) -> float:
        wait = self._index.interval
        nxt = self._index.next_due()
        if nxt is not None:
            wait = min(wait, max(parse_compact(nxt) - time.time(), 0.001))
        return wait

    def _get_waiter(self) -> ArrivalWaiter:
        with self._waiter_lock:
            if self._waiter is None:
                if self._closed:
                    raise MailboxIOError(errno.EBADF, f"mailbox {self.path} is closed")
                self._waiter = ArrivalWaiter(str(self.path), self._index.push, on_lost=self._index.mark_stale)
            return self._waiter

    def _check_folders(self) -> None:
        """Before each listing: ``new/`` at the mailbox's path is still the folder open here. A mailbox
        folder deleted, moved away or unmounted raises `MailboxIOError` (a claimer would otherwise list
        a folder nobody writes to any more, and wait forever); one made anew (by a sender, by hand) is
        opened again, and claims go on there."""
        found = self._new_folder_now()
        if not _same_file(found, os.fstat(self.folders.fd(State.NEW))):
            try:
                self._reopen_folders(found)
            except UnsafePathError as exc:  # a link or a stranger's folder there now: refused, as I/O
                raise MailboxIOError(errno.EPERM, str(exc), self._new_path) from exc

    def _new_folder_now(self) -> os.stat_result:
        """What is at the mailbox's ``new/`` path now (a link is not followed); `MailboxIOError` if
        nothing is."""
        try:
            return os.stat(self._new_path, follow_symlinks=False)
        except OSError as exc:
            raise MailboxIOError(
                exc.errno, f"mailbox folder {self._new_path} is gone ({exc.strerror})", self._new_path
            ) from None

    def _reopen_folders(self, found: os.stat_result) -> None:
        """Open the mailbox's folders again: ``new/`` at its path is now ``found``, another folder."""
        with self._reopen_lock:
            if self._closed:
                raise MailboxIOError(errno.EBADF, f"mailbox {self.path} is closed")
            if _same_file(os.fstat(self.folders.fd(State.NEW)), found):
                return  # another claimer of this mailbox opened it again just now
            fresh = Folders.open(self._setup, self.fsync, self._batch_interval, self._index, self._setup.root)
            old, self.folders = self.folders, fresh
            self._retire(old)
        self._drop_waiter()  # the next claim watches the new folder
        self._index.mark_stale()
        log.info("%s: mailbox folder %s was made anew; opened again", self.agent_id, self.path)

    def _retire(self, old: Folders) -> None:
        """Keep the replaced folders ``old`` open for `_RETIRED_FOR` seconds; close those retired
        longer ago than that."""
        now = time.monotonic()
        kept = []
        for since, gone in self._retired:
            if now - since >= _RETIRED_FOR:
                gone.close()
            else:
                kept.append((since, gone))
        self._retired = [*kept, (now, old)]

    def claim_file(self, name: str) -> Delivery | None:
        """Claim one particular file of ``new/`` by name (for the Dream.OS compatibility layer,
        whose callers name the file they read). None if it is gone or someone else holds it."""
        if not is_plain_name(name):
            raise ValueError(f"not a file name in new/: {name!r}")
        self.folders.check_writable()
        return self._try_claim(name)

    def _claim_once(self) -> Delivery | None:
        """One look at ``new/``: the first due name that can be claimed, claimed; None once there is
        none (after at most one listing)."""
        # (A read-only mailbox never gets past here: its index stays empty, so `claim` always comes here.)
        if self.read_only:
            self.folders.check_writable()
        waiter = self._watching()
        scanned = False
        while True:
            name, scanned = self._next_name(waiter, scanned)
            if name is None:
                return None
            delivery = self._try_claim(name)
            if delivery is not None:
                return delivery
            self._after_miss(scanned)

    def _after_miss(self, scanned: bool) -> None:
        """After a name that did not claim: a claimer that lost the race for it jumps ahead
        (`_jump_ahead`), unless ``new/`` was ``scanned`` (listed) in this look."""
        if self._lost_race:
            if scanned:  # just listed: go on in order (never return None with names skipped)
                self._lost_race = False
            else:
                self._jump_ahead()

    def _watching(self) -> ArrivalWaiter | None:
        """The waiter that hears of arrivals. At the first look: watch new/ first, then list it (what
        arrived before the watch existed is in the listing); from then on inotify tells what arrives."""
        waiter = self._waiter
        if waiter is None and not self._closed:
            waiter = self._get_waiter()
            self._index.mark_stale()
        return waiter

    def _next_name(self, waiter: ArrivalWaiter | None, scanned: bool) -> tuple[str | None, bool]:
        """The next due name to try (None once there is none), and whether ``new/`` was listed in
        this look: the index first, then what the kernel's queue says, else a listing."""
        index = self._index
        name = index.pop_due(scanned)  # None also when the index is due for a relisting
        if name is not None or scanned:
            return name, scanned
        if _kernel_knows(waiter, index):
            # Running dry with notifications on: the kernel's queue says what arrived since the last
            # look (one read that returns at once), no listing.
            waiter.poll()
            # (`True`: the index is complete now, even if its relisting fell due meanwhile: asked
            # "is it due?" again, it said "relist" and the claim said "none" with a message there.)
            return index.pop_due(True), False
        self._check_folders()
        index.rescan(self.folders.fd(State.NEW))
        return index.pop_due(True), True

    def _jump_ahead(self) -> None:
        """After a lost race: skip a random 0 to `SPREAD` - 1 (31) of the next due names.

        Claimers of one mailbox in several processes each hear of every arrival and would all try the
        same next name, one winning and the others failing, name after name (each failure a syscall
        and the Python around it: at 8 consumers, 7 failed tries per message). A claimer that lost
        jumps ahead instead, so claimers spread over what is waiting; the names it skipped are taken
        by the others, or by its own next listing (every ``rescan_interval``). A claimer that never
        loses (the only one) never skips: its order stays exact. Measured in docs/performance.md."""
        self._lost_race = False
        if self._spread > 1:
            self._index.skip(_randrange(self._spread))

    def _try_claim(self, name: str) -> Delivery | None:
        """Claim ``new/<name>``: open and lock it, read it, rename it into ``processing/``.

        The hot path of every consumer (docs/performance.md): its steps are split only where the
        claim+ack benchmark shows no cost."""
        fd = self._open_to_claim(name)
        if fd is None:
            return None
        # From here the descriptor is ours: it becomes the Delivery's, or the finally drops it, once.
        delivery: Delivery | None = None
        try:
            m = NAME_RE.match(name)  # our own name (else one dropped by hand or by an old writer)
            message, problem = read_claimed(fd, m, self.max_message_size)
            delivery = self._hand_out(fd, name, m, message, problem)
        except OSError as exc:
            raise self.folders.io_error(exc, f"claim {_fs.shown(name)}") from exc
        finally:
            if delivery is None:
                drop(fd)
        return delivery

    def _hand_out(
        self, fd: int, name: str, m: re.Match[str] | None, message: Message | None, problem: str
    ) -> Delivery | None:
        """What ``new/<name>``, open and locked as ``fd``, read as (``message``, else ``problem``)
        becomes: a `Delivery` in ``processing/``; or None: expired (dead-lettered), never deliverable
        (rejected) or gone."""
        if message is not None and message.expires is not None and message.expired():
            self._expire(name, message, m)
            return None
        target, attempt, problem = claim_target(m, message, problem)
        if self.folders.claim_move(name, target, problem):
            # Not committed, at any fsync level (the module docstring says why).
            return Delivery(self, fd, target, message, attempt)  # type: ignore[arg-type]
        return None

    def _expire(self, name: str, message: Message, m: re.Match[str] | None) -> None:
        """``new/<name>`` (``m``: its name's match) is past its expiry: dead-lettered, never handed out."""
        self.folders.expire(name, message, 0 if m is None else int(m[4]))

    def _open_to_claim(self, name: str) -> int | None:
        """``new/<name>`` opened and locked (the lock says its claimer is alive); None if another
        claimer has it (a lost race) or it can never be opened (then rejected to ``dead/``)."""
        try:
            new_fd = self.folders.fds[_CLAIM_SRC]
        except KeyError:
            raise MailboxIOError(errno.EBADF, f"mailbox {self.path} is closed") from None
        try:
            fd = os.open(name, self._claim_flags, dir_fd=new_fd)
        except FileNotFoundError:
            self._lost_race = True
            return None  # another claimer won
        except OSError as exc:
            return self._unopenable(name, exc)
        try:
            _flock(fd, _LOCK_TRY)
        except BlockingIOError:
            os.close(fd)
            self._lost_race = True
            return None  # someone else is claiming it right now
        return fd

    def _unopenable(self, name: str, exc: OSError) -> int | None:
        """``new/<name>`` did not open (``exc``): opened again without O_NOATIME if that was why;
        else rejected to ``dead/`` when it never will open (None), or the error raised."""
        if exc.errno == errno.EPERM and self._claim_flags != _O_READ_MSG:
            # O_NOATIME is only for the file's owner: in a shared-group setup, read as others do.
            self._claim_flags = _O_READ_MSG
            return self._open_to_claim(name)
        self.folders.reject_unopenable(name, exc)
        return None

    def reject(self, name: str, reason: str) -> None:
        """new/ -> dead/ for a file that can never be delivered (`Folders.reject`; for the CLI's doctor)."""
        self.folders.reject(name, reason)

    # -- recovery -----------------------------------------------------------------------------

    def recover(self, *, now: float | None = None) -> RecoveryReport:
        """Return to ``new/`` every claimed message whose owner died (its lock is free) or whose
        lease expired; move to ``dead/`` those that used up ``max_attempts``; remove ``tmp/``
        files older than ``tmp_max_age``. Safe to run at any time, from any process.

        ``now``: the time at which leases and ``tmp/`` ages are judged (default: the clock); the
        messages it returns are due after their backoff from the real clock."""
        self.folders.check_writable()
        return recovery.recover(self, time.time() if now is None else now)

    # -- inspection and repair (`inspection`) -----------------------------------------------------

    def list(self, state: State | str) -> builtins.list[MessageInfo]:
        """Files in one state's folder (reason files of dead/ are folded into their message)."""
        return inspection.list_state(self, State(state))

    def get(self, message_id: str) -> MessageInfo | None:
        """Where a message is now (any state), by id or by file name."""
        return inspection.get(self, message_id)

    def read(self, info: MessageInfo) -> Message:
        """Decode the message a `MessageInfo` points at (raises `MessageDecodeError`)."""
        return inspection.read(self, info)

    def requeue(
        self, message_id: str, *, from_state: State | str = State.DEAD, reset_attempts: bool = True
    ) -> builtins.list[str]:
        """Move a message from ``dead/`` (or ``done/``, a replay) back to ``new/``, due now, with a
        fresh attempt count (``reset_attempts=False``: the count it had); return the new file names.
        Its reason file is removed."""
        return inspection.requeue(self, message_id, State(from_state), reset_attempts)

    def requeue_all(
        self,
        from_state: State | str = State.DEAD,
        *,
        reset_attempts: bool = True,
        step: Callable[[int], None] | None = None,
    ) -> builtins.list[str]:
        """Every message of ``dead/`` (or ``done/``) back to ``new/``, from one listing of the folder."""
        src = State(from_state)
        return inspection.requeue_infos(self, self.list(src), src, reset_attempts, step)

    def sibling(self, agent_id: str, *, create: bool = False) -> FileMailbox:
        """The mailbox of ``agent_id`` under the same root, with this one's options."""
        return FileMailbox(self.root, agent_id, fsync=self.fsync, create=create, **common_options(self))

    def purge(self, state: State | str, older_than: float = 0.0) -> int:
        """Delete files in ``done/`` or ``dead/`` that entered it ``older_than`` seconds ago or more."""
        return inspection.purge(self, State(state), older_than)

    def stats(self) -> MailboxStats:
        """How many files each state holds, and how long the oldest has been there."""
        return inspection.stats(self)


def _sync_files(dir_fd: int, names: Iterable[str]) -> None:
    """The files ``names`` in the folder ``dir_fd`` on disk: one ``syncfs``, or an fsync each where
    syncfs(2) is missing."""
    if _fs.syncfs(dir_fd):
        return
    for name in names:
        fd = os.open(name, os.O_RDONLY, dir_fd=dir_fd)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _kernel_knows(waiter: ArrivalWaiter | None, index: ClaimIndex) -> TypeGuard[ArrivalWaiter]:
    """Whether the kernel's queue of notifications (read by ``waiter``) says all that arrived since
    the index was listed: notifications on, the listing not due, no name skipped."""
    return waiter is not None and waiter.direct and not index.stale() and not index.skipped


def _cancelled(cancel: threading.Event | None) -> bool:
    """Whether a waiting claim was told to stop (its ``cancel`` set)."""
    return cancel is not None and cancel.is_set()


def _same_file(a: os.stat_result, b: os.stat_result) -> bool:
    """Whether two stats are of the same file (or folder): same inode on the same device."""
    return a.st_ino == b.st_ino and a.st_dev == b.st_dev


def _file_mode(given: int | None, new_fd: int) -> int:
    """The mode of message files: as given; else 0o660 in a group mailbox (its new/ group-writable,
    so every writer makes files the group can read), 0o600 otherwise."""
    if given is not None:
        return given
    return 0o660 if stat.S_IMODE(os.fstat(new_fd).st_mode) & 0o060 == 0o060 else 0o600


def _publish_name(message: Message, now: float, delay: float = 0.0) -> str:
    """A new message is due at its creation time, or now if that is in the future: a producer
    whose clock runs ahead must not hold its own messages back. With a ``delay``, due that much later
    than now."""
    if delay:
        return make_name(RANK_OF[message.priority], compact_time(now + delay), message.id, 0)
    created = message.created_at
    ts = created.timestamp()
    due = compact_time_of(created, ts) if ts <= now else compact_time(now)
    return make_name(RANK_OF[message.priority], due, message.id, 0)
