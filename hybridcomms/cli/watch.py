"""``hybridcomms watch``: the watcher service as a command (one line per event; stops on SIGTERM/SIGINT)."""

from __future__ import annotations

import argparse
import contextlib
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import orjson

from .. import _log
from .._fs import printable
from .._text import json_text
from .._urls import child_environ
from ..policy import Policy, child_env
from ..watcher import MailboxEvent, MailboxWatcher
from .common import (
    LineWriter,
    Parents,
    add_bus_option,
    on_stop_signals,
    resolve_policy,
    restore_signals,
    root_shown,
    usage_error,
)

if TYPE_CHECKING:
    from .common import Subparsers

log = _log.get("hybridcomms.watch")


class ExecRunner:
    """Runs ``--exec CMD`` once per delivered or recovered message, and per message already waiting
    at the start, at most ``jobs`` at a time, off the watching threads. A failing command is reported
    and never stops anything.

    The queue of waiting files is bounded (``queue_size``): when it is full, the watching thread
    waits for room (back-pressure; the kernel keeps the notifications, and a lost one is made up by
    the rescan). `close` stops within ``grace`` seconds: commands already running get that long to
    finish and are then killed; what was still queued is not run (those files still wait in ``new/``
    and get their command at the next start, from its first rescan)."""

    def __init__(
        self,
        command: str,
        jobs: int,
        *,
        queue_size: int = 1000,
        grace: float = 5.0,
        env: dict[str, str] | None = None,
    ) -> None:
        self.command = command
        self.env = dict(env or {})  # added to the environment of every command
        self.base_env = child_environ()  # this one's, without a password in $HYBRIDCOMMS_URL
        self.grace = grace
        self.queue: queue.Queue[MailboxEvent | None] = queue.Queue(maxsize=max(queue_size, 1))
        self.stopping = threading.Event()
        self.failed = 0
        self.ran = 0
        self.not_run = 0
        self._lock = threading.Lock()
        self._running: set[subprocess.Popen[bytes]] = set()
        self._threads = [
            threading.Thread(target=self._work, name=f"hybridcomms-exec-{i}", daemon=True)
            for i in range(max(jobs, 1))
        ]
        for t in self._threads:
            t.start()

    def submit(self, event: MailboxEvent) -> None:
        while not self.stopping.is_set():
            try:
                self.queue.put(event, timeout=0.1)
                return
            except queue.Full:
                continue
        with self._lock:
            self.not_run += 1

    def _work(self) -> None:
        while not self.stopping.is_set():
            try:
                event = self.queue.get(timeout=0.1)
            except queue.Empty:
                continue
            if event is None or self.stopping.is_set():
                break
            self._run(event)

    def _run(self, event: MailboxEvent) -> None:
        code = self._exit_status(event)
        with self._lock:
            self.ran += 1
            if code != 0:
                self.failed += 1
        if code != 0:
            print(
                printable(f"hybridcomms watch: --exec exited {code} for {event.agent}/{event.name}"),
                file=sys.stderr,
                flush=True,
            )

    def _exit_status(self, event: MailboxEvent) -> int:
        """Run the command for one event and wait for it: its exit status (-1: it could not start)."""
        try:
            proc = subprocess.Popen(
                self.command,
                shell=True,
                env=self._env(event),
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        except OSError as exc:
            log.error("--exec could not start for %s: %s", event.name, exc)
            return -1
        with self._lock:
            self._running.add(proc)
        code = proc.wait()
        with self._lock:
            self._running.discard(proc)
        return code

    def _env(self, event: MailboxEvent) -> dict[str, str]:
        """The command's environment: this one's, the runner's additions, and the event's HYBRIDCOMMS_*."""
        env = dict(self.base_env)
        env.update(self.env)
        env.update(
            HYBRIDCOMMS_AGENT=event.agent,
            HYBRIDCOMMS_ID=event.id or "",
            HYBRIDCOMMS_PATH=event.path,
            HYBRIDCOMMS_NAME=event.name,
            HYBRIDCOMMS_TOPIC=event.topic or "",  # read once, by the watcher
        )
        return env

    def close(self, wait: bool = True) -> None:
        self.stopping.set()
        with self._lock:
            self.not_run += self.queue.qsize()
        deadline = time.monotonic() + (self.grace if wait else 0.0)
        for t in self._threads:
            t.join(max(deadline - time.monotonic(), 0.0))
        self._kill_running()
        for t in self._threads:
            t.join(1.0)

    def _kill_running(self) -> None:
        """Past the grace: the whole process group of every command still running goes."""
        with self._lock:
            running = list(self._running)
        for proc in running:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)


#: The events an --exec command runs for (the others are only printed).
_EXEC_KINDS = ("delivered", "recovered", "waiting")


def run_watch(args: argparse.Namespace, root: Path) -> int:
    # watchdog warns when a recursive watch races the creation of new folders; it re-adds the watch.
    warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)
    _check_usage(args, root)
    # The watcher routes nothing itself; the policy's `adopt` list turns the legacy intake on, and its
    # file is handed to the --exec commands, so a `hybridcomms send` there routes as this service does.
    policy = resolve_policy(getattr(args, "policy", None))
    log.info("routing policy from %s", policy.provenance)
    ingest = _legacy_intake(args, policy)
    root.mkdir(parents=True, exist_ok=True)
    stop = threading.Event()
    # `watch | head`: once the reader is gone it stops as on SIGTERM (`stop_now`, below).
    write = LineWriter(on_close=lambda: stop_now())
    runner = _exec_runner(args, policy)
    counter = _serve_metrics(args, root)

    def on_event(ev: MailboxEvent) -> None:
        if counter is not None:
            counter(ev)
        try:
            write(_event_line(ev, args.json))
        finally:  # whatever became of its line, the command runs (with the exact path and name)
            if runner is not None and ev.kind in _EXEC_KINDS:
                runner.submit(ev)

    watcher = MailboxWatcher(
        root,
        on_event=on_event,
        recover_every=args.recover_every,
        rescan_every=args.rescan_every,
        polling=args.polling,
        ingest_legacy=ingest,
        waiting="waiting",  # the backlog at the start is said to wait (and gets its --exec), not "delivered"
    )

    def stop_now() -> None:
        # Also during the start-up rescan of a large backlog (in `start`, on this thread), and while it
        # waits for room in a full --exec queue: both stop at once.
        stop.set()
        watcher.interrupt()
        if runner is not None:
            runner.stopping.set()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop_now()

    release_bus = watch_bus(root, args.bus, args.json, write) if args.bus else None
    previous = on_stop_signals(on_signal)
    try:
        _watch_until(stop, watcher, root, policy.provenance)
    finally:
        _shut_down(watcher, runner, release_bus)
        restore_signals(previous)
    print(f"hybridcomms watch: stopped{_exec_summary(runner)}", file=sys.stderr, flush=True)
    return 0


def _check_usage(args: argparse.Namespace, root: Path) -> None:
    """Bad --exec sizes, or a root that is not there without --create: one line, and the end."""
    if _bad_exec_sizes(args):
        usage_error("hybridcomms watch: --exec-jobs and --exec-queue must be at least 1")
    if not args.create and not root.is_dir():
        raise SystemExit(
            f"hybridcomms watch: no mailbox root at {root_shown(root)} "
            "(check --root or $HYBRIDCOMMS_ROOT; --create makes it)"
        )


def _bad_exec_sizes(args: argparse.Namespace) -> bool:
    """Whether --exec-jobs or --exec-queue is below 1."""
    return bool(args.exec_jobs < 1 or args.exec_queue < 1)


def _legacy_intake(args: argparse.Namespace, policy: Policy) -> bool | None:
    """Whether the legacy drops are taken in: --legacy, else on if the policy adopts agents, else the
    watcher's default (None: $HYBRIDCOMMS_LEGACY_INTAKE)."""
    from ..intake import enabled as intake_enabled

    legacy: bool | None = args.legacy
    if legacy is not None:
        return legacy
    return True if intake_enabled(policy) else None


def _exec_runner(args: argparse.Namespace, policy: Policy) -> ExecRunner | None:
    """The runner of --exec (None without it); the commands get the policy's file."""
    if not args.exec:
        return None
    return ExecRunner(
        args.exec, args.exec_jobs, queue_size=args.exec_queue, grace=args.grace, env=child_env(policy)
    )


def _serve_metrics(args: argparse.Namespace, root: Path) -> Callable[[MailboxEvent], None] | None:
    """With --metrics-port: serve the root's metrics, and return the counter the events feed."""
    if args.metrics_port is None:
        return None
    from prometheus_client import start_http_server

    from ..metrics import EventCounter, registry_for

    registry = registry_for(root)
    counter = EventCounter(registry)
    start_http_server(args.metrics_port, addr=args.metrics_addr, registry=registry)
    print(
        f"hybridcomms watch: metrics on http://{args.metrics_addr}:{args.metrics_port}/metrics",
        file=sys.stderr,
        flush=True,
    )
    return counter


def _event_line(ev: MailboxEvent, as_json: bool) -> str:
    """The line an event is printed as (a name that is not UTF-8 as \\xNN text)."""
    if as_json:
        return json_text(ev.for_json())
    rescan = " (rescan)" if ev.source == "rescan" and ev.kind != "waiting" else ""
    return f"{ev.kind:<9} {ev.agent} {printable(ev.name)}" + rescan


def _watch_until(stop: threading.Event, watcher: MailboxWatcher, root: Path, provenance: str) -> None:
    """Start watching, say so, and wait for the stop (a signal, or the output closed)."""
    watcher.start()
    mode = "inotify" if watcher.notifying else "polling"
    print(
        f"hybridcomms watch: watching {root.resolve()} ({mode}; routing policy from "
        f"{provenance}); stop with SIGTERM or Ctrl-C",
        file=sys.stderr,
        flush=True,
    )
    while not stop.wait(0.5):
        pass


def _shut_down(
    watcher: MailboxWatcher, runner: ExecRunner | None, release_bus: Callable[[], None] | None
) -> None:
    """Stop the watcher, the bus and the --exec commands (those running get their grace)."""
    if runner is not None:
        runner.stopping.set()  # the watching threads stop waiting for room in the queue
    watcher.stop()
    if release_bus is not None:
        release_bus()
    if runner is not None:
        runner.close(wait=True)


def _exec_summary(runner: ExecRunner | None) -> str:
    """What --exec did, for the last line (empty without --exec)."""
    if runner is None:
        return ""
    return f"; --exec ran {runner.ran}, {runner.failed} failed, {runner.not_run} left for the next start"


def watch_bus(root: Path, patterns: list[str], as_json: bool, write: LineWriter) -> Callable[[], None]:
    """Print the ephemeral events of the processes that share ``root`` (`hybridcomms.fanout`)."""
    from ..bus import AgentBus, Event
    from ..bus.fanout import share_bus

    bus = AgentBus()

    def show(event: Event) -> None:
        if event.origin is None:
            return  # (this bus publishes nothing of its own)
        record = event.to_dict()  # a message's field names; "payload" is the payload, not the envelope
        if as_json:
            line = json_text({"kind": "bus", **record}, default=str)
        else:
            shown = orjson.dumps(record["payload"], default=str).decode()
            line = printable(f"{'bus':<9} {record['sender'] or '-'} {record['topic']} {shown}")
        write(line)

    for pattern in patterns:
        bus.subscribe(pattern, show)
    release = share_bus(bus, root=root)

    def stop() -> None:
        release()
        bus.close()

    return stop


def register(sub: Subparsers, parents: Parents) -> None:
    w = sub.add_parser(
        "watch",
        parents=[parents.files],
        help="watch every mailbox: print events, run --exec, recover periodically",
        description="The watch service: watches every mailbox under the root (agents created later too) "
        "and prints one line per thing that happens to a message (delivered, claimed, acked, recovered, "
        "dead-lettered...; --json: one object per line), after one 'waiting' line per message already "
        "in new/ when it starts. It runs recovery every --recover-every seconds and lists every new/ "
        "every --rescan-every seconds to catch what notifications missed. --exec runs a shell command "
        "per delivered, recovered or waiting message: it notifies, it does not consume (use 'work' for "
        "that). SIGTERM or Ctrl-C stop it cleanly.",
    )
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    w.add_argument(
        "--exec",
        default=None,
        help="shell command run per delivered, recovered or waiting message (env: HYBRIDCOMMS_*)",
    )
    w.add_argument(
        "--exec-jobs",
        type=int,
        default=4,
        help="at most this many --exec commands at once (default: %(default)s)",
    )
    w.add_argument(
        "--exec-queue",
        type=int,
        default=1000,
        help="at most this many files wait for --exec, then the watcher waits (default: %(default)s)",
    )
    w.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="on SIGTERM, seconds running --exec commands get before they are killed (default: %(default)s)",
    )
    w.add_argument(
        "--recover-every",
        type=float,
        default=30.0,
        help="seconds between recovery passes, 0: never (default: %(default)s)",
    )
    w.add_argument(
        "--rescan-every",
        type=float,
        default=10.0,
        help="seconds between full listings of new/ (default: %(default)s)",
    )
    w.add_argument("--polling", action="store_true", help="poll instead of using inotify")
    w.add_argument("--create", action="store_true", help="create the mailbox root if it does not exist")
    add_bus_option(w)
    w.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port (/metrics)"
    )
    w.add_argument(
        "--metrics-addr", default="127.0.0.1", help="address to serve the metrics on (default 127.0.0.1)"
    )
    w.add_argument(
        "--legacy",
        action="store_true",
        default=None,
        help="take Dream.OS legacy drops (inbox.json, inbox/) of adopted agents into new/ "
        "(also on with HYBRIDCOMMS_LEGACY_INTAKE=1 or a policy adopt entry)",
    )
    w.set_defaults(func=run_watch, files_only="works on mailbox files")
