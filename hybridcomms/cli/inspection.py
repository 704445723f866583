"""The inspection commands: ``ls`` (one mailbox's messages), ``show`` (one message by id, anywhere) and
``tail`` (what happens from now on). ``stats`` and ``top`` have modules of their own.

They read the folders (one listing per folder) and the names; a message body is read only when its
topic or content is asked for (``ls`` shows topics, ``show`` the message). Ages are shown as ``3m``,
``2h``, ``5d`` for people and as seconds in ``--json``.
"""

from __future__ import annotations

import argparse
import fnmatch
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from .. import _fs
from .._text import json_text, printable
from ..backends import Mailbox
from ..backends.base import MessageInfo, check_agent_id
from ..backends.file import FileMailbox, list_agents
from ..errors import HybridCommsError
from ..message import iso_utc
from ..states import State
from .common import (
    EXIT_ERROR,
    EXIT_OK,
    LineWriter,
    Parents,
    add_bus_option,
    human_age,
    need_root,
    on_mailbox,
    on_stop_signals,
    open_existing,
    parse_age,
    print_json,
    restore_signals,
    shown_where,
)

if TYPE_CHECKING:
    from ..watcher import MailboxEvent
    from .common import Subparsers

__all__ = ["register_ls", "register_show", "register_tail"]


def one_line(text: object, limit: int = 500) -> str:
    """Text another agent wrote (an error, a reason) as one printable line of at most ``limit``
    characters (`hybridcomms._text.printable`)."""
    return printable(str(text), limit)


def _iso(ts: float) -> str:
    """A POSIX time as the native form (``2026-11-26T11:24:03.123456Z``)."""
    try:
        return iso_utc(datetime.fromtimestamp(ts, timezone.utc))
    except (OverflowError, OSError, ValueError):
        return f"{ts:.0f}"


def _when(ts: float, now: float) -> str:
    """``2026-11-26T11:24:03.123456Z (in 4m)`` (or ``(3m ago)``)."""
    delta = ts - now
    return f"{_iso(ts)} (in {human_age(delta)})" if delta >= 0.5 else f"{_iso(ts)} ({human_age(-delta)} ago)"


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
    elif info.last_error is not None:
        row["last_error"] = info.last_error.error
    return row


def cmd_ls(args: argparse.Namespace, mb: Mailbox) -> int:
    rows = _ls_rows(args, mb)
    if args.json:
        print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no messages for {mb.agent_id}" + (f" in {args.state}/" if args.state else ""))
        return EXIT_OK
    _print_ls_table(rows)
    return EXIT_OK


def _print_ls_table(rows: list[dict[str, Any]]) -> None:
    """``ls`` for people: a header, then a line per message."""
    print(f"{'state':<10} {'age':>5} {'try':>3}  {'id':<36} topic")
    for r in rows:
        print(_ls_line(r))


def _ls_rows(args: argparse.Namespace, mb: Mailbox) -> list[dict[str, Any]]:
    """The rows of the messages ``ls`` shows: the states asked for, narrowed by --older-than and --topic."""
    now = time.time()
    rows = []
    for state in _states_asked(args):
        for info in mb.list(state):
            row = _listed(args, mb, info, now)
            if row is not None:
                rows.append(row)
    return rows


def _listed(args: argparse.Namespace, mb: Mailbox, info: MessageInfo, now: float) -> dict[str, Any] | None:
    """The row of a message ``ls`` shows; None for one --older-than or --topic leaves out."""
    if not _old_enough(args, info, now):
        return None  # (before its topic is read: that reads the file)
    topic = _topic_of(mb, info)
    if not _topic_matches(args.topic, topic):
        return None
    return _row(mb, info, now, topic)


def _states_asked(args: argparse.Namespace) -> list[State]:
    """The states ``ls`` lists: --state, else every one a message can be in."""
    return [State(args.state)] if args.state else [State.NEW, State.PROCESSING, State.DONE, State.DEAD]


def _old_enough(args: argparse.Namespace, info: MessageInfo, now: float) -> bool:
    """Whether a message entered its state at least --older-than ago (without it: every one did)."""
    return args.older_than is None or now - info.changed_at >= args.older_than


def _topic_matches(pattern: str | None, topic: str | None) -> bool:
    """Whether a topic matches --topic (without it: every one does; an unreadable one matches none)."""
    return not pattern or (topic is not None and fnmatch.fnmatchcase(topic, pattern))


def _ls_line(r: dict[str, Any]) -> str:
    """One row of the ``ls`` table."""
    return (
        f"{r['state']:<10} {human_age(r['age']):>5} {r['attempt']:>3}  "
        f"{r['id'] or _fs.printable(r['file'])!s:<36} {r['topic'] or '?'}{_ls_why(r)}"
    )


def _ls_why(r: dict[str, Any]) -> str:
    """What follows a row that failed: why it died, or its last error (empty for the others)."""
    if r.get("reason"):
        return f"  ({one_line(r['reason'], 200)})"
    if r.get("last_error"):
        return f"  (last error: {one_line(r['last_error'], 200)})"
    return ""


def _mailboxes(root: Path, agents: Iterable[str] | None, url: str | None = None) -> Iterator[Mailbox]:
    """The mailboxes ``show`` looks in, each opened in turn: at the URL, the agents named, or every one."""
    if url is not None:
        yield from _remote_mailboxes(url, agents)
    elif agents:
        yield from _named_mailboxes(root, agents)
    else:
        yield from _every_mailbox(root)


def _remote_mailboxes(url: str, agents: Iterable[str] | None) -> Iterator[Mailbox]:
    """The agents named at the URL, else every one there."""
    from ..backends import open_mailbox
    from ..backends.redis.mailbox import redis_agents

    for agent in agents or redis_agents(url):
        with open_mailbox(url, check_agent_id(agent), create=False) as remote:
            yield remote


def _named_mailboxes(root: Path, agents: Iterable[str]) -> Iterator[Mailbox]:
    """The mailboxes of the agents named, under the root, read-only."""
    for agent in agents:
        with FileMailbox(root, check_agent_id(agent), read_only=True, fsync="never") as mb:
            yield mb


def _every_mailbox(root: Path) -> Iterator[Mailbox]:
    """Every mailbox under the root, read-only: one that cannot be opened is passed over."""
    for agent in list_agents(root):
        try:
            mb = FileMailbox(root, agent, read_only=True, fsync="never")
        except (OSError, HybridCommsError):
            continue
        with mb:
            yield mb


def cmd_show(args: argparse.Namespace, root: Path, url: str | None = None) -> int:
    for mb in _mailboxes(root, [args.agent] if args.agent else None, url):
        info = mb.get(args.id)
        if info is not None:
            _show(args, mb, info)
            return EXIT_OK
    print(f"hybridcomms show: no message {args.id!r} under {shown_where(url, root)}", file=sys.stderr)
    return EXIT_ERROR


def _show(args: argparse.Namespace, mb: Mailbox, info: MessageInfo) -> None:
    """One message found: where it is, its content, when it is due or expires, why it failed."""
    now = time.time()
    out: dict[str, Any] = {
        "agent": mb.agent_id,
        "state": info.state.value,
        "file": _fs.shown(info.name),
        "attempt": info.attempt,
        "age": round(now - info.changed_at, 3),
    }
    expires = _add_content(out, mb, info)
    due = _add_times(out, info, now, expires)
    _add_failure(out, info)
    if args.json:
        print_json(out)
    else:
        _print_show(out, info, now, due, expires)


def _add_times(out: dict[str, Any], info: MessageInfo, now: float, expires: float | None) -> float | None:
    """When a waiting message is due and when it expires, into ``out``; returns when it is due."""
    due = info.due_at if info.state is State.NEW else None
    if due is not None:  # when it may be claimed (after a failure: when it is retried)
        out["due"] = _iso(due)
        out["due_in"] = round(max(due - now, 0.0), 3)
    if expires is not None:
        out["expires_in"] = round(expires - now, 3)
    return due


def _add_content(out: dict[str, Any], mb: Mailbox, info: MessageInfo) -> float | None:
    """The message (or why it cannot be read) into ``out``; returns when it expires, if it does."""
    try:
        message = mb.read(info)
        out["message"] = message.to_dict()
        return None if message.expires is None else message.expires.timestamp()
    except (OSError, HybridCommsError, KeyError) as exc:
        out["message"] = None
        out["unreadable"] = str(exc)
        return None


def _add_failure(out: dict[str, Any], info: MessageInfo) -> None:
    """Why it failed into ``out``: a dead letter's reason, or the last error of one waiting for a retry."""
    if info.reason is not None:
        out["dead_reason"] = info.reason.get("reason")
        out["last_error"] = info.reason.get("last_error")
        out["dead_at"] = info.reason.get("dead_at")
    elif info.last_error is not None:  # waiting for a retry: why the last attempt failed
        out["last_error"] = info.last_error.error
        out["failed_attempt"] = info.last_error.attempt
        out["failed_at"] = _iso(info.last_error.failed_at)


def _print_show(
    out: dict[str, Any], info: MessageInfo, now: float, due: float | None, expires: float | None
) -> None:
    """``show`` for people: where it is, why it failed, when it is due and expires, then the message."""
    print(f"{out['agent']}: {out['state']}/{out['file']} (attempt {out['attempt']}, {human_age(out['age'])})")
    _print_failure(out, info, now)
    if _due_worth_saying(due, info, now):
        print(f"due: {_when(due, now)}")
    if expires is not None:
        print(f"expires: {_when(expires, now)}")
    if out["message"] is None:  # a poison file (claiming it would dead-letter it): why
        print(f"unreadable: {one_line(out['unreadable'])}")
    else:
        print_json(out["message"])


def _due_worth_saying(due: float | None, info: MessageInfo, now: float) -> TypeGuard[float]:
    """Whether ``show`` says when a message is due: when it is not yet, or it is waiting for a retry."""
    return due is not None and (due > now or info.last_error is not None)


def _print_failure(out: dict[str, Any], info: MessageInfo, now: float) -> None:
    """Why it died, or how its last attempt failed (nothing for a message that never failed)."""
    if "dead_reason" in out:
        print(
            f"dead: {one_line(out['dead_reason'])}"
            + (f"; last error: {one_line(out['last_error'])}" if out["last_error"] else "")
        )
    elif info.last_error is not None:
        failed = info.last_error
        ago = human_age(max(now - failed.failed_at, 0.0))
        print(f"last error: attempt {failed.attempt} failed {ago} ago: {one_line(failed.error)}")


def _clock(at: float) -> str:
    """``HH:MM:SS`` for a time of today, with the date before it for another day."""
    local = time.localtime(at)
    today = time.localtime()
    same_day = (local.tm_year, local.tm_yday) == (today.tm_year, today.tm_yday)
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", local)


def cmd_tail(args: argparse.Namespace, root: Path) -> int:
    """Events of every mailbox (or the ones named) from now on, until SIGTERM or Ctrl-C; with
    ``--waiting``, what is already waiting in ``new/`` first (kind ``waiting``, at the time it arrived)."""
    from ..watcher import MailboxWatcher

    stop = threading.Event()
    write = LineWriter(on_close=stop.set)  # `tail | head -1`: stops once the reader is gone
    on_event = _event_printer(args, write)

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = on_stop_signals(on_signal)
    release_bus = None
    try:
        release_bus = _bus_watch(args, root, write)
        waiting = "waiting" if args.waiting else "skip"
        with MailboxWatcher(  # it only looks: no recovery, no legacy intake
            root, on_event=on_event, recover_every=0, rescan_every=10, waiting=waiting, ingest_legacy=False
        ):
            print(f"hybridcomms tail: following {root}", file=sys.stderr, flush=True)
            while not stop.wait(0.2):
                pass
    finally:
        if release_bus is not None:
            release_bus()
        restore_signals(previous)
    return EXIT_OK


def _event_printer(args: argparse.Namespace, write: LineWriter) -> Callable[[MailboxEvent], None]:
    """What ``tail`` does with an event: one line (JSON with --json) for an agent it follows."""
    wanted = set(args.agents or ())

    def on_event(ev: MailboxEvent) -> None:
        if wanted and ev.agent not in wanted:
            return
        write(
            json_text(ev.for_json())  # a name that is not UTF-8 as \xNN text
            if args.json
            else f"{_clock(ev.time)} {ev.kind:<9} {ev.agent} {ev.id or _fs.printable(ev.name)}"
        )

    return on_event


def _bus_watch(args: argparse.Namespace, root: Path, write: LineWriter) -> Callable[[], None] | None:
    """With --bus, the bus events followed too (`watch_bus`); what stops following them."""
    from .watch import watch_bus

    if getattr(args, "bus", None):
        return watch_bus(root, args.bus, args.json, write)
    return None


def run_show(args: argparse.Namespace, root: Path) -> int:
    if args.url_resolved:
        return cmd_show(args, root, args.url_resolved)
    need_root(root, "show", False)
    return cmd_show(args, root)


def run_tail(args: argparse.Namespace, root: Path) -> int:
    need_root(root, "tail", False)
    for agent in args.agents:  # a named mailbox must exist
        open_existing(root, agent, "tail", False, read_only=True).close()
    return cmd_tail(args, root)


def register_ls(sub: Subparsers, parents: Parents) -> None:
    ls = sub.add_parser(
        "ls",
        parents=[parents.mailboxes],
        help="list an agent's messages: state, age, attempt, id, topic",
        description="Lists one mailbox's messages, state by state: how long each has been in its state, "
        "its attempt, id and topic, and for a dead-lettered one why it died. --state, --topic and "
        "--older-than narrow the list; --json gives ages in seconds.",
    )
    ls.add_argument("agent")
    ls.add_argument("--state", choices=["new", "processing", "done", "dead"], help="only this state")
    ls.add_argument("--topic", help="only topics matching this pattern (shell-style: 'dreamos.task.*')")
    ls.add_argument(
        "--older-than", type=parse_age, help="only what entered its state this long ago (3m, 2h, 7d)"
    )
    ls.add_argument("--json", action="store_true", help="a JSON list (ages in seconds)")
    # It only reads: the mailbox is opened read-only (nothing is created, not even a folder it lacks).
    ls.set_defaults(func=on_mailbox(cmd_ls, read_only=lambda args: True))


def register_show(sub: Subparsers, parents: Parents) -> None:
    sh = sub.add_parser(
        "show",
        parents=[parents.mailboxes],
        help="one message by id: content, state, attempt, errors",
        description="Finds one message by id (or file name) in every mailbox, or in --agent's, and prints "
        "where it is (state, file, attempt, age), its content, and for a dead-lettered one the reason "
        "and the last error. Exit 1 if no mailbox has it.",
    )
    sh.add_argument("id", help="message id (or file name)")
    sh.add_argument("--agent", help="look only in this agent's mailbox (default: every mailbox)")
    sh.add_argument("--json", action="store_true", help="print JSON (ages in seconds)")
    sh.set_defaults(func=run_show)


def register_tail(sub: Subparsers, parents: Parents) -> None:
    tl = sub.add_parser(
        "tail",
        parents=[parents.files],
        help="follow what happens in the mailboxes from now on (until Ctrl-C)",
        description="Prints what happens to the messages of every mailbox (or of the agents named) as it "
        "happens, one line per event, until SIGTERM or Ctrl-C: like 'watch' without its recovery or "
        "--exec. --bus also follows the ephemeral bus events of the processes sharing the root.",
    )
    tl.add_argument("agents", nargs="*", help="only these agents")
    tl.add_argument("--json", action="store_true", help="JSON lines")
    tl.add_argument(
        "--waiting",
        action="store_true",
        help="first list what already waits in new/ (kind 'waiting', at the time each arrived); "
        "by default tail shows what happens from now on",
    )
    add_bus_option(tl)
    tl.set_defaults(func=run_tail, files_only="reads mailbox files")
