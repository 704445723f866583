"""``hybridcomms demo``: a short tour in a ``Demo-Agent`` mailbox under the root (priorities, a retry,
a dead letter, and what is left on disk)."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from .. import _log
from ..backends import MailboxDelivery
from ..backends.base import MessageInfo
from ..backends.file import FileMailbox
from ..errors import HybridCommsError
from ..message import Message
from ..retry import Backoff, attempts_used_up
from ..states import State
from .common import EXIT_OK, Parents

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["register"]


def _demo_files(root: Path) -> int:
    """How many messages an earlier demo left in ``Demo-Agent``; SystemExit if any of them is not the
    demo's own (a real message sent there is never deleted by running the demo)."""
    try:
        with FileMailbox(root, "Demo-Agent", read_only=True, fsync="never") as mb:
            infos = _all_messages(mb)
            foreign = sum(_sender(mb, info) != "Demo-Sender" for info in infos)
    except (OSError, HybridCommsError) as exc:
        raise SystemExit(
            f"hybridcomms demo: cannot look at the Demo-Agent mailbox under {root}: {exc}"
        ) from None
    if foreign:
        raise SystemExit(
            f"hybridcomms demo: the Demo-Agent mailbox under {root} holds {foreign} message(s) the demo did "
            "not write; the demo starts from an empty Demo-Agent mailbox and will not delete them: move "
            "them (hybridcomms ls Demo-Agent) or run the demo under another --root"
        )
    return len(infos)


def _all_messages(mb: FileMailbox) -> list[MessageInfo]:
    """Every message of the mailbox, whatever its state."""
    return [i for state in State for i in mb.list(state)]


def _sender(mb: FileMailbox, info: MessageInfo) -> str | None:
    """The sender a message names (None: none, or it cannot be read)."""
    try:
        return mb.read(info).sender
    except (OSError, HybridCommsError):
        return None


def cmd_demo(args: argparse.Namespace, root: Path) -> int:
    """A short tour: priorities, a retry, a dead letter, and what is left on disk.

    Each run starts from an empty ``Demo-Agent`` mailbox (the previous run's is cleared), so the table
    it prints is the same every time."""
    logger = _log.get("hybridcomms")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the table says it all; no log lines
    try:
        return _demo(root)
    finally:  # main() may run inside a program (or a test) that keeps on logging
        logger.setLevel(level)


def _demo(root: Path) -> int:
    cleared = _clear_previous(root)
    print(f"mailbox root: {root.resolve()}")
    if cleared:
        print(f"cleared the previous demo's Demo-Agent mailbox ({cleared} messages)")
    with FileMailbox(root, "Demo-Agent", max_attempts=2, backoff=Backoff(initial=0.05, jitter=0)) as mb:
        mb.put(
            Message("status.note", {"text": "low priority, sent first"}, sender="Demo-Sender", priority="LOW")
        )
        mb.put(Message("task.command", {"do": "build"}, sender="Demo-Sender", priority="HIGH"))
        mb.put(Message("task.command", {"do": "explode"}, sender="Demo-Sender", priority="MEDIUM"))
        print("put 3 messages (LOW first, then HIGH, then MEDIUM); claimed in priority order:\n")
        rows: list[tuple[str, str, str, int, str]] = []
        while (d := mb.claim(timeout=0.5)) is not None:
            rows.append(_handle(mb, d))
        _print_outcomes(rows)
        _print_left(mb)
    print(f"\ninspect it yourself: ls -R {root / 'Demo-Agent'}")
    return EXIT_OK


def _clear_previous(root: Path) -> int:
    """Remove the previous demo's mailbox (only if all it holds is the demo's own); how many messages
    it held."""
    import shutil

    demo = root / "Demo-Agent"
    if not demo.is_dir() or demo.is_symlink():
        return 0
    cleared = _demo_files(root)  # refuses a mailbox that holds messages the demo did not write
    shutil.rmtree(demo)  # only the demo's own mailbox
    return cleared


def _handle(mb: FileMailbox, d: MailboxDelivery) -> tuple[str, str, str, int, str]:
    """One message handled, the "explode" one failing: its row (outcome, priority, topic, attempt,
    where it is now)."""
    payload = d.message.payload
    name, topic, attempt = d.message.priority.name, d.message.topic, d.attempt
    try:
        with d:
            if payload.get("do") == "explode":
                raise RuntimeError("the handler failed (on purpose)")
        return ("acked", name, topic, attempt, "done/")
    except RuntimeError:
        last = attempts_used_up(attempt, mb.max_attempts)
        return ("failed", name, topic, attempt, "dead/ (no attempts left)" if last else "new/ (retry)")


def _print_outcomes(rows: list[tuple[str, str, str, int, str]]) -> None:
    """The table of what became of each claim."""
    print(f"  {'outcome':<8} {'priority':<9} {'topic':<13} {'attempt':>7}  now in")
    for outcome, name, topic, attempt, where in rows:
        print(f"  {outcome:<8} {name:<9} {topic:<13} {attempt:>7}  {where}")


def _print_left(mb: FileMailbox) -> None:
    """What is left on disk: the counts per state, and each dead letter with its reason."""
    st = mb.stats().to_dict()
    print("\n  " + "   ".join(f"{k}/: {st[k]['count']}" for k in ("new", "processing", "done", "dead")))
    for info in mb.list(State.DEAD):
        reason = info.reason or {}
        print(f"\n  dead/{info.name}\n    reason:     {reason.get('reason')}")
        print(f"    last error: {reason.get('last_error')}")


def register(sub: Subparsers, parents: Parents) -> None:
    d = sub.add_parser(
        "demo",
        parents=[parents.files],
        help="a short tour in a Demo-Agent mailbox under the root",
        description="A short tour in a Demo-Agent mailbox under the root (emptied first, so every run "
        "prints the same table): three messages claimed in priority order, one whose handler fails, is "
        "retried and then dead-lettered with its reason. The files stay there for you to look at.",
    )
    d.set_defaults(func=cmd_demo, files_only="works on mailbox files")
