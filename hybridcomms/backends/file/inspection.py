"""Looking into a mailbox and repairing it: listings, lookups, stats, requeue, purge.

These read the folders directly (one listing per call): they are for people and tools, not for
the delivery path.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from ... import _fs
from ..._names import REASON_SUFFIX, NameInfo, compact_time, parse_name
from ...message import Message
from ...states import REQUEUE_DEAD, REQUEUE_DONE, State
from ..base import (
    LastError,
    MailboxStats,
    MessageInfo,
    StateStats,
    check_agent_id,
    purged_state,
    requeue_source,
)
from . import last_errors

if TYPE_CHECKING:
    from .folders import Folders
    from .mailbox import FileMailbox

__all__ = ["RootEntry", "survey_root"]


def list_state(
    mb: FileMailbox, state: State, key: str | None = None, *, reasons: bool = True
) -> list[MessageInfo]:
    """Files in one state's folder (reason files of dead/ are folded into their message); with
    ``key``, only the files of that id or that name (chosen by name, before any file is looked at).
    A folder a read-only mailbox lacks (one made by hand with only ``new/``) is empty. With
    ``reasons=False`` the dead letters' reason files are not read (a page reads those of its rows)."""
    if not mb.folders.has(state):
        return []
    fd = mb.folders.fd(state)
    describe = _Describer(mb, state, reasons)
    out: list[MessageInfo] = []
    for name, info in _chosen(sorted(_fs.listdir_at(fd)), state, key):
        st = _lstat_at(fd, name)
        if st is not None:
            out.append(describe(name, info, st))
    return out


def _lstat_at(fd: int, name: str) -> os.stat_result | None:
    """``name`` in the folder ``fd`` looked at (never through a link); None once it is gone."""
    try:
        return os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return None


class _Describer:
    """What `list_state` says of each file of one state's folder."""

    def __init__(self, mb: FileMailbox, state: State, reasons: bool) -> None:
        self.mb = mb
        self.state = state
        self.reasons = reasons and state is State.DEAD
        self.errors = _ErrorLookup(mb.folders) if state in (State.NEW, State.PROCESSING) else None

    def __call__(self, name: str, info: NameInfo | None, st: os.stat_result) -> MessageInfo:
        """The `MessageInfo` of the file ``name`` (``info``: what its name says, ``st``: its lstat)."""
        msg_id, attempt, due = _name_parts(info)
        return MessageInfo(
            state=self.state,
            name=name,
            path=self.mb.path / self.state.folder / name,
            id=msg_id,
            attempt=attempt,
            due=due,
            size=st.st_size,
            changed_at=st.st_ctime,
            reason=self._reason(name),
            last_error=self._last_error(info),
        )

    def _reason(self, name: str) -> dict[str, Any] | None:
        """The reason file of a dead letter, when this listing reads them."""
        return read_reason(self.mb, name) if self.reasons else None

    def _last_error(self, info: NameInfo | None) -> LastError | None:
        """The last error kept for a message waiting for a retry (``new/`` and ``processing/`` only)."""
        return None if self.errors is None else self.errors.of(info)


def _name_parts(info: NameInfo | None) -> tuple[str | None, int, str | None]:
    """The id, attempt and due time a file's name says (None, 0, None for a name not ours)."""
    if info is None:
        return None, 0, None
    return info.id, info.attempt, info.due


def _chosen(names: Iterable[str], state: State, key: str | None) -> Iterator[tuple[str, NameInfo | None]]:
    """The files to list, with what their names say: the reason files of ``dead/`` folded into their
    message; with ``key``, only the files of that id or that name."""
    for name in names:
        if _is_reason_file(state, name):
            continue
        info = parse_name(name)
        if _matches(key, name, info):
            yield name, info


def _is_reason_file(state: State, name: str) -> bool:
    """Whether ``name`` is the reason file of a dead letter (listed with its message, not on its own)."""
    return state is State.DEAD and name.endswith(REASON_SUFFIX)


def _matches(key: str | None, name: str, info: NameInfo | None) -> bool:
    """Whether the file ``name`` is one of those ``key`` asks for (every file when None): by name or id."""
    return key is None or name == key or (info is not None and info.id == key)


class _ErrorLookup:
    """The last errors of messages waiting for a retry: one listing of ``errors/`` (at the first
    message that could have one), a read per match."""

    def __init__(self, folders: Folders) -> None:
        self.folders = folders
        self.ids: frozenset[str] | None = None

    def of(self, info: NameInfo | None) -> LastError | None:
        """The last error kept for the message ``info`` names (None for a name not ours)."""
        if info is None:
            return None
        return last_errors.read(self.folders, info.id) if info.id in self._listed_ids() else None

    def _listed_ids(self) -> frozenset[str]:
        """The ids with a record in ``errors/``, listed at the first need."""
        if self.ids is None:
            self.ids = last_errors.listed(self.folders)
        return self.ids


def read_reason(mb: FileMailbox, name: str) -> dict[str, Any] | None:
    """The reason file of ``dead/<name>``, read as any file another process may have placed (no link
    followed, no blocking, at most 1 MiB); None if there is none or it is not a reason."""
    try:
        value = orjson.loads(
            _fs.read_regular(name + REASON_SUFFIX, 1 << 20, dir_fd=mb.folders.fd(State.DEAD))
        )
    except orjson.JSONDecodeError:
        return {"reason": "(unreadable reason file)"}
    except OSError:
        return None
    return value if isinstance(value, dict) else None


def get(mb: FileMailbox, message_id: str) -> MessageInfo | None:
    """Where a message is now (any state), by id or by file name."""
    for state in (State.NEW, State.PROCESSING, State.DONE, State.DEAD):
        for info in find(mb, state, message_id):
            return info
    return None


def find(mb: FileMailbox, state: State, key: str) -> list[MessageInfo]:
    return list_state(mb, state, key)


def read(mb: FileMailbox, info: MessageInfo) -> Message:
    """Decode the message a `MessageInfo` points at (raises `MessageDecodeError`)."""
    raw = _fs.read_regular(info.name, mb.max_message_size, dir_fd=mb.folders.fd(info.state))
    return Message.decode(raw, path=str(mb.path / info.state.folder / info.name))


def requeue(mb: FileMailbox, message_id: str, src: State, reset_attempts: bool = True) -> list[str]:
    """Move a message from ``dead/`` (or ``done/``, a replay) back to ``new/``, due now, with a
    fresh attempt count (or the one it had, without ``reset_attempts``); return the new file names.
    Its reason file is removed."""
    requeue_source(src)
    return requeue_infos(mb, find(mb, src, message_id), src, reset_attempts)


def requeue_infos(
    mb: FileMailbox,
    infos: Iterable[MessageInfo],
    src: State,
    reset_attempts: bool = True,
    step: Callable[[int], None] | None = None,
) -> list[str]:
    """`requeue` of files already listed (one listing for many: ``requeue --all-dead``); ``step(n)``
    is told how many were handled so far."""
    requeue_source(src)
    mb.folders.check_writable()
    src_fd, new_fd = mb.folders.fd(src), mb.folders.fd(State.NEW)
    moved: list[str] = []
    for info in _stepped(infos, step):
        target = _requeue_one(mb, src, src_fd, info, _requeue_target(new_fd, info.name, reset_attempts))
        if target is not None:
            moved.append(target)
    if moved:
        mb.folders.commit(new_fd)
        mb.folders.commit(src_fd)
    return moved


def _stepped(infos: Iterable[MessageInfo], step: Callable[[int], None] | None) -> Iterator[MessageInfo]:
    """``infos``, telling ``step(n)`` (when given) before the n-th is handled."""
    for n, info in enumerate(infos, 1):
        if step is not None:
            step(n)
        yield info


def _requeue_target(new_fd: int, name: str, reset_attempts: bool) -> str:
    """The name a requeued file gets in ``new/``: due now, its attempt count reset (or kept); a name
    not ours keeps its name (or the next free one)."""
    parsed = parse_name(name)
    if not parsed:
        return _fs.free_name(new_fd, name)
    return parsed.with_(due=compact_time(time.time()), attempt=0 if reset_attempts else parsed.attempt)


def _requeue_one(mb: FileMailbox, src: State, src_fd: int, info: MessageInfo, target: str) -> str | None:
    """Move one listed file of ``src`` back to ``new/`` as ``target`` (uncommitted), its reason file
    removed; the name it got, None if it was gone."""
    try:
        target = mb.folders.place(_REQUEUE_MOVES[src], info.name, target)[1]
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise mb.folders.io_error(exc, f"requeue {info.name}") from exc
    _drop_reason_file(src, src_fd, info.name)
    mb.folders.arrived(target)
    return target


#: The move that takes a message back to ``new/`` from each state it may be requeued from.
_REQUEUE_MOVES = {State.DEAD: REQUEUE_DEAD, State.DONE: REQUEUE_DONE}


def _drop_reason_file(state: State, fd: int, name: str) -> None:
    """A dead letter's reason file goes with it (other states have none)."""
    if state is State.DEAD:
        _fs.unlink_quietly(fd, name + REASON_SUFFIX)


def purge(mb: FileMailbox, state: State, older_than: float) -> int:
    """Delete files in ``done/`` or ``dead/`` that entered it ``older_than`` seconds ago or more."""
    return remove(mb, state, older(mb, state, older_than))


def older(mb: FileMailbox, state: State, seconds: float) -> list[MessageInfo]:
    """The files of a folder that entered it ``seconds`` ago or more."""
    cutoff = time.time() - seconds
    return [info for info in list_state(mb, state) if info.changed_at <= cutoff]


def remove(
    mb: FileMailbox,
    state: State,
    infos: Iterable[MessageInfo],
    step: Callable[[int], None] | None = None,
    skipped: list[str] | None = None,
) -> int:
    """Delete these files of ``done/`` or ``dead/`` (with their reason files) and commit the folder.

    The folders are shared: a folder someone made inside ``done/`` is passed over (never removed with
    what it holds), and its name added to ``skipped``; so is an entry that cannot be removed."""
    purged_state(state)
    mb.folders.check_writable()
    fd = mb.folders.fd(state)
    removed = 0
    for info in _stepped(infos, step):
        if _remove_one(fd, state, info.name, skipped):
            removed += 1
    if removed:
        mb.folders.commit(fd)
    return removed


def _remove_one(fd: int, state: State, name: str, skipped: list[str] | None) -> bool:
    """Unlink ``name`` of the folder ``fd`` (and its reason file; uncommitted); False if it was gone
    or cannot be removed (then noted in ``skipped``)."""
    try:
        os.unlink(name, dir_fd=fd)
    except FileNotFoundError:
        return False
    except OSError:  # EISDIR (a folder), EPERM, EACCES: left for a person, the rest purged
        _note(skipped, name)
        return False
    _drop_reason_file(state, fd, name)
    return True


def _note(skipped: list[str] | None, name: str) -> None:
    """Add ``name`` to the caller's list of entries passed over, if it keeps one."""
    if skipped is not None:
        skipped.append(name)


def stats(mb: FileMailbox) -> MailboxStats:
    """How many files each state holds, and how long the oldest has been there."""
    now = time.time()
    out: dict[State, StateStats] = {}
    delayed = 0
    for state in (State.NEW, State.PROCESSING, State.DONE, State.DEAD, State.TMP):
        present = _present(mb, state)
        out[state] = _state_stats(present, now)
        if state is State.NEW:
            delayed = _delayed(present, compact_time(now))
    return MailboxStats(mb.agent_id, out, delayed)


def _present(mb: FileMailbox, state: State) -> dict[str, float]:
    """The files of one state's folder (reason files left out), each with when it last changed."""
    if not mb.folders.has(state):  # read-only, made by hand with only new/: nothing there
        return {}
    fd = mb.folders.fd(state)
    return _ctimes(fd, (name for name, _ in _chosen(_fs.listdir_at(fd), state, None)))


def _state_stats(present: dict[str, float], now: float) -> StateStats:
    """How many files there are, and how long the oldest (by ``present``'s times) has been there."""
    oldest = min(present.values(), default=None)
    return StateStats(len(present), None if oldest is None else max(now - oldest, 0.0))


def _ctimes(fd: int, names: Iterable[str]) -> dict[str, float]:
    """When each of the files ``names`` in the folder ``fd`` last changed (those still there)."""
    out = {}
    for name in names:
        try:
            out[name] = os.stat(name, dir_fd=fd, follow_symlinks=False).st_ctime
        except FileNotFoundError:
            continue
    return out


def _delayed(names: Iterable[str], now_s: str) -> int:
    """How many of the names of ``new/`` are due later than ``now_s`` (a compact time)."""
    return sum(1 for name in names if _due_later(name, now_s))


def _due_later(name: str, now_s: str) -> bool:
    """Whether ``name`` is shaped as a message name of ours (``<rank>.<due>…``) due after ``now_s``."""
    return len(name) > 26 and name[2] == "." and name[3:25] > now_s


# -- what a root holds ---------------------------------------------------------------------------

#: The folders of a hybridcomms mailbox; an agent folder holding any of them claims to be one.
_STATE_FOLDERS = frozenset(s.folder for s in State)
_LEGACY_ENTRIES = frozenset(("inbox.json", "inbox"))


@dataclass(frozen=True, slots=True)
class RootEntry:
    """One entry of a mailbox root that is, or claims to be, an agent's mailbox (`survey_root`)."""

    name: str  # the entry's name as printable text (`_fs.printable`)
    agent: str | None  # the agent id; None when the name is not a safe agent id
    kind: str  # "mailbox" (to open), "legacy" (a Dream.OS layout, no new/), "broken" (see problem)
    problem: str | None = None  # why a broken entry cannot be read as a mailbox


def survey_root(root: str | os.PathLike[str]) -> list[RootEntry]:
    """Every entry of ``root`` that is or claims to be a mailbox, by name, each looked at on its own so
    that one broken agent never hides the others. Nothing is opened beyond a listing of each folder.

    - an agent folder with a ``new/`` entry is a ``mailbox`` (opening it says whether it is a sound one);
    - one with other state folders (``tmp/``, ``processing/``, ``done/``, ``dead/``) but no ``new/`` is
      ``broken``, unless it holds legacy Dream.OS files (``inbox.json``, ``inbox/``): ``legacy``;
    - a link (nothing below the root may be one), a folder that cannot be listed, or a folder with state
      folders under a name that is not a safe agent id is ``broken``;
    - names starting with a dot (``.bus/``), files, FIFOs and folders of something else (``broadcast/``,
      an agent's ``outbox/`` only) are not mailboxes and are left out.

    Raises `OSError` if the root itself cannot be listed."""

    out: list[RootEntry] = []
    for name in sorted(os.listdir(root)):
        if not name.startswith("."):
            entry = _survey_entry(root, name)
            if entry is not None:
                out.append(entry)
    return out


def _survey_entry(root: str | os.PathLike[str], name: str) -> RootEntry | None:
    """What the entry ``name`` of ``root`` is (`survey_root`); None if it is not a mailbox at all."""
    shown = _fs.printable(name)
    agent = _agent_id_or_none(name)
    inner = _listing(os.path.join(root, name))
    if isinstance(inner, str):
        return RootEntry(shown, agent, "broken", inner)
    if inner is None:
        return None
    return _judged(root, name, shown, agent, inner)


def _agent_id_or_none(name: str) -> str | None:
    """``name`` as an agent id; None when it is not a safe one."""
    try:
        return check_agent_id(name)
    except ValueError:
        return None


def _judged(
    root: str | os.PathLike[str], name: str, shown: str, agent: str | None, inner: set[str]
) -> RootEntry | None:
    """What the agent folder ``name``, holding the names ``inner``, is (`survey_root`)."""
    if not inner & _STATE_FOLDERS:  # a folder of something else, or a legacy one
        return _without_state_folders(shown, agent, inner)
    if agent is None:
        return RootEntry(shown, None, "broken", _NOT_AN_AGENT_ID)
    if "new" in inner:
        return RootEntry(shown, agent, "mailbox")
    if inner & _LEGACY_ENTRIES:
        return RootEntry(shown, agent, "legacy")
    return RootEntry(
        shown,
        agent,
        "broken",
        f"mailbox folders ({', '.join(sorted(inner & _STATE_FOLDERS))}) but no new/; "
        f"'mkdir {os.path.join(root, name, 'new')}' makes it a mailbox",
    )


def _without_state_folders(shown: str, agent: str | None, inner: set[str]) -> RootEntry | None:
    """A folder without state folders: a ``legacy`` mailbox when an agent's folder holds legacy
    Dream.OS files, else none at all."""
    return RootEntry(shown, agent, "legacy") if agent is not None and inner & _LEGACY_ENTRIES else None


_NOT_AN_AGENT_ID = "not a safe agent id (1-128 of A-Z a-z 0-9 _ . @ + -, starting with a letter or digit)"


def _listing(path: str) -> set[str] | str | None:
    """The names in the folder ``path``; a string saying why it is broken (a link, not listable); None
    if it is gone or not a folder (a file, a FIFO, a socket: not an agent folder)."""
    mode = _mode_of(path)
    if not isinstance(mode, int):
        return mode
    if stat.S_ISLNK(mode):
        return "a symlink; a mailbox folder must be a real folder"
    if not stat.S_ISDIR(mode):
        return None
    return _names_in(path)


def _mode_of(path: str) -> int | str | None:
    """The type and mode of the entry ``path`` (never through a link); a string saying why it cannot
    be looked at; None if it is gone."""
    try:
        return os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be looked at: {exc.strerror}"


def _names_in(path: str) -> set[str] | str | None:
    """The names in the folder ``path``; a string saying why it cannot be listed; None if it is gone."""
    try:
        return set(os.listdir(path))
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be listed: {exc.strerror}"
