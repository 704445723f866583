"""Wake a waiting claimer when a file lands in ``new/``, from any process, without polling.

watchdog (inotify on Linux) tells us about arrivals. Events are hints, never the truth: the
claimer still lists the folder before it gives up and rescans at its own interval, so a lost or
late event costs latency, never a message.

The whole agent folder is watched, not just ``new/``: claims move files from ``new/`` to
``processing/``, and watchdog holds an unpaired "moved out" event for up to 0.5 s while it looks
for the matching "moved in", delaying the events behind it; with ``processing/`` watched too, the pair
is complete at once (measured in docs/performance.md).

One observer serves every mailbox a process waits on: an inotify instance per mailbox would run into
the per-user limit (``fs.inotify.max_user_instances``, 128 by default). If inotify cannot be used at
all, watchdog's polling observer takes over, with a warning.
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


class ArrivalWaiter:
    def __init__(
        self, agent_dir: str, on_arrival: Callable[[str], None], *, poll_interval: float = 0.5
    ) -> None:
        self._event = threading.Event()
        self._new_dir = os.path.join(agent_dir, "new")
        self._on_arrival = on_arrival
        self.poll_interval = poll_interval
        self._watch: Any = None
        self.notifying = False
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
        watch, self._watch = self._watch, None
        if watch is not None:
            _shared.remove(watch)
