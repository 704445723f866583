"""MailboxWatcher: one service that watches every mailbox under a root.

It reports what happens to messages (delivered, claimed, acked, nacked, dead, requeued) as
`MailboxEvent`s: to a callback, and as bus events when given an `AgentBus`. It also runs recovery on
every mailbox now and then, so a consumer killed with SIGKILL gets its messages back without anyone
restarting anything.

File notifications (watchdog; inotify on Linux) are hints, never the truth:

- the whole root is watched recursively, so a move from ``new/`` to ``processing/`` arrives as one
  paired event (watchdog holds an unpaired "moved out" for up to 0.5 s, and the events behind it wait);
  every folder that exists is watched once `MailboxWatcher.start` returns; an agent created later is
  watched moments after its folder appears (inotify is not recursive: watchdog adds its watches when it
  reads of the new folder), and its ``new/`` is listed again 0.1 s and 1 s later: what lands there
  meanwhile is reported as delivered, but a move between its other folders before its watches exist is
  not seen (open a mailbox before starting the watcher to see every step of its first messages);
- every ``rescan_every`` seconds, and at once after the observer fails, every ``new/`` is listed and any
  message not yet reported is reported, so events lost to an inotify queue overflow cost latency, never
  a message;
- where inotify cannot be used, watchdog's polling observer takes over, with a warning.

Which transition a move was is read from `hybridcomms.states.TRANSITIONS`: the same table the
mailbox moves files by.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from . import _fs, _log
from . import intake as _intake
from ._broken import Broken
from ._names import REASON_SUFFIX, NameInfo, make_name, parse_name
from .backends.file import FileMailbox, list_agents
from .bus import AgentBus
from .states import TRANSITIONS, State, Transition

if TYPE_CHECKING:
    from watchdog.events import FileSystemEvent

__all__ = ["EVENT_KINDS", "MailboxEvent", "MailboxWatcher"]

log = _log.get("hybridcomms.watcher")

#: What a move between two folders is reported as.
KIND_OF: dict[tuple[State, State], str] = {
    (State.TMP, State.NEW): "delivered",
    (State.NEW, State.PROCESSING): "claimed",
    (State.PROCESSING, State.DONE): "acked",
    (State.PROCESSING, State.NEW): "nacked",  # a nack (recovery returns messages through tmp/: "recovered")
    (State.PROCESSING, State.DEAD): "dead",
    (State.NEW, State.DEAD): "dead",
    (State.DEAD, State.NEW): "requeued",
    (State.DONE, State.NEW): "requeued",
    (State.TMP, State.DONE): "imported",  # a legacy message taken over already processed (migrate)
    (State.TMP, State.DEAD): "dead",  # a legacy message that could not be converted
}
_QUIET = {Transition.STEAL, Transition.RECOVER}  # internal steps of recovery (reported at their end)
#: A file arriving in new/ from tmp/ under this name was returned by recovery.
_RECOVERED_SUFFIX = ".stolen"
#: What a message returned by recovery (its consumer died or hung) is reported as.
RECOVERED = "recovered"
#: Every kind of event the watcher reports, in the order a message meets them (the docs list exactly
#: these: tests/test_cli_ux.py compares).
EVENT_KINDS = ("delivered", "claimed", "acked", "nacked", RECOVERED, "dead", "requeued", "imported")
assert {*KIND_OF.values(), RECOVERED} == set(EVENT_KINDS), "EVENT_KINDS must list what is reported"
assert all(pair in TRANSITIONS for pair in KIND_OF), "KIND_OF must follow the state table"
assert all(pair in KIND_OF or TRANSITIONS[pair] <= _QUIET for pair in TRANSITIONS), (
    "every move in the state table is either reported or deliberately quiet"
)

_STATES = {s.folder: s for s in State}


def _release_unread_inotify(observer: Any) -> None:
    """Close what a stopped watchdog inotify observer left open when it was stopped before its reader
    thread first read (watchdog 7.1: the reader is then taken to close the descriptor and its wake-up
    pipe, but it never runs again): a watcher started and stopped at once (``watch | head`` with a
    backlog) kept an inotify instance, of the 128 a user may have, for the life of the process.

    Only when the observer's reader has ended with the descriptor still marked as being read; nothing
    happens with another watchdog (other attribute names) or when the reader closed it itself."""
    reader: Any = getattr(observer, "_inotify_fd", None)
    if not _ended_reader(reader):
        return
    with reader._lock:
        if getattr(reader, "_closed", False) and getattr(reader, "_is_reading", False):
            reader._is_reading = False  # (closed once: the check above fails next time)
            reader._close_resources()


def _ended_reader(reader: Any) -> bool:
    """``reader`` is a watchdog 7.1 inotify reader (the attributes `_release_unread_inotify` uses)
    whose thread has ended."""
    if not all(hasattr(reader, name) for name in ("_lock", "_close_resources", "is_alive")):
        return False
    return not reader.is_alive()


def _move_kind(src: State, dest: State, src_name: str) -> str | None:
    """What a move between two folders of one mailbox is reported as (None: a quiet step)."""
    if src is State.TMP and dest is State.NEW and src_name.endswith(_RECOVERED_SUFFIX):
        return RECOVERED  # a dead or hung consumer's message, back in new/
    return KIND_OF.get((src, dest))


@dataclass(frozen=True, slots=True)
class MailboxEvent:
    """One thing that happened to one message file."""

    kind: str  # delivered | claimed | acked | nacked | recovered | dead | requeued | imported | waiting
    agent: str
    name: str  # the file name now (in ``state``)
    id: str | None  # the message id, from the name (None for a file hybridcomms did not name)
    attempt: int
    state: str  # the folder it is in now ("done" for an ack with done_retention=0: the file is gone)
    path: str
    time: float  # when it happened; for "waiting", when the file entered new/ (its ctime)
    source: str = "notify"  # "notify" (a file event) or "rescan" (found by listing)
    topic: str | None = None  # read from the file (None if it was gone or is not a message)
    sender: str | None = None
    priority: str | None = None  # from the name: LOW | MEDIUM | HIGH | CRITICAL

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def for_json(self) -> dict[str, Any]:
        """`to_dict` for a JSON document (``tail --json``, ``watch --json``): ``name`` and ``path`` as
        `hybridcomms._fs.shown` text, the bytes of a file name that is not UTF-8 written ``\\xNN``
        (JSON strings cannot carry them); every other field, and every name that is UTF-8, exact."""
        out = asdict(self)
        out["name"], out["path"] = _fs.shown(self.name), _fs.shown(self.path)
        return out


#: The most of a message file read for its topic and sender (a file with more than one name is read
#: only up to `LINKED_LIMIT`: a co-tenant who hard-links one big file under thousands of names must not
#: make the watcher read it thousands of times).
READ_LIMIT = 1 << 20
LINKED_LIMIT = 64 * 1024
#: The most of a topic or sender kept (characters): what is longer is cut, with "…" at the end.
FIELD_LIMIT = 200
#: Where a message that moved on may be now (a claim adds one to the attempt in its name).
_LATER = (State.PROCESSING, State.DONE, State.DEAD, State.NEW)


class _Gone(Exception):
    """The file is not where it was looked for (a consumer moved it on)."""


def describe_file(path: str, root: str | None = None) -> tuple[str | None, str | None]:
    """Topic and sender of the message file at ``path``, read as a hostile file (no link followed, no
    blocking on a FIFO, at most 1 MiB, at most 64 KiB when it has more than one name), each cut to
    `FIELD_LIMIT` characters; (None, None) if it is gone or is not a message. With ``root``, no
    component of ``path`` below it is followed if it is a link (`_fs.read_beneath`)."""
    try:
        return _describe(path, root)
    except _Gone:
        return None, None


def _describe(path: str, root: str | None) -> tuple[str | None, str | None]:
    """`describe_file`, raising `_Gone` when there is no file at ``path``."""
    try:
        raw = _read_hostile(path, root)
    except FileNotFoundError:
        raise _Gone from None
    except OSError:
        return None, None
    obj = _json_object(raw)
    if obj is None:
        return None, None
    topic, sender = _topic_and_sender(obj)
    return _cut(topic), _cut(sender)


def _json_object(raw: bytes | None) -> dict[str, Any] | None:
    """The JSON object ``raw`` holds; None for no bytes, bytes that are not JSON, or another value."""
    if raw is None:
        return None
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _cut(value: str | None) -> str | None:
    return value if value is None or len(value) <= FIELD_LIMIT else value[: FIELD_LIMIT - 1] + "…"


def _topic_and_sender(obj: dict[str, Any]) -> tuple[str | None, str | None]:
    """The topic and sender of a message object, native or in a Dream.OS spelling (None: not a string)."""
    topic = obj.get("topic") or obj.get("type") or obj.get("message_type")
    sender = obj.get("sender") or obj.get("sender_agent_id")
    return _text_or_none(topic), _text_or_none(sender)


def _text_or_none(value: object) -> str | None:
    """``value`` if it is a string, else None."""
    return value if isinstance(value, str) else None


def _read_hostile(path: str, root: str | None) -> bytes | None:
    """The regular file at ``path`` (below ``root``, no link followed at any step): at most
    `READ_LIMIT` bytes, or `LINKED_LIMIT` when it has more than one name; None when it is larger.
    `FileNotFoundError` when it is not there."""
    if root is not None and path.startswith(root + os.sep):
        parts = tuple(path[len(root) + 1 :].split(os.sep))
        fd = os.open(root, _fs.O_DIR)
        try:
            for part in parts[:-1]:
                child = _fs.open_dir(part, dir_fd=fd)
                os.close(fd)
                fd = child
            return _read_bounded(parts[-1], fd)
        finally:
            os.close(fd)
    return _read_bounded(path, None)


def _read_bounded(name: str, dir_fd: int | None) -> bytes | None:
    try:
        fd, st = _fs.open_regular(name, READ_LIMIT, dir_fd=dir_fd)
    except _fs.TooLargeError:
        return None
    try:
        limit = LINKED_LIMIT if st.st_nlink > 1 else READ_LIMIT
        if st.st_size > limit:
            return None  # checked on the descriptor it would be read from: no race with a new link
        return _fs.read_all(fd, st.st_size, limit)
    finally:
        os.close(fd)


def _where_now(path: str, root: str) -> list[str]:
    """Where the message file at ``path`` (``root/agent/state/name``) may be after a consumer moved
    it: the same name, the next attempts or attempt 0 (requeued), in processing/, done/, dead/, new/."""
    parts = os.path.relpath(path, root).split(os.sep)
    info = parse_name(parts[-1]) if len(parts) == 3 else None
    if info is None:
        return []
    return _later_paths(root, parts[0], _names_after(info), path)


def _names_after(info: NameInfo) -> list[str]:
    """The names a message file may have after a consumer moved it: the same, the next attempts, or
    attempt 0 (requeued)."""
    attempts = dict.fromkeys((info.attempt, info.attempt + 1, info.attempt + 2, 0))  # 0: requeued
    return [make_name(info.rank, info.due, info.id, a) for a in attempts]


def _later_paths(root: str, agent: str, names: list[str], path: str) -> list[str]:
    """Every path under ``agent``'s later state folders with one of ``names``, ``path`` itself aside."""
    return [
        os.path.join(root, agent, state.folder, name)
        for state in _LATER
        for name in names
        if os.path.join(root, agent, state.folder, name) != path
    ]


def _not_a_message(name: str) -> bool:
    """Whether a name in a state folder is no message file: a dead letter's reason, or hidden."""
    return name.endswith(REASON_SUFFIX) or name.startswith(".")


def _waited(name: str, backlog: set[str] | None) -> bool:
    """Whether ``name`` waited in ``new/`` before a look (``backlog`` None: everything there did)."""
    return backlog is None or name in backlog


def _name_facts(info: NameInfo | None) -> tuple[str | None, int, str | None]:
    """What a file name says of its message: id, attempt and priority (None, 0, None: not a message name)."""
    if info is None:
        return None, 0, None
    return info.id, info.attempt, info.priority.name


class _Describer:
    """Topic and sender of a message, read once per id (bounded cache; each field cut to
    `FIELD_LIMIT`): events of the same message (delivered, claimed, acked) read its file once. A read
    that found no file (a consumer moved it first) looks where it went; what was not found is never
    cached (the next event of the message reads it where it is then)."""

    def __init__(self, size: int = 10_000, root: str | None = None) -> None:
        self.size = size
        self._root = root  # paths below it are read without following a link at any step
        self._cache: dict[str, tuple[str | None, str | None]] = {}
        self._lock = threading.Lock()

    def __call__(self, msg_id: str | None, path: str) -> tuple[str | None, str | None]:
        hit = self._cached(msg_id)
        if hit is not None:
            return hit
        found = self._read(path)
        if found is None:
            return None, None
        if found != (None, None):  # a file that is not (yet) a message: read again
            self._remember(msg_id, found)
        return found

    def _cached(self, msg_id: str | None) -> tuple[str | None, str | None] | None:
        """What was read for ``msg_id`` before; None if nothing (or there is no id)."""
        if msg_id is None:
            return None
        with self._lock:
            return self._cache.get(msg_id)

    def _remember(self, msg_id: str | None, found: tuple[str | None, str | None]) -> None:
        """Keep what was read for ``msg_id`` (nothing without an id), clearing a full cache first."""
        if msg_id is None:
            return
        with self._lock:
            if len(self._cache) >= self.size:
                self._cache.clear()
            self._cache[msg_id] = found

    def _read(self, path: str) -> tuple[str | None, str | None] | None:
        """What the file says, where it is now; None if it was found nowhere."""
        candidates = [path]
        if self._root is not None:
            candidates += _where_now(path, self._root)
        for candidate in candidates:
            try:
                return _describe(candidate, self._root)
            except _Gone:
                continue
        return None


class MailboxWatcher:
    """Watch every agent mailbox under ``root``.

    ``MailboxWatcher(root, *, on_event=None, bus=None, recover_every=30, rescan_every=10, polling=False)``
        on_event       called with each `MailboxEvent` (from the watcher's own threads: keep it short)
        bus            also publish each event on this bus, as ``<topic_prefix>.<kind>``
        recover_every  run `FileMailbox.recover` on every mailbox this often (seconds; 0: never)
        rescan_every   list every ``new/`` this often to catch what notifications missed
        polling        use watchdog's polling observer instead of inotify
        ingest_legacy  take what legacy Dream.OS writers drop for an adopted agent (``inbox.json``
                       appends, ``inbox/`` files) into its ``new/``: None (default) when an intake is
                       configured (`hybridcomms.intake`), True or False to say so
        waiting        what is already waiting in ``new/`` when it starts: "delivered" (default: reported
                       as delivered, source "rescan", so that a callback that acts on deliveries acts
                       on it), "waiting" (reported as kind "waiting", at the time each file entered
                       ``new/``, as ``watch`` and ``tail --waiting`` show it; what the first look takes
                       in from legacy drops is delivered by it, and said so), or "skip" (not reported:
                       events from now on, as ``tail`` shows them)
    """

    def __init__(
        self,
        root: str | os.PathLike[str],
        *,
        on_event: Callable[[MailboxEvent], None] | None = None,
        bus: AgentBus | None = None,
        topic_prefix: str = "hybridcomms.mailbox",
        recover_every: float = 30.0,
        rescan_every: float = 10.0,
        polling: bool = False,
        poll_interval: float = 1.0,
        ingest_legacy: bool | None = None,
        waiting: str = "delivered",
    ) -> None:
        if waiting not in ("delivered", "waiting", "skip"):
            raise ValueError(f"waiting must be 'delivered', 'waiting' or 'skip', not {waiting!r}")
        self.waiting = waiting
        self.root = Path(root)
        self.on_event = on_event
        self.bus = bus
        self.topic_prefix = topic_prefix
        self.recover_every = recover_every
        self.rescan_every = rescan_every
        self.polling = polling
        self.poll_interval = poll_interval
        self._intake = _intake.get(force=ingest_legacy)
        self.ingest_legacy = self._intake is not None
        self._ingest_pending: set[str] = set()
        self._held_pending: set[str] = set()  # agents whose legacy lock another process held…
        self._held_retry = float("inf")  # …and when the first backoff of them ends
        self._root_str = os.path.abspath(self.root)
        self._describe = _Describer(root=self._root_str)
        self._reported: dict[str, set[str]] = {}  # agent -> names in new/ already reported delivered
        # agent -> one set per listing of its new/ under way: the names that left new/ meanwhile
        self._leaving: dict[str, list[set[str]]] = {}
        # What fails at every pass (a mailbox a co-tenant broke): said once, and once when it heals.
        self._broken = Broken("recovery", log)
        self._broken_intake = Broken("the legacy intake", log)
        self._broken_upkeep = Broken("the watcher's upkeep (rescans, recovery)", log)
        self._lock = threading.Lock()
        self._observer: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._rescan_now = threading.Event()
        self._soon: list[float] = []  # extra rescans (monotonic times) after a new agent appeared
        self._force_rescan = False
        self._next_rescan = float("inf")  # monotonic times of the periodic upkeep (`_maintain`)
        self._next_recover = float("inf")
        self.notifying = False

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> MailboxWatcher:
        os.makedirs(self.root, exist_ok=True)
        self._stop.clear()
        self._start_observer()
        self.rescan(first=True)  # the truth first: whatever is already waiting
        self._thread = threading.Thread(target=self._maintain, name="hybridcomms-watcher", daemon=True)
        self._thread.start()
        return self

    def interrupt(self) -> None:
        """Ask a rescan in progress (the first one runs inside `start`) and the watching thread to stop
        soon; safe from a signal handler. `stop` still has to be called."""
        self._stop.set()
        self._rescan_now.set()

    def stop(self) -> None:
        self._stop.set()
        self._rescan_now.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(10)
        self._stop_observer()

    close = stop

    def __enter__(self) -> MailboxWatcher:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start_observer(self) -> None:
        from watchdog.events import (
            DirCreatedEvent,
            DirMovedEvent,
            FileCreatedEvent,
            FileDeletedEvent,
            FileMovedEvent,
            FileSystemEventHandler,
        )

        # Only creations and moves: with watchdog's default mask every folder *open* is an event too,
        # and the rescans (which open every new/) would flood the inotify queue; watchdog then walks
        # the tree to reconcile, which opens every folder again: a loop at 100% CPU (seen with 1,000).
        # Deletions: an ack with done_retention=0 removes the file from processing/ (no move to see).
        only = [FileCreatedEvent, FileMovedEvent, FileDeletedEvent, DirCreatedEvent, DirMovedEvent]

        watcher = self

        class Handler(FileSystemEventHandler):
            def on_created(self, event: Any) -> None:
                if not event.is_directory:
                    watcher._on_created(os.fsdecode(event.src_path))
                elif os.path.dirname(os.fsdecode(event.src_path)) == watcher._root_str:
                    watcher._new_agent()

            def on_moved(self, event: Any) -> None:
                if not event.is_directory:
                    watcher._on_moved(os.fsdecode(event.src_path), os.fsdecode(event.dest_path))

            def on_deleted(self, event: Any) -> None:
                if not event.is_directory:
                    watcher._on_deleted(os.fsdecode(event.src_path))

        observer = None if self.polling else self._inotify_observer(Handler(), only)
        if observer is None:
            observer = self._polling_observer(Handler(), only)
        self._observer = observer

    def _inotify_observer(self, handler: Any, only: list[type[FileSystemEvent]]) -> Any:
        """An inotify observer of the root, started; None (said in a warning) where inotify is not usable."""
        try:
            from watchdog.observers.inotify import InotifyObserver

            observer = InotifyObserver()
            observer.schedule(handler, self._root_str, recursive=True, event_filter=only)
            observer.daemon = True
            observer.start()
            self.notifying = True
            return observer
        except Exception as exc:
            log.warning("inotify is not usable for %s (%s); falling back to polling", self.root, exc)
            return None

    def _polling_observer(self, handler: Any, only: list[type[FileSystemEvent]]) -> Any:
        """A polling observer of the root (a listing every ``poll_interval`` seconds), started."""
        from watchdog.observers.polling import PollingObserver

        observer = PollingObserver(timeout=self.poll_interval)
        observer.schedule(handler, self._root_str, recursive=True, event_filter=only)
        observer.daemon = True
        observer.start()
        self.notifying = False
        return observer

    def _stop_observer(self) -> None:
        observer, self._observer = self._observer, None
        if observer is not None:
            observer.stop()
            observer.join(10)
            _release_unread_inotify(observer)

    def _maintain(self) -> None:
        """Rescans, recovery, and a new observer if the old one died."""
        now = time.monotonic()
        self._next_rescan = now + self.rescan_every
        self._next_recover = now + self.recover_every if self.recover_every else float("inf")
        while not self._stop.is_set():
            self._rescan_now.wait(max(0.01, self._next_wake() - time.monotonic()))
            if self._stop.is_set():
                return
            self._upkeep_said_once()

    def _upkeep_said_once(self) -> None:
        """`_upkeep`, whose failure is said once (and once when it works again) and waited out a second."""
        try:
            self._upkeep()
        except Exception as exc:  # tried again in a second; said once, not every second
            self._broken_upkeep.failed(self._root_str, exc)
            self._stop.wait(1.0)
        else:
            self._broken_upkeep.ok(self._root_str)

    def _next_wake(self) -> float:
        """When the watching thread has work next: the periodic rescan or recovery, an extra rescan
        after a new agent, or the end of a held legacy lock's backoff."""
        with self._lock:
            soon = min(self._soon, default=float("inf"))
            soon = min(soon, self._held_retry)
        return min(self._next_rescan, self._next_recover, soon)

    def _upkeep(self) -> None:
        """One turn of the watching thread: a new observer if the old one died, the legacy drops
        that wait, then a rescan and a recovery when they are due."""
        self._revive_observer()
        now = time.monotonic()
        due_soon = self._take_due_soon(now)
        self._rescan_now.clear()
        forced, self._force_rescan = self._force_rescan, False
        self._ingest_pending_agents(now)
        self._rescan_if_due(now, due_soon or forced)
        self._recover_if_due(now)

    def _rescan_if_due(self, now: float, asked: bool) -> None:
        """Rescan when the period is over at ``now`` or a rescan was ``asked`` for; set the next one."""
        if now >= self._next_rescan or asked:
            self.rescan()
            self._next_rescan = time.monotonic() + self.rescan_every

    def _recover_if_due(self, now: float) -> None:
        """Run recovery on every mailbox when its period is over at ``now``; set the next one."""
        if now >= self._next_recover:
            self.recover_all()
            self._next_recover = time.monotonic() + self.recover_every

    def _revive_observer(self) -> None:
        """If the file watcher's thread died: start a new one, and rescan everything."""
        observer = self._observer
        if observer is not None and not observer.is_alive():
            log.warning("the file watcher stopped; starting a new one and rescanning")
            self._stop_observer()
            self._start_observer()
            self._force_rescan = True

    def _take_due_soon(self, now: float) -> bool:
        """Whether an extra rescan (after a new agent) is due at ``now``; those due are dropped."""
        with self._lock:
            due_soon = any(t <= now for t in self._soon)
            self._soon = [t for t in self._soon if t > now]
        return due_soon

    def _ingest_pending_agents(self, now: float) -> None:
        """Ingest the agents whose legacy drops wait, and those whose held lock's backoff is over."""
        with self._lock:
            pending, self._ingest_pending = self._ingest_pending, set()
            if now >= self._held_retry:  # a held lock's backoff is over: look again
                pending |= self._held_pending
                self._held_pending, self._held_retry = set(), float("inf")
        for agent in sorted(pending):
            if self._stop.is_set():
                break
            self.ingest(agent)

    def _new_agent(self) -> None:
        """A new agent folder: files can land in its new/ before its watches exist, so list it again
        shortly (twice), rather than waiting for the periodic rescan."""
        now = time.monotonic()
        with self._lock:
            self._soon += [now + 0.1, now + 1.0]
        self._rescan_now.set()

    def request_rescan(self) -> None:
        """List every mailbox again soon (after a watcher error, or when told events were lost)."""
        self._force_rescan = True
        self._rescan_now.set()

    # -- events ---------------------------------------------------------------------------------

    def _split(self, path: str) -> tuple[str, State, str] | None:
        rel = os.path.relpath(path, self._root_str)
        parts = rel.split(os.sep)
        if len(parts) != 3:
            return None
        agent, folder, name = parts
        state = _STATES.get(folder)
        if state is None or _not_a_message(name):
            return None
        return agent, state, name

    def _legacy_drop(self, path: str) -> bool:
        """A change to ``<agent>/inbox.json`` or ``<agent>/inbox/*.json``: ingest that agent soon."""
        if self._intake is None:
            return False
        parts = tuple(os.path.relpath(path, self._root_str).split(os.sep))
        if self._intake.is_drop(parts):
            self._ingest_next_turn(parts[0])
            return True
        return False

    def ingest(self, agent: str) -> int:
        """Take a step of the legacy drops of an adopted agent into its ``new/`` now (a chunk; a lock
        another process holds is skipped, never waited on); how many were taken. What is left is
        taken by the next turns of the watching thread (at once while more waits, when its backoff
        ends for a held lock), between its other work."""
        if self._intake is None:
            return 0
        if not self._has_new_folder(agent):
            return 0  # still on the legacy layout: its own readers take what is dropped there
        try:
            with FileMailbox(self.root, agent, create=False) as mb:
                step = self._intake.step(mb)
        except Exception as exc:  # an I/O error: the next look tries again
            self._broken_intake.failed(agent, exc)  # said once, not at every look
            return 0
        self._broken_intake.ok(agent)
        self._schedule_rest(agent, step.more, step.retry_in)
        return step.taken

    def _has_new_folder(self, agent: str) -> bool:
        """Whether ``agent``'s folder (not a link) holds a ``new/`` folder: a hybridcomms mailbox."""
        agent_dir = os.path.join(self._root_str, agent)
        return not os.path.islink(agent_dir) and os.path.isdir(os.path.join(agent_dir, State.NEW.folder))

    def _schedule_rest(self, agent: str, more: bool, retry_in: float | None) -> None:
        """When the rest of ``agent``'s legacy drops is taken: at the next turn while ``more`` waits,
        after ``retry_in`` seconds when another process held the lock, else not at all."""
        if more:
            self._ingest_next_turn(agent)
        elif retry_in is not None:
            self._ingest_after(agent, retry_in)

    def _ingest_next_turn(self, agent: str) -> None:
        """Have the watching thread take ``agent``'s legacy drops at its next turn, at once."""
        with self._lock:
            self._ingest_pending.add(agent)
        self._rescan_now.set()

    def _ingest_after(self, agent: str, retry_in: float) -> None:
        """Have the watching thread look at ``agent``'s legacy drops again in ``retry_in`` seconds (the
        backoff of a lock another process holds)."""
        with self._lock:
            self._held_pending.add(agent)
            retry = time.monotonic() + retry_in
            self._held_retry = min(self._held_retry, retry)

    def _on_created(self, path: str) -> None:
        if self._legacy_drop(path):
            return
        self._arrived(self._split(path))  # written straight into new/ (by hand, by an old writer)

    def _arrived(self, where: tuple[str, State, str] | None) -> None:
        """A file that came into a mailbox from outside it: delivered if it is in ``new/``."""
        if where is not None and where[1] is State.NEW:
            self._delivered(where[0], where[2], "notify")

    def _on_moved(self, src: str, dest: str) -> None:
        if self._legacy_drop(dest):
            return
        a, b = self._split(src), self._split(dest)
        if b is None:
            return
        if a is None or a[0] != b[0]:  # moved in from elsewhere
            self._arrived(b)
            return
        self._moved_within(a, b)

    def _moved_within(self, a: tuple[str, State, str], b: tuple[str, State, str]) -> None:
        """A move from ``a`` to ``b`` inside one agent's mailbox, reported as the step it is (if any)."""
        kind = _move_kind(a[1], b[1], a[2])
        if kind is None:
            return
        if a[1] is State.NEW:
            self._left_new(a[0], a[2])
        self._report_move(kind, b[0], b[1], b[2])

    def _left_new(self, agent: str, name: str) -> None:
        """``name`` left ``agent``'s new/: no longer reported there, and not to be reported by a
        listing that began before it left (that listing saw a file gone since)."""
        with self._lock:
            self._reported.get(agent, set()).discard(name)
            for left in self._leaving.get(agent, ()):
                left.add(name)

    def _report_move(self, kind: str, agent: str, state: State, name: str) -> None:
        """Report a move of ``kind`` that brought ``name`` into ``state``; what lands in ``new/`` is
        remembered as reported, so that a rescan does not report it again."""
        if kind == "delivered":
            self._delivered(agent, name, "notify")
            return
        if kind == RECOVERED or state is State.NEW:
            with self._lock:
                self._reported.setdefault(agent, set()).add(name)
        self._emit(kind, agent, state, name, "notify")

    def _on_deleted(self, path: str) -> None:
        """A file removed from ``processing/`` was acked by a mailbox with ``done_retention=0`` (nothing
        else in the library removes a file there: recovery moves it). Other removals (the trim of
        ``done/``, a purge) are not events."""
        where = self._split(path)
        if where is None:
            return
        if where[1] is State.PROCESSING:
            self._emit("acked", where[0], State.DONE, where[2], "notify")
        elif where[1] is State.NEW:
            self._left_new(where[0], where[2])  # a purge, or a legacy reader taking it

    def _delivered(self, agent: str, name: str, source: str) -> None:
        with self._lock:
            seen = self._reported.setdefault(agent, set())
            if name in seen:
                return
            seen.add(name)
        self._emit("delivered", agent, State.NEW, name, source)

    def _waiting(self, agent: str, name: str) -> None:
        """A file found in new/ at the start: reported as waiting, at the time it entered new/."""
        with self._lock:
            seen = self._reported.setdefault(agent, set())
            if name in seen:
                return
            seen.add(name)
        if self.waiting == "skip":
            return
        try:
            since = os.stat(os.path.join(self._root_str, agent, "new", name), follow_symlinks=False).st_ctime
        except OSError:
            return  # gone meanwhile: what happened to it is reported as it happens
        self._emit("waiting", agent, State.NEW, name, "rescan", since)

    def _emit(
        self, kind: str, agent: str, state: State, name: str, source: str, at: float | None = None
    ) -> None:
        msg_id, attempt, priority = _name_facts(parse_name(name))
        path = os.path.join(self._root_str, agent, state.folder, name)
        topic, sender = self._describe(msg_id, path)
        event = MailboxEvent(
            kind=kind,
            agent=agent,
            name=name,
            id=msg_id,
            attempt=attempt,
            state=state.folder,
            path=path,
            time=time.time() if at is None else at,
            source=source,
            topic=topic,
            sender=sender,
            priority=priority,
        )
        self._publish(kind, event)

    def _publish(self, kind: str, event: MailboxEvent) -> None:
        """Hand ``event`` to the callback (a failure of it is logged, never raised) and the bus."""
        if self.on_event is not None:
            try:
                self.on_event(event)
            except Exception:
                log.exception("on_event callback failed for %s", event)
        if self.bus is not None:
            self.bus.publish(f"{self.topic_prefix}.{kind}", event.to_dict(), source="hybridcomms.watcher")

    # -- rescans and recovery -------------------------------------------------------------------

    def rescan(self, *, first: bool = False) -> int:
        """List every ``new/`` and report what was not reported yet. Returns how many were new.

        ``first``: the look at the start, which reports what it finds as ``waiting`` says."""
        report = self._first_report() if first else None
        found = 0
        agents = list_agents(self.root)
        self._broken_intake.keep(agents)
        for agent in agents:
            if self._stop.is_set():
                break  # stopping (a SIGTERM during a start-up rescan of a large backlog)
            found += self._rescan_agent(agent, report)
        return found

    def _first_report(self) -> Callable[[str, str], None] | None:
        """How the first look reports what already waits: as waiting (or not at all, `_waiting`
        says), unless ``waiting`` is "delivered" (None: reported as delivered)."""
        return self._waiting if self.waiting != "delivered" else None

    def _rescan_agent(self, agent: str, report: Callable[[str, str], None] | None) -> int:
        """List one agent's ``new/`` (after taking in its legacy drops) and report what was not
        reported yet: through ``report`` if it waited before this look, else as delivered."""
        backlog = self._ingest_before_look(agent, report is not None)
        unreported = self._unreported(agent)
        if unreported is None:
            return 0
        return self._report_found(agent, unreported, report, backlog)

    def _report_found(
        self,
        agent: str,
        names: list[str],
        report: Callable[[str, str], None] | None,
        backlog: set[str] | None,
    ) -> int:
        """Report ``names``, found in ``agent``'s ``new/`` by a look: through ``report`` those that
        waited before it, the others as delivered; how many were reported before a stop."""
        found = 0
        for name in names:
            if self._stop.is_set():
                break
            if report is not None and _waited(name, backlog):
                report(agent, name)
            else:  # found by a later look, or just taken in from legacy drops by this one
                self._delivered(agent, name, "rescan")
            found += 1
        return found

    def _ingest_before_look(self, agent: str, want_backlog: bool) -> set[str] | None:
        """Take in ``agent``'s pending legacy drops; with ``want_backlog``, what waited in ``new/``
        before (None when nothing was pending: everything there waited)."""
        backlog: set[str] | None = None
        if self._intake is not None and self._intake.pending(self.root, agent):
            if want_backlog:
                backlog = self._listing(agent) or set()
            self.ingest(agent)
        return backlog

    def _unreported(self, agent: str) -> list[str] | None:
        """The names in ``agent``'s ``new/`` not reported yet, sorted (None if it cannot be listed).

        File events go on while the folder is listed, and the listing must not undo them: a name
        reported meanwhile stays reported, and a name that left ``new/`` meanwhile (claimed, maybe
        back already under its next name) is not reported from the stale listing."""
        before, left = self._listing_begins(agent)
        try:
            names = self._listing(agent)
        finally:
            self._listing_ends(agent, left)
        if names is None:
            return None
        return self._not_reported(agent, names, before, left)

    def _listing_begins(self, agent: str) -> tuple[set[str], set[str]]:
        """What was reported in ``agent``'s ``new/`` as a listing begins, and the set that collects
        the names leaving ``new/`` while it runs."""
        left: set[str] = set()
        with self._lock:
            before = set(self._reported.setdefault(agent, set()))
            self._leaving.setdefault(agent, []).append(left)
        return before, left

    def _listing_ends(self, agent: str, left: set[str]) -> None:
        """A listing of ``agent``'s ``new/`` is over: its set of leaving names is no longer filled."""
        with self._lock:
            listings = [other for other in self._leaving[agent] if other is not left]
            if listings:
                self._leaving[agent] = listings
            else:
                del self._leaving[agent]

    def _not_reported(self, agent: str, names: set[str], before: set[str], left: set[str]) -> list[str]:
        """The ``names`` a listing found that are still to report, sorted; the reported names that
        left ``new/`` before it (unseen) are forgotten."""
        with self._lock:
            seen = self._reported.setdefault(agent, set())
            seen -= before - names  # forget what left new/ before the listing without us seeing it
            return sorted(n for n in names - seen - left if not n.startswith("."))

    def _listing(self, agent: str) -> set[str] | None:
        """The names in ``agent``'s ``new/`` (no link followed); None if it cannot be listed."""
        try:
            return set(_fs.listdir_beneath(self._root_str, (agent, "new")))
        except OSError:
            return None

    def recover_all(self) -> dict[str, int]:
        """Run recovery on every mailbox; returns, per agent, how many messages it gave back. A mailbox
        recovery fails for is logged once, in one line, and once more when it works again."""
        out: dict[str, int] = {}
        agents = list_agents(self.root)
        self._broken.keep(agents)
        for agent in agents:
            try:
                with FileMailbox(self.root, agent, create=False) as mb:
                    report = mb.recover()
            except Exception as exc:  # one line when it breaks, one when it heals (`_broken`)
                self._broken.failed(agent, exc)
                continue
            self._broken.ok(agent)
            moved = len(report.returned) + len(report.expired) + len(report.dead)
            if moved:
                out[agent] = moved
                log.info("recovered %s: %s", agent, report)
        return out
