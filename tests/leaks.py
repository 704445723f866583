"""What a test must not leave behind: threads, inotify instances and other file descriptors.

As watchdog's own tests do (an autouse fixture failing a test that leaks a thread or an inotify
watcher), every test here is checked by the ``no_leaks`` fixture of tests/conftest.py: what is alive
after the test and was not before it, after a short grace (a stopped thread takes a moment to end,
an observer's descriptor is closed by its thread), fails the test, naming what was left.

Only what the library keeps for the life of a process by design is allowed, by name, in the lists
below: `PROCESS_WIDE_THREADS` (threads that stay), `PROCESS_WIDE_CACHES` (what keeps mailboxes open
between calls: emptied before the check, so that a test is charged only with what it leaks itself).
The standard library's own process-wide helpers (multiprocessing's resource tracker and forkserver,
each a process and a pipe kept for the life of the process) are not counted either.
"""

from __future__ import annotations

import gc
import importlib
import os
import sys
import threading
from dataclasses import dataclass

#: Threads the library starts once per process and keeps, by design, with why. Nothing else may
#: outlive the test that started it.
PROCESS_WIDE_THREADS: dict[str, str] = {
    # An AgentBus called from outside any event loop runs its async handlers on one shared loop, in a
    # daemon thread started on first use (bus/core.py: `background_loop`); it lives as long as the process.
    "hybridcomms-bus-loop": "the bus's shared event loop for async handlers outside any loop",
}

#: Modules that keep mailboxes open between calls, by design, with the function that closes them
#: (called after each test, when the module was imported).
PROCESS_WIDE_CACHES: dict[str, str] = {
    # Dream.OS send paths keep up to 64 mailboxes per kind open in a process (`mailbox_for`, `deliver_to`).
    "hybridcomms.compat.dreamos._delivery": "close_kept",
}

#: How long what a test stopped may take to go (a thread's last iteration, an observer's join).
GRACE = 5.0


@dataclass(frozen=True)
class Snapshot:
    threads: frozenset[threading.Thread]
    fds: dict[int, str]  # descriptor -> what it is (the target of its /proc/self/fd link)

    @classmethod
    def now(cls) -> Snapshot:
        return cls(frozenset(t for t in threading.enumerate() if t.is_alive()), open_fds())

    def left_since(self, before: Snapshot) -> list[str]:
        """What is here now and was not in ``before`` (empty: nothing leaked)."""
        threads = [
            f"thread {t.name!r} (daemon={t.daemon})"
            for t in self.threads - before.threads
            if t.name not in PROCESS_WIDE_THREADS
        ]
        helpers = forkserver_fds()
        fds = [
            f"fd {fd} -> {what}"
            for fd, what in sorted(self.fds.items())
            if before.fds.get(fd) != what and fd not in helpers
        ]
        return threads + fds


def open_fds() -> dict[int, str]:
    """This process's descriptors and what each is (``anon_inode:inotify``, ``pipe:[...]``, a path)."""
    found = {}
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:  # no /proc: descriptors are not checked
        return {}
    for name in names:
        try:
            found[int(name)] = os.readlink(f"/proc/self/fd/{name}")
        except OSError:  # the descriptor of the listing itself, closed since
            pass
    return found


def empty_process_wide_caches() -> None:
    for module, close in PROCESS_WIDE_CACHES.items():
        if module in sys.modules:
            getattr(importlib.import_module(module), close)()


def start_process_wide_helpers() -> None:
    """multiprocessing's resource tracker: started once, kept for the process's life (a process and a
    pipe): started before the first test, it is no test's leak."""
    import multiprocessing.resource_tracker

    multiprocessing.resource_tracker.ensure_running()


def forkserver_fds() -> set[int]:
    """The descriptors multiprocessing's forkserver keeps for the life of the process, once a test
    started it (not started beforehand: it makes a temporary folder that outlives the test run's)."""
    forkserver = sys.modules.get("multiprocessing.forkserver")
    if forkserver is None:
        return set()
    fd = getattr(forkserver._forkserver, "_forkserver_alive_fd", None)  # (no public name for it)
    return {fd} if isinstance(fd, int) else set()


def left_since(before: Snapshot) -> list[str]:
    """What is left now that was not there ``before``; when something is, after a garbage collection
    (an object in a reference cycle, a traceback's frames, closes what it holds only when collected)."""
    left = Snapshot.now().left_since(before)
    if left:
        gc.collect()
        left = Snapshot.now().left_since(before)
    return left
