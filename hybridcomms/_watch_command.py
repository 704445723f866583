"""``hybridcomms watch``: the watcher service as a command (one line per event; stops on SIGTERM/SIGINT)."""

from __future__ import annotations

import argparse
import concurrent.futures
import logging
import os
import signal
import subprocess
import sys
import threading
import warnings
from pathlib import Path
from types import FrameType

import orjson

from .watcher import MailboxEvent, MailboxWatcher

log = logging.getLogger("hybridcomms.watch")


class ExecRunner:
    """Runs ``--exec CMD`` once per delivered message, at most ``jobs`` at a time, off the watching
    threads. A failing command is reported and never stops anything."""

    def __init__(self, command: str, jobs: int) -> None:
        self.command = command
        self.pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=jobs, thread_name_prefix="hybridcomms-exec"
        )
        self.failed = 0
        self.ran = 0
        self._lock = threading.Lock()

    def submit(self, event: MailboxEvent) -> None:
        self.pool.submit(self._run, event)

    def _run(self, event: MailboxEvent) -> None:
        env = dict(os.environ)
        env.update(
            HYBRIDCOMMS_AGENT=event.agent,
            HYBRIDCOMMS_ID=event.id or "",
            HYBRIDCOMMS_PATH=event.path,
            HYBRIDCOMMS_NAME=event.name,
            HYBRIDCOMMS_TOPIC=_topic_of(event.path),
        )
        try:
            done = subprocess.run(self.command, shell=True, env=env, check=False, stdin=subprocess.DEVNULL)
            code = done.returncode
        except OSError as exc:
            code = -1
            log.error("--exec could not start for %s: %s", event.name, exc)
        with self._lock:
            self.ran += 1
            if code != 0:
                self.failed += 1
        if code != 0:
            print(
                f"hybridcomms watch: --exec exited {code} for {event.agent}/{event.name}",
                file=sys.stderr,
                flush=True,
            )

    def close(self, wait: bool = True) -> None:
        self.pool.shutdown(wait=wait, cancel_futures=not wait)


def _topic_of(path: str) -> str:
    try:
        with open(path, "rb") as f:
            obj = orjson.loads(f.read(1 << 20))
        topic = (
            obj.get("topic") or obj.get("type") or obj.get("message_type") if isinstance(obj, dict) else None
        )
        return str(topic) if topic else ""
    except (OSError, orjson.JSONDecodeError):
        return ""  # already claimed, or not a message: the command still runs


def run_watch(args: argparse.Namespace, root: Path) -> int:
    # watchdog warns when a recursive watch races the creation of new folders; it re-adds the watch.
    warnings.filterwarnings("ignore", message="Callback with id", category=RuntimeWarning)
    stop = threading.Event()
    out_lock = threading.Lock()
    runner = ExecRunner(args.exec, args.exec_jobs) if args.exec else None

    def on_event(ev: MailboxEvent) -> None:
        line = (
            orjson.dumps(ev.to_dict()).decode()
            if args.json
            else f"{ev.kind:<9} {ev.agent} {ev.name}" + (" (rescan)" if ev.source == "rescan" else "")
        )
        with out_lock:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        if runner is not None and ev.kind == "delivered":
            runner.submit(ev)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    watcher = MailboxWatcher(
        root,
        on_event=on_event,
        recover_every=args.recover_every,
        rescan_every=args.rescan_every,
        polling=args.polling,
    )
    try:
        watcher.start()
        mode = "inotify" if watcher.notifying else "polling"
        print(
            f"hybridcomms watch: watching {root.resolve()} ({mode}); stop with SIGTERM or Ctrl-C",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        watcher.stop()
        if runner is not None:
            runner.close(wait=True)
        for s, handler in previous.items():
            signal.signal(s, handler)
    done = f"; --exec ran {runner.ran}, {runner.failed} failed" if runner is not None else ""
    print(f"hybridcomms watch: stopped{done}", file=sys.stderr, flush=True)
    return 0
