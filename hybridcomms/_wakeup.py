"""Wake a waiting claimer when a file lands in ``new/``, from any process, without polling.

watchdog tells us about arrivals. Events are hints, never the truth: the claimer still lists the
folder before it gives up and rescans at its own interval, so a lost or late event costs latency,
never a message. Three ways, best first:

1. Linux, watchdog >= 7: watchdog's inotify reader (``InotifyFD``), one per process, calls us
   directly for "moved into" and "created" in each ``new/`` folder. Claims move files *out* of
   ``new/``; watchdog's observer holds such an unpaired "moved out" for up to 0.5 s (looking for its
   "moved in") and delays every event behind it. Asking the kernel only for what we need means there
   is nothing to pair and nothing to hold, and the event reaches the claimer in one thread hop instead
   of four (measured in docs/performance.md).
2. Elsewhere: one shared watchdog observer, watching each whole agent folder recursively, so that a
   move from ``new/`` to ``processing/`` arrives paired.
3. If neither can be used: watchdog's polling observer, with a warning.

Either way one inotify instance serves every mailbox of a process: an instance per mailbox would run
into the per-user limit (``fs.inotify.max_user_instances``, 128 by default).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ArrivalWaiter"]

log = logging.getLogger("hybridcomms.wakeup")


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
            if self._observer is None or self._pid != os.getpid():  # none yet, or inherited by a fork
                self._observer, self._count = self._start(poll_interval), 0
                self._pid = os.getpid()
            watch = self._observer.schedule(
                handler, path, recursive=True, event_filter=[FileCreatedEvent, FileMovedEvent]
            )
            self._count += 1
            return watch

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
            if observer is None or self._pid != os.getpid():
                return
            try:
                observer.unschedule(watch)
            except KeyError:
                pass
            self._count -= 1
            if self._count > 0:
                return
            self._observer = None
        observer.stop()
        observer.join(timeout=5)


_shared = _SharedObserver()


class _DirectInotify:
    """watchdog's inotify reader thread with our callbacks on ``new/`` folders (Linux, watchdog >= 7)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._fd: Any = None
        self._pid = 0
        self._count = 0

    @staticmethod
    def available() -> bool:
        try:
            from watchdog.observers.inotify_c import InotifyConstants, InotifyFD
        except Exception:  # not Linux, or an older watchdog
            return False
        has_api = all(hasattr(InotifyFD, a) for a in ("add_callback", "remove_callbacks"))
        return has_api and hasattr(InotifyConstants, "IN_MOVED_TO")

    def add(self, new_dir: str, callback: Any) -> tuple[Any, int]:
        from watchdog.observers.inotify_c import InotifyConstants as C
        from watchdog.observers.inotify_c import InotifyFD

        mask = C.IN_MOVED_TO | C.IN_CREATE | C.IN_ONLYDIR | C.IN_DONT_FOLLOW
        with self._lock:
            if self._fd is None or self._pid != os.getpid():  # none yet, or inherited by a fork
                fd = InotifyFD()
                fd.daemon = True
                fd.start()
                self._fd, self._pid, self._count = fd, os.getpid(), 0
            key = id(callback)
            wd = self._fd.add_callback(os.fsencode(new_dir), mask, callback, key)
            self._count += 1
            return wd, key

    def remove(self, handle: tuple[Any, int]) -> None:
        with self._lock:
            fd = self._fd
            if fd is None or self._pid != os.getpid():
                return
            fd.remove_callbacks([handle])
            self._count -= 1
            if self._count > 0:
                return
            self._fd = None
        fd.stop()
        fd.join(timeout=5)


_direct = _DirectInotify()
_DIRECT = _direct.available()


class _Callback:
    """What watchdog's inotify reader calls (its ``WatchCallback`` protocol)."""

    def __init__(self, waiter: ArrivalWaiter) -> None:
        self.waiter = waiter

    def on_event(self, event: Any) -> None:
        if event.name:
            self.waiter._arrived(os.path.join(self.waiter._new_dir, os.fsdecode(event.name)))

    def on_watch_deleted(self, wd: Any) -> None:
        self.waiter.notifying = False  # the folder went away: fall back to timed rescans
        self.waiter._lost()

    def on_queue_overflow(self) -> None:
        self.waiter._lost()


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
        self._direct: tuple[Any, int] | None = None
        self.notifying = False
        if _DIRECT:
            try:
                self._direct = _direct.add(self._new_dir, _Callback(self))
                self.notifying = True
                return
            except Exception as exc:  # out of instances or watches: try the observer
                log.debug("direct inotify not usable for %s: %s", agent_dir, exc)
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
            self._event.set()

    def wake(self) -> None:
        """Wake a waiter now (used to stop a consumer loop promptly)."""
        self._event.set()

    def clear(self) -> None:
        self._event.clear()

    def wait(self, timeout: float) -> bool:
        """Block until an arrival (True) or ``timeout`` (False). A burst of arrivals is one wake-up."""
        if not self.notifying:
            timeout = min(timeout, self.poll_interval)
        return self._event.wait(timeout)

    def close(self) -> None:
        direct, self._direct = self._direct, None
        if direct is not None:
            _direct.remove(direct)
        watch, self._watch = self._watch, None
        if watch is not None:
            _shared.remove(watch)
