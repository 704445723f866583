"""Dream.OS in the CLI: ``migrate``, and the adoption helpers of ``send``, ``recv``, ``stats`` and
``doctor`` (an agent still on a legacy layout, a delivery there, its drops taken in).

Everything here reaches Dream.OS through the intake hook (`hybridcomms.intake.adoption`, which the
compat package registers); the CLI imports nothing from ``hybridcomms.compat``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import intake
from .._text import json_text
from ..backends.file import FileMailbox
from ..message import Message
from .common import EXIT_OK, Parents
from .progress import Phases, Progress

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["deliver", "has_drops", "ingest", "legacy_refusal", "legacy_status", "register"]


def legacy_status(root: Path, agent: str) -> dict[str, Any] | None:
    """The legacy layout an agent still reads (None if it has a hybridcomms mailbox or no legacy files)."""
    agent_dir = root / agent
    if not (agent_dir / "inbox.json").exists() and not (agent_dir / "inbox").exists():
        return None  # the common case: no Dream.OS files, the plug-in not even imported
    return intake.adoption().status(root, agent)


def legacy_refusal(command: str, status: dict[str, Any]) -> str:
    """Why ``command`` does not adopt an agent on a legacy layout by itself, and how to."""
    agent = status["agent"]
    return (
        f"hybridcomms {command}: {agent} is on the legacy Dream.OS layout ({status['layout']}, "
        f"{status['waiting']} message(s) waiting there) and has no hybridcomms mailbox yet; adopt it "
        "explicitly: 'hybridcomms migrate' (while its legacy reader is stopped), a policy 'adopt' entry, "
        f"or 'hybridcomms recv {agent} --adopt'"
    )


def deliver(root: Path, agent: str, message: Message) -> Path:
    """Write ``message`` where a legacy reader reads it, in its form; the file written."""
    return intake.adoption().deliver(root, agent, message)


def has_drops(mb: FileMailbox) -> bool:
    """Is anything dropped beside the mailbox (``inbox.json``, ``inbox/``), not taken in yet?"""
    return intake.adoption().has_drops(mb.root, mb.agent_id)


def ingest(mb: FileMailbox) -> intake.Taken:
    """Take the legacy drops into the mailbox's ``new/``."""
    return intake.adoption().ingest(mb)


# -- migrate ------------------------------------------------------------------------------------------


def cmd_migrate(args: argparse.Namespace, root: Path) -> int:
    dir_mode, file_mode = (0o770, 0o660) if args.group else (0o700, 0o600)
    # On a terminal: the backup copy's size, then the messages converted, redrawn on stderr.
    progress = Phases(
        backup=Progress("backup", sizes=True), messages=Progress("migrate", unit="messages converted")
    )
    try:
        result = intake.adoption().migrate(
            root,
            dry_run=args.dry_run,
            backup=not args.no_backup,
            fsync=args.fsync or "always",
            dir_mode=dir_mode,
            file_mode=file_mode,
            progress=progress,
        )
    finally:
        progress.end()
    print(json_text(result.to_dict(), indent=True) if args.json else result.describe())
    return EXIT_OK


def register(sub: Subparsers, parents: Parents) -> None:
    mg = sub.add_parser(
        "migrate",
        parents=[parents.files],
        help="convert a Dream.OS mailbox root (inbox.json, inbox/, archive/, flat files) to this layout",
        description="Converts a Dream.OS mailbox root to this layout, once: inbox.json entries, inbox/ "
        "and flat files go to new/, archive/ and processed/ to done/, what cannot be converted to dead/ "
        "with a reason; anything else (notes, links, FIFOs) is left in place and listed. The root is first "
        "copied to <root>.backup-<time> (unless --no-backup). Safe to run again. On a terminal it shows "
        "the backup's size and the messages converted as it goes, on stderr.",
    )
    mg.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    mg.add_argument("--no-backup", action="store_true", help="do not copy the root to <root>.backup-<time>")
    mg.add_argument("--json", action="store_true", help="print JSON (ages in seconds)")
    mg.add_argument(
        "--group",
        action="store_true",
        help="group-shared modes (folders 0770, files 0660) for agents running as different users",
    )
    mg.set_defaults(func=cmd_migrate, files_only="works on mailbox files")
