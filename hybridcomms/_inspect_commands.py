"""The inspect-and-repair commands of the CLI: ``ls``, ``show``, ``requeue``, ``purge``, ``tail``, ``doctor``.

They read the folders (one listing per folder) and the names; a message body is read only when its
topic or content is asked for (``ls`` shows topics, ``show`` the message). Ages are shown as ``3m``,
``2h``, ``5d`` for people and as seconds in ``--json``. Long operations show progress on stderr when it is
a terminal, and stay quiet when piped.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from . import _fs, inspection
from ._cli_errors import LineWriter
from ._locking import drop, try_lock
from ._names import REASON_SUFFIX, parse_name
from ._progress import Progress
from ._urls import shown_url
from .backend import Mailbox
from .errors import HybridCommsError
from .inspection import MessageInfo
from .mailbox import FileMailbox, check_agent_id, list_agents
from .message import Message
from .states import State

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)\Z")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_age(text: str) -> float:
    """``90``, ``90s``, ``3m``, ``2h``, ``7d``, ``1w`` -> seconds (argparse type)."""
    m = _AGE_RE.match(text.strip().lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (use e.g. 90s, 3m, 2h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def _print_json(value: Any) -> None:
    sys.stdout.write(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode() + "\n")


def _topic_of(mb: Mailbox, info: MessageInfo) -> str | None:
    try:
        return mb.read(info).topic
    except (OSError, HybridCommsError, KeyError):
        return None


def _row(mb: Mailbox, info: MessageInfo, now: float, topic: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "agent": mb.agent_id,
        "state": info.state.value,
        "id": info.id,
        "file": _fs.shown(info.name),
        "attempt": info.attempt,
        "age": round(now - info.changed_at, 3),
        "size": info.size,
        "topic": topic,
    }
    if info.reason is not None:
        row["reason"] = info.reason.get("reason")
        row["last_error"] = info.reason.get("last_error")
    return row


def cmd_ls(args: argparse.Namespace, mb: Mailbox) -> int:
    states = [State(args.state)] if args.state else [State.NEW, State.PROCESSING, State.DONE, State.DEAD]
    now = time.time()
    rows = []
    for state in states:
        for info in mb.list(state):
            if args.older_than is not None and now - info.changed_at < args.older_than:
                continue
            topic = _topic_of(mb, info)
            if args.topic and not (topic is not None and fnmatch.fnmatchcase(topic, args.topic)):
                continue
            rows.append(_row(mb, info, now, topic))
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no messages for {mb.agent_id}" + (f" in {args.state}/" if args.state else ""))
        return EXIT_OK
    print(f"{'state':<10} {'age':>5} {'try':>3}  {'id':<36} topic")
    for r in rows:
        extra = f"  ({r['reason']})" if r.get("reason") else ""
        print(
            f"{r['state']:<10} {human_age(r['age']):>5} {r['attempt']:>3}  {r['id'] or r['file']!s:<36} "
            f"{r['topic'] or '?'}{extra}"
        )
    return EXIT_OK


def _mailboxes(root: Path, agents: Iterable[str] | None, url: str | None = None) -> Iterator[Mailbox]:
    if url is not None:
        from .backend import open_mailbox
        from .redis_mailbox import redis_agents

        for agent in agents or redis_agents(url):
            with open_mailbox(url, check_agent_id(agent), create=False) as remote:
                yield remote
        return
    for agent in agents or list_agents(root):
        with FileMailbox(root, check_agent_id(agent), create=False, fsync="never") as mb:
            yield mb


def cmd_show(args: argparse.Namespace, root: Path, url: str | None = None) -> int:
    for mb in _mailboxes(root, [args.agent] if args.agent else None, url):
        info = mb.get(args.id)
        if info is None:
            continue
        out: dict[str, Any] = {
            "agent": mb.agent_id,
            "state": info.state.value,
            "file": _fs.shown(info.name),
            "attempt": info.attempt,
            "age": round(time.time() - info.changed_at, 3),
        }
        try:
            out["message"] = mb.read(info).to_dict()
        except (OSError, HybridCommsError, KeyError) as exc:
            out["message"] = None
            out["unreadable"] = str(exc)
        if info.reason is not None:
            out["dead_reason"] = info.reason.get("reason")
            out["last_error"] = info.reason.get("last_error")
            out["dead_at"] = info.reason.get("dead_at")
        if args.json:
            _print_json(out)
        else:
            print(
                f"{out['agent']}: {out['state']}/{out['file']} "
                f"(attempt {out['attempt']}, {human_age(out['age'])})"
            )
            if "dead_reason" in out:
                print(
                    f"dead: {out['dead_reason']}"
                    + (f"; last error: {out['last_error']}" if out["last_error"] else "")
                )
            _print_json(out["message"])
        return EXIT_OK
    where = shown_url(url) if url else root
    print(f"hybridcomms show: no message {args.id!r} under {where}", file=sys.stderr)
    return EXIT_ERROR


def cmd_requeue(args: argparse.Namespace, mb: Mailbox) -> int:
    if bool(args.ids) == bool(args.all_dead):
        raise SystemExit("hybridcomms requeue: give message ids or --all-dead (not both)")
    moved: list[str] = []
    missing: list[str] = []
    if args.all_dead and isinstance(mb, FileMailbox):
        dead = mb.list(State.DEAD)  # one listing for all of them
        progress = Progress("requeue", len(dead))
        moved = inspection.requeue_infos(mb, dead, State.DEAD, args.reset_attempts, progress.step)
        progress.end()
    elif args.all_dead:
        for key in dict.fromkeys(i.id or i.name for i in mb.list(State.DEAD)):
            moved += mb.requeue(key, reset_attempts=args.reset_attempts)
    else:
        for key in args.ids:
            names = mb.requeue(key, reset_attempts=args.reset_attempts)
            if not names:
                missing.append(key)
            moved += names
    if args.json:
        _print_json({"agent": mb.agent_id, "requeued": moved, "not_found": missing})
    else:
        print(
            f"{mb.agent_id}: {len(moved)} requeued to new/"
            + (f"; not in dead/: {', '.join(missing)}" if missing else "")
        )
    return EXIT_ERROR if missing else EXIT_OK


def cmd_purge(args: argparse.Namespace, mb: Mailbox) -> int:
    state = State(args.state)
    if not isinstance(mb, FileMailbox):
        return _purge_elsewhere(args, mb, state)
    victims = inspection.older(mb, state, args.older_than)
    if args.dry_run:
        if args.json:
            names = [_fs.shown(i.name) for i in victims]
            _print_json({"agent": mb.agent_id, "state": state.value, "would_delete": names})
        else:
            print(
                f"{mb.agent_id}: would delete {len(victims)} from {state.value}/ "
                f"(older than {human_age(args.older_than)})"
            )
        return EXIT_OK
    progress = Progress("purge", len(victims))
    removed = inspection.remove(mb, state, victims, progress.step)
    progress.end()
    if args.json:
        _print_json({"agent": mb.agent_id, "state": state.value, "deleted": removed})
    else:
        print(f"{mb.agent_id}: deleted {removed} from {state.value}/")
    return EXIT_OK


def _purge_elsewhere(args: argparse.Namespace, mb: Mailbox, state: State) -> int:
    """``purge`` on a backend without files: its own `purge` (or a count, with --dry-run)."""
    if state not in (State.DONE, State.DEAD):
        raise ValueError(f"purge only empties done/ or dead/, not {state.value}/")
    if args.dry_run:
        cutoff = time.time() - args.older_than
        names = [i.name for i in mb.list(state) if i.changed_at <= cutoff]
        if args.json:
            _print_json({"agent": mb.agent_id, "state": state.value, "would_delete": names})
        else:
            print(
                f"{mb.agent_id}: would delete {len(names)} from {state.value}/ "
                f"(older than {human_age(args.older_than)})"
            )
        return EXIT_OK
    removed = mb.purge(state, args.older_than)
    if args.json:
        _print_json({"agent": mb.agent_id, "state": state.value, "deleted": removed})
    else:
        print(f"{mb.agent_id}: deleted {removed} from {state.value}/")
    return EXIT_OK


# -- doctor -------------------------------------------------------------------------------------


def _doctor_one(mb: FileMailbox, fix: bool, deep: bool = False) -> list[dict[str, Any]]:
    findings: list[dict[str, Any]] = []
    now = time.time()

    def found(kind: str, where: str, detail: str, fixed: bool = False) -> None:
        findings.append(
            {"agent": mb.agent_id, "kind": kind, "where": where, "detail": detail, "fixed": fixed}
        )

    # stale tmp/ files (a writer died) and interrupted steals
    for name in _fs.listdir_at(mb.folders.fd(State.TMP)):
        try:
            st = os.stat(name, dir_fd=mb.folders.fd(State.TMP), follow_symlinks=False)
        except FileNotFoundError:
            continue
        if name.endswith(".stolen") or now - st.st_mtime >= mb.tmp_max_age:
            found("stale-tmp", f"tmp/{_fs.shown(name)}", f"{human_age(now - st.st_mtime)} old", fix)
    # orphaned claims: in processing/ with nobody holding the lock
    proc_fd = mb.folders.fd(State.PROCESSING)
    for name in _fs.listdir_at(proc_fd):
        try:
            fd = os.open(name, _fs.O_READ_MSG, dir_fd=proc_fd)
        except OSError:
            found("orphaned-claim", f"processing/{_fs.shown(name)}", "cannot be opened", fix)
            continue
        try:
            if try_lock(fd):
                found("orphaned-claim", f"processing/{_fs.shown(name)}", "its consumer is gone", fix)
        finally:
            drop(fd)
    # One pass over each folder (one lstat per file): modes, names that do not parse, and files that
    # will never decode (those with such names, those in processing/, and with --deep every file
    # waiting in new/, which reads them all).
    for state in State:
        folder_mode = stat.S_IMODE(os.fstat(mb.folders.fd(state)).st_mode)
        if folder_mode & ~mb.dir_mode & 0o077:
            found("mode", f"{state.value}/", f"folder mode {folder_mode:o}, expected {mb.dir_mode:o}", fix)
        if state is State.TMP:
            continue
        with os.scandir(mb.folders.fd(state)) as entries:
            for entry in entries:
                name = entry.name
                if state is State.DEAD and name.endswith(REASON_SUFFIX):
                    continue
                where = f"{state.value}/{_fs.shown(name)}"
                try:
                    mode = stat.S_IMODE(entry.stat(follow_symlinks=False).st_mode)
                except FileNotFoundError:
                    continue
                if mode & ~mb.file_mode & 0o077:
                    found("mode", where, f"mode {mode:o}, expected {mb.file_mode:o}", fix)
                if state not in (State.NEW, State.PROCESSING, State.DONE):
                    continue
                if state is State.DONE and not deep:
                    continue
                foreign = parse_name(name) is None
                if foreign and state is not State.DONE:
                    found("foreign-name", where, "not a hybridcomms name (renamed on its first claim)", False)
                if not (deep or foreign or state is State.PROCESSING):
                    continue
                try:
                    Message.decode(_fs.read_regular(name, mb.max_message_size, dir_fd=mb.folders.fd(state)))
                except FileNotFoundError:
                    continue
                except (OSError, HybridCommsError) as exc:
                    found("undecodable", where, str(exc)[:200], fix and state is State.NEW)
    # legacy drops not taken in yet
    try:
        from .compat.dreamos.legacy import has_legacy_drops

        if has_legacy_drops(mb.root, mb.agent_id):
            found("legacy-drops", "inbox.json / inbox/", "Dream.OS messages waiting to be ingested", fix)
    except ImportError:  # pragma: no cover
        pass
    if fix:
        _doctor_fix(mb, findings)
    return findings


def _doctor_fix(mb: FileMailbox, findings: list[dict[str, Any]]) -> None:
    kinds = {f["kind"] for f in findings if f["fixed"]}
    if kinds & {"stale-tmp", "orphaned-claim"}:
        mb.recover()  # returns orphaned claims, finishes steals, removes tmp/ files past tmp_max_age
    if "mode" in kinds:
        for f in findings:
            if f["kind"] == "mode" and f["fixed"]:
                path = mb.path / f["where"]
                try:
                    os.chmod(
                        path, mb.dir_mode if f["where"].endswith("/") else mb.file_mode, follow_symlinks=False
                    )
                except (OSError, NotImplementedError):
                    f["fixed"] = False
    if "undecodable" in kinds:
        for f in findings:
            if f["kind"] == "undecodable" and f["fixed"]:
                name = f["where"].split("/", 1)[1]
                try:
                    mb._reject(name, f"found by doctor: {f['detail']}")
                except (OSError, HybridCommsError):
                    f["fixed"] = False
    if "legacy-drops" in kinds:
        from .compat.dreamos.legacy import ingest

        try:
            ingest(mb)
        except (OSError, HybridCommsError):
            for f in findings:
                if f["kind"] == "legacy-drops":
                    f["fixed"] = False


def cmd_doctor(args: argparse.Namespace, root: Path) -> int:
    agents = args.agents or list_agents(root)
    progress = Progress("doctor", len(agents))
    findings: list[dict[str, Any]] = []
    # The modes every mailbox should have: a group setup when the root is group-writable.
    group = stat.S_IMODE(os.stat(root).st_mode) & 0o070 == 0o070
    dir_mode, file_mode = (0o770, 0o660) if group else (0o700, 0o600)
    for n, agent in enumerate(agents, 1):
        try:
            with FileMailbox(
                root,
                check_agent_id(agent),
                create=False,
                fsync="never",
                dir_mode=dir_mode,
                file_mode=file_mode,
            ) as mb:
                findings += _doctor_one(mb, args.fix, args.deep)
        except (OSError, HybridCommsError) as exc:
            findings.append(
                {"agent": agent, "kind": "unopenable", "where": "", "detail": str(exc), "fixed": False}
            )
        progress.step(n)
    progress.end()
    open_problems = [f for f in findings if not f["fixed"] and f["kind"] != "foreign-name"]
    if args.json:
        _print_json({"root": str(root), "healthy": not open_problems, "findings": findings})
    else:
        for f in findings:
            mark = "fixed" if f["fixed"] else ("note" if f["kind"] == "foreign-name" else "PROBLEM")
            print(f"{mark:<8} {f['agent']}: {f['kind']}: {f['where']}: {f['detail']}")
        print(
            "healthy"
            if not open_problems
            else f"{len(open_problems)} problem(s); run 'hybridcomms doctor --fix'"
        )
    return EXIT_OK if not open_problems else EXIT_ERROR


def cmd_tail(args: argparse.Namespace, root: Path) -> int:
    """Events of every mailbox (or the ones named) as they happen, until SIGTERM or Ctrl-C."""
    import signal
    import threading

    from .watcher import MailboxEvent, MailboxWatcher

    wanted = set(args.agents or ())
    stop = threading.Event()
    write = LineWriter(on_close=stop.set)  # `tail | head -1`: stops once the reader is gone

    def on_event(ev: MailboxEvent) -> None:
        if wanted and ev.agent not in wanted:
            return
        write(
            orjson.dumps(ev.to_dict()).decode()
            if args.json
            else f"{time.strftime('%H:%M:%S', time.localtime(ev.time))} {ev.kind:<9} {ev.agent} "
            f"{ev.id or ev.name}"
        )

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, lambda signum, frame: stop.set())
    from ._watch_command import watch_bus

    release_bus = watch_bus(root, args.bus, args.json, write) if getattr(args, "bus", None) else None
    try:
        with MailboxWatcher(root, on_event=on_event, recover_every=0, rescan_every=10):
            print(f"hybridcomms tail: following {root}", file=sys.stderr, flush=True)
            while not stop.wait(0.2):
                pass
    finally:
        if release_bus is not None:
            release_bus()
    return EXIT_OK


# -- top ----------------------------------------------------------------------------------------


def _snapshot(root: Path) -> dict[str, dict[str, Any]]:
    rows: dict[str, dict[str, Any]] = {}
    for agent in list_agents(root):
        try:
            with FileMailbox(root, agent, create=False, fsync="never") as mb:
                rows[agent] = mb.stats().to_dict()
        except (OSError, HybridCommsError):
            continue
    return rows


def top_lines(before: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]], dt: float) -> list[str]:
    """The screen of ``top``: one line per mailbox, rates from the change since ``before``."""
    head = (
        f"{'agent':<24} {'depth':>7} {'flight':>7} {'delayed':>7} {'dead':>6} {'done':>8} "
        f"{'oldest':>7} {'acks/s':>7}"
    )
    lines = [head]
    for agent, r in sorted(now.items()):
        prev = before.get(agent)
        rate = (r["done"]["count"] - prev["done"]["count"]) / dt if prev is not None and dt > 0 else 0.0
        lines.append(
            f"{agent[:24]:<24} {r['new']['count']:>7} {r['processing']['count']:>7} {r['delayed']:>7} "
            f"{r['dead']['count']:>6} {r['done']['count']:>8} {human_age(r['new']['oldest_age']):>7} "
            f"{max(rate, 0.0):>7.1f}"
        )
    if not now:
        lines.append("(no mailboxes yet)")
    return lines


def cmd_top(args: argparse.Namespace, root: Path) -> int:
    """A live view of every mailbox, refreshed in place every ``--interval`` seconds; ``q`` quits.
    Without a terminal (stdin and stdout), or on one curses cannot drive, one line and exit 2."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(
            "hybridcomms top: needs a terminal on stdin and stdout; for a snapshot in a pipe or a script "
            "use 'hybridcomms stats' (or 'hybridcomms stats --json')",
            file=sys.stderr,
        )
        return EXIT_USAGE
    import curses

    def run(screen: Any) -> None:
        curses.curs_set(0)
        screen.timeout(int(args.interval * 1000))
        before = _snapshot(root)
        t_before = time.monotonic()
        now, t_now = before, t_before
        while True:
            screen.erase()
            height, width = screen.getmaxyx()
            title = f"hybridcomms top: {root}  {time.strftime('%H:%M:%S')}  (q quits)"
            screen.addnstr(0, 0, title, width - 1, curses.A_BOLD)
            for y, line in enumerate(top_lines(before, now, t_now - t_before), start=2):
                if y >= height - 1:
                    break
                screen.addnstr(y, 0, line, width - 1)
            screen.refresh()
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            before, t_before = now, t_now
            now, t_now = _snapshot(root), time.monotonic()

    try:
        curses.wrapper(run)
    except curses.error as exc:  # TERM unknown or unset, a terminal too small to draw on
        term = os.environ.get("TERM") or "(unset)"
        print(f"hybridcomms top: cannot draw on this terminal (TERM={term}): {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
