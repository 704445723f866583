"""The legacy Dream.OS mailbox files of an agent, and how they are taken into its hybridcomms mailbox.

An agent's mailbox is *adopted* once its ``new/`` folder exists: from then on hybridcomms readers take
its messages from ``new/``. Legacy writers that still run keep dropping messages in the old places:

- ``<agent>/inbox.json``: one JSON array, appended to under the lock ``inbox.json.lock`` (layout L1);
- ``<agent>/inbox/*.json``: one file per message, written under ``inbox/.inbox.lock`` (L2; L3 writers
  drop files there too, without a lock).

`ingest` moves them into ``new/`` under those same locks (flock: the lock the ``filelock`` library
takes), so an append that races an ingestion lands either before it (and is ingested) or after it
(and waits for the next one): never lost, never taken twice. It is crash-safe: the ids about to be
published are written to a journal first (``<agent>/.hybridcomms-ingest.json``), so an ingestion
killed between publishing and clearing the legacy files skips, the next time, what it had already
published. What cannot be converted (not a JSON object, no type, too large) goes to ``dead/`` with its
bytes unchanged and a reason, and leaves the legacy file.

Layouts and file names: ``runtime_layout.md``; the whole migration story: ``docs/compatibility.md``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import orjson

from ... import _fs
from ..._locking import hold_lock_file
from ..._names import parse_name
from ...errors import HybridCommsError, MessageError, MessageTooLargeError, UnsafePathError
from ...mailbox import FileMailbox, check_agent_id
from ...message import Message, Priority, _parse_time, _valid_topic, check_id
from ...states import State
from . import _json

__all__ = [
    "INBOX_DIR",
    "INBOX_JSON",
    "IngestProbe",
    "IngestReport",
    "LegacyLayout",
    "has_legacy_drops",
    "ingest",
    "is_adopted",
    "legacy_layout",
    "message_from_legacy",
    "to_legacy_dict",
]

log = logging.getLogger("hybridcomms.compat.dreamos.legacy")

INBOX_JSON = "inbox.json"
INBOX_DIR = "inbox"
INBOX_DIR_LOCK = ".inbox.lock"  # inside inbox/: the L2 writer's lock file
JOURNAL = ".hybridcomms-ingest.json"
#: A file in inbox/ that is not valid JSON is left alone this long (an unlocked L3 writer may still be
#: writing it) before it goes to dead/.
DEFAULT_SETTLE = 5.0
#: With a progress callback (`migrate`), messages are published this many at a time, each batch
#: reported once it is durable; without one, all at once (one durability barrier).
PROGRESS_BATCH = 500
#: ``on_taken(n)``: ``n`` more legacy messages were taken (published, found there already, or buried).
Taken = Callable[[int], None]


class LegacyLayout(str, Enum):
    INBOX_JSON = "inbox.json"  # L1: one JSON array
    INBOX_DIR = "inbox/"  # L2: one msg_*.json file per message


def is_adopted(root: str | os.PathLike[str], agent_id: str) -> bool:
    """True once ``<root>/<agent_id>/new/`` exists: the agent reads its messages with hybridcomms."""
    path = os.path.join(root, check_agent_id(agent_id))
    return not os.path.islink(path) and os.path.isdir(os.path.join(path, State.NEW.folder))


def legacy_layout(root: str | os.PathLike[str], agent_id: str) -> LegacyLayout:
    """The legacy layout a not-yet-adopted agent reads: ``inbox.json`` if that file exists (or if
    there is nothing yet: L1 is the newest and most used), ``inbox/`` if only that folder does."""
    path = os.path.join(root, check_agent_id(agent_id))
    if os.path.isfile(os.path.join(path, INBOX_JSON)):
        return LegacyLayout.INBOX_JSON
    if os.path.isdir(os.path.join(path, INBOX_DIR)):
        return LegacyLayout.INBOX_DIR
    return LegacyLayout.INBOX_JSON


# -- converting ---------------------------------------------------------------------------------


def _derived_id(origin: str, raw: bytes) -> str:
    """A stable id for a legacy message without a usable one: the same entry gets the same id on
    every ingestion, so a repeated ingestion recognises what it already published."""
    # os.fsencode: an origin is a file name as os.listdir gave it (undecodable bytes as surrogates)
    return "legacy-" + hashlib.sha256(os.fsencode(origin) + b"\0" + raw).hexdigest()[:32]


#: The topic of a legacy message that names no type (``write_mailbox_message`` stores any object).
LEGACY_TOPIC = "dreamos.mailbox.message"
#: The header that keeps a legacy message exactly as it was written (stdlib JSON text), when the
#: envelope alone would not give it back.
EXACT_HEADER = "dreamos_json"


def message_from_legacy(
    obj: Any, *, agent_id: str, origin: str, raw: bytes | None = None, max_size: int | None = None
) -> Message:
    """A `Message` for one legacy message (any JSON value a legacy writer stored; any Dream.OS spelling).

    ``origin`` names where it came from (for a derived id). Every JSON value converts: one with no type
    gets the topic `LEGACY_TOPIC`; one whose fields do not fit the envelope (an unreadable time, a
    number beyond 64 bits, ``NaN``) is kept as it is. A legacy reader always gets back exactly the value
    that was written (`to_legacy_dict`). Raises `MessageError` only for a value that is not JSON at
    all, or that is too large (`MessageTooLargeError`)."""
    try:
        exact = _json.dumps(obj)
    except ValueError as exc:
        raise MessageError(str(exc)) from None
    view = _json.loads(exact)  # what a legacy reader sees (non-string keys are strings now)
    origin_raw = raw if raw is not None else exact
    message: Message | None = None
    if isinstance(view, dict):
        try:
            message = _strict_from_legacy(view, agent_id, origin, origin_raw)
            if to_legacy_dict(message) != view:
                message = replace(message, headers={**message.headers, EXACT_HEADER: exact.decode()})
            message.encode(max_size)
        except MessageTooLargeError:
            raise
        except (HybridCommsError, TypeError, ValueError, ArithmeticError, LookupError):
            message = None
    if message is None:
        message = _lenient_from_legacy(view, exact, agent_id, origin, origin_raw)
        message.encode(max_size)  # MessageTooLargeError now, not in the middle of a batch
    return message


def _strict_from_legacy(entry: dict[str, Any], agent_id: str, origin: str, raw: bytes) -> Message:
    entry = dict(entry)
    raw_id = entry.get("id", entry.get("message_id"))
    try:
        usable = raw_id is not None and check_id(str(raw_id)) is not None
    except HybridCommsError:
        usable = False
    if not usable:
        if raw_id is not None:
            entry["legacy_message_id"] = raw_id
        entry.pop("id", None)
        entry["message_id"] = _derived_id(origin, raw)
    if all(entry.get(k) is None for k in ("topic", "type", "message_type")):
        entry["type"] = LEGACY_TOPIC
    message = Message.from_dict(entry)
    if message.recipient is None:
        message = replace(message, recipient=agent_id)
    return message


def _lenient_from_legacy(view: Any, exact: bytes, agent_id: str, origin: str, raw: bytes) -> Message:
    """The envelope from what fits, and the whole value kept exactly in `EXACT_HEADER`."""
    fields = view if isinstance(view, dict) else {}

    def text(*keys: str) -> str | None:
        for k in keys:
            v = fields.get(k)
            if isinstance(v, str):
                return v
        return None

    topic = text("topic", "type", "message_type")
    if topic is None or not _valid_topic(topic):
        topic = LEGACY_TOPIC
    raw_id = fields.get("id", fields.get("message_id"))
    try:
        msg_id = check_id(str(raw_id)) if raw_id is not None else _derived_id(origin, raw)
    except HybridCommsError:
        msg_id = _derived_id(origin, raw)
    try:
        priority = Priority.parse(fields.get("priority", "MEDIUM"))
    except HybridCommsError:
        priority = Priority.MEDIUM
    created = datetime.now(timezone.utc)
    for key in ("created_at", "timestamp_utc", "timestamp"):
        if key in fields:
            try:
                created = _parse_time(fields[key])
                break
            except HybridCommsError:
                continue
    payload = fields.get("body", fields.get("content")) if isinstance(view, dict) else view
    try:
        orjson.dumps(payload)
        if isinstance(payload, float) and payload != payload:  # NaN: orjson would write null
            payload = None
    except TypeError:
        payload = None  # not representable natively (e.g. an integer beyond 64 bits): see the header
    sender = text("sender", "sender_agent_id", "from_agent", "from")
    recipient = text("recipient", "recipient_agent_id", "to_agent", "to") or agent_id
    return Message(
        topic=topic,
        payload=payload,
        sender=sender if sender and len(sender) <= 256 else None,
        recipient=recipient if len(recipient) <= 256 else agent_id,
        priority=priority,
        id=msg_id,
        created_at=created,
        headers={EXACT_HEADER: exact.decode()},
    )


def to_legacy_dict(message: Message) -> Any:
    """The Dream.OS message object for a `Message`: exactly the value a legacy writer stored, if it
    came from one; else every documented field, both type spellings, and the legacy fields kept in
    its headers (subject, metadata, …)."""
    exact = message.headers.get(EXACT_HEADER)
    if isinstance(exact, str):
        try:
            return _json.loads(exact)
        except ValueError:
            pass
    headers = dict(message.headers)
    out: dict[str, Any] = {
        "message_id": str(headers.pop("legacy_message_id", message.id)),
        "sender_agent_id": message.sender or "",
        "recipient_agent_id": message.recipient or "",
        "timestamp_utc": message.created_at.isoformat(),
        "subject": headers.pop("subject", message.topic),
        "type": message.topic,
        "message_type": message.topic,
        "body": message.payload,
        "priority": Priority(message.priority).name,
    }
    if message.correlation_id is not None:
        out["correlation_id"] = message.correlation_id
    if message.reply_to is not None:
        out["reply_to"] = message.reply_to
    for key, value in headers.items():
        out.setdefault(key, value)
    if out["message_id"] != message.id:
        out["hybridcomms_id"] = message.id
    return out


# -- ingestion ----------------------------------------------------------------------------------


@dataclass
class IngestReport:
    """What one `ingest` call did."""

    ingested: list[str] = field(default_factory=list)  # ids published into new/
    dead: list[str] = field(default_factory=list)  # names buried in dead/
    duplicates: int = 0  # already published by an interrupted earlier ingestion
    waiting: list[str] = field(default_factory=list)  # inbox/ files left for later (maybe still written)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why): links, FIFOs, too large

    def __bool__(self) -> bool:
        return bool(self.ingested or self.dead or self.duplicates or self.refused)

    def __str__(self) -> str:
        parts = [f"{len(self.ingested)} ingested", f"{len(self.dead)} to dead/"]
        if self.duplicates:
            parts.append(f"{self.duplicates} already there")
        if self.waiting:
            parts.append(f"{len(self.waiting)} left for later")
        if self.refused:
            parts.append(f"{len(self.refused)} refused and left in place")
        return ", ".join(parts)


def legacy_status(root: str | os.PathLike[str], agent_id: str) -> dict[str, Any] | None:
    """For an agent still on a legacy Dream.OS layout (legacy files, no ``new/``): which layout its
    reader uses and how many messages wait there (what a legacy reader would read). None for an
    adopted agent or a folder with no legacy files."""
    path = os.path.join(root, check_agent_id(agent_id))
    if os.path.islink(path) or not os.path.isdir(path) or is_adopted(root, agent_id):
        return None
    json_path, dir_path = os.path.join(path, INBOX_JSON), os.path.join(path, INBOX_DIR)
    has_json = os.path.isfile(json_path) and not os.path.islink(json_path)
    has_dir = os.path.isdir(dir_path) and not os.path.islink(dir_path)
    if not has_json and not has_dir:
        return None
    waiting = 0
    if has_json:
        try:
            entries = _json.loads(_fs.read_regular(json_path, DEFAULT_MAX_INBOX_JSON) or b"[]")
            waiting += len(entries) if isinstance(entries, list) else 0
        except (OSError, ValueError):
            pass
    if has_dir:
        try:
            waiting += sum(1 for n in os.listdir(dir_path) if _is_candidate(n))
        except OSError:
            pass
    layout = legacy_layout(root, agent_id)
    return {"agent": agent_id, "layout": layout.value, "waiting": waiting}


def has_legacy_drops(root: str | os.PathLike[str], agent_id: str) -> bool:
    """A cheap look: is anything waiting in ``inbox.json`` or ``inbox/``?"""
    path = os.path.join(root, agent_id)
    try:
        if os.stat(os.path.join(path, INBOX_JSON)).st_size > 2:  # more than "[]"
            return True
    except OSError:
        pass
    try:
        with os.scandir(os.path.join(path, INBOX_DIR)) as it:
            return any(_is_candidate(e.name) for e in it)
    except OSError:
        return False


def _is_candidate(name: str) -> bool:
    return name.endswith(".json") and not name.startswith(".")


#: The largest ``inbox.json`` ingestion reads (bytes); a bigger one is left in place and reported.
DEFAULT_MAX_INBOX_JSON = 64 << 20


def _refuse(report: IngestReport, agent: str, where: str, why: str) -> None:
    log.warning("%s: %s refused and left in place: %s", agent, _fs.shown(where), why)
    report.refused.append((_fs.shown(where), why))


def _why_refused(exc: OSError) -> str:
    if exc.errno == errno.ELOOP:
        return "a symlink (never followed)"
    if isinstance(exc, (_fs.NotRegularFileError, _fs.TooLargeError)):
        return exc.strerror or str(exc)
    return f"cannot be read: {exc.strerror or exc}"


def ingest(
    mailbox: FileMailbox,
    *,
    lock_timeout: float = 10.0,
    settle: float = DEFAULT_SETTLE,
    max_inbox_json: int = DEFAULT_MAX_INBOX_JSON,
    on_taken: Taken | None = None,
) -> IngestReport:
    """Move everything legacy writers dropped for this agent into its ``new/`` (see the module
    docstring). Raises `LockTimeoutError` if a legacy writer holds a lock for ``lock_timeout``.
    ``on_taken`` is told as messages are taken (for progress).

    Every legacy path is walked without following links: a symlink, a FIFO or a folder where a file
    is expected (and an ``inbox.json`` over ``max_inbox_json`` bytes) is left where it is and listed
    in ``refused``; it never blocks the ingestion or reads anything outside the mailbox."""
    report = IngestReport()
    agent = mailbox.agent_id
    with _agent_dir(mailbox) as adir_fd:
        kind = _entry_kind(adir_fd, INBOX_JSON)
        if kind == "file":
            try:
                with hold_lock_file(INBOX_JSON + ".lock", lock_timeout, dir_fd=adir_fd):
                    _ingest_inbox_json(mailbox, adir_fd, report, max_inbox_json, on_taken)
            except UnsafePathError as exc:
                _refuse(report, agent, f"{agent}/{INBOX_JSON}.lock", str(exc))
        elif kind is not None:
            _refuse(report, agent, f"{agent}/{INBOX_JSON}", kind)
        kind = _entry_kind(adir_fd, INBOX_DIR)
        if kind == "dir":
            try:
                inbox_fd = _fs.open_dir(INBOX_DIR, dir_fd=adir_fd)
            except OSError as exc:
                _refuse(report, agent, f"{agent}/{INBOX_DIR}", _why_refused(exc))
            else:
                try:
                    if _has_candidates(inbox_fd):
                        try:
                            with hold_lock_file(INBOX_DIR_LOCK, lock_timeout, dir_fd=inbox_fd):
                                ingest_folder(mailbox, inbox_fd, INBOX_DIR, report, settle, on_taken=on_taken)
                        except UnsafePathError as exc:
                            _refuse(report, agent, f"{agent}/{INBOX_DIR}/{INBOX_DIR_LOCK}", str(exc))
                finally:
                    os.close(inbox_fd)
        elif kind is not None and kind != "file":
            _refuse(report, agent, f"{agent}/{INBOX_DIR}", kind)
    if report:
        log.info("%s: legacy drops: %s", agent, report)
    return report


@contextlib.contextmanager
def _agent_dir(mb: FileMailbox) -> Iterator[int]:
    """The agent's folder, opened without following links from the root (as the mailbox is)."""
    root_fd = os.open(mb.root, _fs.O_DIR)
    try:
        fd = _fs.open_dir(mb.agent_id, dir_fd=root_fd)
    finally:
        os.close(root_fd)
    try:
        yield fd
    finally:
        os.close(fd)


def _entry_kind(dir_fd: int, name: str) -> str | None:
    """``"file"``, ``"dir"``, None if absent, or what else it is (a symlink, a FIFO, …), unfollowed."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be looked at: {exc.strerror}"
    if stat.S_ISREG(st.st_mode):
        return "file"
    if stat.S_ISDIR(st.st_mode):
        return "dir"
    if stat.S_ISLNK(st.st_mode):
        return "a symlink (never followed)"
    return f"not a regular file ({stat.filemode(st.st_mode)})"


def _has_candidates(dir_fd: int) -> bool:
    try:
        return any(_is_candidate(n) for n in _fs.listdir_at(dir_fd))
    except OSError:
        return False


def _reason(text: str, source: str) -> dict[str, Any]:
    return {"reason": text, "source": source, "attempts": 0}


def _ingest_inbox_json(
    mb: FileMailbox, adir_fd: int, report: IngestReport, limit: int, on_taken: Taken | None = None
) -> None:
    source = f"{mb.agent_id}/{INBOX_JSON}"
    try:
        raw = _fs.read_regular(INBOX_JSON, limit, dir_fd=adir_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        _refuse(report, mb.agent_id, source, _why_refused(exc))
        return
    if not raw.strip():
        return
    try:
        entries = _json.loads(raw)  # the stdlib, as the legacy readers: NaN, big integers stay as they are
    except ValueError as exc:
        entries, problem = None, f"not valid JSON: {exc}"
    else:
        problem = f"not a JSON array but {type(entries).__name__}"
    if not isinstance(entries, list):
        # The legacy readers replaced a corrupt inbox.json with [] and lost it; here it is kept.
        mb.bury(raw, f"legacy-{INBOX_JSON}-{_derived_id(source, raw)[7:23]}.json", _reason(problem, source))
        report.dead.append(INBOX_JSON)
        _fs.replace_atomically_at(adir_fd, INBOX_JSON, b"[]")
        if on_taken is not None:
            on_taken(1)
        return
    if not entries:
        return
    items: list[tuple[str, bytes, Any]] = []
    for i, entry in enumerate(entries):
        items.append((f"{source}[{i}]", _json.dumps(entry), entry))
    _publish(mb, items, report, on_taken=on_taken)
    _fs.replace_atomically_at(adir_fd, INBOX_JSON, b"[]")
    _end_journal(mb)


#: Files of an agent's own folder that are never legacy (L4) messages.
NOT_MESSAGES = frozenset({INBOX_JSON, "subscriptions.json"})


def ingest_folder(
    mb: FileMailbox,
    folder_fd: int,
    rel: str,
    report: IngestReport,
    settle: float = DEFAULT_SETTLE,
    *,
    exclude: frozenset[str] = frozenset(),
    on_taken: Taken | None = None,
) -> None:
    """Publish every ``*.json`` file of the folder ``folder_fd`` (``rel``: its path under the agent's
    folder, ``"."`` for the folder itself) into ``new/`` and remove it; bury what is not JSON or does
    not convert. Links, FIFOs and oversized files are refused and left. The caller holds any lock.
    ``on_taken`` is told as messages are taken (for progress)."""
    items: list[tuple[str, bytes, Any]] = []
    taken: list[str] = []
    now = time.time()
    label = "" if rel == "." else rel.replace(os.sep, "-")
    for name in sorted(_fs.listdir_at(folder_fd)):
        if not _is_candidate(name) or name in exclude:
            continue  # lock and temp files, and what is not JSON (.md notes): left where they are
        source = f"{mb.agent_id}/{name}" if not label else f"{mb.agent_id}/{rel}/{name}"
        try:
            st = os.stat(name, dir_fd=folder_fd, follow_symlinks=False)
            raw = _fs.read_regular(name, mb.max_message_size, dir_fd=folder_fd)
        except FileNotFoundError:
            continue
        except OSError as exc:
            _refuse(report, mb.agent_id, source, _why_refused(exc))
            continue
        try:
            obj = _json.loads(raw)
        except ValueError as exc:
            if now - st.st_mtime < settle:
                report.waiting.append(name)  # perhaps still being written by an unlocked writer
                continue
            if mb.bury(raw, _bury_name(label, name), _reason(f"not valid JSON: {exc}", source)):
                report.dead.append(name)
            taken.append(name)
            if on_taken is not None:
                on_taken(1)
            continue
        items.append((source, raw, obj))
        taken.append(name)
    _publish(mb, items, report, label=label, on_taken=on_taken)
    remove_taken(folder_fd, taken)
    _end_journal(mb)


def remove_taken(dir_fd: int, names: list[str]) -> None:
    """Remove legacy files that were taken over (already gone is fine) and commit the removals."""
    for name in names:
        try:
            os.unlink(name, dir_fd=dir_fd)
        except FileNotFoundError:
            pass
    if names:
        os.fsync(dir_fd)


def _bury_name(label: str, name: str) -> str:
    return f"legacy-{label}-{name}" if label else f"legacy-{name}"


def _publish(
    mb: FileMailbox,
    items: list[tuple[str, bytes, Any]],
    report: IngestReport,
    *,
    label: str | None = None,
    on_taken: Taken | None = None,
) -> None:
    """Convert, journal, publish; bury what does not convert. With ``on_taken``, publish in batches of
    `PROGRESS_BATCH` and report each (the journal covers them all, as it covers one interrupted burst)."""
    told = 0
    messages: dict[str, Message] = {}
    for source, raw, obj in items:
        try:
            message = message_from_legacy(
                obj, agent_id=mb.agent_id, origin=source, raw=raw, max_size=mb.max_message_size
            )
        except MessageError as exc:
            name = (
                _bury_name(label, source.rsplit("/", 1)[1])
                if label is not None
                else f"legacy-{INBOX_JSON}-{_derived_id(source, raw)[7:23]}.json"
            )
            if mb.bury(raw, name, _reason(f"cannot be converted: {exc}", source)):
                report.dead.append(name)
            told += 1
            continue
        if message.id in messages:
            report.duplicates += 1  # the same message appended twice: delivered once
            told += 1
            continue
        messages[message.id] = message
    if on_taken is not None and told:
        on_taken(told)
    if not messages:
        return
    already = _ids_in_flight(mb, set(messages))
    report.duplicates += len(already)
    if on_taken is not None and already:
        on_taken(len(already))
    fresh = [m for i, m in messages.items() if i not in already]
    _fs.replace_atomically(
        mb.path / JOURNAL,
        orjson.dumps({"ids": [m.id for m in fresh], "started_at": datetime.now(timezone.utc).isoformat()}),
        0o600,
    )
    step = max(len(fresh), 1) if on_taken is None else PROGRESS_BATCH
    for start in range(0, len(fresh), step):
        batch = fresh[start : start + step]
        mb.put_many(batch)
        report.ingested += [m.id for m in batch]
        if on_taken is not None:
            on_taken(len(batch))


def _ids_in_flight(mb: FileMailbox, ids: set[str]) -> set[str]:
    """Of ``ids``, those a previous, interrupted ingestion already published (per its journal)."""
    try:
        journal = orjson.loads(_fs.read_regular(mb.path / JOURNAL, 16 << 20))
        pending = set(journal["ids"]) & ids
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    if not pending:
        return set()
    return ids_present(mb, (State.NEW, State.PROCESSING, State.DONE, State.DEAD)) & pending


def ids_present(mb: FileMailbox, states: tuple[State, ...]) -> set[str]:
    """The message ids that have a file in these folders of ``mb`` (read from the names)."""
    found: set[str] = set()
    for state in states:
        try:
            names = os.listdir(mb.path / state.folder)
        except OSError:
            continue
        found.update(info.id for name in names if (info := parse_name(name)) is not None)
    return found


def _end_journal(mb: FileMailbox) -> None:
    try:
        os.unlink(mb.path / JOURNAL)
    except FileNotFoundError:
        pass


class IngestProbe:
    """Decides cheaply when an agent's legacy files need another look: when ``inbox.json`` or the
    ``inbox/`` folder changed since the last ingestion, and at least every ``every`` seconds anyway."""

    def __init__(self, mailbox: FileMailbox, *, every: float = 30.0) -> None:
        self.mailbox = mailbox
        self.every = every
        self._seen: tuple[Any, Any] | None = None
        self._next_full = 0.0

    def _signature(self) -> tuple[Any, Any]:
        out: list[tuple[int, int, int] | None] = []
        for name in (INBOX_JSON, INBOX_DIR):
            try:
                st = os.stat(self.mailbox.path / name)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return out[0], out[1]

    def run(self, *, force: bool = False) -> IngestReport | None:
        """Ingest if something may have changed; None if it was not worth looking."""
        now = time.monotonic()
        sig = self._signature()
        if not force and sig == self._seen and now < self._next_full:
            return None
        if sig == (None, None):
            self._seen, self._next_full = sig, now + self.every
            return None
        report = ingest(self.mailbox)
        # The signature from *before*: a drop that lands during or right after this ingestion changes
        # it, so the next call looks again (our own rewrite of inbox.json costs one extra look).
        self._seen = sig if not report.waiting else None
        self._next_full = now + self.every
        return report


class LegacyIntake:
    """The Dream.OS legacy drops as the core's intake plug-in (`hybridcomms.intake`)."""

    def is_drop(self, parts: tuple[str, ...]) -> bool:
        return (len(parts) == 2 and parts[1] == INBOX_JSON) or (
            len(parts) == 3 and parts[1] == INBOX_DIR and _is_candidate(parts[2])
        )

    def pending(self, root: str | os.PathLike[str], agent: str) -> bool:
        return has_legacy_drops(root, agent)

    def take(self, mailbox: FileMailbox) -> int:
        return len(ingest(mailbox).ingested)

    def prober(self, mailbox: FileMailbox) -> Callable[[bool], int]:
        probe = IngestProbe(mailbox)

        def run(force: bool = False) -> int:
            report = probe.run(force=force)
            return len(report.ingested) if report is not None else 0

        return run


#: The plug-in object `hybridcomms.intake.get` returns.
INTAKE = LegacyIntake()
