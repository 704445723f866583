"""Wake a waiting claimer when a file lands in ``new/``, from any process, without polling.

watchdog tells us about arrivals. Events are hints, never the truth: the claimer still lists the
folder before it gives up and rescans at its own interval, so a lost or late event costs latency,
never a message. Three ways, best first:

1. Linux: one inotify descriptor per process (watchdog's bindings make the calls), asked only for
   "moved into" and "created" in each ``new/`` folder, and read by the waiting claim threads
   themselves (`_InotifyHub`). Claims move files *out* of ``new/``; watchdog's observer holds such an
   unpaired "moved out" for up to 0.5 s (looking for its "moved in") and delays every event behind it.
   Asking the kernel only for what we need leaves nothing to pair and nothing to hold, and no thread
   stands between the kernel and the claim (measured in docs/performance.md).
2. Elsewhere: one shared watchdog observer, watching each whole agent folder recursively, so that a
   move from ``new/`` to ``processing/`` arrives paired.
3. If neither can be used: watchdog's polling observer, with a warning.

Either way one inotify instance serves every mailbox of a process: an instance per mailbox would run
into the per-user limit (``fs.inotify.max_user_instances``, 128 by default).
"""

from __future__ import annotations

import ctypes
import os
import select
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from ... import _fs, _log

_EVENT = struct.Struct("iIII")  # struct inotify_event: wd, mask, cookie, len (then the name)
_FS_ENCODING, _FS_ERRORS = _fs.FS_ENCODING, _fs.FS_ERRORS


def _inotify_calls() -> tuple[Any, Any, Any] | None:
    """libc's ``inotify_init``, ``inotify_add_watch`` and ``inotify_rm_watch`` (None where missing)."""
    libc = _fs.get_libc()
    if libc is None:
        return None
    try:
        return libc.inotify_init, libc.inotify_add_watch, libc.inotify_rm_watch
    except AttributeError:  # not Linux
        return None


__all__ = ["ArrivalWaiter"]

log = _log.get("hybridcomms.wakeup")


class _SharedObserver:
    """The process's one observer, started with the first watch and stopped with the last."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._observer: Any = None
        self._pid = 0
        self._count = 0
        self.polling = False

    def add(self, handler: Any, path: str, poll_interval: float) -> Any:
        from watchdog.events import FileCreatedEvent, FileMovedEvent

        with self._lock:
            if not self._runs_here():
                self._observer, self._count = self._start(poll_interval), 0
                self._pid = os.getpid()
            watch = self._observer.schedule(
                handler, path, recursive=True, event_filter=[FileCreatedEvent, FileMovedEvent]
            )
            self._count += 1
            return watch

    def _runs_here(self) -> bool:
        """Under the lock: an observer of this process runs (not none yet, not inherited by a fork)."""
        return self._observer is not None and self._pid == os.getpid()

    def _start(self, poll_interval: float) -> Any:
        try:
            from watchdog.observers.inotify import InotifyObserver

            observer: Any = InotifyObserver()
            observer.daemon = True
            observer.start()
            self.polling = False
            return observer
        except Exception as exc:  # no inotify here, or out of inotify instances
            from watchdog.observers.polling import PollingObserver

            log.warning("no inotify (%s): watching mailboxes by polling every %.2fs", exc, poll_interval)
            observer = PollingObserver(timeout=poll_interval)
            observer.daemon = True
            observer.start()
            self.polling = True
            return observer

    def remove(self, watch: Any) -> None:
        with self._lock:
            observer = self._observer
            if not self._runs_here():
                return
            _unschedule(observer, watch)
            self._count -= 1
            if self._count > 0:
                return
            self._observer = None
        observer.stop()
        observer.join(timeout=5)


def _unschedule(observer: Any, watch: Any) -> None:
    """Take ``watch`` off ``observer`` (one it no longer knows is fine)."""
    try:
        observer.unschedule(watch)
    except KeyError:
        pass


_shared = _SharedObserver()


def _new_inotify_fd() -> int:
    """A new inotify descriptor, non-blocking and not inherited by child processes."""
    calls = _inotify_calls()
    assert calls is not None
    fd = calls[0]()
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    os.set_blocking(fd, False)
    os.set_inheritable(fd, False)
    return int(fd)


#: How long a claim that does not wait waits for another thread's read of the kernel's queue (it
#: takes microseconds; the bound is for a reader descheduled on a loaded machine).
READER_TURN = 0.05
#: Reads of 64 KiB a claim that does not wait makes at most to empty the kernel's queue (4 MiB: more
#: than the queue holds at the default limit of 16,384 events).
DRAIN_READS = 64
_READ_SIZE = 65536
_EVENT_MAX = 16 + 256  # an inotify event: its header and a name of at most NAME_MAX + 1 bytes


class _InotifyHub:
    """One inotify descriptor per process (while it has a mailbox open), read by the claiming threads
    themselves (Linux).

    A waiting claim does not wait for a reader thread to wake it: one waiting thread at a time is
    the reader (it blocks in poll() on the descriptor), the others wait on a condition; the reader
    hands every arrival to its mailbox's waiter, and when it leaves, another waiter takes over. The
    kernel is asked only for "moved into" and "created" in each ``new/``: nothing to pair, nothing
    held. libc's inotify calls are made through ctypes.
    """

    MASK = (
        0x00000080 | 0x00000100 | 0x01000000 | 0x02000000
    )  # IN_MOVED_TO | IN_CREATE | IN_ONLYDIR | IN_DONT_FOLLOW
    ODD = 0x00004000 | 0x00008000  # IN_Q_OVERFLOW | IN_IGNORED
    IN_Q_OVERFLOW = 0x00004000
    IN_IGNORED = 0x00008000

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self._pid = 0
        self._fd = -1
        self._wake_r = self._wake_w = -1
        self._reading = False
        self._turns = 0  # reading turns ended so far (`_await_reader` counts them)
        self._waiters: dict[int, list[ArrivalWaiter]] = {}  # watch descriptor -> waiters

    @staticmethod
    def available() -> bool:
        """inotify is there: libc has the three calls (Linux). No private watchdog module is used."""
        return _inotify_calls() is not None

    def _ensure(self) -> None:
        """Under ``cond``: a descriptor for this process (a forked child gets its own)."""
        if self._pid == os.getpid():
            return
        fd = _new_inotify_fd()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)  # a full pipe already says "look up": never block on it
        self._fd, self._pid, self._reading, self._waiters = fd, os.getpid(), False, {}

    def add(self, waiter: ArrivalWaiter) -> int:
        calls = _inotify_calls()
        assert calls is not None
        with self.cond:
            self._ensure()
            wd = calls[1](self._fd, os.fsencode(waiter._new_dir), ctypes.c_uint32(self.MASK))
            if wd < 0:
                raise self._watch_error(waiter._new_dir)
            self._waiters.setdefault(wd, []).append(waiter)
            return int(wd)

    def _watch_error(self, path: str) -> OSError:
        """Under ``cond``, after inotify_add_watch failed for ``path``: the error it gave; the
        descriptor released if nothing else uses it."""
        err = ctypes.get_errno()
        if not self._waiters and not self._reading:
            self._release()
        return OSError(err, f"inotify_add_watch({path}): {os.strerror(err)}")

    def remove(self, waiter: ArrivalWaiter, wd: int) -> None:
        calls = _inotify_calls()
        assert calls is not None
        with self.cond:
            if self._pid != os.getpid():
                return
            self._unwatch(waiter, wd, calls[2])
            if self._waiters:
                return
            if not self._reading:
                self._release()
                return
        self.poke()  # the reader (a claim on a mailbox closed meanwhile) returns, and releases them

    def _unwatch(self, waiter: ArrivalWaiter, wd: int, rm_watch: Any) -> None:
        """Under ``cond``: ``waiter`` no longer hears of its folder (watch ``wd``); the kernel's watch
        goes with the folder's last waiter."""
        waiters = self._waiters.get(wd, [])
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters and wd in self._waiters:
            del self._waiters[wd]
            rm_watch(self._fd, wd)

    def _release(self) -> None:
        """Under ``cond``, with no waiter left and no reader: close the descriptor and the wake-up
        pipe (the next `add` makes new ones). A process that closed its mailboxes keeps no inotify
        instance (the per-user limit is 128)."""
        for fd in (self._fd, self._wake_r, self._wake_w):
            os.close(fd)
        self._fd = self._wake_r = self._wake_w = -1
        self._pid = 0

    def poke(self) -> None:
        """Make the current reader look up (a waiter was woken by hand)."""
        with self.cond:  # (the pipe is not closed meanwhile)
            if self._pid != os.getpid():
                return
            try:
                os.write(self._wake_w, b"!")
            except OSError:  # BlockingIOError: the pipe is full, the reader will look up anyway
                pass

    def wait(self, waiter: ArrivalWaiter, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                if waiter._flag:
                    return True
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                if self._may_read():
                    self._reading = True
                    break
                self.cond.wait(remaining)
        data = b""
        try:  # the reader, outside the lock
            data = self._read(remaining)
        finally:
            self._done_reading(data)
        with self.cond:
            return waiter._flag

    def _may_read(self) -> bool:
        """Under ``cond``: a thread may become the reader (nobody reads, the descriptor is this
        process's)."""
        return not self._reading and self._pid == os.getpid()

    def _done_reading(self, data: bytes) -> None:
        """The reader hands out what it read and gives the reading up (to the next waiter)."""
        with self.cond:
            self._reading = False
            self._turns += 1
            if data:
                self._dispatch(data)
            if not self._waiters and self._pid == os.getpid():  # the last one left while it read
                self._release()
            self.cond.notify_all()

    def owned_here(self) -> bool:
        """The descriptor belongs to this process (not inherited through fork)."""
        return self._pid == os.getpid()

    def drain(self) -> None:
        """Hand out what the kernel has queued, without waiting for arrivals (one read(2) that
        returns at once): a claim that does not wait learns of arrivals this way. While another
        thread is the reader (asleep in poll() until an arrival for anyone), it is woken and its
        turn awaited, a moment at most: an arrival queued before this call is handed out before it
        returns (else a claim of a message put just before, in this process, could say "none")."""
        with self.cond:
            if self._reading and self._pid == os.getpid():
                self._await_reader()
            if not self._may_read():
                return
            self._reading = True
        data = b""
        try:
            data = self._read_events()
        finally:
            self._done_reading(data)

    def _await_reader(self) -> None:
        """Under ``cond``: wake the reader (it reads what is queued, hands it out and gives the
        reading up) and wait until the reading is free, or a turn that began after this call has
        ended (the turn under way may have read before the arrival this claim is after; the next
        one cannot have); `READER_TURN` seconds at most. (Waiting for the reading to be free alone
        is not enough: the reader's thread, still waiting for its own mailbox, takes it again at once.)"""
        deadline = time.monotonic() + READER_TURN
        enough = self._turns + 2
        while self._reading and self._turns < enough:
            self.poke()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            self.cond.wait(remaining)

    def _read_events(self) -> bytes:
        """Everything the kernel has queued for our watches (reads that never wait, until it says
        there is no more, `DRAIN_READS` at most); b"" if nothing. One read is not enough: what other
        mailboxes of this process left unread (a claimer that lists instead of reading) can fill it,
        and the arrivals this claim is after come behind."""
        try:
            data = os.read(self._fd, _READ_SIZE)
        except BlockingIOError:
            return b""
        if len(data) <= _READ_SIZE - _EVENT_MAX:  # the next event would have fitted: none was left
            return data
        return self._read_rest(data)

    def _read_rest(self, first: bytes) -> bytes:
        """After a full read: the rest of the kernel's queue (`DRAIN_READS` reads at most)."""
        chunks = [first]
        for _ in range(DRAIN_READS - 1):
            try:
                chunk = os.read(self._fd, _READ_SIZE)
            except BlockingIOError:
                break
            chunks.append(chunk)
            if len(chunk) <= _READ_SIZE - _EVENT_MAX:
                break
        return b"".join(chunks)

    def _read(self, timeout: float) -> bytes:
        poller = select.poll()
        poller.register(self._fd, select.POLLIN)
        poller.register(self._wake_r, select.POLLIN)
        ready = {fd for fd, _ in poller.poll(max(1, int(timeout * 1000)))}
        if self._wake_r in ready:
            self._empty_wake_pipe()
        if self._fd not in ready:
            return b""
        return self._read_events()

    def _empty_wake_pipe(self) -> None:
        """Take the pokes out of the wake-up pipe (they only woke the reader)."""
        try:
            os.read(self._wake_r, 4096)
        except BlockingIOError:
            pass

    def _dispatch(self, data: bytes) -> None:
        """Under ``cond``: hand each event to the waiters of its folder (a few microseconds per
        event: every claimer of a folder reads every arrival, see docs/performance.md)."""
        i = 0
        end = len(data)
        unpack = _EVENT.unpack_from
        waiters_of = self._waiters.get
        while i + 16 <= end:
            wd, mask, _cookie, length = unpack(data, i)
            start = i + 16
            i = start + length
            if mask & self.ODD:
                self._odd(wd, mask)
                continue
            waiters = waiters_of(wd)
            if not waiters or not length:
                continue
            _tell_arrival(waiters, data[start:i].rstrip(b"\0").decode(_FS_ENCODING, _FS_ERRORS))

    def _odd(self, wd: int, mask: int) -> None:
        """Under ``cond``: an event that is not an arrival (events lost, or a watch gone)."""
        if mask & self.IN_Q_OVERFLOW:
            self._overflowed()
        elif mask & self.IN_IGNORED:  # the folder went away
            self._folder_gone(wd)

    def _overflowed(self) -> None:
        """The kernel's queue overflowed: every waiter lost events (its claimer lists its folder again)."""
        for waiters in self._waiters.values():
            for w in waiters:
                w._lost()

    def _folder_gone(self, wd: int) -> None:
        """The folder of watch ``wd`` went away: its waiters hear nothing more from the kernel."""
        for w in self._waiters.pop(wd, []):
            w.notifying = False
            w._lost()


def _tell_arrival(waiters: list[ArrivalWaiter], name: str) -> None:
    """Under the hub's ``cond``: tell each of ``waiters`` that ``name`` arrived, and wake it."""
    for w in waiters:
        w._on_arrival(name)
        w._flag = True  # what wait() looks at; the event is for the fallback path only
        if not w.notifying:
            w._event.set()


_hub = _InotifyHub()
_DIRECT = _hub.available()


class ArrivalWaiter:
    """Wakes claims on one mailbox. ``on_arrival(name)`` is told each arrival; ``on_lost()`` that
    events were lost (the claimer should list ``new/`` again)."""

    def __init__(
        self,
        agent_dir: str,
        on_arrival: Callable[[str], None],
        *,
        on_lost: Callable[[], None] | None = None,
        poll_interval: float = 0.5,
    ) -> None:
        self._event = threading.Event()
        self._new_dir = os.path.join(agent_dir, "new")
        self._on_arrival = on_arrival
        self._on_lost = on_lost
        self.poll_interval = poll_interval
        self._watch: Any = None
        self._wd: int | None = None
        self._flag = False  # set (under the hub's lock) when an arrival is handed to us
        self.notifying = False
        if not self._watch_directly(agent_dir):
            self._watch_by_observer(agent_dir, poll_interval)

    def _watch_directly(self, agent_dir: str) -> bool:
        """Hear of arrivals through the process's inotify hub; False where that is not usable."""
        if not _DIRECT:
            return False
        try:
            self._wd = _hub.add(self)
        except Exception as exc:  # out of instances or watches: try the observer
            log.debug("direct inotify not usable for %s: %s", agent_dir, exc)
            return False
        self.notifying = True
        return True

    def _watch_by_observer(self, agent_dir: str, poll_interval: float) -> None:
        """Hear of arrivals through watchdog's shared observer (polling where it must); failing that,
        claims rescan every ``poll_interval``."""
        try:
            self._watch = _shared.add(self._handler(), agent_dir, poll_interval)
            self.notifying = not _shared.polling
        except Exception as exc:  # the folder vanished, watch limits, …
            log.warning(
                "no file notifications for %s (%s); rescanning every %.2fs instead",
                agent_dir,
                exc,
                poll_interval,
            )

    def _lost(self) -> None:
        if self._on_lost is not None:
            self._on_lost()
        self._set()

    def _set(self) -> None:
        if self._wd is not None:
            self._flag = True  # the hub's lock is held by whoever calls this (the reader, or wake())
        self._event.set()

    def _handler(self) -> Any:
        from watchdog.events import FileSystemEventHandler

        waiter = self

        class Handler(FileSystemEventHandler):
            def on_created(self, event: Any) -> None:
                waiter._arrived(os.fsdecode(event.src_path))

            def on_moved(self, event: Any) -> None:
                waiter._arrived(os.fsdecode(event.dest_path))

        return Handler()

    def _arrived(self, path: str) -> None:
        head, name = os.path.split(path)
        if head != self._new_dir:
            return
        try:
            self._on_arrival(name)
        finally:
            self._set()

    @property
    def direct(self) -> bool:
        """Arrivals reach this waiter only when a claim reads them (`poll` or `wait`), at once. False
        in a forked child of the process that made it (the child's claims list the folder instead)."""
        return self._wd is not None and self.notifying and _hub.owned_here()

    def poll(self) -> None:
        """Take in arrivals queued by the kernel, without waiting (cheap when there are none)."""
        if self._wd is not None and self.notifying:
            _hub.drain()

    def wake(self) -> None:
        """Wake a waiter now (used to stop a consumer loop promptly)."""
        if self._wd is not None:
            with _hub.cond:
                self._flag = True
                _hub.cond.notify_all()
            _hub.poke()
        self._event.set()

    def clear(self) -> None:
        if self._wd is not None:
            with _hub.cond:
                self._flag = False
        self._event.clear()

    def wait(self, timeout: float) -> bool:
        """Block until an arrival (True) or ``timeout`` (False). A burst of arrivals is one wake-up."""
        if self._wd is not None and self.notifying:
            return _hub.wait(self, timeout)
        if not self.notifying:
            timeout = min(timeout, self.poll_interval)
        return self._event.wait(timeout)

    def close(self) -> None:
        wd, self._wd = self._wd, None
        if wd is not None:
            _hub.remove(self, wd)
        watch, self._watch = self._watch, None
        if watch is not None:
            _shared.remove(watch)
