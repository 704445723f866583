"""The fanout on one host, no daemon (`LocalFanout`): every process sharing a root binds a Unix
datagram socket in ``<root>/.bus/`` and registers the patterns its bus subscribes to in
``<root>/.bus/<name>.json``. A publisher sends one datagram to each process with a matching pattern,
without ever waiting: what finds a full socket buffer waits in a bounded backlog for that process,
then is dropped for that process only, counted. A process that died is pruned (its socket and
registration removed) the first time a send finds nobody there.

The bus folder is shared with every agent of the group (`folder`): nothing there is changed
through a name another process can swap, a look at it costs what changed (and is spaced by its cost),
patterns are capped and indexed (`index`), the registrations a look reads are shared fairly per
process (`reads`), the sockets to peers are bounded and go to the peers that read, one publish sends
a bounded amount per user owning the peers' sockets, peers found not reading sleep (`turns`),
backlogs are bounded in all, what received events may hold is bounded per sending process
(`AgentBus.publish_received`), and a process whose registration is deleted registers again: nothing
a co-tenant places slows a publisher to a crawl or exhausts it (docs/guarantees.md). The bus carries
no authentication: any co-tenant can send any event.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import socket
import stat
import sys
import threading
import time
import uuid
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeGuard

import orjson

from ... import _fs, _log
from ...errors import UnsafePathError
from ..core import AgentBus, Event
from .folder import (
    BUS_FOLDER,
    HOST,
    MAX_REGISTRATION,
    MAX_REGISTRATIONS,
    STAR,
    Peer,
    alive,
    effective_patterns,
    fits_registration,
    open_bus_folder,
    registration_body,
    scan,
    well_formed,
    write_registration,
)
from .index import PeerIndex
from .reads import ReadQueue, pid_of
from .transport import FANOUT_STATS, STATS_LOCK, count, deliver
from .turns import Link as _Link
from .turns import Turns
from .wire import MAX_DATAGRAM, decode_event, encode_event, topic_of

__all__ = ["BUS_FOLDER", "LocalFanout"]

log = _log.get("hybridcomms.fanout")
_HOST = HOST

#: A publisher looks at the registrations again at most this often (seconds).
REFRESH_EVERY = 0.05
#: A look that lists the folder is followed by the next no sooner than this many times its own cost
#: (the CPU time of the looking thread; looks that cost less than a millisecond excepted): however many
#: entries the folder holds, looking costs a publisher at most about 1/LOOK_SPACING of its time.
LOOK_SPACING = 20
#: The processes of the registrations known are checked alive this often (the dead ones pruned).
SWEEP_EVERY = 10.0
#: Registrations read (new or changed ones) per look at most; the others at the next looks. One per
#: live pid named first, the pids taking turns (`_fanout_reads.ReadQueue`); what is left, half those
#: waiting longest, half the newest (in the order this process first saw them).
MAX_READS_PER_LOOK = 64
#: Files named like registrations that cannot be one (a ``.json`` without a socket beside it), removed
#: per look at most (each an ``lstat`` and an ``unlink``); the others at the next looks, in turns.
PRUNES_PER_LOOK = 1024
#: Sockets to peers, at most, counting those retired and waiting to be closed (a descriptor each).
#: Past it, a peer is sent to through a socket made for that one datagram.
MAX_LINKS = 256
#: A socket no longer used is closed this long after (seconds), never under a sending thread.
RETIRE_AFTER = 1.0
#: What waits for one peer whose buffer is full (events, bytes); past either, events are dropped.
BACKLOG_EVENTS = 1024
BACKLOG_BYTES = 1 << 20
#: What waits in all backlogs together (bytes, each event counted with 64 more): past it, the peer
#: behind the longest loses its backlog (if it has waited EVICT_AFTER), else the event is dropped.
BACKLOG_TOTAL = 16 << 20
#: One publish sends to the peers of one owner (the uid of their sockets) that want its topic this
#: many sends' worth at most (a peer without a connected socket counts UNLINKED_COST); past it, they
#: take turns, and an event not sent to a peer is dropped for it, counted (``dropped_budget``).
SENDS_PER_OWNER = 32
UNLINKED_COST = 4
#: Patterns held for all the registrations known, at most; past it, a registration read stands for
#: ``*`` (its process gets every event; its bus keeps what it subscribes to).
MAX_PATTERNS_HELD = 16_384
#: Peers asleep (found not reading) looked at per look at most, to see if they read again.
PROBES_PER_LOOK = 16
#: Where peers without a socket of their own wait for one and a linked peer has had a backlog waiting
#: this long (seconds, it does not read), its socket is taken back for them.
EVICT_AFTER = 0.5
#: A peer without a socket of its own whose buffer was full is not tried again for this long (seconds).
STUCK_RETRY = 1.0
#: The errors of a send to a process that is no longer there.
_GONE = frozenset((errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN, errno.EDESTADDRREQ))
#: A process writes its counters into its registration at most this often (seconds).
REPORT_EVERY = 1.0

# -- one host: Unix datagram sockets under the root ------------------------------------------------


@dataclass(slots=True)
class _Reg:
    """What the looks know of one registration: its identity in the listing (the inode: a registration
    is always written anew and renamed into place), so that an unchanged one is never read again; the
    peer it names (None: not a registration that can be used here, or one set aside past
    `MAX_REGISTRATIONS`: ``evicted``), its patterns as held; its socket's identity and owner and the
    registration's writer (uids); the order it was read in; and whether its socket refused (then it
    is not sent to until the registration changes)."""

    key: int
    peer: Peer | None
    sock: tuple[int, int] = (0, 0)
    owner: int = -1
    writer: int = -1
    seq: int = 0
    dead: bool = False
    evicted: bool = False


class _TooBig(Exception):
    """An event bigger than a datagram may be here (``EMSGSIZE``): sent to no peer, counted."""


class _Refused(Exception):
    """No socket of a peer at its name: gone, refused, not a socket itself (a link, a file), or not the
    socket its registration was read with."""


#: What one event waiting in a backlog costs beside its bytes (the bytes object and the deque's slot),
#: counted against `BACKLOG_TOTAL`.
_EVENT_OVERHEAD = 64
#: The ancillary room of one datagram's sender credentials (``struct ucred``: pid, uid, gid).
_CREDS = socket.CMSG_SPACE(12)


class LocalFanout:
    """The processes that share ``root`` on this host (see the module docstring)."""

    def __init__(
        self, bus: AgentBus, root: str | os.PathLike[str], *, allow_other_owner: bool | None = None
    ) -> None:
        self.bus = bus
        self.root = Path(root)
        self.dir = self.root / BUS_FOLDER
        self._dir_fd, self.dir_mode, self.file_mode = open_bus_folder(
            self.root, _fs.allow_other_owner(allow_other_owner)
        )
        self.origin = f"{_HOST}:{os.getpid()}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            self.name, self._sock_id = self._bind(self._sock)
        except BaseException:
            self._sock.close()
            os.close(self._dir_fd)
            raise
        self._regs: dict[str, _Reg] = {}
        self._index = PeerIndex()
        self._holders: dict[tuple[int, int], str] = {}  # a socket: the registration sent through
        self._sharing: dict[tuple[int, int], set[str]] = {}  # a socket: the registrations naming it
        self._seq = 0
        self._held = 0  # patterns held by the registrations known
        self._groups: dict[str, tuple[Turns, ...]] = {}  # by index entry
        # by topic: (its turns, whether any peer in them is awake, how many are asleep)
        self._targets: dict[str, tuple[tuple[Turns, ...], bool, int]] = {}
        self._regroup = False  # links fell asleep or woke: the turns are made again at the next look
        self._debt = 0.0  # CPU time spent making turns since the last look (it spaces the next)
        self._links: dict[str, _Link] = {}
        self._linked = 0  # links with a connected socket
        self._unlinked = 0
        self._retired: list[tuple[float, socket.socket]] = []
        self._seen_mtime = -1
        self._unsettled = False  # registrations left unread (or orphans left) by the last look: look again
        self._pending = ReadQueue()  # those, by name, in the order first seen (read: per pid, in turns)
        self._peer_count = 0  # registrations held as peers (`MAX_REGISTRATIONS` at most)
        self._orphan_turn = 0  # where the next look starts removing orphans
        self._next_look = 0.0  # the next look at the folder
        self._next_tend = 0.0  # the next tending of the links (`_tend`)
        self._next_sweep = time.monotonic() + SWEEP_EVERY
        self._dropped_to: dict[str, int] = {}
        self._dropped_gone = 0  # drops counted for peers no longer registered
        self._reported = 0.0
        self._written = b""  # this process's registration, as last written
        self._lock = threading.Lock()
        self._look_lock = threading.Lock()
        self._register_lock = threading.Lock()
        self._closed = False
        self._backlog_lock = threading.Lock()
        self._backlogged: set[_Link] = set()
        self._backlog_total = 0  # bytes waiting in all backlogs (with `_EVENT_OVERHEAD` each)
        self._flusher: threading.Thread | None = None
        self._bell_r, self._bell_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._register()
        # A first look at the peers now, and another at the first publish (whoever registered in
        # between is seen by it).
        self._refresh()
        self._next_look = self._next_tend = 0.0
        bus.add_outlet(self.send)
        bus.add_watcher(self._register)
        self._thread = threading.Thread(target=self._receive, name="hybridcomms-fanout", daemon=True)
        self._thread.start()

    def _bind(self, sock: socket.socket) -> tuple[str, tuple[int, int]]:
        """Bind ``sock`` and give it its mode with no name lookup another process can swap: it is bound
        in a folder of its own (made here, checked to be this user's, 0o700: no one else can place
        anything there), given its mode there, and then renamed into the bus folder under a new name
        (never replacing anything). Returns that name and the socket file's identity. The socket is
        made to receive its senders' credentials (`_receive`)."""
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        private = self._make_private_folder()
        pfd = _fs.open_dir(private, dir_fd=self._dir_fd)
        try:
            self._make_ours(pfd, private)
            sock.bind(f"/proc/self/fd/{pfd}/s")  # short, whatever the root's length
            os.chmod("s", self.file_mode, dir_fd=pfd)  # in a folder no one else can write
            made = os.stat("s", dir_fd=pfd, follow_symlinks=False)
            return self._move_in(pfd), (made.st_dev, made.st_ino)
        finally:
            self._remove_private_folder(private, pfd)
            os.close(pfd)

    def _make_private_folder(self) -> str:
        """The name of a new folder (0o700) made in the bus folder under a name no one uses."""
        for _ in range(100):
            private = f".{os.getpid()}-{uuid.uuid4().hex}.bind"
            try:
                os.mkdir(private, 0o700, dir_fd=self._dir_fd)
                return private
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free name for a private folder", str(self.dir))

    def _make_ours(self, pfd: int, private: str) -> None:
        """Refuse the private folder if it is not this user's (swapped between the mkdir and the
        open), else give it mode 0o700."""
        st = os.fstat(pfd)
        if st.st_uid != os.geteuid():  # swapped between the mkdir and the open
            raise UnsafePathError(f"{self.dir / private} was replaced by another user's folder")
        # through the descriptor, whatever the umask made it; a setgid bit kept (the socket then
        # gets the bus folder's group, as files made there do)
        os.fchmod(pfd, 0o700 | (st.st_mode & stat.S_ISGID))

    def _move_in(self, pfd: int) -> str:
        """Rename the socket ``s`` of the private folder into the bus folder under a new name (never
        replacing anything); that name."""
        for _ in range(100):
            name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
            try:
                _fs.rename_noreplace("s", name + ".sock", src_dir_fd=pfd, dst_dir_fd=self._dir_fd)
                return name
            except FileExistsError:
                continue
        raise FileExistsError(errno.EEXIST, "no free name for a socket", str(self.dir))

    def _remove_private_folder(self, private: str, pfd: int) -> None:
        """Remove the private folder, only if the entry is still the folder made (``pfd``)."""
        try:
            here = os.stat(private, dir_fd=self._dir_fd, follow_symlinks=False)
            mine = os.fstat(pfd)
            if (here.st_dev, here.st_ino) == (mine.st_dev, mine.st_ino):
                os.rmdir(private, dir_fd=self._dir_fd)
        except OSError:
            pass

    # -- registration ---------------------------------------------------------------------------

    def _registration(self) -> bytes:
        """This process's registration (bounded: `registration_body`)."""
        drops, others = self._drops()
        return registration_body(os.getpid(), self.bus.patterns(), drops, others)

    def _register(self) -> None:
        """Write this process's registration: its patterns (and its drop counts)."""
        if self._closed:
            return
        data = self._registration()
        with self._register_lock, contextlib.suppress(OSError):
            write_registration(self._dir_fd, self.name + ".json", data, self.file_mode)
            self._written = data

    def _check_own(self) -> None:
        """(The receiving thread, every `SWEEP_EVERY`.) A co-tenant who removed or replaced this
        process's socket or registration made it deaf: its socket is bound again (the same way as at
        start, under a new name) if it is not there, and its registration written again if it is not
        what was written."""
        if not self._own_socket_there():
            self._rebind()
            return
        if self._own_registration() != self._written:
            log.warning(
                "fanout: the registration of this process in %s was removed or changed; written again",
                self.dir,
            )
            self._register()

    def _own_socket_there(self) -> bool:
        """Whether this process's socket is still in the bus folder under its name."""
        try:
            st = os.stat(self.name + ".sock", dir_fd=self._dir_fd, follow_symlinks=False)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._sock_id

    def _own_registration(self) -> bytes:
        """What the bus folder holds as this process's registration (empty if it cannot be read)."""
        try:
            return _fs.read_regular(self.name + ".json", MAX_REGISTRATION, dir_fd=self._dir_fd)
        except OSError:
            return b""

    def _rebind(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            name, sock_id = self._bind(sock)
        except (OSError, UnsafePathError) as exc:
            sock.close()
            log.warning(
                "fanout: the socket of this process in %s is gone and could not be bound again: %s",
                self.dir,
                exc,
            )
            return
        with self._register_lock:
            if self._closed:
                sock.close()
                with contextlib.suppress(OSError):
                    os.unlink(name + ".sock", dir_fd=self._dir_fd)
                return
            old_name, old_id, old = self.name, self._sock_id, self._sock
            self.name, self._sock_id, self._sock = name, sock_id, sock
        log.warning("fanout: the socket of this process in %s was removed or replaced; bound again", self.dir)
        with contextlib.suppress(OSError):  # (a name in the bus folder: nothing is followed)
            os.unlink(old_name + ".json", dir_fd=self._dir_fd)
        with contextlib.suppress(OSError):
            st = os.stat(old_name + ".sock", dir_fd=self._dir_fd, follow_symlinks=False)
            if (st.st_dev, st.st_ino) == old_id:
                os.unlink(old_name + ".sock", dir_fd=self._dir_fd)
        old.close()
        self._register()

    # -- looking at the peers -------------------------------------------------------------------

    def _refresh(self) -> None:
        """Tend the links every REFRESH_EVERY (`_tend`: cheap, bounded by the links), and look at the
        folder again (`_look`) when its time has come. One thread does it at a time; the others wait
        for it rather than send to the peers of before it (none, at first). Looking costs at most
        about 1/`LOOK_SPACING` of the time: a look that took t seconds of CPU, with the tending and
        the turns made since the last one (`_targets_of`), is followed by the next no sooner than
        ``LOOK_SPACING * t`` later."""
        if time.monotonic() < self._next_tend:
            return
        with self._look_lock:
            now = time.monotonic()
            if now < self._next_tend:
                return  # another thread has just done it
            cpu = time.thread_time()  # (what it costs this thread: a busy host's waits aside)
            look = now >= self._next_look
            try:
                self._tend(now)
                if look:
                    self._look(now)
            finally:
                self._schedule_next(look, time.thread_time() - cpu)

    def _schedule_next(self, looked: bool, cpu: float) -> None:
        """(Under the look lock.) Add ``cpu`` (what this refresh cost) to the debt and set when the
        next tend comes, and after a look when the next look does (`LOOK_SPACING` times the debt)."""
        self._debt += cpu
        done = time.monotonic()
        self._next_tend = done + REFRESH_EVERY
        if looked:
            spacing = LOOK_SPACING * self._debt if self._debt > 0.001 else 0.0
            self._debt = 0.0
            self._next_look = done + max(REFRESH_EVERY, spacing)

    def _tend(self, now: float) -> None:
        """Close the sockets retired long enough ago, give sockets to the peers that read
        (`_rebalance`), look at the peers asleep (`_probe`), and make the turns again if peers fell
        asleep or woke."""
        if self._retired:
            with self._lock:
                self._close_retired(now)
        if self._unlinked:
            self._rebalance(now)
        if self._links:
            self._probe(now)
        if self._regroup:
            with self._lock:
                self._regroup = False
                self._reset_targets()

    def _look(self, now: float) -> None:
        """Look at the registrations again. It costs what changed and a bounded amount beside the
        listing: an unchanged folder costs one ``fstat``; a changed one a listing (`scan`, by the types
        it gives: no call per entry), a read of `MAX_READS_PER_LOOK` new or changed registrations at
        most (one per live pid named first, in turns, then half those waiting longest and half the
        newest: a co-tenant placing names once, or in a loop, never keeps a new peer waiting past
        one turn over the live pids named, `ReadQueue`), and the
        removal of `PRUNES_PER_LOOK` orphans at most (`_prune_orphans`). Only names whose ``.sock`` is
        there and may be a socket are read: files placed alone take no place. At most
        `MAX_REGISTRATIONS` peers are held: past it, one not known to work (not linked, asleep or
        refused) is set aside for a new one (tried again at the next sweep), never one that reads.
        New ones are indexed (`PeerIndex`: each costs its own patterns)."""
        sweep = now >= self._next_sweep
        if not self._folder_changed(sweep):
            return
        try:
            found, orphans = scan(self._dir_fd)
        except OSError:
            return
        found.pop(self.name, None)
        gone = self._queue_changes(found)
        read = self._read_in_turn(found)
        self._prune_orphans(orphans)
        self._unsettled = bool(self._pending) or len(orphans) > PRUNES_PER_LOOK
        with self._lock:
            self._take_look(gone, read, sweep, now)

    def _read_in_turn(self, found: dict[str, int]) -> list[tuple[str, _Reg | None]]:
        """Read `MAX_READS_PER_LOOK` of the registrations queued (`ReadQueue.choose`), listed in
        ``found`` (name: inode): (name, what was read) each."""
        chosen = self._pending.choose(MAX_READS_PER_LOOK, self._working_pids, alive)
        return [(name, self._read(name, found[name])) for name in chosen]

    def _take_look(
        self, gone: list[str], read: list[tuple[str, _Reg | None]], sweep: bool, now: float
    ) -> None:
        """(Under the lock.) What a look found replaces what was known: the registrations ``gone``
        forgotten, those ``read`` taken, a sweep made if due; the turns made again if any changed."""
        self._forget_regs(gone)
        self._take_reads(read, now)
        pruned = self._sweep(now) if sweep else False
        if gone or read or pruned:
            self._peers_changed(now)

    def _forget_regs(self, names: list[str]) -> None:
        """(Under the lock.) Forget the registrations ``names`` (no longer listed)."""
        for name in names:
            self._forget_reg(name)

    def _folder_changed(self, sweep: bool) -> bool:
        """Whether the folder is to be listed again: its mtime changed, registrations (or orphans)
        were left by the last look, or a sweep is due."""
        try:
            mtime = os.fstat(self._dir_fd).st_mtime_ns
        except OSError:
            return False
        if self._settled_at(mtime) and not sweep:
            return False
        self._seen_mtime = _seen_mtime(mtime)
        return True

    def _settled_at(self, mtime: int) -> bool:
        """Whether the folder's mtime is the one seen last and the last look left nothing to do."""
        return mtime == self._seen_mtime and not self._unsettled

    def _queue_changes(self, found: dict[str, int]) -> list[str]:
        """Queue the registrations listed (``found``: name, inode) that are new or changed to be
        read; return the names known that are no longer listed."""
        keys = self._known_keys()
        self._queue_reads(found, keys)
        return [name for name in keys if name not in found]

    def _known_keys(self) -> dict[str, int]:
        """The registrations known, by name: the inode each was read from."""
        with self._lock:  # (other threads forget a peer whose socket went away)
            return {name: reg.key for name, reg in self._regs.items()}

    def _queue_reads(self, found: dict[str, int], keys: dict[str, int]) -> None:
        """Queue to be read the registrations of ``found`` whose inode is not the one known
        (``keys``); forget those queued that are no longer listed."""
        pending = self._pending
        for name, ino in found.items():
            if keys.get(name) != ino:
                pending.add(name)  # (one rewritten again keeps its place)
        if pending:
            pending.keep_only(found)

    def _take_reads(self, read: list[tuple[str, _Reg | None]], now: float) -> None:
        """(Under the lock.) The registrations just read replace what was known of them. Past
        `MAX_REGISTRATIONS` peers, one not known to work is set aside for each new one (`_evictable`);
        if every peer held reads, the new one waits to be read again."""
        evictable: list[str] | None = None
        for name, reg in read:
            self._forget_read(name, reg, now)
            if reg is not None:
                evictable = self._take_read(name, reg, evictable, now)

    def _take_read(self, name: str, reg: _Reg, evictable: list[str] | None, now: float) -> list[str] | None:
        """(Under the lock.) Take the registration ``name`` just read, a peer set aside for it past
        `MAX_REGISTRATIONS`; the peers that may still be set aside (listed at the first that makes
        room: `_evictable`)."""
        if self._no_room_for(reg):
            evictable = self._evictable() if evictable is None else evictable
            if not self._set_aside_for(name, evictable, now):
                return evictable
        self._add_reg(name, reg)
        return evictable

    def _no_room_for(self, reg: _Reg) -> bool:
        """(Under the lock.) Whether ``reg`` names a peer and `MAX_REGISTRATIONS` peers are held."""
        return reg.peer is not None and self._peer_count >= MAX_REGISTRATIONS

    def _set_aside_for(self, name: str, evictable: list[str], now: float) -> bool:
        """(Under the lock.) Set aside the next of the peers ``evictable`` to make room for ``name``;
        False if none is left (every peer held reads: ``name`` is read again later)."""
        if not evictable:
            self._pending.add(name)
            return False
        self._evict(evictable.pop(), now)
        return True

    def _forget_read(self, name: str, reg: _Reg | None, now: float) -> None:
        """(Under the lock.) Forget what was known of a registration read again (``reg``), and retire
        its link if that went to a socket it no longer names."""
        if _socket_changed(self._regs.get(name), reg):
            link = self._links.pop(name, None)  # (a link to the socket of before)
            if link is not None:
                self._retire(link, now)
        self._forget_reg(name)

    def _sweep(self, now: float) -> bool:
        """(Under the lock, every `SWEEP_EVERY`.) The registrations set aside are forgotten (read
        again, in turn), those of dead processes of this host pruned. Whether any was pruned."""
        self._next_sweep = now + SWEEP_EVERY
        pruned = False
        for name, reg in list(self._regs.items()):
            if reg.evicted:
                del self._regs[name]
            elif _of_dead_process(reg):
                self._prune(name)
                self._forget_reg(name)
                pruned = True
        return pruned

    def _working_pids(self) -> set[int]:
        """The pids named by the registrations known to work (read, and their socket took a connect):
        their other names wait behind the pids never read (`ReadQueue.choose`)."""
        with self._lock:
            return {pid_of(name) for name, reg in self._regs.items() if _sendable(reg)}

    def _evictable(self) -> list[str]:
        """(Under the lock.) The peers held that are not known to work (no link yet, asleep, or
        refused): those refused, then those read longest ago, last (`list.pop` takes them first). A
        peer whose link is awake is never among them."""
        out = [
            (not reg.dead, reg.seq, name)
            for name, reg in self._regs.items()
            if self._may_set_aside(name, reg)
        ]
        out.sort()
        return [name for _, _, name in reversed(out)]

    def _may_set_aside(self, name: str, reg: _Reg) -> bool:
        """(Under the lock.) Whether the registration ``name`` is of a peer not known to work."""
        return reg.peer is not None and not _works(self._links.get(name))

    def _evict(self, name: str, now: float) -> None:
        """(Under the lock.) Set a peer aside, past `MAX_REGISTRATIONS`: not sent to, not read again
        until its registration changes or the next sweep."""
        reg = self._regs[name]
        link = self._links.pop(name, None)
        if link is not None:
            self._retire(link, now)
        self._forget_reg(name)
        self._regs[name] = _Reg(reg.key, None, evicted=True)

    def _prune_orphans(self, orphans: list[tuple[str, int]]) -> None:
        """Remove `PRUNES_PER_LOOK` of the ``.json`` files found without a socket beside them
        (`scan`), taking turns through them (one that cannot be removed never holds the others up).
        Each is checked again first (an ``lstat`` of its ``.sock``: a listing is not one instant), and
        removed only if it is still the file listed; a ``.sock`` beside it that is a file or a link is
        removed too."""
        if not orphans:
            return
        for stem, ino in self._orphans_in_turn(orphans):
            if stem != self.name:
                self._prune_orphan(stem, ino)

    def _orphans_in_turn(self, orphans: list[tuple[str, int]]) -> list[tuple[str, int]]:
        """`PRUNES_PER_LOOK` of ``orphans`` at most, from where the last look stopped."""
        start = self._orphan_turn % len(orphans)
        batch = (orphans[start:] + orphans[:start])[:PRUNES_PER_LOOK]
        self._orphan_turn = start + len(batch)
        return batch

    def _prune_orphan(self, stem: str, ino: int) -> None:
        """Remove ``<stem>.json`` if it is still the orphan listed (inode ``ino``) and its ``.sock``
        is still missing, a file or a link (then removed too); counted."""
        dir_fd = self._dir_fd
        removable, sst = _orphan_sock(dir_fd, stem)
        if not removable:
            return
        if not _unlink_if_same(dir_fd, stem + ".json", ino):
            return
        if sst is not None:
            with contextlib.suppress(OSError):
                os.unlink(stem + ".sock", dir_fd=dir_fd)
        count("pruned")

    def _read(self, name: str, ino: int) -> _Reg | None:
        """Read one registration (new or changed), listed with the inode ``ino``. None if it is gone,
        or was pruned because it can never be one: too big or not a regular file, not a registration
        (it does not decode, or is of the wrong shape), its process died (this host), its socket is
        gone (a process makes its socket before its registration and removes it after), is not a
        socket (a FIFO), or refuses a connect (nobody has it bound: it never will again) for a
        registration of this host. A registration of another host whose socket refuses is kept as
        one that cannot be used here (not read again until it changes). Its patterns are taken as
        every reader takes them (`effective_patterns`: ``*`` past the caps)."""
        found = self._read_body(name)
        if found is None:
            return None
        body, writer = found
        patterns = effective_patterns(body["patterns"])
        assert patterns is not None  # (well formed)
        peer = Peer(name, body["pid"], body["host"], patterns)
        if _dead_here(peer):
            self._prune(name)
            return None
        return self._reg_of(peer, ino, writer)

    def _read_body(self, name: str) -> tuple[dict[str, Any], int] | None:
        """The body of the registration ``name`` (well formed) and its writer (uid); None if it is
        gone, or pruned: too big, not a regular file, does not decode, or of the wrong shape."""
        try:
            st = os.stat(name + ".json", dir_fd=self._dir_fd, follow_symlinks=False)
            body = _registration_body(self._dir_fd, name + ".json", st)
        except OSError:  # (gone: FileNotFoundError from the read too)
            return None
        if not well_formed(body):
            self._prune(name, sock=False)
            return None
        return body, st.st_uid

    def _reg_of(self, peer: Peer, ino: int, writer: int) -> _Reg | None:
        """What is known of ``peer``'s registration once its socket is looked at (`_read`): None if
        the socket is gone, not one, or refuses for a peer of this host (pruned)."""
        name = peer.name
        try:
            sst = os.stat(name + ".sock", dir_fd=self._dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            self._prune(name, sock=False)
            return None
        except OSError:
            return _Reg(ino, None)
        return self._reg_at(peer, ino, writer, sst)

    def _reg_at(self, peer: Peer, ino: int, writer: int, sst: os.stat_result) -> _Reg | None:
        """What is known of ``peer``'s registration whose ``.sock`` is ``sst``: None if that is not a
        socket or refuses for a peer of this host (pruned); one that cannot be used here if it
        refuses for a peer of another host."""
        sock_id = (sst.st_dev, sst.st_ino)
        if not stat.S_ISSOCK(sst.st_mode):
            self._prune(peer.name, sock=not stat.S_ISDIR(sst.st_mode))
            return None
        if not self._takes_connect(peer, sock_id):
            return None if peer.host == _HOST else _Reg(ino, None)
        return _Reg(ino, peer, sock_id, sst.st_uid, writer)

    def _takes_connect(self, peer: Peer, sock_id: tuple[int, int]) -> bool:
        """Whether ``peer``'s socket (``sock_id``) takes a connect; one of this host that refuses is
        pruned. Other errors (out of descriptors) are taken as a yes."""
        try:
            self._connect(peer.name, sock_id).close()
        except _Refused:
            if peer.host == _HOST:
                self._prune(peer.name, sock=sock_id)
            return False
        except OSError:  # (out of descriptors, say: taken as it is)
            pass
        return True

    def _add_reg(self, name: str, reg: _Reg) -> None:
        """(Under the lock.) A registration read: known, and indexed if it can be sent to. Patterns
        past `MAX_PATTERNS_HELD` in all are held as ``*`` (the peer gets every event: nothing lost)."""
        self._seq += 1
        reg.seq = self._seq
        peer = reg.peer
        if peer is not None and self._held + len(peer.patterns) > MAX_PATTERNS_HELD:
            peer = reg.peer = Peer(peer.name, peer.pid, peer.host, STAR)
        self._regs[name] = reg
        if peer is not None:
            self._held += len(peer.patterns)
            self._peer_count += 1
            self._index_reg(name, reg)

    def _forget_reg(self, name: str) -> None:
        """(Under the lock.)"""
        reg = self._regs.pop(name, None)
        if reg is not None and reg.peer is not None:
            self._held -= len(reg.peer.patterns)
            self._peer_count -= 1
            self._unindex_reg(name, reg)

    def _rank(self, name: str) -> tuple[bool, int]:
        reg = self._regs[name]
        return reg.writer != reg.owner, reg.seq

    def _index_reg(self, name: str, reg: _Reg) -> None:
        """(Under the lock.) Index a registration that can be sent to. Several registrations naming one
        socket (links made to it) are one peer: sent to once, through the registration written by
        the socket's owner (else the first read)."""
        assert reg.peer is not None
        sharing = self._sharing.setdefault(reg.sock, set())
        sharing.add(name)
        holder = self._holders.get(reg.sock)
        if self._outranks(name, holder):
            if holder is not None:
                self._index.remove(holder)
            self._send_through(reg.sock, name, reg.peer.patterns)

    def _outranks(self, name: str, holder: str | None) -> bool:
        """(Under the lock.) Whether a socket is to be sent to through the registration ``name``
        rather than through ``holder``, the one it is sent through now (None: none)."""
        return holder is None or self._rank(name) < self._rank(holder)

    def _unindex_reg(self, name: str, reg: _Reg) -> None:
        """(Under the lock.)"""
        sharing = self._sharing.get(reg.sock)
        if sharing is None:
            return
        sharing.discard(name)
        if self._holders.get(reg.sock) == name:
            del self._holders[reg.sock]
            self._index.remove(name)
            self._hand_over(reg.sock, sharing)
        if not sharing:
            del self._sharing[reg.sock]

    def _hand_over(self, sock: tuple[int, int], sharing: set[str]) -> None:
        """(Under the lock.) The socket ``sock`` lost the registration it was sent through: the best
        ranked of the others naming it (`_rank`), if any is known, is indexed in its place."""
        live = [n for n in sharing if self._regs.get(n) is not None]
        if live:
            best = min(live, key=self._rank)
            peer = self._regs[best].peer
            assert peer is not None
            self._send_through(sock, best, peer.patterns)

    def _send_through(self, sock: tuple[int, int], name: str, patterns: tuple[str, ...]) -> None:
        """(Under the lock.) The socket ``sock`` is sent to through the registration ``name``
        (indexed under its ``patterns``)."""
        self._holders[sock] = name
        self._index.add(name, patterns)

    def _peers_changed(self, now: float) -> None:
        """(Under the lock.) The turns are made again; links to peers no longer there are retired."""
        self._reset_targets()
        for name in self._unindexed(self._links):
            self._retire(self._links.pop(name), now)
        self._sum_drops_of_gone()

    def _unindexed(self, names: Iterable[str]) -> list[str]:
        """(Under the lock.) Those of ``names`` that are no longer indexed (peers gone)."""
        indexed = self._index
        return [n for n in names if n not in indexed]

    def _sum_drops_of_gone(self) -> None:
        """(Under the lock.) The drops counted for peers no longer indexed move to ``_dropped_gone``."""
        gone = self._unindexed(self._dropped_to)
        if gone:
            with STATS_LOCK:
                for n in gone:
                    self._dropped_gone += self._dropped_to.pop(n, 0)

    def _reset_targets(self) -> None:
        """(Under the lock.) Forget the turns (made again at the next publish of each topic), their
        counts of missed events added to the drops of each peer first."""
        if self._groups:
            with STATS_LOCK:
                self._add_missed(self._dropped_to)
        self._groups = {}
        self._targets = {}

    def _add_missed(self, into: dict[str, int]) -> None:
        """(Under the lock.) Add what the peers missed in the turns of now to ``into`` (by name)."""
        for group in self._groups.values():
            for turns in group:
                for link, n in turns.missed():
                    into[link.name] = into.get(link.name, 0) + n

    def _rebalance(self, now: float) -> None:
        """Links go to the peers that read. Peers without one that read (their last send went
        through) get one where there is room; where there is none, links whose peer has not read for
        `EVICT_AFTER` seconds (a backlog waiting that long) are taken back (their backlog is dropped,
        counted, and their peer is not tried for `STUCK_RETRY`). A socket taken back keeps its
        descriptor until it is closed (`RETIRE_AFTER`): its room is given at a later look."""
        with self._lock:
            waiting = self._waiting_for_socket(now)
            if not waiting:
                return
            room = self._room_for_links()
            if len(waiting) > room:
                self._take_back(len(waiting) - room, now)
            self._relink(waiting[:room])
            self._reset_targets()

    def _waiting_for_socket(self, now: float) -> list[_Link]:
        """(Under the lock.) The unlinked links whose peers read (`_waits_for_socket`)."""
        return [ln for ln in self._links.values() if _waits_for_socket(ln, now)]

    def _room_for_links(self) -> int:
        """(Under the lock.) How many more sockets to peers there is room for (`MAX_LINKS`)."""
        return max(MAX_LINKS - self._linked - len(self._retired), 0)

    def _relink(self, links: list[_Link]) -> None:
        """(Under the lock.) Forget the unlinked ``links``: made again, connected, by the next publish."""
        for ln in links:
            self._links.pop(ln.name)
            self._unlinked -= 1

    def _take_back(self, wanted: int, now: float) -> None:
        """(Under the lock.) Take back the sockets of ``wanted`` links at most whose peers have not
        read for `EVICT_AFTER` (those behind the longest first): each peer is sent to unlinked,
        not before `STUCK_RETRY`."""
        behind = [ln for ln in self._links.values() if _stuck(ln, now)]
        behind.sort(key=lambda ln: ln.behind_since)
        for stuck in behind[:wanted]:
            self._unlink(stuck, now)

    def _unlink(self, stuck: _Link, now: float) -> None:
        """(Under the lock.) Retire the socket of ``stuck``: its peer is sent to unlinked, not before
        `STUCK_RETRY`."""
        self._retire(self._links.pop(stuck.name), now)
        reg = self._regs.get(stuck.name)
        if reg is not None:
            evicted = self._unlinked_link(reg, stuck.peer)
            evicted.skip_until = now + STUCK_RETRY
            self._links[stuck.name] = evicted

    def _probe(self, now: float) -> None:
        """Peers asleep because they did not read (`STUCK_RETRY` ago) are looked at, `PROBES_PER_LOOK`
        at most per look, without sending them anything: one whose socket would take a datagram now
        (its buffer has room: it reads again) is woken (publishes visit it again), the others sleep
        another `STUCK_RETRY`."""
        woke = False
        for link in self._due_probes(now):
            woke = self._wake_if_writable(link, now) or woke
        if woke:
            self._regroup = True

    def _due_probes(self, now: float) -> list[_Link]:
        """The links of peers asleep whose `STUCK_RETRY` is up, `PROBES_PER_LOOK` at most."""
        due = [ln for ln in list(self._links.values()) if ln.skip_until and now >= ln.skip_until]
        return due[:PROBES_PER_LOOK]

    def _wake_if_writable(self, link: _Link, now: float) -> bool:
        """Wake a peer asleep whose buffer has room again (True), else let it sleep another
        `STUCK_RETRY`."""
        if self._writable(link):
            link.skip_until = 0.0
            link.ok = True
            return True
        link.skip_until = now + STUCK_RETRY
        return False

    def _writable(self, link: _Link) -> bool:
        """Whether ``link``'s peer has room in its buffer (a datagram socket connected to another
        polls writable only then)."""
        if link.sock is not None:
            return _has_room(link.sock)
        return self._unlinked_writable(link)

    def _unlinked_writable(self, link: _Link) -> bool:
        """Whether the peer of the unlinked ``link`` has room, through a socket made to ask it; a
        peer whose socket refuses is gone (`_peer_gone`)."""
        reg = self._regs.get(link.name)
        try:
            sock = self._connect(link.name, reg.sock if reg is not None else None)
        except _Refused:
            self._peer_gone(link)
            return False
        except OSError:
            return False
        with sock:
            return bool(_poll_out(sock))

    def _targets_of(self, topic: str) -> tuple[tuple[Turns, ...], bool, int]:
        """The turns of the peers that want ``topic``, whether any of them is awake, and how many
        sleep (cached per topic until the next change of the registrations or of who sleeps).
        Finding them costs the topic's segments (`PeerIndex`); the turns of each index entry are
        made once and shared by the topics it matches; the CPU time of making them is added to the
        spacing of the next look."""
        with self._lock:
            cached = self._targets.get(topic)
            if cached is not None:
                return cached
            cpu = time.thread_time()
            result = self._find_targets(topic)
            if len(self._targets) >= 10_000:
                self._reset_targets()
            self._targets[topic] = result
            self._debt += time.thread_time() - cpu
        return result

    def _find_targets(self, topic: str) -> tuple[tuple[Turns, ...], bool, int]:
        """(Under the lock.) The turns of the peers that want ``topic`` (`_targets_of`), made."""
        found: list[Turns] = []
        for key, names in self._index.entries(topic):
            found.extend(self._group(key, names))
        return tuple(found), any(t.ring for t in found), sum(len(t.asleep) for t in found)

    def _group(self, key: str, names: Collection[str]) -> tuple[Turns, ...]:
        """(Under the lock.) The turns of one index entry: made once, shared by the topics it matches."""
        group = self._groups.get(key)
        if group is None:
            group = self._groups[key] = self._turns(list(names))
        return group

    def _turns(self, names: list[str]) -> tuple[Turns, ...]:
        """(Under the lock.) The turns of the peers ``names``: one per owner (their socket's uid)."""
        by_owner: dict[int, list[_Link]] = {}
        for name in names:
            link = self._link_of(name)
            if link is not None:
                by_owner.setdefault(link.owner, []).append(link)
        budget = SENDS_PER_OWNER
        return tuple(Turns(links, budget) for links in by_owner.values())

    def _link_of(self, name: str) -> _Link | None:
        """(Under the lock.) The link to the peer of registration ``name`` (`_link`); None if that is
        not a peer that can be sent to (unknown, set aside, or its socket refused)."""
        reg = self._regs.get(name)
        if reg is None or reg.peer is None or reg.dead:
            return None
        return self._link(reg, reg.peer)

    def peers_for(self, topic: str) -> list[str]:
        """The registration names of the processes an event on ``topic`` may go to (those asleep
        last), in turn order."""
        self._refresh()
        turns, _, _ = self._targets_of(topic)
        return [link.name for t in turns for link in (*t.ring, *t.asleep)]

    def _link(self, reg: _Reg, peer: Peer) -> _Link | None:
        """(Under the lock.) The link to ``peer``, made if new: connected while there is room
        (`MAX_LINKS` sockets, counting those waiting to be closed), else unlinked. None if its socket
        refused: the peer is taken as dead until its registration changes."""
        link = self._links.get(peer.name)
        if link is not None:
            return link
        try:
            sock = self._socket_for(reg, peer)
        except _Refused:
            self._refused(peer.name, peer.pid, peer.host == _HOST)
            return None
        link = self._unlinked_link(reg, peer) if sock is None else self._linked_link(reg, peer, sock)
        self._links[peer.name] = link
        return link

    def _socket_for(self, reg: _Reg, peer: Peer) -> socket.socket | None:
        """(Under the lock.) A socket connected to ``peer`` if there is room (`MAX_LINKS`) and
        descriptors left, else None; `_Refused` if its socket refuses."""
        if self._linked + len(self._retired) >= MAX_LINKS:
            return None
        try:
            return self._connect(peer.name, reg.sock)
        except OSError:  # out of descriptors, say: sent to one datagram at a time
            return None

    def _linked_link(self, reg: _Reg, peer: Peer, sock: socket.socket) -> _Link:
        """(Under the lock.) The link to ``peer`` through its own connected ``sock`` (counted)."""
        self._linked += 1
        return _Link(peer, sock.send, sock, reg.owner, 1)

    def _unlinked_link(self, reg: _Reg, peer: Peer) -> _Link:
        name, expect = peer.name, reg.sock

        def send_once(data: bytes, flags: int) -> int:
            try:
                sock = self._connect(name, expect)
            except _Refused:
                raise ConnectionRefusedError(errno.ECONNREFUSED, "no socket of a peer there") from None
            try:
                return sock.send(data, flags)
            finally:
                sock.close()

        self._unlinked += 1
        return _Link(peer, send_once, None, reg.owner, UNLINKED_COST)

    def _connect(self, name: str, expect: tuple[int, int] | None) -> socket.socket:
        """A socket connected to ``<name>.sock``; `_Refused` if that is gone, refuses, is not a socket,
        is a link, or is not the socket ``expect`` names (the one its registration was read with).
        Connected through an ``O_PATH`` descriptor of the entry, checked first, so that an entry
        swapped for a link (to a socket outside the root) after the check is not followed either.
        Other errors (out of descriptors) are raised as they are."""
        try:
            fd = os.open(name + ".sock", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd)
        except FileNotFoundError:
            raise _Refused from None
        try:
            return _connect_through(fd, expect)
        except OSError as exc:
            if exc.errno in _GONE:
                raise _Refused from None
            raise
        finally:
            os.close(fd)

    def _refused(self, name: str, pid: int, local: bool) -> None:
        """(Under the lock.) A peer's socket refused: pruned if its process died, else taken as dead
        until its registration changes (a stale socket costs one refused connect, not one per event).
        The turns are made again at the next look (or at once by the caller)."""
        if local and not alive(pid):
            self._prune(name)
            self._forget_reg(name)
        else:
            self._take_as_dead(name)
        self._regroup = True

    def _take_as_dead(self, name: str) -> None:
        """(Under the lock.) The peer of registration ``name`` is not sent to (unindexed) until its
        registration changes."""
        reg = self._regs.get(name)
        if _sendable(reg):
            reg.dead = True
            self._unindex_reg(name, reg)

    def _retire(self, link: _Link, now: float) -> None:
        """(Under the lock.) A link no longer used: its socket is closed a while later, not now, so that
        a publisher still sending on it (another thread) never sends on a reused descriptor."""
        self._forget_backlog(link)
        if link.sock is not None:
            self._linked -= 1
            self._retired.append((now, link.sock))
        else:
            self._unlinked -= 1

    def _close_retired(self, now: float) -> None:
        keep = []
        for since, sock in self._retired:
            if now - since >= RETIRE_AFTER:
                sock.close()
            else:
                keep.append((since, sock))
        self._retired = keep

    def _prune(self, name: str, sock: bool | tuple[int, int] = True) -> None:
        """Remove a registration that can never be one, and its ``.sock`` if ``sock`` (if that is
        the socket whose identity ``sock`` gives, if one is given)."""
        if sock is not False:
            self._remove_sock(name, None if sock is True else sock)
        with contextlib.suppress(OSError):
            os.unlink(name + ".json", dir_fd=self._dir_fd)
        count("pruned")

    def _remove_sock(self, name: str, ident: tuple[int, int] | None) -> None:
        """Remove ``<name>.sock``, only if it is the socket ``ident`` names when one is given."""
        with contextlib.suppress(OSError):
            if ident is not None:
                st = os.stat(name + ".sock", dir_fd=self._dir_fd, follow_symlinks=False)
                if (st.st_dev, st.st_ino) != ident:
                    return
            os.unlink(name + ".sock", dir_fd=self._dir_fd)

    # -- sending --------------------------------------------------------------------------------

    def send(self, event: Event) -> None:
        """Called by the bus after its own delivery: one datagram to each peer that wants the topic,
        `SENDS_PER_OWNER` sends' worth per owner at most (past it, its peers take turns); peers found
        not reading are not visited (what they miss is counted in one addition). The common case (a
        peer that reads) is written out here; the others are `_send_behind` and `_send_failed`."""
        now = time.monotonic()
        if now >= self._next_tend:
            self._refresh()
        if not self._index.names:
            return
        targets = self._targets.get(event.topic) or self._targets_of(event.topic)
        all_turns, awake, asleep = targets
        if not awake:  # (none, or all asleep: nothing is encoded, what they miss counted at once)
            self._missed_by_all(all_turns, asleep, now)
            return
        data = encode_event(event, self.origin)
        if data is None:
            count("unsendable")
            return
        sent = skipped = 0
        try:
            for turns in all_turns:
                turns.count += 1
                visit = turns.ring if turns.whole else turns.window()
                skipped += len(turns.ring) - len(visit)
                for link in visit:
                    if link.backlog or link.skip_until:  # events wait for it, or it was found not reading
                        sent += self._send_behind(link, data, now)
                        continue
                    try:
                        link.send(data, socket.MSG_DONTWAIT)
                    except OSError as exc:
                        self._send_failed(link, data, exc)
                        continue
                    sent += 1
                    if link.sock is None:  # an unlinked peer that reads: it may get a socket of its own
                        link.ok = True
        except _TooBig:
            count("unsendable")
            return
        self._count_sent(sent, skipped, asleep, now)

    def _missed_by_all(self, all_turns: tuple[Turns, ...], asleep: int, now: float) -> None:
        """An event no peer is awake for: what the ``asleep`` ones miss is counted at once."""
        if not asleep:
            return
        for turns in all_turns:
            turns.count += 1
        FANOUT_STATS["dropped_full"] += asleep  # (approximate under threads, as "sent")
        if now - self._reported >= REPORT_EVERY:
            self._report()

    def _send_behind(self, link: _Link, data: bytes, now: float) -> int:
        """Send to a peer that events wait for already (they go first: ``data`` waits after them,
        in order) or that was found not reading (not tried before its `STUCK_RETRY` is up). How
        many were sent (0 or 1)."""
        if link.backlog:  # (written out: this runs for each event while a backlog fills)
            if link.full:
                self._dropped(link)
            else:
                self._defer(link, data)
            return 0
        if now < link.skip_until:
            self._dropped(link)
            return 0
        try:
            link.send(data, socket.MSG_DONTWAIT)
        except OSError as exc:
            self._send_failed(link, data, exc)
            return 0
        self._reads_again(link)
        return 1

    def _reads_again(self, link: _Link) -> None:
        """A peer found not reading took a send: awake again (the turns made again)."""
        link.skip_until = 0.0
        self._regroup = True
        if link.sock is None:
            link.ok = True

    def _send_failed(self, link: _Link, data: bytes, exc: OSError) -> None:
        """A send to ``link`` raised ``exc``: a full buffer (the event waits, `_defer`), nobody there
        any more (`_peer_gone`), an event too big for a datagram (`_TooBig`: sent to nobody), or
        another error (dropped for this peer)."""
        if isinstance(exc, BlockingIOError):  # its buffer is full: it is slow, busy, or stopped reading
            self._defer(link, data)
        elif exc.errno == errno.EMSGSIZE:
            raise _TooBig from None
        elif exc.errno in _GONE:  # nobody there any more (or it closed its bus)
            self._peer_gone(link)
        else:
            self._dropped(link)

    def _count_sent(self, sent: int, skipped: int, asleep: int, now: float) -> None:
        """Count what one publish sent, skipped (`SENDS_PER_OWNER`) and missed (peers asleep)."""
        if sent:
            FANOUT_STATS["sent"] += sent  # counters are approximate under threads: a lost increment
        if asleep or skipped:  # (those of each peer are exact: `Turns.missed`)
            FANOUT_STATS["dropped_full"] += asleep
            FANOUT_STATS["dropped_budget"] += skipped
            if now - self._reported >= REPORT_EVERY:
                self._report()

    # -- the backlog: what waits for a peer whose buffer is full ---------------------------------

    def _defer(self, link: _Link, data: bytes) -> None:
        """Keep ``data`` for ``link`` until its peer reads again; dropped, counted, past the bounds
        (a stopped peer costs a bounded backlog, then nothing until it reads: it sleeps), and then until
        half of the backlog has gone out. All backlogs together hold `BACKLOG_TOTAL` at most: past
        it, the peer behind the longest (`EVICT_AFTER` at least) loses its backlog to make room; if
        there is none, the event is dropped."""
        if link.sock is None:  # unlinked: no readiness of its own to wait for
            self._unlinked_full(link)
            return
        size = len(data) + _EVENT_OVERHEAD
        with self._backlog_lock:
            kept = self._keep(link, data, size)
        if kept == "over":
            self._over_total(link, data, size)
        elif kept == "full":
            self._dropped(link)
        elif kept == "first":
            self._ring()

    def _unlinked_full(self, link: _Link) -> None:
        """The buffer of an unlinked peer is full: the event is dropped, and the peer sleeps for
        `STUCK_RETRY`."""
        link.ok = False
        link.skip_until = time.monotonic() + STUCK_RETRY
        self._regroup = True
        self._dropped(link)

    def _keep(self, link: _Link, data: bytes, size: int) -> Literal["first", "kept", "full", "over"]:
        """(Under the backlog lock.) Put ``data`` (``size`` counted) at the end of ``link``'s backlog:
        ``"first"`` if the flusher is to be told of the link, ``"kept"``; or not: ``"full"`` (its own
        backlog is full: it is not visited until half has gone out), ``"over"`` (all backlogs are).
        Written out: it runs for each event while a peer's backlog fills (split into named steps, that
        path measured 13% slower)."""
        if len(link.backlog) >= BACKLOG_EVENTS or link.backlog_bytes + len(data) > BACKLOG_BYTES:
            self._set_full(link)
            return "full"
        if self._backlog_total + size > BACKLOG_TOTAL:
            return "over"
        if not link.backlog:
            link.behind_since = time.monotonic()
        link.backlog.append(data)
        link.backlog_bytes += len(data)
        self._backlog_total += size
        first = link not in self._backlogged
        self._backlogged.add(link)
        return "first" if first else "kept"

    def _set_full(self, link: _Link) -> None:
        """``link``'s backlog is full: its peer is not visited until half of it has gone out."""
        if not link.full:
            link.full = True
            self._regroup = True

    def _over_total(self, link: _Link, data: bytes, size: int) -> None:
        """All backlogs are full: room is made (`_make_room`) and ``data`` kept, or it is dropped and
        ``link``'s peer is not visited for a while."""
        if self._make_room(link, size):
            self._defer(link, data)
            return
        if not link.backlog:  # nothing of its own waits to show when it reads: it sleeps
            link.skip_until = time.monotonic() + STUCK_RETRY
            self._regroup = True
        else:
            self._set_full(link)
        self._dropped(link)

    def _ring(self) -> None:
        """Tell the flusher thread (started if none) that a backlog begins."""
        if self._flusher is None:
            self._start_flusher()
        with contextlib.suppress(OSError):  # BlockingIOError: rung already
            os.write(self._bell_w, b"\0")

    def _make_room(self, link: _Link, size: int) -> bool:
        """The backlogs are full (`BACKLOG_TOTAL`): the one behind the longest, if that is another
        peer's and has waited `EVICT_AFTER`, is dropped (counted) and its peer sleeps (`STUCK_RETRY`).
        Whether there is room for ``size`` more now."""
        now = time.monotonic()
        oldest = self._behind_longest(link)
        if oldest is None or now - oldest.behind_since < EVICT_AFTER:
            return False
        self._forget_backlog(oldest)
        oldest.skip_until = now + STUCK_RETRY
        self._regroup = True
        with self._backlog_lock:
            return self._backlog_total + size <= BACKLOG_TOTAL

    def _behind_longest(self, link: _Link) -> _Link | None:
        """The link other than ``link`` whose backlog has waited the longest, if any."""
        with self._backlog_lock:
            behind = [ln for ln in self._backlogged if ln.backlog and ln is not link]
            return min(behind, key=lambda ln: ln.behind_since, default=None)

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is None and not self._closed:
                self._flusher = threading.Thread(
                    target=self._flush, name="hybridcomms-fanout-flush", daemon=True
                )
                self._flusher.start()

    def _forget_backlog(self, link: _Link) -> None:
        """Drop (and count, for its peer too) what waits for ``link``: it is gone, taken back, or its
        socket broke."""
        with self._backlog_lock:
            lost = len(link.backlog)
            self._backlog_total -= link.backlog_bytes + _EVENT_OVERHEAD * lost
            link.backlog.clear()
            link.backlog_bytes = 0
            if link.full:
                link.full = False
                self._regroup = True
            self._backlogged.discard(link)
        if lost:
            with STATS_LOCK:
                FANOUT_STATS["dropped_full"] += lost
                self._dropped_to[link.name] = self._dropped_to.get(link.name, 0) + lost

    def _drain(self, link: _Link) -> bool:
        """Send what waits for ``link``, oldest first, until it is empty (True) or the peer's buffer
        is full again (False)."""
        while True:  # (written out: it runs for each event sent from a backlog)
            with self._backlog_lock:
                if not link.backlog:
                    self._backlogged.discard(link)
                    return True
                data = link.backlog[0]  # taken off only once sent: a publisher seeing it waits behind
            try:
                link.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError as exc:
                self._broke_under_backlog(link, exc)
                return True
            with self._backlog_lock:
                self._sent_from_backlog(link, data)
            FANOUT_STATS["sent"] += 1
            FANOUT_STATS["deferred"] += 1

    def _broke_under_backlog(self, link: _Link, exc: OSError) -> None:
        """A send from ``link``'s backlog raised ``exc``: the backlog is dropped, and the peer taken as
        gone if nobody is there any more."""
        self._forget_backlog(link)
        if exc.errno in _GONE:  # (EBADF: retired and closed, already forgotten by a look)
            self._peer_gone(link)

    def _sent_from_backlog(self, link: _Link, data: bytes) -> None:
        """(Under the backlog lock.) ``data``, the oldest of ``link``'s backlog, went out: taken off
        (unless the backlog was dropped meanwhile). Once full, a backlog takes events again when half
        of it has gone out: a peer that falls behind loses runs of events, never one here and there."""
        if not (link.backlog and link.backlog[0] is data):
            return
        link.backlog.popleft()
        link.backlog_bytes -= len(data)
        self._backlog_total -= len(data) + _EVENT_OVERHEAD
        if link.full:
            self._unset_full_at_half(link)
        if link.backlog:
            link.behind_since = time.monotonic()  # it reads: behind since now only

    def _unset_full_at_half(self, link: _Link) -> None:
        """(Under the backlog lock.) A full backlog down to half its events takes events again once
        it is down to half its bytes too (the peer awake again at the next look)."""
        if len(link.backlog) <= BACKLOG_EVENTS // 2:
            link.full = link.backlog_bytes > BACKLOG_BYTES // 2
            if not link.full:
                self._regroup = True

    def _flush(self) -> None:
        """The flusher thread: waits until a backlogged peer can take more (POLLOUT on its connected
        socket), or the bell (a new backlog, or close), and sends what waits."""
        poller = select.poll()
        poller.register(self._bell_r, select.POLLIN)
        watched: dict[int, _Link] = {}
        while not self._closed:
            waiting = self._drain_all()
            _rewatch(poller, watched, waiting)
            watched = waiting
            for fd, events in poller.poll():
                self._flush_event(fd, events, watched)

    def _drain_all(self) -> dict[int, _Link]:
        """(The flusher thread.) Send what waits for every backlogged link (`_drain`): the links whose
        peers' buffers are full again, by their socket's descriptor (to wait for)."""
        waiting: dict[int, _Link] = {}
        for link in list(self._backlogged):
            if not self._drain(link) and link.sock is not None:  # (only connected links wait)
                self._wait_for_room(link, link.sock, waiting)
        return waiting

    def _wait_for_room(self, link: _Link, sock: socket.socket, waiting: dict[int, _Link]) -> None:
        """(The flusher thread.) ``link``, whose peer's buffer is full again, waits for room on its
        socket ``sock`` (put in ``waiting`` by descriptor); if that is closed, its backlog is dropped."""
        fd = sock.fileno()
        if fd >= 0:
            waiting[fd] = link
        else:
            self._forget_backlog(link)

    def _flush_event(self, fd: int, events: int, watched: dict[int, _Link]) -> None:
        """(The flusher thread.) What the poll said of ``fd``: the bell (emptied), or a socket
        closed or broken under a backlog (dropped; a refresh sorts it out)."""
        if fd == self._bell_r:
            with contextlib.suppress(OSError):
                os.read(self._bell_r, 4096)
        elif events & (select.POLLNVAL | select.POLLERR | select.POLLHUP):
            broken = watched.get(fd)
            if broken is not None:
                self._forget_backlog(broken)
                self._next_look = self._next_tend = 0.0

    def _peer_gone(self, link: _Link) -> None:
        """A send found nobody at ``link``: pruned if its process died, else not sent to until its
        registration changes; its link is retired, and the turns made again."""
        if link.gone:
            return
        link.gone = True
        with self._lock:
            if self._links.get(link.name) is link:
                self._retire(self._links.pop(link.name), time.monotonic())
            self._refused(link.name, link.pid, link.local)
            self._reset_targets()

    def _dropped(self, link: _Link) -> None:
        with STATS_LOCK:
            FANOUT_STATS["dropped_full"] += 1
            self._dropped_to[link.name] = self._dropped_to.get(link.name, 0) + 1
        self._report()

    def _report(self) -> None:
        """Drops are written into this process's registration at most every `REPORT_EVERY`."""
        now = time.monotonic()
        if now - self._reported >= REPORT_EVERY:
            self._reported = now
            self._register()

    def _drops(self) -> tuple[dict[str, int], int]:
        """(events dropped for each peer still registered, for those no longer registered), counting
        what the peers missed in the turns of now."""
        missed: dict[str, int] = {}
        with self._lock:
            self._add_missed(missed)
        with STATS_LOCK:
            drops = dict(self._dropped_to)
            others = self._dropped_gone
        for name, n in missed.items():
            drops[name] = drops.get(name, 0) + n
        return drops, others

    def dropped_to(self) -> dict[str, int]:
        """The events this process dropped for each peer still registered (by registration name)."""
        return self._drops()[0]

    def waiting(self) -> int:
        """Events waiting in the backlogs of peers whose buffers were full."""
        with self._backlog_lock:
            return sum(len(link.backlog) for link in self._backlogged)

    def backlog_bytes(self) -> int:
        """Bytes waiting in all backlogs (each event counted with `_EVENT_OVERHEAD` more)."""
        with self._backlog_lock:
            return self._backlog_total

    # -- receiving ------------------------------------------------------------------------------

    def _receive(self) -> None:
        # Waiting in poll, then reading without blocking, wakes sooner than a blocking recv (measured:
        # a bare receiver's p50 went from 38-49 µs to 19 µs on the test host; docs/performance.md).
        # Each datagram comes with its sender's credentials (SO_PASSCRED): the process that sent it,
        # as the kernel says, bounds what its events may hold here (`AgentBus` MAX_RECEIVED_*).
        # Every SWEEP_EVERY this thread checks that this process's registration is still there.
        poller = select.poll()
        sock = self._sock
        fd = sock.fileno()
        poller.register(fd, select.POLLIN)
        check_at = time.monotonic() + SWEEP_EVERY
        while not self._closed:
            ready = _wait_until(poller, check_at)
            if self._closed:
                return
            if time.monotonic() >= check_at:
                self._check_own()
                check_at = time.monotonic() + SWEEP_EVERY
                if self._sock is not sock:  # bound again: the old socket is closed
                    sock, fd = self._listen_to_new_socket(poller, fd)
                    continue
            if ready:
                self._take_one(sock)

    def _listen_to_new_socket(self, poller: select.poll, old_fd: int) -> tuple[socket.socket, int]:
        """(The receiving thread.) Wait on the socket bound again (`_rebind`) instead of the old one
        (``old_fd``, its descriptor number: it is closed already). The new socket and its descriptor."""
        poller.unregister(old_fd)
        sock = self._sock
        fd = sock.fileno()
        poller.register(fd, select.POLLIN)
        return sock, fd

    def _take_one(self, sock: socket.socket) -> None:
        """(The receiving thread.) Read one datagram and deliver its event: not decoded if the bus
        would refuse it (`AgentBus.refuses`: a flood past the bounds costs no decoding), dropped
        and counted if it does not decode."""
        try:
            data, ancillary, _, _ = sock.recvmsg(MAX_DATAGRAM + 1, _CREDS, socket.MSG_DONTWAIT)
        except OSError:  # (BlockingIOError; or shut down by close)
            return
        if self._closed:
            return
        sender = _sender_of(ancillary)
        topic = topic_of(data)
        if topic is not None and self.bus.refuses(topic, len(data), sender):
            count("dropped_busy")
            return
        event = decode_event(data)
        if event is None:
            count("dropped_bad")
            return
        deliver(self.bus, event, len(data), sender)

    def _stop_threads(self) -> None:
        """(At close.) Wake the receiving and the flushing threads, and wait for them to end."""
        # Wake the receiver. Not with a datagram to itself: its buffer may be full.
        with self._register_lock, contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RD)
        with contextlib.suppress(OSError):
            os.write(self._bell_w, b"\0")
        self._thread.join(5)
        if self._flusher is not None:
            self._flusher.join(5)

    def _remove_own_files(self) -> None:
        """(At close.) Remove this process's registration and socket from the bus folder."""
        for suffix in (".json", ".sock"):
            with contextlib.suppress(OSError):
                os.unlink(self.name + suffix, dir_fd=self._dir_fd)

    def _close_links(self) -> None:
        """(Under the lock, at close.) Every link's backlog dropped (counted) and socket closed, what
        the peers missed counted, the retired sockets closed."""
        for link in self._links.values():
            self._forget_backlog(link)  # what still waited is dropped now: counted
            if link.sock is not None:
                link.sock.close()
        self._links = {}
        self._reset_targets()  # (what the peers missed is counted first)
        for _, sock in self._retired:
            sock.close()
        self._retired = []

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.bus.remove_outlet(self.send)
        self.bus.remove_watcher(self._register)
        self._stop_threads()
        self._remove_own_files()
        with self._lock:
            self._close_links()
        self._sock.close()
        os.close(self._dir_fd)
        os.close(self._bell_r)
        os.close(self._bell_w)


def _connect_through(fd: int, expect: tuple[int, int] | None) -> socket.socket:
    """A datagram socket connected to the socket of the ``O_PATH`` descriptor ``fd``, checked first
    (`_check_socket`); closed again if the connect fails."""
    _check_socket(fd, expect)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.connect(f"/proc/self/fd/{fd}")
    except OSError:
        sock.close()
        raise
    return sock


def _check_socket(fd: int, expect: tuple[int, int] | None) -> None:
    """Raise `_Refused` unless ``fd`` (an ``O_PATH`` descriptor) is a socket, the one ``expect``
    names if given (a link is opened as itself: refused, as a file is)."""
    st = os.fstat(fd)
    if not stat.S_ISSOCK(st.st_mode):
        raise _Refused
    if expect is not None and (st.st_dev, st.st_ino) != expect:
        raise _Refused


def _registration_body(dir_fd: int, name: str, st: os.stat_result) -> Any:
    """The decoded content of the registration file ``name`` (its ``lstat`` ``st``): None if it is
    not a regular file, is too big, cannot be read or does not decode; FileNotFoundError if gone."""
    if not fits_registration(st):
        return None
    try:
        return orjson.loads(_fs.read_regular(name, MAX_REGISTRATION, dir_fd=dir_fd))
    except FileNotFoundError:
        raise
    except (OSError, orjson.JSONDecodeError):
        return None


def _seen_mtime(mtime: int) -> int:
    """The folder mtime to take as seen: ``mtime``, or -1 if it is younger than a second."""
    # A folder's mtime has the kernel's coarse clock (a tick, 1-4 ms): two registrations in one
    # tick leave one mtime. A change younger than a second is not taken as seen: looked at again.
    return mtime if time.time_ns() - mtime > 1_000_000_000 else -1


def _rewatch(poller: select.poll, watched: dict[int, _Link], waiting: dict[int, _Link]) -> None:
    """Make ``poller`` wait for room on the descriptors of ``waiting`` instead of ``watched``."""
    for fd in watched.keys() - waiting.keys():
        poller.unregister(fd)
    for fd in waiting.keys() - watched.keys():
        poller.register(fd, select.POLLOUT)


def _has_room(sock: socket.socket) -> bool:
    """Whether the connected ``sock`` polls writable (its peer's buffer has room); False if broken."""
    try:
        return bool(_poll_out(sock))
    except (OSError, ValueError):
        return False


def _poll_out(sock: socket.socket) -> list[tuple[int, int]]:
    poller = select.poll()
    poller.register(sock, select.POLLOUT)
    return poller.poll(0)


def _of_dead_process(reg: _Reg) -> bool:
    """Whether ``reg`` is a peer of this host whose process is gone."""
    return reg.peer is not None and _dead_here(reg.peer)


def _sendable(reg: _Reg | None) -> TypeGuard[_Reg]:
    """Whether ``reg`` is a registration of a peer that can be sent to: not set aside nor one that
    cannot be used here, and its socket did not refuse."""
    return reg is not None and reg.peer is not None and not reg.dead


def _socket_changed(known: _Reg | None, read: _Reg | None) -> bool:
    """Whether a registration ``known`` is no longer one, or names another socket, once ``read`` again."""
    return known is not None and (read is None or known.sock != read.sock)


def _dead_here(peer: Peer) -> bool:
    """Whether ``peer`` is of this host and its process is gone."""
    return peer.host == _HOST and not alive(peer.pid)


def _wait_until(poller: select.poll, deadline: float) -> list[tuple[int, int]]:
    """What ``poller`` has ready, waiting until ``deadline`` (monotonic) at most."""
    try:
        return poller.poll(max(0, int((deadline - time.monotonic()) * 1000) + 1))
    except OSError:
        return []


def _sender_of(ancillary: list[tuple[int, int, bytes]]) -> int:
    """The pid in a datagram's sender credentials (``SCM_CREDENTIALS``), -1 if none came."""
    sender = -1
    for level, kind, creds in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS and len(creds) >= 4:
            sender = int.from_bytes(creds[:4], sys.byteorder, signed=True)
    return sender


def _waits_for_socket(link: _Link, now: float) -> bool:
    """Whether ``link`` is unlinked, and its peer reads (its last send went through, not asleep)."""
    return link.sock is None and link.ok and now >= link.skip_until


def _works(link: _Link | None) -> bool:
    """Whether a peer's link is known to work: there, awake, and connected or its last send through."""
    return link is not None and not link.gone and not link.asleep and (link.sock is not None or link.ok)


def _stuck(link: _Link, now: float) -> bool:
    """Whether ``link`` has a socket and a backlog that has waited `EVICT_AFTER` at least."""
    return link.sock is not None and bool(link.backlog) and now - link.behind_since >= EVICT_AFTER


def _orphan_sock(dir_fd: int, stem: str) -> tuple[bool, os.stat_result | None]:
    """(whether the orphan ``<stem>.json`` may be removed, its ``.sock``'s ``lstat`` if there is one):
    it may if that is missing, a file or a link; not if it is a socket now, a folder, or unseen."""
    try:
        sst = os.stat(stem + ".sock", dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return True, None
    except OSError:
        return False, None
    return stat.S_ISREG(sst.st_mode) or stat.S_ISLNK(sst.st_mode), sst


def _unlink_if_same(dir_fd: int, name: str, ino: int) -> bool:
    """Remove ``name`` if it is still the file of inode ``ino``; whether it was removed."""
    try:
        if os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_ino != ino:
            return False
        os.unlink(name, dir_fd=dir_fd)
    except OSError:
        return False
    return True
