"""``hybridcomms top``: a live view of every mailbox in the terminal (curses), refreshed in place."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _fs
from ..backends.file import FileMailbox, list_agents
from ..errors import HybridCommsError
from ..states import State
from .common import EXIT_OK, EXIT_USAGE, Parents, human_age, need_root

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["register", "top_lines"]


def _snapshot(root: Path, since: float | None = None) -> dict[str, dict[str, Any]]:
    """Every mailbox's `stats`; with ``since`` (a wall-clock time) also ``acked_since``: the files that
    entered ``done/`` since then (a count that trimming, ``done_retention``, does not disturb)."""
    rows: dict[str, dict[str, Any]] = {}
    for agent in list_agents(root):
        try:
            rows[agent] = _mailbox_row(root, agent, since)
        except (OSError, HybridCommsError):
            continue
    return rows


def _mailbox_row(root: Path, agent: str, since: float | None) -> dict[str, Any]:
    """One mailbox's `stats`, opened read-only; with ``since``, what entered ``done/`` since then."""
    with FileMailbox(root, agent, read_only=True, fsync="never") as mb:
        row = mb.stats().to_dict()
        if since is not None and mb.folders.has(State.DONE):
            row["acked_since"] = _entered_since(mb.folders.fd(State.DONE), since)
        return row


def _entered_since(fd: int, since: float) -> int:
    """How many entries of the folder ``fd`` entered it (their change time) at ``since`` or later."""
    count = 0
    for name in _fs.listdir_at(fd):
        try:
            if os.stat(name, dir_fd=fd, follow_symlinks=False).st_ctime >= since:
                count += 1
        except FileNotFoundError:
            continue
    return count


def top_lines(before: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]], dt: float) -> list[str]:
    """The screen of ``top``: one line per mailbox, rates from the change since ``before``."""
    head = (
        f"{'agent':<24} {'depth':>7} {'flight':>7} {'delayed':>7} {'dead':>6} {'done':>8} "
        f"{'oldest':>7} {'acks/s':>7}"
    )
    lines = [head]
    for agent, r in sorted(now.items()):
        rate = _ack_rate(before.get(agent), r, dt)
        lines.append(
            f"{agent[:24]:<24} {r['new']['count']:>7} {r['processing']['count']:>7} {r['delayed']:>7} "
            f"{r['dead']['count']:>6} {r['done']['count']:>8} {human_age(r['new']['oldest_age']):>7} "
            f"{max(rate, 0.0):>7.1f}"
        )
    if not now:
        lines.append("(no mailboxes yet)")
    return lines


def _ack_rate(prev: dict[str, Any] | None, r: dict[str, Any], dt: float) -> float:
    """Acks per second of a mailbox over the last ``dt`` seconds (0 at its first look)."""
    if prev is None or dt <= 0:
        return 0.0
    if r.get("acked_since") is not None:  # what entered done/: right while done/ is trimmed too
        return float(r["acked_since"] / dt)
    return float((r["done"]["count"] - prev["done"]["count"]) / dt)


def _on_a_terminal() -> bool:
    """Whether stdin and stdout are both a terminal (what ``top`` draws on and reads its keys from)."""
    return sys.stdin.isatty() and sys.stdout.isatty()


def cmd_top(args: argparse.Namespace, root: Path) -> int:
    """A live view of every mailbox, refreshed in place every ``--interval`` seconds; ``q`` quits.
    Without a terminal (stdin and stdout), or on one curses cannot drive, one line and exit 2."""
    if not _on_a_terminal():
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
        wall = time.time()
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
            since, wall = wall, time.time()
            now, t_now = _snapshot(root, since), time.monotonic()

    try:
        curses.wrapper(run)
    except curses.error as exc:  # TERM unknown or unset, a terminal too small to draw on
        term = os.environ.get("TERM") or "(unset)"
        print(f"hybridcomms top: cannot draw on this terminal (TERM={term}): {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


def run_top(args: argparse.Namespace, root: Path) -> int:
    need_root(root, "top", False)
    return cmd_top(args, root)


def register(sub: Subparsers, parents: Parents) -> None:
    tp = sub.add_parser(
        "top",
        parents=[parents.files],
        help="a live view of every mailbox (depth, in flight, delayed, dead, oldest, acks/s); q quits",
        description="A live view of every mailbox in the terminal, refreshed every --interval seconds: "
        "messages waiting, in flight, delayed, dead and done, the oldest waiting, and acks per second. "
        "q quits. Needs a terminal.",
    )
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (1)")
    tp.set_defaults(func=run_top, files_only="reads mailbox files")
