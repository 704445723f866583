"""The repair commands: ``recover`` (give back what dead consumers held, sweep ``tmp/``), ``requeue``
(dead letters back to ``new/``) and ``purge`` (old messages out of ``done/`` or ``dead/``).
``doctor`` has its module of its own (`hybridcomms.cli.doctor`)."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _fs
from .._fs import shown
from .._outage import reason, unreachable
from ..backends import Mailbox, files_of
from ..backends.base import RecoveryReport, purged_state
from ..backends.file import inspection
from ..states import State
from .common import (
    EXIT_ERROR,
    EXIT_OK,
    Parents,
    agents_of,
    human_age,
    need_root,
    on_mailbox,
    open_existing,
    parse_age,
    print_json,
    shown_where,
    usage_error,
)
from .progress import Progress

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["register_purge", "register_recover", "register_requeue"]


# -- recover ------------------------------------------------------------------------------------------


def cmd_recover(args: argparse.Namespace, root: Path) -> int:
    """Every mailbox is tried, whatever happens to one of them; the exit is non-zero if any failed."""
    url = args.url_resolved
    if not url:
        need_root(root, "recover", False)
    rows, failed = _recover_all(args, root)
    if args.json:
        print_json({"root": shown_where(url, root), "agents": rows, "failed": failed})
    return EXIT_ERROR if failed else EXIT_OK


def _recover_all(args: argparse.Namespace, root: Path) -> tuple[list[dict[str, Any]], int]:
    """Each mailbox's recovery row, in order, and how many mailboxes failed."""
    failed = 0
    rows: list[dict[str, Any]] = []
    for agent in agents_of(args, root):
        row = _recover_one(args, root, agent)
        failed += row["error"] is not None
        rows.append(row)
    return rows, failed


def _recover_one(args: argparse.Namespace, root: Path, agent: str) -> dict[str, Any]:
    """One mailbox's recovery, said (unless --json) and returned as its row; a backend that is down
    ends the command (no other mailbox will do better: one line, exit 69)."""
    try:
        with open_existing(root, agent, "recover", False, args.url_resolved) as mb:
            rep = mb.recover()
    except Exception as exc:
        if unreachable(exc) is not None:
            raise
        error = f"{type(exc).__name__}: {reason(exc)}"
        print(f"hybridcomms recover: {agent}: {error}", file=sys.stderr)
        return _recovery_row(agent, RecoveryReport(), error)
    if not args.json:
        _say_recovered(agent, rep)
    return _recovery_row(agent, rep)


def _say_recovered(agent: str, rep: RecoveryReport) -> None:
    if rep.busy:
        print(f"{agent}: another recovery is running on it; skipped")
        return
    print(
        f"{agent}: returned {len(rep.returned)}, expired {len(rep.expired)}, "
        f"dead {len(rep.dead)}, tmp removed {len(rep.tmp_removed)}"
        + (f", {len(rep.errors)} entries left in place" if rep.errors else "")
    )
    for entry, why in rep.errors:
        print(f"  left {entry}: {why}")


def _recovery_row(agent: str, rep: RecoveryReport, error: str | None = None) -> dict[str, Any]:
    """One mailbox's recovery for ``recover --json``: lists of message ids (or file names), and the
    error if the mailbox failed (then the lists are empty)."""
    return {
        "agent": agent,
        "busy": rep.busy,  # another pass was running on it: this one did nothing
        "returned": _shown_all(rep.returned),  # its consumer died: back to new/
        "expired": _shown_all(rep.expired),  # its lease ran out: back to new/
        "dead": _shown_all(rep.dead),  # out of attempts, or not a message: to dead/
        "tmp_removed": _shown_all(rep.tmp_removed),
        "left": [{"entry": shown(e), "why": shown(w)} for e, w in rep.errors],
        "error": shown(error) if error is not None else None,
    }


def _shown_all(names: Iterable[str]) -> list[str]:
    """Message ids or file names, each as printable text."""
    return [shown(n) for n in names]


# -- requeue ------------------------------------------------------------------------------------------


def cmd_requeue(args: argparse.Namespace, mb: Mailbox) -> int:
    if bool(args.ids) == bool(args.all_dead):
        usage_error("hybridcomms requeue: give message ids or --all-dead (not both)")
    missing: list[str] = []
    moved = _requeue_all_dead(args, mb) if args.all_dead else _requeue_ids(args, mb, missing)
    _say_requeued(args, mb, moved, missing)
    return EXIT_ERROR if missing else EXIT_OK


def _say_requeued(args: argparse.Namespace, mb: Mailbox, moved: list[str], missing: list[str]) -> None:
    """What was requeued, and the ids given that were not in dead/."""
    if args.json:
        print_json({"agent": mb.agent_id, "requeued": moved, "not_found": missing})
    else:
        print(
            f"{mb.agent_id}: {len(moved)} requeued to new/"
            + (f"; not in dead/: {', '.join(missing)}" if missing else "")
        )


def _requeue_all_dead(args: argparse.Namespace, mb: Mailbox) -> list[str]:
    progress = Progress("requeue", mb.stats().states[State.DEAD].count)
    moved = mb.requeue_all(State.DEAD, reset_attempts=args.reset_attempts, step=progress.step)
    progress.end()
    return moved


def _requeue_ids(args: argparse.Namespace, mb: Mailbox, missing: list[str]) -> list[str]:
    """Requeue the ids given; those not in dead/ are added to ``missing``."""
    moved: list[str] = []
    for key in args.ids:
        names = mb.requeue(key, reset_attempts=args.reset_attempts)
        if not names:
            missing.append(key)
        moved += names
    return moved


# -- purge --------------------------------------------------------------------------------------------


def cmd_purge(args: argparse.Namespace, mb: Mailbox) -> int:
    state = State(args.state)
    files = files_of(mb)
    if files is None:
        return _purge_elsewhere(args, mb, state)
    victims = inspection.older(files, state, args.older_than)
    if args.dry_run:
        return _would_delete(args, mb, state, [_fs.shown(i.name) for i in victims])
    progress = Progress("purge", len(victims))
    skipped: list[str] = []
    removed = inspection.remove(files, state, victims, progress.step, skipped)
    progress.end()
    _deleted(args, mb, state, removed, {"skipped": _shown_all(skipped)})
    _say_skipped(mb, state, skipped)
    return EXIT_OK


def _say_skipped(mb: Mailbox, state: State, skipped: list[str]) -> None:
    """One line on stderr for each entry purge left (not a file it can remove)."""
    for name in skipped:
        print(
            _fs.printable(
                f"hybridcomms purge: {mb.agent_id}: left {state.value}/{_fs.shown(name)}: not a file it "
                "can remove (a folder someone made there?); look at it by hand"
            ),
            file=sys.stderr,
        )


def _would_delete(args: argparse.Namespace, mb: Mailbox, state: State, names: list[str]) -> int:
    """``purge --dry-run``: what would go."""
    if args.json:
        print_json({"agent": mb.agent_id, "state": state.value, "would_delete": names})
    else:
        print(
            f"{mb.agent_id}: would delete {len(names)} from {state.value}/ "
            f"(older than {human_age(args.older_than)})"
        )
    return EXIT_OK


def _deleted(
    args: argparse.Namespace, mb: Mailbox, state: State, removed: int, extra: dict[str, Any] | None = None
) -> None:
    if args.json:
        print_json({"agent": mb.agent_id, "state": state.value, "deleted": removed, **(extra or {})})
    else:
        print(f"{mb.agent_id}: deleted {removed} from {state.value}/")


def _purge_elsewhere(args: argparse.Namespace, mb: Mailbox, state: State) -> int:
    """``purge`` on a backend without files: its own `purge` (or a count, with --dry-run)."""
    purged_state(state)
    if args.dry_run:
        return _would_delete(args, mb, state, _older_names(mb, state, args.older_than))
    _deleted(args, mb, state, mb.purge(state, args.older_than))
    return EXIT_OK


def _older_names(mb: Mailbox, state: State, older_than: float) -> list[str]:
    """The names of the messages that entered ``state`` at least ``older_than`` seconds ago."""
    cutoff = time.time() - older_than
    return [i.name for i in mb.list(state) if i.changed_at <= cutoff]


# -- their options ------------------------------------------------------------------------------------


def register_recover(sub: Subparsers, parents: Parents) -> None:
    rc = sub.add_parser(
        "recover",
        parents=[parents.mailboxes],
        help="give back messages held by dead consumers; sweep tmp/",
        description="Returns to new/ the messages held by consumers that died (their lock is free) or "
        "hung past their lease, dead-letters those whose attempts are used up, and removes half-written "
        "files abandoned in tmp/. Safe at any time, from any process, as often as you like (the watch "
        "service runs it periodically). Every mailbox is tried even when one fails (then the exit is 1); "
        "entries it cannot handle are left in place and listed.",
    )
    rc.add_argument("agents", nargs="*", help="only these agents (default: every mailbox)")
    rc.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: per mailbox the ids returned, expired, dead-lettered, the tmp/ files "
        "removed, the entries left in place, and the error if it failed",
    )
    rc.set_defaults(func=cmd_recover)


def register_requeue(sub: Subparsers, parents: Parents) -> None:
    rq = sub.add_parser(
        "requeue",
        parents=[parents.mailboxes],
        help="move dead-lettered messages back to new/",
        description="Moves dead-lettered messages (the ids given, or --all-dead) from dead/ back to new/, "
        "due now, with a fresh attempt count (as FileMailbox.requeue and the dashboard do; "
        "--keep-attempts keeps the count they had: one more try for a message that used them all). "
        "Exit 1 if an id given was not in dead/.",
    )
    rq.add_argument("agent")
    rq.add_argument("ids", nargs="*", help="message ids to requeue")
    rq.add_argument("--all-dead", action="store_true", help="every message in dead/")
    counts = rq.add_mutually_exclusive_group()
    counts.add_argument(
        "--keep-attempts",
        dest="reset_attempts",
        action="store_false",
        help="keep the attempt count they had (default: start it again)",
    )
    counts.add_argument(
        "--reset-attempts", dest="reset_attempts", action="store_true", help="start it again (the default)"
    )
    rq.set_defaults(reset_attempts=True)
    rq.add_argument("--json", action="store_true", help="print JSON (ages in seconds)")
    rq.set_defaults(func=on_mailbox(cmd_requeue, read_only=lambda args: False))


def register_purge(sub: Subparsers, parents: Parents) -> None:
    pg = sub.add_parser(
        "purge",
        parents=[parents.mailboxes],
        help="delete old messages from done/ or dead/",
        description="Deletes the messages that entered done/ or dead/ (--state) longer ago than "
        "--older-than (with their reason files). --dry-run says what would go and deletes nothing. "
        "new/ and processing/ are never touched.",
    )
    pg.add_argument("agent")
    pg.add_argument("--state", required=True, choices=["done", "dead"], help="which folder")
    pg.add_argument("--older-than", required=True, type=parse_age, help="age (e.g. 7d) past which to delete")
    pg.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    pg.add_argument("--json", action="store_true", help="print JSON (ages in seconds)")
    # --dry-run only reads: the mailbox is opened read-only (nothing is created, not even a folder)
    pg.set_defaults(func=on_mailbox(cmd_purge, read_only=lambda args: bool(args.dry_run)))
