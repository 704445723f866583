"""`hybridcomms migrate`: convert a Dream.OS mailbox root to the hybridcomms layout, once.

What becomes what (layouts in ../shared/DREAMOS_API.md §1 and docs/compatibility.md):

============================================  ===============================================
legacy                                        hybridcomms
============================================  ===============================================
``<agent>/inbox.json`` entries (L1)           ``new/`` (the array is left empty: ``[]``)
``<agent>/inbox/*.json`` (L2, L3)             ``new/``
``<agent>/<time>_<sender>.json`` (L4)          ``new/``
``<agent>/archive/*.json`` (L2 processed)     ``done/``
``<agent>/processed/*.json`` (L3 processed)   ``done/``
invalid JSON, not a message, too large        ``dead/``, bytes unchanged, with a reason file
anything else                                 left where it is, and listed (``.md`` notes,
                                              ``outbox/``, ``state/``, ``workspace/``,
                                              ``broadcast/``, folders that are not safe agent
                                              ids such as unrendered ``{agent_id}`` templates)
============================================  ===============================================

The real run first copies the whole root to ``<root>.backup-<UTC time>`` (unless told not to), takes
each agent's legacy files under the legacy locks (as ingestion does), and can be run again safely:
what was moved is gone from the old places, and a run interrupted half-way is finished by the next
one without publishing anything twice (the ingestion journal).
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from .errors import MessageError
from .legacy import (
    DEFAULT_SETTLE,
    INBOX_DIR,
    INBOX_JSON,
    NOT_MESSAGES,
    ids_present,
    ingest,
    ingest_folder,
    message_from_legacy,
)
from .mailbox import FileMailbox, check_agent_id
from .message import DEFAULT_MAX_MESSAGE_SIZE
from .states import State

__all__ = ["AgentMigration", "Migration", "migrate", "survey"]

PROCESSED_FOLDERS = ("archive", "processed")
#: Sub-folders that hold no messages for the agent (left as they are).
KEPT_FOLDERS = ("outbox", "state", "workspace", "failed")
_OURS = {s.folder for s in State}


@dataclass
class AgentMigration:
    agent: str
    to_new: list[str] = field(default_factory=list)
    to_done: list[str] = field(default_factory=list)
    to_dead: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    left: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    def changes(self) -> int:
        return len(self.to_new) + len(self.to_done) + len(self.to_dead)


@dataclass
class Migration:
    root: Path
    dry_run: bool
    agents: list[AgentMigration] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)  # things under the root itself
    backup: Path | None = None

    def totals(self) -> dict[str, int]:
        return {
            "new": sum(len(a.to_new) for a in self.agents),
            "done": sum(len(a.to_done) for a in self.agents),
            "dead": sum(len(a.to_dead) for a in self.agents),
            "left": len(self.left) + sum(len(a.left) for a in self.agents),
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "dry_run": self.dry_run,
            "backup": str(self.backup) if self.backup else None,
            "totals": self.totals(),
            "agents": [
                {
                    "agent": a.agent,
                    "new": a.to_new,
                    "done": a.to_done,
                    "dead": [{"source": s, "reason": r} for s, r in a.to_dead],
                    "left": [{"path": p, "why": w} for p, w in a.left],
                }
                for a in self.agents
            ],
            "left": [{"path": p, "why": w} for p, w in self.left],
        }

    def describe(self) -> str:
        verb = "would move" if self.dry_run else "moved"
        lines = [f"{'dry run: ' if self.dry_run else ''}migrating {self.root}"]
        if self.backup:
            lines.append(f"backup: {self.backup}")
        for a in self.agents:
            lines.append(
                f"  {a.agent}: {verb} {len(a.to_new)} to new/, {len(a.to_done)} to done/, "
                f"{len(a.to_dead)} to dead/; {len(a.left)} left in place"
            )
            lines += [f"    dead: {s}: {r}" for s, r in a.to_dead]
            lines += [f"    left: {p}: {w}" for p, w in a.left]
        lines += [f"  left: {p}: {w}" for p, w in self.left]
        t = self.totals()
        lines.append(
            f"total: {t['new']} to new/, {t['done']} to done/, {t['dead']} to dead/, "
            f"{t['left']} left in place"
        )
        return "\n".join(lines)


# -- looking (no changes) -------------------------------------------------------------------------


def _classify(path: Path, origin: str, agent: str, max_size: int) -> str | None:
    """None if the file converts into a message, else why not."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return f"unreadable: {exc.strerror}"
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        return f"not valid JSON: {exc}"
    try:
        message_from_legacy(obj, agent_id=agent, origin=origin, raw=raw, max_size=max_size)
    except MessageError as exc:
        return f"cannot be converted: {exc}"
    return None


def _json_files(folder: Path, exclude: frozenset[str] = frozenset()) -> list[Path]:
    try:
        names = sorted(os.listdir(folder))
    except OSError:
        return []
    return [
        folder / n
        for n in names
        if n.endswith(".json") and not n.startswith(".") and n not in exclude and (folder / n).is_file()
    ]


def _survey_agent(root: Path, agent: str, max_size: int) -> AgentMigration:
    plan = AgentMigration(agent)
    adir = root / agent
    inbox_json = adir / INBOX_JSON
    if inbox_json.is_file():
        try:
            entries = orjson.loads(inbox_json.read_bytes() or b"[]")
        except orjson.JSONDecodeError as exc:
            plan.to_dead.append((f"{agent}/{INBOX_JSON}", f"not valid JSON: {exc}"))
            entries = []
        if not isinstance(entries, list):
            plan.to_dead.append((f"{agent}/{INBOX_JSON}", f"not a JSON array but {type(entries).__name__}"))
            entries = []
        for i, entry in enumerate(entries):
            origin = f"{agent}/{INBOX_JSON}[{i}]"
            try:
                message_from_legacy(entry, agent_id=agent, origin=origin, max_size=max_size)
                plan.to_new.append(origin)
            except MessageError as exc:
                plan.to_dead.append((origin, f"cannot be converted: {exc}"))
    for folder, exclude in ((adir / INBOX_DIR, frozenset[str]()), (adir, NOT_MESSAGES)):
        for path in _json_files(folder, exclude):
            origin = str(path.relative_to(root))
            why = _classify(path, origin, agent, max_size)
            (plan.to_new.append(origin) if why is None else plan.to_dead.append((origin, why)))
    for name in PROCESSED_FOLDERS:
        for path in _json_files(adir / name):
            origin = str(path.relative_to(root))
            why = _classify(path, origin, agent, max_size)
            if why is None:
                plan.to_done.append(origin)
            else:
                plan.left.append((origin, f"processed, and {why}"))
    _survey_leftovers(root, adir, plan)
    return plan


def _survey_leftovers(root: Path, adir: Path, plan: AgentMigration) -> None:
    try:
        entries = sorted(os.listdir(adir))
    except OSError:
        return
    for name in entries:
        path = adir / name
        rel = str(path.relative_to(root))
        if name.startswith(".") or name in _OURS or name in {INBOX_JSON, "subscriptions.json"}:
            continue
        if name.endswith(".lock"):
            continue
        if path.is_dir() and name in (INBOX_DIR, *PROCESSED_FOLDERS):
            for inner in sorted(os.listdir(path)):
                if not inner.startswith(".") and not inner.endswith((".json", ".lock", ".tmp")):
                    plan.left.append((f"{rel}/{inner}", "not a JSON message file"))
            continue
        if path.is_dir():
            why = "not a message folder" if name in KEPT_FOLDERS else "unknown folder"
            plan.left.append((rel + "/", why))
        elif not name.endswith(".json"):
            plan.left.append((rel, "not a JSON message file"))


def survey(root: str | os.PathLike[str], *, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> Migration:
    """What `migrate` would do, changing nothing."""
    base = Path(root)
    result = Migration(base, dry_run=True)
    if not base.is_dir():
        raise FileNotFoundError(f"no mailbox root at {base}")
    for name in sorted(os.listdir(base)):
        path = base / name
        if name.startswith(".") or name.startswith(f"{base.name}.backup-"):
            continue
        if name == "broadcast" and path.is_dir():
            count = len(_json_files(path))
            result.left.append((f"{name}/", f"broadcasts ({count} files) have no single recipient"))
            continue
        if not path.is_dir() or path.is_symlink():
            result.left.append((name, "not an agent folder"))
            continue
        try:
            check_agent_id(name)
        except ValueError:
            result.left.append((f"{name}/", "not a safe agent id (e.g. an unrendered template)"))
            continue
        plan = _survey_agent(base, name, max_message_size)
        if plan.changes() or plan.left or (path / INBOX_JSON).exists() or (path / INBOX_DIR).is_dir():
            result.agents.append(plan)
    return result


# -- doing ----------------------------------------------------------------------------------------


def migrate(
    root: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    backup: bool = True,
    fsync: str = "always",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
) -> Migration:
    """Convert the root (see the module docstring). Returns what was done (or would be)."""
    plan = survey(root, max_message_size=max_message_size)
    if dry_run:
        return plan
    base = Path(root)
    done = Migration(base, dry_run=False, left=list(plan.left))
    if backup and any(a.changes() for a in plan.agents):
        stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        target = base.parent / f"{base.name}.backup-{stamp}"
        shutil.copytree(base, target, symlinks=True)
        done.backup = target
    for a in plan.agents:
        with FileMailbox(
            base, a.agent, fsync=fsync, max_message_size=max_message_size, dir_mode=0o770, file_mode=0o660
        ) as mb:
            result = AgentMigration(a.agent, left=list(a.left))
            report = ingest(mb)
            adir = mb.path
            ingest_folder(mb, adir, report, DEFAULT_SETTLE, exclude=NOT_MESSAGES)  # L4: no lock
            result.left += [
                (f"{a.agent}/{n}", "invalid JSON changed seconds ago (being written?): run migrate again")
                for n in report.waiting
            ]
            result.to_new = list(report.ingested)
            dead_reasons = {source.rsplit("/", 1)[-1]: why for source, why in a.to_dead}
            result.to_dead = [(n, dead_reasons.get(n, "see its reason file in dead/")) for n in report.dead]
            for name in PROCESSED_FOLDERS:
                result.to_done += _import_processed(mb, adir / name, base)
            done.agents.append(result)
    return done


def _import_processed(mb: FileMailbox, folder: Path, root: Path) -> list[str]:
    """``archive/`` or ``processed/`` files into ``done/`` (skipping ids already there), then removed."""
    files = _json_files(folder)
    if not files:
        return []
    in_done = ids_present(mb, (State.DONE,))
    moved: list[str] = []
    batch = []
    for path in files:
        origin = str(path.relative_to(root))
        try:
            raw = path.read_bytes()
            message = message_from_legacy(
                orjson.loads(raw), agent_id=mb.agent_id, origin=origin, raw=raw, max_size=mb.max_message_size
            )
        except (OSError, ValueError):
            continue  # reported as left in place by the survey
        if message.id not in in_done:
            batch.append(message)
            in_done.add(message.id)
        moved.append(origin)
    mb.import_done(batch)
    for origin in moved:
        try:
            os.unlink(root / origin)
        except FileNotFoundError:
            pass
    return moved
