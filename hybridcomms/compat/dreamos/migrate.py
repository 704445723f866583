"""`hybridcomms migrate`: convert a Dream.OS mailbox root to the hybridcomms layout, once.

What becomes what (layouts in runtime_layout.md and docs/compatibility.md):

============================================  ===============================================
legacy                                        hybridcomms
============================================  ===============================================
``<agent>/inbox.json`` entries (L1)           ``new/`` (the array is left empty: ``[]``)
``<agent>/inbox/*.json`` (L2, L3)             ``new/``
``<agent>/<time>_<sender>.json`` (L4)          ``new/``
``<agent>/archive/*.json`` (L2 processed)     ``done/``
``<agent>/processed/*.json`` (L3 processed)   ``done/``
invalid JSON, too large                       ``dead/``, bytes unchanged, with a reason file
anything else                                 left where it is, and listed (``.md`` notes,
                                              ``outbox/``, ``state/``, ``workspace/``,
                                              ``broadcast/``, folders that are not safe agent
                                              ids such as unrendered ``{agent_id}`` templates)
============================================  ===============================================

The real run first copies the whole root to ``<root>.backup-<UTC time>`` (``-2``, ``-3``… after it if
that name is taken; unless told not to, and only if it changes something; through descriptors only, a
0700 folder, links, FIFOs, devices, hard links and sparse files left out and reported: `_backup`; a
copy that reaches its limit in bytes stops, and nothing is migrated: `BackupIncompleteError`), takes
each agent's legacy files under the legacy locks (as ingestion does, chunk by chunk: ``CHUNK_ENTRIES``
entries of ``inbox.json`` or files of a folder at a time), and can be run again safely, even within one
second: what was moved is gone from the old places, and a run interrupted half-way is finished by the next one
without publishing anything twice (the ingestion journal). Every legacy file it names is a path under
the root, printable (`_fs.shown`).

``progress(phase, done, total)``, if given, is told how it goes: phase ``"backup"`` counts the bytes of
the backup copy as they are copied, ``"messages"`` the legacy messages taken (converted into ``new/``,
``done/`` or ``dead/``, or found converted by an interrupted run), once per chunk (the CLI draws both on
a terminal).
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ... import _fs
from ..._text import printable
from ...backends.file import FileMailbox
from ...errors import MessageError
from ...message import DEFAULT_MAX_MESSAGE_SIZE, Message
from ...states import State
from . import _json
from ._backup import backup_root
from ._json_stream import TOO_LARGE, Element, NotAnArray, is_blank, open_array
from .legacy import (
    CHUNK_CHARS,
    CHUNK_ENTRIES,
    DEFAULT_MAX_INBOX_JSON,
    DEFAULT_SETTLE,
    INBOX_DIR,
    INBOX_JSON,
    NOT_MESSAGES,
    REPORT_LISTED,
    IngestReport,
    Taken,
    agent_dir,
    entry_kind,
    ids_present,
    ingest,
    ingest_folder,
    is_drop_name,
    is_safe_agent_id,
    max_entry_chars,
    message_from_legacy,
    remove_taken,
    unbuilt_reason,
    why_refused,
)

__all__ = ["AgentMigration", "Migration", "migrate", "survey"]

PROCESSED_FOLDERS = ("archive", "processed")
#: Sub-folders that hold no messages for the agent (left as they are).
KEPT_FOLDERS = ("outbox", "state", "workspace", "failed")
_OURS = {s.folder for s in State} | {"errors"}  # errors/: the last errors kept for retries
#: ``progress(phase, done, total)``: ``"backup"`` in bytes, ``"messages"`` in messages.
MigrateProgress = Callable[[str, int, int], None]
#: Why an invalid file is left for now (an unlocked legacy writer may still be writing it).
WAITING = "invalid JSON changed seconds ago (being written?): run migrate again"


@dataclass
class AgentMigration:
    """One agent's part. Paths are relative to the root, printable (bytes not UTF-8 as ``\\xNN``)."""

    agent: str
    to_new: list[str] = field(
        default_factory=list
    )  # the first REPORT_LISTED (legacy paths, or ids once moved)
    more_new: int = 0  # how many more go (went) to new/ than `to_new` lists: a huge inbox.json is counted
    to_done: list[str] = field(default_factory=list)
    to_dead: list[tuple[str, str]] = field(default_factory=list)  # (source, reason)
    left: list[tuple[str, str]] = field(default_factory=list)  # (path, why)

    @property
    def n_new(self) -> int:
        return len(self.to_new) + self.more_new

    def add_new(self, what: str) -> None:
        if len(self.to_new) < REPORT_LISTED:
            self.to_new.append(what)
        else:
            self.more_new += 1

    def changes(self) -> int:
        return self.n_new + len(self.to_done) + len(self.to_dead)


@dataclass
class Migration:
    root: Path
    dry_run: bool
    agents: list[AgentMigration] = field(default_factory=list)
    left: list[tuple[str, str]] = field(default_factory=list)  # things under the root itself
    backup: Path | None = None
    backup_skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, why) left out of it

    def totals(self) -> dict[str, int]:
        return {
            "new": sum(a.n_new for a in self.agents),
            "done": sum(len(a.to_done) for a in self.agents),
            "dead": sum(len(a.to_dead) for a in self.agents),
            "left": len(self.left) + sum(len(a.left) for a in self.agents),
        }

    def changes(self) -> int:
        """How many messages the agents' parts move."""
        return sum(a.changes() for a in self.agents)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "dry_run": self.dry_run,
            "backup": str(self.backup) if self.backup else None,
            "backup_skipped": _path_why(self.backup_skipped),
            "totals": self.totals(),
            "agents": [_agent_dict(a) for a in self.agents],
            "left": _path_why(self.left),
        }

    def describe(self) -> str:
        lines = [
            self._heading(),
            *self._backup_lines(),
            *self._agents_lines(),
            *(f"  left: {p}: {w}" for p, w in self.left),
            self._total_line(),
        ]
        return "\n".join(printable(line) for line in lines)  # each line inert: names come from producers

    def _heading(self) -> str:
        """The first line: the root, and whether this is a dry run."""
        return f"{'dry run: ' if self.dry_run else ''}migrating {self.root}"

    def _agents_lines(self) -> list[str]:
        """Each agent's part in words, in turn (what moves, or would)."""
        verb = "would move" if self.dry_run else "moved"
        lines: list[str] = []
        for a in self.agents:
            lines += _agent_lines(a, verb)
        return lines

    def _total_line(self) -> str:
        """The last line: the totals."""
        t = self.totals()
        return (
            f"total: {t['new']} to new/, {t['done']} to done/, {t['dead']} to dead/, "
            f"{t['left']} left in place"
        )

    def _backup_lines(self) -> list[str]:
        """Where the backup is and what was left out of it (nothing without a backup)."""
        if not self.backup:
            return []
        return [f"backup: {self.backup}", *(f"  not in the backup: {p}: {w}" for p, w in self.backup_skipped)]


def _path_why(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
    """``(path, why)`` pairs as JSON objects."""
    return [{"path": p, "why": w} for p, w in pairs]


def _agent_dict(a: AgentMigration) -> dict[str, Any]:
    """One agent's part as JSON (`Migration.to_dict`)."""
    return {
        "agent": a.agent,
        "new": a.to_new,
        "new_not_listed": a.more_new,
        "done": a.to_done,
        "dead": [{"source": s, "reason": r} for s, r in a.to_dead],
        "left": _path_why(a.left),
    }


def _agent_lines(a: AgentMigration, verb: str) -> list[str]:
    """One agent's part in words (`Migration.describe`): its counts, then what goes to dead/ and stays."""
    return [
        f"  {a.agent}: {verb} {a.n_new} to new/, {len(a.to_done)} to done/, "
        f"{len(a.to_dead)} to dead/; {len(a.left)} left in place",
        *(f"    dead: {s}: {r}" for s, r in a.to_dead),
        *(f"    left: {p}: {w}" for p, w in a.left),
    ]


# -- looking (no changes) -------------------------------------------------------------------------


def _classify(
    dir_fd: int, name: str, origin: str, agent: str, max_size: int, settle: float | None
) -> tuple[str, str | None]:
    """``("new", None)`` if the file converts into a message; else ``("dead", why)``, or
    ``("left", why)`` for a file that cannot be read, or (with ``settle``) invalid JSON changed less
    than ``settle`` seconds ago, which ingestion leaves for the next run."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        raw = _fs.read_regular(name, max_size, dir_fd=dir_fd)
    except OSError as exc:
        return "left", why_refused(exc)
    try:
        obj = _json.loads(raw)  # as ingestion reads it (NaN, big integers: the stdlib's JSON)
    except ValueError as exc:
        if _may_be_written(st, settle):
            return "left", WAITING
        return "dead", f"not valid JSON: {exc}"
    return _conversion_fate(obj, origin, agent, raw, max_size)


def _may_be_written(st: os.stat_result, settle: float | None) -> bool:
    """With ``settle``: did the file change less than ``settle`` seconds ago (maybe still written)?"""
    return settle is not None and time.time() - st.st_mtime < settle


def _conversion_fate(obj: Any, origin: str, agent: str, raw: bytes, max_size: int) -> tuple[str, str | None]:
    """``("new", None)`` if the legacy value converts into a message, else ``("dead", why)``."""
    try:
        message_from_legacy(obj, agent_id=agent, origin=origin, raw=raw, max_size=max_size)
    except MessageError as exc:
        return "dead", f"cannot be converted: {exc}"
    return "new", None


def _json_files(
    dir_fd: int, exclude: frozenset[str] = frozenset()
) -> tuple[list[str], list[tuple[str, str]]]:
    """The ``*.json`` regular files of an open folder, and the ``*.json`` entries refused (links,
    FIFOs, folders: never followed or read)."""
    files: list[str] = []
    refused: list[tuple[str, str]] = []
    for n in _json_names(dir_fd, exclude):
        kind = entry_kind(dir_fd, n)
        if kind == "file":
            files.append(n)
        elif kind is not None:
            refused.append((n, kind))
    return files, refused


def _json_names(dir_fd: int, exclude: frozenset[str]) -> list[str]:
    """The ``*.json`` names of an open folder, sorted, neither hidden nor excluded; none if it cannot
    be listed."""
    try:
        names = sorted(_fs.listdir_at(dir_fd))
    except OSError:
        return []
    return [n for n in names if is_drop_name(n) and n not in exclude]


@contextlib.contextmanager
def _open_sub(dir_fd: int, name: str) -> Iterator[int | None]:
    """A sub-folder opened without following a link; None if it is missing, a link or not a folder."""
    try:
        fd = _fs.open_dir(name, dir_fd=dir_fd)
    except OSError:
        yield None
        return
    try:
        yield fd
    finally:
        os.close(fd)


def _survey_inbox_json(adir_fd: int, agent: str, max_size: int, plan: AgentMigration) -> None:
    """What becomes of each entry of ``inbox.json``, read element by element through a window of the
    file as ingestion reads it (neither the array nor the text is ever held whole; past
    `REPORT_LISTED` entries, they are counted, not listed)."""
    where = f"{agent}/{INBOX_JSON}"
    try:
        fd, st = _fs.open_regular(INBOX_JSON, DEFAULT_MAX_INBOX_JSON, dir_fd=adir_fd)
    except OSError as exc:
        plan.left.append((where, why_refused(exc)))
        return
    try:
        _survey_array(fd, st, where, agent, max_size, plan)
    finally:
        os.close(fd)


def _survey_array(
    fd: int, st: os.stat_result, where: str, agent: str, max_size: int, plan: AgentMigration
) -> None:
    """What becomes of the open ``inbox.json``: nothing if blank, ``dead/`` whole if it is not a
    JSON array, else each entry's fate."""
    if is_blank(fd, st.st_size):
        return
    max_item = max_entry_chars(max_size)
    problem = _array_problem(fd, max_item)
    if problem is not None:
        plan.to_dead.append((where, problem))  # all of it must be JSON first: a corrupt array
        return  # goes to dead/ whole
    for i, element in enumerate(open_array(fd, max_item=max_item)):
        _survey_element(element, f"{where}[{i}]", agent, max_size, plan)


def _array_problem(fd: int, max_item: int) -> str | None:
    """Why the open ``inbox.json`` is not a JSON array, read through once; None if it is one."""
    try:
        for _ in open_array(fd, max_item=max_item):
            pass
    except NotAnArray as exc:
        return str(exc)
    except ValueError as exc:
        return f"not valid JSON: {exc}"
    return None


def _survey_element(element: Element, origin: str, agent: str, max_size: int, plan: AgentMigration) -> None:
    """What becomes of one entry of ``inbox.json``: ``new/`` if it converts, else ``dead/``."""
    if element.value is TOO_LARGE:
        plan.to_dead.append((origin, unbuilt_reason(element.end - element.start, max_size)))
        return
    try:
        message_from_legacy(element.value, agent_id=agent, origin=origin, max_size=max_size)
        plan.add_new(origin)
    except MessageError as exc:
        plan.to_dead.append((origin, f"cannot be converted: {exc}"))


def _survey_agent(root_fd: int, agent: str, max_size: int, settle: float) -> AgentMigration:
    plan = AgentMigration(agent)
    with _open_sub(root_fd, agent) as adir_fd:
        if adir_fd is None:
            plan.left.append((f"{agent}/", "not a folder (or a link): refused"))
            return plan
        _survey_agent_folder(adir_fd, agent, max_size, settle, plan)
    return plan


def _survey_agent_folder(
    adir_fd: int, agent: str, max_size: int, settle: float, plan: AgentMigration
) -> None:
    """The open agent folder: ``inbox.json``, the drops of ``inbox/`` and of the folder itself, the
    processed folders, then what else is there."""
    _survey_inbox_json_entry(adir_fd, agent, max_size, plan)
    for sub, exclude in ((INBOX_DIR, frozenset[str]()), (".", NOT_MESSAGES)):
        _survey_drops(adir_fd, sub, exclude, agent, max_size, settle, plan)
    for sub in PROCESSED_FOLDERS:
        _survey_processed(adir_fd, sub, agent, max_size, plan)
    _survey_leftovers(adir_fd, agent, plan)


def _survey_inbox_json_entry(adir_fd: int, agent: str, max_size: int, plan: AgentMigration) -> None:
    """``inbox.json`` surveyed if it is a file; anything else in its place is left, refused."""
    kind = entry_kind(adir_fd, INBOX_JSON)
    if kind == "file":
        _survey_inbox_json(adir_fd, agent, max_size, plan)
    elif kind is not None:
        plan.left.append((f"{agent}/{INBOX_JSON}", f"{kind}: refused"))


def _listed(fd: int, prefix: str, plan: AgentMigration, exclude: frozenset[str] = frozenset()) -> list[str]:
    """The ``*.json`` files of an open folder to look at; the entries refused are listed as left."""
    files, refused = _json_files(fd, exclude)
    plan.left += [(_fs.shown(prefix + n), f"{why}: refused") for n, why in refused]
    return files


def _survey_drops(
    adir_fd: int,
    sub: str,
    exclude: frozenset[str],
    agent: str,
    max_size: int,
    settle: float,
    plan: AgentMigration,
) -> None:
    """What becomes of each legacy file of ``inbox/`` or (``"."``) of the agent's folder itself."""
    with _open_sub(adir_fd, sub) as fd:
        if fd is None:
            return
        prefix = f"{agent}/" if sub == "." else f"{agent}/{sub}/"
        for n in _listed(fd, prefix, plan, exclude):
            fate, why = _classify(fd, n, prefix + n, agent, max_size, settle)
            _plan_drop(plan, _fs.shown(prefix + n), fate, why)


def _plan_drop(plan: AgentMigration, path: str, fate: str, why: str | None) -> None:
    """A drop into the plan by its fate (`_classify`): ``new/``, ``dead/``, or left in place."""
    if fate == "new":
        plan.add_new(path)
    else:
        (plan.to_dead if fate == "dead" else plan.left).append((path, why or ""))


def _survey_processed(adir_fd: int, sub: str, agent: str, max_size: int, plan: AgentMigration) -> None:
    """What becomes of each file of a folder of processed messages (``archive/``, ``processed/``)."""
    with _open_sub(adir_fd, sub) as fd:
        if fd is None:
            return
        prefix = f"{agent}/{sub}/"
        for n in _listed(fd, prefix, plan):
            fate, why = _classify(fd, n, prefix + n, agent, max_size, None)
            if fate == "new":
                plan.to_done.append(_fs.shown(prefix + n))
            else:
                plan.left.append((_fs.shown(prefix + n), f"processed, and {why}"))


def _survey_leftovers(adir_fd: int, agent: str, plan: AgentMigration) -> None:
    """What else is in the agent's folder, and stays there (listed as left, with why)."""
    try:
        entries = sorted(_fs.listdir_at(adir_fd))
    except OSError:
        return
    for name in entries:
        if not _surveyed_elsewhere(name):
            _survey_leftover(adir_fd, agent, name, plan)


def _surveyed_elsewhere(name: str) -> bool:
    """Is this entry of an agent's folder none of the leftovers' business (hidden, ours, a drop, a lock)?"""
    return (
        name.startswith(".")
        or name in _OURS
        or name in {INBOX_JSON, "subscriptions.json"}
        or name.endswith(".lock")
    )


def _survey_leftover(adir_fd: int, agent: str, name: str, plan: AgentMigration) -> None:
    """One entry of the agent's folder that migration leaves, if it does (a ``*.json`` file is a drop)."""
    rel = _fs.shown(f"{agent}/{name}")
    kind = entry_kind(adir_fd, name)
    if kind == "dir":
        _survey_sub_folder(adir_fd, name, rel, plan)
    elif not name.endswith(".json"):
        plan.left.append((rel, "not a JSON message file" if kind == "file" else f"{kind}: refused"))


def _survey_sub_folder(adir_fd: int, name: str, rel: str, plan: AgentMigration) -> None:
    """A folder of the agent's: the stray files of a message folder are left, any other folder whole."""
    if name in (INBOX_DIR, *PROCESSED_FOLDERS):
        _survey_stray_files(adir_fd, name, rel, plan)
    else:
        plan.left.append((rel + "/", "not a message folder" if name in KEPT_FOLDERS else "unknown folder"))


def _survey_stray_files(adir_fd: int, name: str, rel: str, plan: AgentMigration) -> None:
    """The files of a message folder that are not messages (nor locks or temp files): left."""
    with _open_sub(adir_fd, name) as fd:
        inner_names = sorted(_fs.listdir_at(fd)) if fd is not None else []
    for inner in inner_names:
        if _is_stray(inner):
            plan.left.append((f"{rel}/{_fs.shown(inner)}", "not a JSON message file"))


def _is_stray(name: str) -> bool:
    """Is a message folder's entry neither hidden, a message, a lock nor a temp file?"""
    return not name.startswith(".") and not name.endswith((".json", ".lock", ".tmp"))


def survey(
    root: str | os.PathLike[str],
    *,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    settle: float = DEFAULT_SETTLE,
) -> Migration:
    """What `migrate` would do, changing nothing (an invalid file changed less than ``settle`` seconds
    ago is left for a later run, as `migrate` leaves it)."""
    base = Path(root)
    result = Migration(base, dry_run=True)
    if not base.is_dir():
        raise FileNotFoundError(f"no mailbox root at {base}")
    root_fd = os.open(base, _fs.O_DIR)
    try:
        for name in sorted(os.listdir(root_fd)):
            if _is_not_surveyed(name, base):
                continue
            _survey_entry(root_fd, name, result, max_message_size, settle)
    finally:
        os.close(root_fd)
    return result


def _is_not_surveyed(name: str, base: Path) -> bool:
    """Is this entry of the root hidden, or a backup of it (never surveyed)?"""
    return name.startswith(".") or name.startswith(f"{base.name}.backup-")


def _survey_entry(root_fd: int, name: str, result: Migration, max_size: int, settle: float) -> None:
    """One entry of the root: an agent's folder is surveyed (and listed if it has anything to say);
    anything else is left."""
    left = _not_an_agent(root_fd, name)
    if left is not None:
        result.left.append(left)
        return
    plan = _survey_agent(root_fd, name, max_size, settle)
    if _has_anything_to_say(plan, root_fd, name):
        result.agents.append(plan)


def _has_anything_to_say(plan: AgentMigration, root_fd: int, agent: str) -> bool:
    """Is the agent's part worth listing: something moves or stays, or it has legacy drops at all?"""
    return bool(plan.changes() or plan.left or _has_legacy_drops(root_fd, agent))


def _not_an_agent(root_fd: int, name: str) -> tuple[str, str] | None:
    """``(path, why)`` for an entry of the root that is left (broadcasts, not a folder, not a safe agent
    id); None for an agent's folder."""
    kind = entry_kind(root_fd, name)
    shown = _fs.shown(name)
    if kind != "dir":
        return shown, _not_a_folder(kind)
    if name == "broadcast":
        return f"{name}/", f"broadcasts ({_count_json_files(root_fd, name)} files) have no single recipient"
    if not is_safe_agent_id(name):
        return f"{shown}/", "not a safe agent id (e.g. an unrendered template)"
    return None


def _not_a_folder(kind: str | None) -> str:
    """Why an entry of the root that is not a folder is left (`entry_kind` says what it is)."""
    return "not an agent folder" if kind == "file" else f"{kind}: refused"


def _count_json_files(dir_fd: int, name: str) -> int:
    """How many ``*.json`` regular files the sub-folder ``name`` holds (0 if it cannot be opened)."""
    with _open_sub(dir_fd, name) as fd:
        return len(_json_files(fd)[0]) if fd is not None else 0


def _has_legacy_drops(root_fd: int, agent: str) -> bool:
    """Is there an ``inbox.json`` or an ``inbox/`` (of any kind) in the agent's folder?"""
    with _open_sub(root_fd, agent) as fd:
        return fd is not None and (
            entry_kind(fd, INBOX_JSON) is not None or entry_kind(fd, INBOX_DIR) is not None
        )


# -- doing ----------------------------------------------------------------------------------------


def migrate(
    root: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    backup: bool = True,
    fsync: str = "always",
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    dir_mode: int = 0o700,
    file_mode: int = 0o600,
    progress: MigrateProgress | None = None,
    backup_limit: int | None = None,
) -> Migration:
    """Convert the root (see the module docstring). Returns what was done (or would be).

    The folders and files it creates get ``dir_mode`` / ``file_mode`` (the documented 0o700 / 0o600;
    0o770 / 0o660 for a Dream.OS group setup where agents run as different users). ``progress`` is told
    how the backup copy and the conversion go (see the module docstring). ``backup_limit``: the most
    the backup copies in all (bytes; None: `_backup.backup_limit`); past it `BackupIncompleteError` is
    raised and nothing is migrated."""
    plan = survey(root, max_message_size=max_message_size)
    if dry_run:
        return plan
    base = Path(root)
    done = Migration(base, dry_run=False, left=list(plan.left))
    if backup and plan.changes():
        _back_up(done, progress, backup_limit)
    counter = _Converted(plan.changes(), progress)
    counter.taken(0)
    for a in plan.agents:
        with FileMailbox(
            base,
            a.agent,
            fsync=fsync,
            max_message_size=max_message_size,
            dir_mode=dir_mode,
            file_mode=file_mode,
        ) as mb:
            done.agents.append(_migrate_agent(mb, a, counter.taken))
    counter.end()
    return done


def _back_up(done: Migration, progress: MigrateProgress | None, limit: int | None) -> None:
    """Copy the root aside first (`_backup.backup_root`), noting in ``done`` where and what was left out."""
    copied = None if progress is None else lambda n, total: progress("backup", n, total)
    done.backup, skipped = backup_root(done.root, copied, limit=limit)
    done.backup_skipped = [(x.path, x.why) for x in skipped]


class _Converted:
    """How many messages were converted so far, out of the ``total`` the survey counted (told to
    ``progress`` as they are)."""

    def __init__(self, total: int, progress: MigrateProgress | None) -> None:
        self.total, self.progress, self.converted = total, progress, 0

    def taken(self, n: int) -> None:
        """``n`` more were taken (a `Taken` callback)."""
        self.converted += n
        if self.progress is not None:
            self.progress("messages", min(self.converted, self.total), self.total)

    def end(self) -> None:
        """Tell ``progress`` the end: all converted, which may be more or less than the survey counted
        (some may have been left for later, or arrived meanwhile)."""
        if self.progress is not None:
            self.progress("messages", self.converted, max(self.total, self.converted))


def _migrate_agent(mb: FileMailbox, planned: AgentMigration, taken: Taken) -> AgentMigration:
    """Convert one agent's legacy files (its drops into ``new/``, what it processed into ``done/``);
    what was done."""
    agent = planned.agent
    # What is waiting is what this run left, not what the survey saw a moment before.
    result = AgentMigration(agent, left=[x for x in planned.left if x[1] != WAITING])
    report = ingest(mb, on_taken=taken)
    with agent_dir(mb) as adir_fd:
        ingest_folder(  # L4: no lock
            mb, adir_fd, adir_fd, ".", report, DEFAULT_SETTLE, exclude=NOT_MESSAGES, on_taken=taken
        )
        result.to_done += _import_processed_folders(mb, adir_fd, taken)
    _note_ingested(result, report)
    return result


def _import_processed_folders(mb: FileMailbox, adir_fd: int, taken: Taken) -> list[str]:
    """Every folder of processed messages of the agent's (open) folder into ``done/``; what was moved."""
    moved: list[str] = []
    for sub in PROCESSED_FOLDERS:
        with _open_sub(adir_fd, sub) as fd:
            if fd is not None:
                moved += _import_processed(mb, fd, f"{mb.agent_id}/{sub}", taken)
    return moved


def _note_ingested(result: AgentMigration, report: IngestReport) -> None:
    """What the ingestion did, in the agent's part: left for later, to ``new/``, to ``dead/``."""
    result.left += [(path, WAITING) for path in report.waiting]
    result.to_new = list(report.ingested)
    result.more_new = report.n_ingested - len(report.ingested)
    result.to_dead = [(b.source, b.reason) for b in report.buried]


def _import_processed(mb: FileMailbox, dir_fd: int, prefix: str, on_taken: Taken | None = None) -> list[str]:
    """``archive/`` or ``processed/`` files into ``done/`` (skipping ids already there), then removed;
    ``on_taken`` is told as they are imported, chunk by chunk (`CHUNK_ENTRIES` files or `CHUNK_CHARS`
    bytes of them, as ingestion takes a folder: one chunk in memory at a time).

    ``dir_fd`` was opened without following a link, and only regular files in it are read or
    removed: nothing outside the mailbox is ever touched."""
    files, _refused = _json_files(dir_fd)
    if not files:
        return []
    chunks = _DoneChunks(mb, dir_fd, on_taken)
    for n in files:
        read = _processed_message(mb, dir_fd, n, f"{prefix}/{n}")
        if read is not None:  # else reported as left in place by the survey
            chunks.add(n, *read)
    chunks.flush()
    return [f"{prefix}/{n}" for n in chunks.moved]


def _processed_message(mb: FileMailbox, dir_fd: int, name: str, origin: str) -> tuple[Message, bytes] | None:
    """The message of one processed file, with its bytes; None if it cannot be read or converted."""
    try:
        raw = _fs.read_regular(name, mb.max_message_size, dir_fd=dir_fd)
        message = message_from_legacy(
            _json.loads(raw), agent_id=mb.agent_id, origin=origin, raw=raw, max_size=mb.max_message_size
        )
    except (OSError, ValueError):
        return None
    return message, raw


class _DoneChunks:
    """Processed files imported into ``done/`` chunk by chunk (`_import_processed`), skipping the ids
    already there."""

    def __init__(self, mb: FileMailbox, dir_fd: int, on_taken: Taken | None) -> None:
        self.mb, self.dir_fd, self.on_taken = mb, dir_fd, on_taken
        self.in_done = ids_present(mb, (State.DONE,))
        self.moved: list[str] = []  # the names of the files taken so far
        self.batch: list[Message] = []  # the chunk's messages to import
        self.taken: list[str] = []  # the chunk's files
        self.size = 0

    def add(self, name: str, message: Message, raw: bytes) -> None:
        """One file into the chunk (its message imported unless ``done/`` has it); a full chunk goes."""
        if message.id not in self.in_done:
            self.batch.append(message)
            self.in_done.add(message.id)
        self.taken.append(name)
        self.size += len(raw)
        if len(self.taken) >= CHUNK_ENTRIES or self.size >= CHUNK_CHARS:
            self.flush()

    def flush(self) -> None:
        """Put the chunk into ``done/`` (durably), then remove its legacy files: killed in between, the
        next run finds their ids in ``done/`` and only removes them."""
        if not self.taken:
            return
        self.mb.import_done(self.batch)
        remove_taken(self.dir_fd, self.taken)
        if self.on_taken is not None:
            self.on_taken(len(self.taken))
        self.moved += self.taken
        self.batch, self.taken, self.size = [], [], 0
