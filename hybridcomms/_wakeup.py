"""Wake a waiting claimer when a file lands in ``new/``, from any process, without polling.

watchdog (inotify on Linux) tells us about arrivals. Events are hints, never the truth: the
claimer still lists the folder before it gives up and rescans at its own interval, so a lost or
late event costs latency, never a message.

The whole agent folder is watched, not just ``new/``: claims move files from ``new/`` to
``processing/``, and watchdog holds an unpaired "moved out" event for up to 0.5 s while it looks
for the matching "moved in"; with ``processing/`` watched too, the pair is complete at once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["ArrivalWaiter"]

log = logging.getLogger("hybridcomms.wakeup")


class ArrivalWaiter:
    def __init__(
        self, agent_dir: str, on_arrival: Callable[[str], None], *, poll_interval: float = 0.5
    ) -> None:
        self._event = threading.Event()
        self._new_dir = os.path.join(agent_dir, "new")
        self._on_arrival = on_arrival
        self.poll_interval = poll_interval
        self._observer: Any = None
        try:
            self._observer = self._start(agent_dir)
        except Exception as exc:  # inotify limits, unsupported filesystem, …
            log.warning(
                "no file notifications for %s (%s); falling back to rescanning every %.2fs",
                agent_dir,
                exc,
                poll_interval,
            )

    @property
    def notifying(self) -> bool:
        return self._observer is not None

    def _start(self, agent_dir: str) -> Any:
        from watchdog.events import FileCreatedEvent, FileMovedEvent, FileSystemEventHandler
        from watchdog.observers import Observer

        waiter = self

        class Handler(FileSystemEventHandler):
            def on_created(self, event: Any) -> None:
                waiter._arrived(os.fsdecode(event.src_path))

            def on_moved(self, event: Any) -> None:
                waiter._arrived(os.fsdecode(event.dest_path))

        observer = Observer()
        observer.schedule(
            Handler(), agent_dir, recursive=True, event_filter=[FileCreatedEvent, FileMovedEvent]
        )
        observer.daemon = True
        observer.start()
        return observer

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
        """Block until an arrival (True) or ``timeout`` (False)."""
        if self._observer is None:
            timeout = min(timeout, self.poll_interval)
        return self._event.wait(timeout)

    def close(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(timeout=5)
