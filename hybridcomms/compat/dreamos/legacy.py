"""The legacy Dream.OS mailbox files of an agent, and how they are taken into its hybridcomms mailbox.

An agent's mailbox is *adopted* once its ``new/`` folder exists: from then on hybridcomms readers take
its messages from ``new/``. Legacy writers that still run keep dropping messages in the old places:

- ``<agent>/inbox.json``: one JSON array, appended to under the lock ``inbox.json.lock`` (layout L1);
- ``<agent>/inbox/*.json``: one file per message, written under ``inbox/.inbox.lock`` (L2; L3 writers
  drop files there too, without a lock).

`ingest` moves them into ``new/`` under those same locks (flock: the lock the ``filelock`` library
takes), so an append that races an ingestion lands either before it (and is ingested) or after it
(and waits for the next one): never lost, never taken twice. It is crash-safe: the ids about to be
published are written to a journal first (`_ingest_journal`), so an ingestion killed between
publishing and clearing the legacy files skips, the next time, what it had already published.
``inbox.json`` is read element by element and taken in chunks (`CHUNK_ENTRIES`): memory stays bounded
whatever the number of entries, and the journal says how far a killed ingestion got. The files of a
folder (``inbox/``, the flat files `migrate` takes) are taken in chunks too, each chunk's files removed
once it is published. ``on_taken`` (`Taken`) is told after every chunk. What cannot be
converted (not JSON, too large) goes to ``dead/`` with its bytes unchanged and a reason, under a name
shortened to fit the filesystem if need be, and leaves the legacy file.

Layouts and file names: ``runtime_layout.md``; the whole migration story: ``docs/compatibility.md``.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import time
import uuid
from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from enum import Enum
from typing import Any

import orjson

from ... import _fs, _log
from ..._locking import hold_lock_file
from ..._names import REASON_SUFFIX, parse_name
from ...backends.base import check_agent_id
from ...backends.file import FileMailbox
from ...errors import (
    HybridCommsError,
    LockTimeoutError,
    MessageError,
    MessageTooLargeError,
    UnsafePathError,
)
from ...intake import Step
from ...message import Message, Priority, check_id, has_non_finite, parse_time, valid_topic
from ...states import State
from . import _json
from ._held_locks import HELD
from ._ingest_journal import ARRAY_JOURNAL, FileId, Journal, Resume, file_id, folder_journal_name
from ._json_stream import TOO_LARGE, Element, NotAnArray, is_blank, open_array

__all__ = [
    "INBOX_DIR",
    "INBOX_JSON",
    "IngestProbe",
    "IngestReport",
    "LegacyLayout",
    "agent_dir",
    "entry_kind",
    "has_legacy_drops",
    "ingest",
    "is_adopted",
    "legacy_layout",
    "message_from_legacy",
    "to_legacy_dict",
    "why_refused",
]

log = _log.get("hybridcomms.compat.dreamos.legacy")

INBOX_JSON = "inbox.json"
INBOX_DIR = "inbox"
INBOX_DIR_LOCK = ".inbox.lock"  # inside inbox/: the L2 writer's lock file
JOURNAL = ARRAY_JOURNAL  # the inbox.json ingestion's journal (_ingest_journal)
#: A file in inbox/ that is not valid JSON is left alone this long (an unlocked L3 writer may still be
#: writing it) before it goes to dead/.
DEFAULT_SETTLE = 5.0
#: ``on_taken(n)``: ``n`` more legacy messages were taken (published, found there already, or buried),
#: told once per chunk (`CHUNK_ENTRIES`), when the chunk is durable (``migrate`` shows it as progress).
Taken = Callable[[int], None]


class LegacyLayout(str, Enum):
    INBOX_JSON = "inbox.json"  # L1: one JSON array
    INBOX_DIR = "inbox/"  # L2: one msg_*.json file per message


def is_adopted(root: str | os.PathLike[str], agent_id: str) -> bool:
    """True once ``<root>/<agent_id>/new/`` exists: the agent reads its messages with hybridcomms."""
    path = os.path.join(root, check_agent_id(agent_id))
    return not os.path.islink(path) and os.path.isdir(os.path.join(path, State.NEW.folder))


def is_safe_agent_id(name: str) -> bool:
    """Is ``name`` a safe agent id (`check_agent_id` accepts it)?"""
    try:
        check_agent_id(name)
    except ValueError:
        return False
    return True


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


def _derived_id(origin: str, raw: bytes | _fs.ByteRange) -> str:
    """A stable id for a legacy message without a usable one: the same entry gets the same id on
    every ingestion, so a repeated ingestion recognises what it already published. (``raw`` may be a
    range of the file, read a block at a time.)"""
    # os.fsencode: an origin is a file name as os.listdir gave it (undecodable bytes as surrogates)
    digest = hashlib.sha256(os.fsencode(origin) + b"\0")
    for block in raw.blocks() if isinstance(raw, _fs.ByteRange) else (raw,):
        digest.update(block)
    return "legacy-" + digest.hexdigest()[:32]


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
    exact = _exact_json(obj)
    view = _json.loads(exact)  # what a legacy reader sees (non-string keys are strings now)
    origin_raw = raw if raw is not None else exact
    message = _fitted_message(view, exact, agent_id, origin, origin_raw, max_size)
    if message is None:
        message = _kept_message(view, exact, agent_id, origin, origin_raw, max_size)
    return message


def _exact_json(obj: Any) -> bytes:
    """The stdlib JSON text of a legacy value; `MessageError` if it is not JSON at all."""
    try:
        return _json.dumps(obj)
    except ValueError as exc:
        raise MessageError(str(exc)) from None


def _fitted_message(
    view: Any, exact: bytes, agent_id: str, origin: str, raw: bytes, max_size: int | None
) -> Message | None:
    """The message whose envelope holds the object's fields (its exact text in `EXACT_HEADER` if the
    envelope alone would not give it back); None if it is no object or its fields do not fit."""
    if not isinstance(view, dict):
        return None
    try:
        message = _strict_from_legacy(view, agent_id, origin, raw)
        if to_legacy_dict(message) != view:
            message = replace(message, headers={**message.headers, EXACT_HEADER: exact.decode()})
        message.encode(max_size)
    except MessageTooLargeError:
        raise
    except (HybridCommsError, TypeError, ValueError, ArithmeticError, LookupError):
        return None
    return message


def _kept_message(
    view: Any, exact: bytes, agent_id: str, origin: str, raw: bytes, max_size: int | None
) -> Message:
    """The message built leniently (`_lenient_from_legacy`), the value kept whole in its header;
    `MessageError` if even that cannot be made, or is too large."""
    try:
        message = _lenient_from_legacy(view, exact, agent_id, origin, raw)
        message.encode(max_size)  # MessageTooLargeError now, not in the middle of a batch
    except MessageError:
        raise
    except (HybridCommsError, TypeError, ValueError, ArithmeticError, LookupError, RecursionError) as exc:
        # Whatever a legacy writer stored, one entry never stops the others: it goes to dead/.
        raise MessageError(f"cannot be made a message: {type(exc).__name__}: {exc}") from None
    return message


def _strict_from_legacy(entry: dict[str, Any], agent_id: str, origin: str, raw: bytes) -> Message:
    """The message read field by field from a legacy object (raises if a field does not fit)."""
    entry = dict(entry)
    _settle_id(entry, origin, raw)
    if all(entry.get(k) is None for k in ("topic", "type", "message_type")):
        entry["type"] = LEGACY_TOPIC
    message = Message.from_dict(entry)
    if message.recipient is None:
        message = replace(message, recipient=agent_id)
    return message


def _settle_id(entry: dict[str, Any], origin: str, raw: bytes) -> None:
    """Give ``entry`` a derived id in place of one that is missing or not a valid message id (the
    legacy one kept as ``legacy_message_id``)."""
    raw_id = entry.get("id", entry.get("message_id"))
    if _is_usable_id(raw_id):
        return
    if raw_id is not None:
        entry["legacy_message_id"] = raw_id
    entry.pop("id", None)
    entry["message_id"] = _derived_id(origin, raw)


def _is_usable_id(raw_id: Any) -> bool:
    """Is a legacy id present and, as text, a valid message id?"""
    try:
        return raw_id is not None and check_id(str(raw_id)) is not None
    except HybridCommsError:
        return False


def _lenient_from_legacy(view: Any, exact: bytes, agent_id: str, origin: str, raw: bytes) -> Message:
    """The envelope from what fits, and the whole value kept exactly in `EXACT_HEADER`."""
    fields = view if isinstance(view, dict) else {}
    sender = _lenient_sender(fields)
    recipient = _lenient_recipient(fields, agent_id)
    return Message(  # (the fields in the order they were always read: the first failure is the reason)
        topic=_lenient_topic(fields),
        id=_lenient_id(fields, origin, raw),
        priority=_lenient_priority(fields),
        created_at=_lenient_created(fields),
        payload=_native_payload(_lenient_body(view)),
        sender=sender,
        recipient=recipient,
        headers={EXACT_HEADER: exact.decode()},
    )


def _lenient_body(view: Any) -> Any:
    """What the message carries: an object's ``body`` (or ``content``), any other value itself."""
    return view.get("body", view.get("content")) if isinstance(view, dict) else view


def _lenient_sender(fields: dict[str, Any]) -> str | None:
    """The first legacy sender field that fits the envelope (at most 256 characters), else None."""
    sender = _first_text(fields, "sender", "sender_agent_id", "from_agent", "from")
    return sender if sender and len(sender) <= 256 else None


def _lenient_recipient(fields: dict[str, Any], agent_id: str) -> str:
    """The first legacy recipient field if it fits the envelope, else the agent it was dropped for."""
    recipient = _first_text(fields, "recipient", "recipient_agent_id", "to_agent", "to") or agent_id
    return recipient if len(recipient) <= 256 else agent_id


def _first_text(fields: dict[str, Any], *keys: str) -> str | None:
    """The first of these fields that is a string fit for the envelope (else None)."""
    for k in keys:
        v = fields.get(k)
        if isinstance(v, str) and _is_utf8(v):  # a lone surrogate ("\ud800"): only in the header
            return v
    return None


def _lenient_topic(fields: dict[str, Any]) -> str:
    """The legacy type as the topic if it is a valid one, else `LEGACY_TOPIC`."""
    topic = _first_text(fields, "topic", "type", "message_type")
    if topic is None or not valid_topic(topic):
        return LEGACY_TOPIC
    return topic


def _lenient_id(fields: dict[str, Any], origin: str, raw: bytes) -> str:
    """The legacy id if it is a valid message id, else one derived from where the entry was."""
    raw_id = fields.get("id", fields.get("message_id"))
    try:
        return check_id(str(raw_id)) if raw_id is not None else _derived_id(origin, raw)
    except HybridCommsError:
        return _derived_id(origin, raw)


def _lenient_priority(fields: dict[str, Any]) -> Priority:
    """The legacy priority if it parses, else MEDIUM."""
    try:
        return Priority.parse(fields.get("priority", "MEDIUM"))
    except HybridCommsError:
        return Priority.MEDIUM


def _lenient_created(fields: dict[str, Any]) -> datetime:
    """The first legacy timestamp field that parses, else now."""
    for key in ("created_at", "timestamp_utc", "timestamp"):
        if key in fields:
            try:
                return parse_time(fields[key])
            except HybridCommsError:
                continue
    return datetime.now(timezone.utc)


def _native_payload(payload: Any) -> Any:
    """The payload if JSON holds it as it is, else None (what it was is in the header)."""
    try:
        orjson.dumps(payload)
        if has_non_finite(payload):  # NaN or an infinity anywhere in it: orjson would write null
            return None
    except TypeError:
        return None  # not representable natively (e.g. an integer beyond 64 bits): see the header
    return payload


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


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
    return _documented_dict(message)


def _documented_dict(message: Message) -> dict[str, Any]:
    """The Dream.OS object of a message that was not a legacy writer's: the documented fields, then
    the headers (legacy fields), then the hybridcomms id if the legacy one differs."""
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
    _add_links(out, message)
    _add_headers(out, headers)
    if out["message_id"] != message.id:
        out["hybridcomms_id"] = message.id
    return out


def _add_links(out: dict[str, Any], message: Message) -> None:
    """The message's ``correlation_id`` and ``reply_to``, those it has."""
    if message.correlation_id is not None:
        out["correlation_id"] = message.correlation_id
    if message.reply_to is not None:
        out["reply_to"] = message.reply_to


def _add_headers(out: dict[str, Any], headers: dict[str, Any]) -> None:
    """The headers (legacy fields) as fields, never over a documented one."""
    for key, value in headers.items():
        out.setdefault(key, value)


# -- ingestion ----------------------------------------------------------------------------------

#: How many message ids an `IngestReport` lists; the rest it only counts (a huge ``inbox.json`` must
#: not grow the report either).
REPORT_LISTED = 1000


@dataclass
class Buried:
    """A legacy file or entry put into ``dead/``."""

    source: str  # where it was, relative to the root (``Agent-1/inbox/x.json``, ``Agent-1/inbox.json[3]``)
    name: str  # its file in dead/
    reason: str


@dataclass
class IngestReport:
    """What one `ingest` call did. Paths are relative to the mailbox root, and printable (bytes that
    are not UTF-8 as ``\\xNN``)."""

    ingested: list[str] = field(default_factory=list)  # ids published into new/ (the first REPORT_LISTED)
    n_ingested: int = 0  # how many were published into new/, listed or not
    buried: list[Buried] = field(default_factory=list)  # what went to dead/
    duplicates: int = 0  # already published by an interrupted earlier ingestion
    waiting: list[str] = field(default_factory=list)  # inbox/ files left for later (maybe still written)
    refused: list[tuple[str, str]] = field(default_factory=list)  # (path, why): links, FIFOs, too large
    held: list[str] = field(default_factory=list)  # lock files another process held: skipped this time
    retry_in: float | None = None  # with `held`: seconds until the first of them is tried again
    more: bool = False  # stopped after ``max_chunks``: more is waiting (call again)

    @property
    def dead(self) -> list[str]:
        """What went to ``dead/``, as paths under the agent's folder (``inbox.json``, ``inbox/x.json``)."""
        return [b.source.split("/", 1)[-1] for b in self.buried]

    def add_ingested(self, ids: list[str]) -> None:
        room = REPORT_LISTED - len(self.ingested)
        if room > 0:
            self.ingested += ids[:room]
        self.n_ingested += len(ids)

    def __bool__(self) -> bool:
        return bool(self.n_ingested or self.buried or self.duplicates or self.refused)

    def __str__(self) -> str:
        parts = [f"{self.n_ingested} ingested", f"{len(self.buried)} to dead/"]
        said_if_any = {  # each part said only if there is any
            f"{self.duplicates} already there": self.duplicates,
            f"{len(self.waiting)} left for later": self.waiting,
            f"{len(self.refused)} refused and left in place": self.refused,
            f"{len(self.held)} lock(s) held by another process": self.held,
            "more to take": self.more,
        }
        return ", ".join(parts + [part for part, there in said_if_any.items() if there])


def legacy_status(root: str | os.PathLike[str], agent_id: str) -> dict[str, Any] | None:
    """For an agent still on a legacy Dream.OS layout (legacy files, no ``new/``): which layout its
    reader uses and how many messages wait there (what a legacy reader would read). None for an
    adopted agent or a folder with no legacy files."""
    path = os.path.join(root, check_agent_id(agent_id))
    if not _is_unadopted_folder(root, agent_id, path):
        return None
    json_path, dir_path = (
        _unlinked(path, INBOX_JSON, os.path.isfile),
        _unlinked(path, INBOX_DIR, os.path.isdir),
    )
    if json_path is None and dir_path is None:
        return None
    waiting = _count_inbox_json(json_path) + _count_inbox_dir(dir_path)
    layout = legacy_layout(root, agent_id)
    return {"agent": agent_id, "layout": layout.value, "waiting": waiting}


def _is_unadopted_folder(root: str | os.PathLike[str], agent_id: str, path: str) -> bool:
    """Is the agent's ``path`` a folder (not a link) of an agent not adopted yet?"""
    return not os.path.islink(path) and os.path.isdir(path) and not is_adopted(root, agent_id)


def _unlinked(path: str, name: str, is_kind: Callable[[str], bool]) -> str | None:
    """``path/name`` if it is of that kind (``os.path.isfile``, ``isdir``) and not a link; else None."""
    full = os.path.join(path, name)
    return full if is_kind(full) and not os.path.islink(full) else None


def _count_inbox_json(json_path: str | None) -> int:
    """The entries of ``inbox.json`` (0 if there is none, or it cannot be read as an array)."""
    if json_path is None:
        return 0
    try:
        fd, st = _fs.open_regular(json_path, DEFAULT_MAX_INBOX_JSON)
        try:
            if not is_blank(fd, st.st_size):  # counted, not built (max_item=0), a window at a time
                return sum(1 for _ in open_array(fd, max_item=0))
        finally:
            os.close(fd)
    except (OSError, ValueError):
        pass
    return 0


def _count_inbox_dir(dir_path: str | None) -> int:
    """The message files waiting in ``inbox/`` (0 if there is none, or it cannot be listed)."""
    if dir_path is None:
        return 0
    try:
        return sum(1 for n in os.listdir(dir_path) if is_drop_name(n))
    except OSError:
        return 0


def has_legacy_drops(root: str | os.PathLike[str], agent_id: str) -> bool:
    """A cheap look: is anything waiting in ``inbox.json`` or ``inbox/``?"""
    return _has_inbox_json_drop(os.path.join(root, agent_id)) or _has_inbox_dir_drop(root, agent_id)


def _has_inbox_json_drop(path: str) -> bool:
    """Does the agent folder ``path`` hold an ``inbox.json`` with more than ``[]`` in it?"""
    try:
        # lstat: a link in place of inbox.json is not a drop (ingestion refuses it), never followed
        st = os.lstat(os.path.join(path, INBOX_JSON))
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_size > 2  # more than "[]"


def _has_inbox_dir_drop(root: str | os.PathLike[str], agent_id: str) -> bool:
    """Does the agent's ``inbox/`` hold a legacy message file?"""
    try:  # the agent folder and inbox/ opened without following a link: never a listing outside
        return any(is_drop_name(n) for n in _fs.listdir_beneath(os.fspath(root), (agent_id, INBOX_DIR)))
    except OSError:
        return False


def is_drop_name(name: str) -> bool:
    """Is this the name of a legacy message file a reader takes (``*.json``, not hidden)?"""
    return name.endswith(".json") and not name.startswith(".")


#: The largest ``inbox.json`` ingestion reads (bytes); a bigger one is left in place and reported.
DEFAULT_MAX_INBOX_JSON = 64 << 20
#: ``inbox.json`` is taken in chunks of at most this many entries, or entries of this many characters
#: of its text, whichever comes first: what is in memory at once, whatever the number of entries. A
#: folder of legacy files (``inbox/``, flat files, ``archive/``) is taken so many files, or so many bytes
#: of them, at a time. Each chunk is one durability barrier and one progress report (`Taken`).
CHUNK_ENTRIES = 512
CHUNK_CHARS = 1 << 20


def max_entry_chars(max_message_size: int) -> int:
    """The longest ``inbox.json`` entry (characters as written) that is read at all: twice the message
    size limit, room for a legacy writer's indentation. A longer one goes to ``dead/`` as written,
    never parsed (its objects alone could take gigabytes)."""
    return 2 * max_message_size


def unbuilt_reason(length: int, max_message_size: int) -> str:
    """Why an ``inbox.json`` entry given unbuilt (`TOO_LARGE`) goes to ``dead/``: too long to be read,
    or (no longer than the limit) nested deeper than the JSON parser goes."""
    limit = max_entry_chars(max_message_size)
    if length > limit:
        return f"too large: {length} bytes as written, over the limit of {limit} read for an entry"
    return "nested too deeply to be read as JSON"


def _refuse(report: IngestReport, agent: str, where: str, why: str) -> None:
    log.log(_log.event_level(), "%s: %s refused and left in place: %s", agent, _fs.shown(where), why)
    report.refused.append((_fs.shown(where), why))


def why_refused(exc: OSError) -> str:
    """Why a legacy path that could not be opened is refused and left in place, in words."""
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
    max_chunks: int | None = None,
    skip_held: bool = False,
) -> IngestReport:
    """Move everything legacy writers dropped for this agent into its ``new/`` (see the module
    docstring). Raises `LockTimeoutError` if a legacy writer holds a lock for ``lock_timeout``.
    ``on_taken`` is told as the legacy messages are taken, chunk by chunk (`Taken`; for progress).

    For a loop that has other work (a consumer, the watch service):

    - ``max_chunks``: take at most that many chunks (`CHUNK_ENTRIES`) and stop, the locks released
      (``report.more`` says more is waiting; the next call goes on where this one stopped, without
      reading again what was taken);
    - ``skip_held``: a lock another process holds is tried once, without waiting; that legacy drop is
      skipped (``report.held``) and not tried again before a backoff that grows while the lock stays
      held (`_held_locks`; said once in the log, not at every try).

    Every legacy path is walked without following links: a symlink, a FIFO or a folder where a file
    is expected (and an ``inbox.json`` over ``max_inbox_json`` bytes) is left where it is and listed
    in ``refused``; it never blocks the ingestion or reads anything outside the mailbox. What it holds
    in memory is bounded whatever the size of ``inbox.json``, the number of its entries or of files'
    names (`CHUNK_ENTRIES`, `_json_stream.WINDOW`)."""
    report = IngestReport()
    agent = mailbox.agent_id
    budget = _Budget(max_chunks)
    locks = _LegacyLocks(mailbox, report, lock_timeout, skip_held)
    with agent_dir(mailbox) as adir_fd:
        _ingest_json_drop(mailbox, adir_fd, report, locks, max_inbox_json, on_taken, budget)
        _ingest_dir_drop(mailbox, adir_fd, report, locks, settle, on_taken, budget)
    if report:
        log.info("%s: legacy drops: %s", agent, report)
    return report


def _ingest_json_drop(
    mailbox: FileMailbox,
    adir_fd: int,
    report: IngestReport,
    locks: _LegacyLocks,
    max_inbox_json: int,
    on_taken: Taken | None,
    budget: _Budget,
) -> None:
    """``inbox.json`` under its lock, if it is a file; anything else in its place is refused."""
    kind = entry_kind(adir_fd, INBOX_JSON)
    if kind == "file":
        with locks.hold(adir_fd, INBOX_JSON + ".lock", INBOX_JSON + ".lock") as locked:
            if locked:
                _ingest_inbox_json(mailbox, adir_fd, report, max_inbox_json, on_taken, budget)
    elif kind is not None:
        _refuse(report, mailbox.agent_id, f"{mailbox.agent_id}/{INBOX_JSON}", kind)


def _ingest_dir_drop(
    mailbox: FileMailbox,
    adir_fd: int,
    report: IngestReport,
    locks: _LegacyLocks,
    settle: float,
    on_taken: Taken | None,
    budget: _Budget,
) -> None:
    """The ``inbox/`` folder, if it is one; a link or a FIFO in its place is refused (a file is not)."""
    agent = mailbox.agent_id
    kind = entry_kind(adir_fd, INBOX_DIR)
    if kind != "dir":
        if kind is not None and kind != "file":
            _refuse(report, agent, f"{agent}/{INBOX_DIR}", kind)
        return
    try:
        inbox_fd = _fs.open_dir(INBOX_DIR, dir_fd=adir_fd)
    except OSError as exc:
        _refuse(report, agent, f"{agent}/{INBOX_DIR}", why_refused(exc))
        return
    try:
        _ingest_inbox_dir(mailbox, adir_fd, inbox_fd, report, locks, settle, on_taken, budget)
    finally:
        os.close(inbox_fd)


def _ingest_inbox_dir(
    mailbox: FileMailbox,
    adir_fd: int,
    inbox_fd: int,
    report: IngestReport,
    locks: _LegacyLocks,
    settle: float,
    on_taken: Taken | None,
    budget: _Budget,
) -> None:
    """The files of the open ``inbox/`` under its lock, unless there are none or the budget is spent."""
    if not _has_candidates(inbox_fd):
        return
    if budget.spent:
        report.more = True  # the next call takes them
        return
    with locks.hold(inbox_fd, INBOX_DIR_LOCK, f"{INBOX_DIR}/{INBOX_DIR_LOCK}") as locked:
        if locked:
            ingest_folder(
                mailbox, adir_fd, inbox_fd, INBOX_DIR, report, settle, on_taken=on_taken, budget=budget
            )


class _Budget:
    """How many more chunks one `ingest` call may take (None: all of them)."""

    def __init__(self, chunks: int | None) -> None:
        self.left = chunks

    def spend(self) -> None:
        if self.left is not None:
            self.left -= 1

    @property
    def spent(self) -> bool:
        return self.left is not None and self.left <= 0


class _LegacyLocks:
    """Taking the legacy writers' locks for one `ingest` call (see ``skip_held`` there)."""

    def __init__(self, mb: FileMailbox, report: IngestReport, timeout: float, skip_held: bool) -> None:
        self.mb, self.report, self.timeout, self.skip_held = mb, report, timeout, skip_held

    @contextlib.contextmanager
    def hold(self, dir_fd: int, name: str, rel: str) -> Iterator[bool]:
        """The lock file ``name`` of ``dir_fd`` (``rel``: its path under the agent's folder), held for
        the block: True; False if it was refused (not a file) or, with ``skip_held``, held by another
        process (then listed in ``report.held``)."""
        shown = f"{self.mb.agent_id}/{rel}"
        key = os.path.join(self.mb.path, rel)
        if self.skip_held and not HELD.due(key):
            self._held(key, shown)
            yield False
            return
        with contextlib.ExitStack() as stack:
            yield self._take(stack, dir_fd, name, key, shown)

    def _take(self, stack: contextlib.ExitStack[Any], dir_fd: int, name: str, key: str, shown: str) -> bool:
        """Take the lock into ``stack``: True; False if it was refused or, with ``skip_held``, held by
        another process (which the backoff of `_held_locks` is told, as it is told a lock freed)."""
        try:
            stack.enter_context(hold_lock_file(name, self._wait(), dir_fd=dir_fd))
        except UnsafePathError as exc:
            _refuse(self.report, self.mb.agent_id, shown, str(exc))
            return False
        except LockTimeoutError:
            if not self.skip_held:
                raise
            self._found_held(key, shown)
            return False
        if self.skip_held:
            HELD.free(key, _fs.shown(shown))
        return True

    def _wait(self) -> float:
        """How long to wait for a lock: not at all with ``skip_held``, else the timeout."""
        return 0.0 if self.skip_held else self.timeout

    def _found_held(self, key: str, shown: str) -> None:
        """A lock found held by another process: its backoff is told, and it is listed as held."""
        HELD.held(key, _fs.shown(shown))
        self._held(key, shown)

    def _held(self, key: str, shown: str) -> None:
        self.report.held.append(_fs.shown(shown))
        wait = HELD.retry_in(key)
        if wait is not None:
            self.report.retry_in = wait if self.report.retry_in is None else min(self.report.retry_in, wait)


@contextlib.contextmanager
def agent_dir(mb: FileMailbox) -> Iterator[int]:
    """The agent's folder, opened without following links from the root (as the mailbox is), and
    checked to be the folder of the ``new/`` the mailbox holds open: every legacy file, journal and
    lock of an ingestion is reached through this descriptor only, never by path. A folder renamed
    away (by a co-tenant of the group) with a link or another folder put in its place since the
    mailbox was opened raises `UnsafePathError`: nothing is read, written or removed in it."""
    root_fd = os.open(mb.root, _fs.O_DIR)
    try:
        fd = _fs.open_dir(mb.agent_id, dir_fd=root_fd)
    finally:
        os.close(root_fd)
    try:
        here = os.fstat(fd)
        mine = os.stat("..", dir_fd=mb.folders.fd(State.NEW), follow_symlinks=False)
        if (here.st_dev, here.st_ino) != (mine.st_dev, mine.st_ino):
            raise UnsafePathError(
                f"{_fs.shown(str(mb.path))} is no longer the folder of this mailbox (replaced since it "
                "was opened): its legacy drops are left alone"
            )
        yield fd
    finally:
        os.close(fd)


def entry_kind(dir_fd: int, name: str) -> str | None:
    """``"file"``, ``"dir"``, None if absent, or what else it is (a symlink, a FIFO, …), unfollowed."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        return f"cannot be looked at: {exc.strerror}"
    return _kind_of(st.st_mode)


def _kind_of(mode: int) -> str:
    """`entry_kind` of an entry that is there, by its mode."""
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISLNK(mode):
        return "a symlink (never followed)"
    return f"not a regular file ({stat.filemode(mode)})"


def _has_candidates(dir_fd: int) -> bool:
    try:
        return any(is_drop_name(n) for n in _fs.listdir_at(dir_fd))
    except OSError:
        return False


def _bury(
    mb: FileMailbox, report: IngestReport, raw: bytes | _fs.ByteRange, name: str, why: str, source: str
) -> None:
    """``raw`` into ``dead/`` as ``name`` with a reason naming ``source`` (printable). A name too long
    for the filesystem is shortened as the mailbox shortens its own (`_fs.fit_name`: its first bytes
    and a digest of the whole, so still unique); burying is idempotent by that name."""
    name = _fs.fit_name(name, len(REASON_SUFFIX) + 8)  # the room the mailbox's dead-lettering keeps
    shown = _fs.shown(source)
    if mb.bury(raw, name, {"reason": why, "source": shown, "attempts": 0}):
        report.buried.append(Buried(shown, _fs.shown(name), why))


def _inbox_json_dead_name(origin: str, raw: bytes | _fs.ByteRange) -> str:
    return f"legacy-{INBOX_JSON}-{_derived_id(origin, raw)[7:23]}.json"


# -- inbox.json, in chunks ----------------------------------------------------------------------


def _chain(digest: bytes, canonical: bytes | None) -> bytes:
    """The digest of an array's first entries, one more entry on: its stdlib JSON (the same however a
    legacy writer indented the array), length-prefixed; None for one too large to be read. A chain (each
    digest over the one before), so a later step goes on from the digest the journal keeps."""
    tail = b"\xff" * 8 if canonical is None else len(canonical).to_bytes(8, "big") + canonical
    return hashlib.sha256(digest + tail).digest()


def _digest_add(digest: Any, canonical: bytes | None) -> None:
    """The running digest journals of earlier versions kept (``v`` absent), to honour them."""
    digest.update(b"\xff" * 8 if canonical is None else len(canonical).to_bytes(8, "big") + canonical)


@dataclass
class _Start:
    """Where an ``inbox.json`` ingestion starts: after the ``skip`` entries taken before."""

    count: int  # entries in the array
    skip: int = 0
    after: int | None = None  # the byte where entry ``skip - 1`` ends (None: from the beginning)
    chain: bytes = b""  # the digest of the entries before it (`_chain`)
    previous: list[str] = field(default_factory=list)  # the ids of the last chunk taken
    resumed: bool = False  # from where the last step stopped in this very file (`Journal.resumes`)

    @classmethod
    def resumed_at(cls, journal: Journal, resume: Resume) -> _Start:
        """Where the last step stopped, as its journal says (no first pass)."""
        return cls(
            resume.count, journal.taken, resume.offset, bytes.fromhex(journal.digest), resume.previous, True
        )

    @property
    def read_after(self) -> int | None:
        """The byte the reading starts after: the end of the entries skipped (None: from the start)."""
        return self.after if self.skip else None

    @property
    def to_read(self) -> bool:
        """Is there anything to read on? Entries not taken yet; or, if resumed, read on to the end
        whatever the journal says."""
        return self.skip < self.count or self.resumed


#: A chunk entry: (origin, its canonical JSON or where it is in the file, its value, where it ends).
_Entry = tuple[str, bytes | _fs.ByteRange, Any, int]


def _ingest_inbox_json(
    mb: FileMailbox,
    adir_fd: int,
    report: IngestReport,
    limit: int,
    on_taken: Taken | None = None,
    budget: _Budget | None = None,
) -> None:
    """Take ``inbox.json`` into ``new/`` chunk by chunk (`CHUNK_ENTRIES`). The caller holds its lock.

    The array is read element by element through a window of the file (`_json_stream`), twice: once
    to check all of it is JSON (a corrupt file goes to ``dead/`` whole, nothing published from it) and
    to find where the last ingestion stopped, then chunk by chunk: convert, journal, publish. The
    journal says how many entries were taken before the chunk (with a digest of them) and the chunk's
    ids; killed anywhere, the next ingestion skips the entries taken (legacy writers only append, under
    the lock) and recognises what it had published of the chunk. With a ``budget`` it stops after that
    many chunks and journals where it stopped: the next call, if the file is still the very one it read
    (`Journal.resumes`), reads on from there without the first pass. Once all are taken the array is
    emptied: ``[]`` is written to a file the journal names, then replaces ``inbox.json``, so a kill
    between the two is told apart from a new array that legacy writers started since. ``on_taken`` is
    told the entries taken before (skipped now), then each chunk's, once it is published."""
    source = f"{mb.agent_id}/{INBOX_JSON}"
    try:
        fd, st = _fs.open_regular(INBOX_JSON, limit, dir_fd=adir_fd)
    except FileNotFoundError:
        return
    except OSError as exc:
        _refuse(report, mb.agent_id, source, why_refused(exc))
        return
    try:
        _take_array(mb, adir_fd, fd, st, report, on_taken, budget or _Budget(None))
    finally:
        os.close(fd)


def _take_array(
    mb: FileMailbox,
    adir_fd: int,
    fd: int,
    st: os.stat_result,
    report: IngestReport,
    on_taken: Taken | None,
    budget: _Budget,
) -> None:
    """Take the open ``inbox.json`` (``fd``, ``st``) on from where the last ingestion stopped; once
    all of it is taken, empty it."""
    source = f"{mb.agent_id}/{INBOX_JSON}"
    journal = Journal(adir_fd, ARRAY_JOURNAL, agent=mb.agent_id)
    _settle_clearing(adir_fd, journal)
    max_item = max_entry_chars(mb.max_message_size)
    start = _array_start(mb, adir_fd, fd, st, report, journal, max_item, on_taken)
    if start is None:
        return
    taking = _Chunks(mb, report, journal, start, on_taken, file_id(st), budget)
    taking.tell_taken_before()
    if start.to_read and not _read_on(taking, fd, st, source, max_item, start, budget, report):
        return  # paused: the next call goes on
    _empty_inbox_json(adir_fd, journal, taking.taken, taking.chain.hex())
    journal.end()


def _array_start(
    mb: FileMailbox,
    adir_fd: int,
    fd: int,
    st: os.stat_result,
    report: IngestReport,
    journal: Journal,
    max_item: int,
    on_taken: Taken | None,
) -> _Start | None:
    """Where this ingestion starts: where the last step stopped if it stopped in this very file, else
    after the first pass (`_checked_start`). None if there is nothing to take (a blank or empty
    array: the journal ended; not JSON: buried whole)."""
    if is_blank(fd, st.st_size):
        journal.end()
        return None
    start = _resumed_or_checked(mb, adir_fd, fd, st, report, journal, max_item, on_taken)
    if start is not None and start.count == 0:
        journal.end()
        return None
    return start


def _resumed_or_checked(
    mb: FileMailbox,
    adir_fd: int,
    fd: int,
    st: os.stat_result,
    report: IngestReport,
    journal: Journal,
    max_item: int,
    on_taken: Taken | None,
) -> _Start | None:
    """Where the last step stopped, if its journal says it stopped in this very file; else where the
    first pass finds the ingestion starts (None: not JSON, buried whole)."""
    resume = journal.resumes(st)
    if resume is not None:
        return _Start.resumed_at(journal, resume)
    return _checked_start(mb, adir_fd, fd, st, report, journal, max_item, on_taken)


def _settle_clearing(adir_fd: int, journal: Journal) -> None:
    """After a kill while ``inbox.json`` was being emptied: was it emptied? If not, the ``[]`` file
    is removed; if so, the journal is forgotten (what the array holds now was appended since)."""
    if journal.clearing is None:
        return
    if entry_kind(adir_fd, journal.clearing) == "file":
        _fs.unlink_quietly(adir_fd, journal.clearing)  # killed before it replaced the array
    else:
        journal.forget()  # the array was emptied: what it holds now was appended since


def _checked_start(
    mb: FileMailbox,
    adir_fd: int,
    fd: int,
    st: os.stat_result,
    report: IngestReport,
    journal: Journal,
    max_item: int,
    on_taken: Taken | None,
) -> _Start | None:
    """The first pass (`_find_start`); None if the array is not JSON, then buried whole and emptied."""
    source = f"{mb.agent_id}/{INBOX_JSON}"
    try:
        return _find_start(fd, max_item, journal)
    except NotAnArray as exc:
        problem = str(exc)
    except ValueError as exc:
        problem = f"not valid JSON: {exc}"
    # The legacy readers replaced a corrupt inbox.json with [] and lost it; here it is kept.
    whole = _fs.ByteRange(fd, 0, st.st_size)
    _bury(mb, report, whole, _inbox_json_dead_name(source, whole), problem, source)
    _fs.replace_atomically_at(adir_fd, INBOX_JSON, b"[]")
    journal.end()
    if on_taken is not None:
        on_taken(1)
    return None


def _read_on(
    taking: _Chunks,
    fd: int,
    st: os.stat_result,
    source: str,
    max_item: int,
    start: _Start,
    budget: _Budget,
    report: IngestReport,
) -> bool:
    """Take the entries from ``start`` on; True if all were taken, False if it paused (the budget
    spent, or the file changed while it was read), where it stopped journaled."""
    try:
        stopped = _take_entries(taking, fd, source, max_item, start, budget)
    except ValueError as exc:
        # Checked as JSON before, unreadable now: the file changed while it was read. The next
        # call looks at it whole again (where it stands is journaled, the file's identity not).
        log.warning(
            "%s: %s changed while it was read (%s): looked at again next time",
            taking.mb.agent_id,
            source,
            exc,
        )
        taking.pause(None)  # (not ``more``: a file rewritten in place in a loop makes no busy loop)
        return False
    if stopped:
        taking.pause(file_id(st))
        report.more = True
        return False
    return True


def _take_entries(
    taking: _Chunks, fd: int, source: str, max_item: int, start: _Start, budget: _Budget
) -> bool:
    """Read the entries from ``start`` on and take them chunk by chunk; True if the budget stopped it
    before the last one."""
    chunk: list[_Entry] = []
    size = 0
    for element in open_array(fd, max_item=max_item, after=start.read_after):
        chunk.append(_entry(fd, f"{source}[{taking.taken + len(chunk)}]", element))
        size += element.end - element.start
        if len(chunk) >= CHUNK_ENTRIES or size >= CHUNK_CHARS:
            if _take_full_chunk(taking, chunk, start, budget):
                return True
            chunk, size = [], 0
    taking.take(chunk)
    return False


def _take_full_chunk(taking: _Chunks, chunk: list[_Entry], start: _Start, budget: _Budget) -> bool:
    """Take a full chunk; True if that spent the budget with entries of the array left."""
    taking.take(chunk)
    return budget.spent and taking.taken < start.count


def _entry(fd: int, origin: str, element: Element) -> _Entry:
    """The chunk entry of one array element: its canonical JSON, or (too large to be built) where it
    is in the file."""
    if element.value is TOO_LARGE:
        return (origin, _fs.ByteRange(fd, element.start, element.end - element.start), TOO_LARGE, element.end)
    return (origin, _json.dumps(element.value), element.value, element.end)


def _find_start(fd: int, max_item: int, journal: Journal) -> _Start:
    """The first pass: is all of the array JSON (else ``ValueError``), how many entries, and where this
    ingestion starts: after the entries taken before, if the array still begins with exactly those
    (legacy writers only append); from the beginning otherwise."""
    want = journal.taken
    prefix = _PrefixDigest(legacy=bool(want) and not journal.chained)
    start = _scan_array(fd, max_item, want, prefix)
    if _begins_with_taken(start, want, prefix, journal):
        start.skip, start.chain = want, prefix.chain
    else:
        if want:
            log.warning(
                "%s: %s no longer begins with the %d entries an earlier ingestion took: taken whole",
                journal.agent,
                INBOX_JSON,
                want,
            )
        start.after = None
    return start


def _scan_array(fd: int, max_item: int, want: int, prefix: _PrefixDigest) -> _Start:
    """The array read through once: its entries counted, the first ``want`` of them added to
    ``prefix``, and where the last of those ends (``after``)."""
    start = _Start(0)
    for element in open_array(fd, max_item=max_item):
        if start.count < want:
            prefix.add(element.value)
            if start.count == want - 1:
                start.after = element.end
        start.count += 1
    return start


def _begins_with_taken(start: _Start, want: int, prefix: _PrefixDigest, journal: Journal) -> bool:
    """Does the array still begin with exactly the ``want`` entries the journal says were taken?"""
    return bool(want) and start.count >= want and prefix.hexdigest() == journal.digest


class _PrefixDigest:
    """The digest of an array's first entries, as the journal keeps it: a chain (`_chain`), or for a
    journal of an earlier version (``legacy``) the running digest it kept (`_digest_add`)."""

    def __init__(self, *, legacy: bool) -> None:
        self.chain = b""
        self.old = hashlib.sha256() if legacy else None

    def add(self, value: Any) -> None:
        """One more entry (its value, or `TOO_LARGE`)."""
        canonical = None if value is TOO_LARGE else _json.dumps(value)
        self.chain = _chain(self.chain, canonical)
        if self.old is not None:
            _digest_add(self.old, canonical)

    def hexdigest(self) -> str:
        """The digest to compare with the journal's."""
        return self.old.hexdigest() if self.old is not None else self.chain.hex()


class _Chunks:
    """Publishing ``inbox.json`` chunk by chunk, from the entry ``start.skip`` on."""

    def __init__(
        self,
        mb: FileMailbox,
        report: IngestReport,
        journal: Journal,
        start: _Start,
        on_taken: Taken | None,
        file: FileId,
        budget: _Budget,
    ) -> None:
        self.mb, self.report, self.journal, self.on_taken = mb, report, journal, on_taken
        self.file, self.count, self.budget = file, start.count, budget
        self.taken = start.skip  # entries taken so far
        self.chain = start.chain  # the digest of those entries
        self.after = start.after  # where the last of them ends
        self.carried = set(journal.ids)  # what an interrupted ingestion was publishing…
        self.carried_upto = journal.upto  # …from the entries before this index
        self.previous: set[str] = set(start.previous)  # the ids of the chunk before

    def _resume(self, file: FileId | None = None) -> Resume | None:
        file = file or self.file
        return Resume(file, self.count, self.after, sorted(self.previous)) if file else None

    def take(self, chunk: list[_Entry]) -> None:
        """Publish one chunk (its entries from index ``taken`` on; `TOO_LARGE` ones are buried), then
        tell ``on_taken`` how many entries it had (published, found there already, or buried)."""
        if not chunk:
            return
        items = self._built(chunk)
        carried = self.carried if self.taken < self.carried_upto else set()
        taken, before, at = self.taken, self.chain.hex(), self._resume()
        upto = max(taken + len(chunk), self.carried_upto if carried else 0)

        def record(ids: list[str]) -> None:
            self.journal.write(
                ids + sorted(carried.difference(ids)), taken=taken, digest=before, upto=upto, resume=at
            )

        self.previous = _publish(self.mb, items, self.report, record, carried, self.previous)
        self._passed(chunk)

    def _built(self, chunk: list[_Entry]) -> list[tuple[str, bytes, Any]]:
        """The chunk's entries to publish; those too large to be built (`TOO_LARGE`) are buried."""
        items: list[tuple[str, bytes, Any]] = []
        for origin, raw, value, _end in chunk:
            if isinstance(raw, _fs.ByteRange):
                why = unbuilt_reason(raw.length, self.mb.max_message_size)
                _bury(self.mb, self.report, raw, _inbox_json_dead_name(origin, raw), why, origin)
            else:
                items.append((origin, raw, value))
        return items

    def _passed(self, chunk: list[_Entry]) -> None:
        """A published chunk counted as taken (the digest, the count, where it ends), the budget
        spent, ``on_taken`` told."""
        for _origin, raw, _value, _end in chunk:
            self.chain = _chain(self.chain, None if isinstance(raw, _fs.ByteRange) else raw)
        self.taken += len(chunk)
        self.after = chunk[-1][3]
        self.budget.spend()
        self._tell(len(chunk))

    def tell_taken_before(self) -> None:
        """Tell ``on_taken`` the entries taken before this call (by an earlier step, or an
        interrupted ingestion), skipped now."""
        if self.taken:
            self._tell(self.taken)

    def _tell(self, n: int) -> None:
        if self.on_taken is not None:
            self.on_taken(n)

    def pause(self, file: FileId | None) -> None:
        """Journal where this call stopped (between chunks): the next goes on from there, reading on
        from ``after`` while the file is still ``file`` (None: it looks at the file whole again)."""
        carried = self.carried if self.taken < self.carried_upto else set()
        upto = self.carried_upto if carried else self.taken
        resume = self._resume(file) if file is not None else None
        self.journal.write(
            sorted(carried), taken=self.taken, digest=self.chain.hex(), upto=upto, resume=resume
        )


def _empty_inbox_json(adir_fd: int, journal: Journal, taken: int, digest: str) -> None:
    """Replace ``inbox.json`` with ``[]`` (its mode kept: legacy writers of other users append to it).

    ``[]`` goes to a temp file first, and the journal names it before it replaces the array: if that
    file is still there after a kill, the array was not emptied (see `_ingest_inbox_json`)."""
    try:
        mode = stat.S_IMODE(os.stat(INBOX_JSON, dir_fd=adir_fd, follow_symlinks=False).st_mode)
    except FileNotFoundError:
        mode = 0o600
    tmp = f".{INBOX_JSON}.hybridcomms-{uuid.uuid4().hex[:12]}.tmp"
    fd = os.open(tmp, _fs.O_CREATE_MSG, 0o600, dir_fd=adir_fd)
    try:
        try:
            os.write(fd, b"[]")
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException:
        _fs.unlink_quietly(adir_fd, tmp)  # not named by the journal: nobody would look for it
        raise
    # From here on the file stays until the rename (or the next ingestion) takes it: once the journal
    # names it, its being there is what says the array was not emptied.
    journal.write(journal.ids, taken=taken, digest=digest, upto=taken, clearing=tmp)
    os.rename(tmp, INBOX_JSON, src_dir_fd=adir_fd, dst_dir_fd=adir_fd)
    os.fsync(adir_fd)


# -- folders of legacy files ----------------------------------------------------------------------

#: Files of an agent's own folder that are never legacy (L4) messages.
NOT_MESSAGES = frozenset({INBOX_JSON, "subscriptions.json"})


def ingest_folder(
    mb: FileMailbox,
    adir_fd: int,
    folder_fd: int,
    rel: str,
    report: IngestReport,
    settle: float = DEFAULT_SETTLE,
    *,
    exclude: frozenset[str] = frozenset(),
    on_taken: Taken | None = None,
    budget: _Budget | None = None,
) -> None:
    """Publish every ``*.json`` file of the folder ``folder_fd`` (``rel``: its path under the agent's
    folder ``adir_fd``, which holds the journal; ``"."`` for the folder itself) into ``new/`` and
    remove it; bury what is not JSON or does not convert. Links, FIFOs and oversized files are
    refused and left. The caller holds any lock.

    The files are taken in chunks (`CHUNK_ENTRIES` files or `CHUNK_CHARS` bytes of them, `_FolderChunks`):
    each chunk is journaled, published and its files removed before the next is read, so what is in
    memory is one chunk whatever the number of files, and ``on_taken`` is told after each how many
    files it took (published, found there already, or buried). With a ``budget``, it stops once that
    is spent (``report.more``): the files not taken are still there for the next call."""
    now = time.time()
    label = "" if rel == "." else rel.replace(os.sep, "-")
    journal = Journal(adir_fd, folder_journal_name(label), agent=mb.agent_id)
    taking = _FolderChunks(mb, folder_fd, report, journal, label, on_taken, budget)
    prefix = f"{mb.agent_id}/" if not label else f"{mb.agent_id}/{rel}/"
    taking.take_all(sorted(_fs.listdir_at(folder_fd)), prefix, exclude, now, settle)
    taking.finish()


class _FolderChunks:
    """Publishing a folder's files chunk by chunk (`ingest_folder`), as `_Chunks` publishes ``inbox.json``.

    The folder's journal names the ids of the chunk being published, and (until this ingestion has
    met them) the ids an interrupted one was publishing: killed anywhere, the next ingestion finds the
    files of the chunk still there (they are removed only once it is published) and does not publish
    again what the journal names and the mailbox holds. A file whose id was already taken in this
    ingestion (the same message dropped twice) is delivered once, as when the folder was one batch."""

    def __init__(
        self,
        mb: FileMailbox,
        folder_fd: int,
        report: IngestReport,
        journal: Journal,
        label: str,
        on_taken: Taken | None,
        budget: _Budget | None = None,
    ) -> None:
        self.mb, self.folder_fd, self.report, self.journal = mb, folder_fd, report, journal
        self.label, self.on_taken = label, on_taken
        self.budget = budget if budget is not None else _Budget(None)  # (None: no limit)
        self.carried = set(journal.ids)  # what an interrupted ingestion was publishing, not met yet
        self.seen: set[str] = set()  # the ids taken so far (only ids: the messages are not kept)
        self.names: list[str] = []  # the files of the chunk (removed once it is published)
        self.items: list[tuple[str, bytes, Any]] = []  # what of them is to publish
        self.size = 0

    def take_all(
        self, names: list[str], prefix: str, exclude: frozenset[str], now: float, settle: float
    ) -> None:
        """Take the folder's legacy files (``prefix``: its path under the root) in order, until the
        budget is spent (then more is waiting: ``report.more``)."""
        for name in names:
            if self.budget.spent:
                self.report.more = True
                return
            if is_drop_name(name) and name not in exclude:  # else lock and temp files, and what is
                self.take_file(name, prefix + name, now, settle)  # not JSON (.md notes): left there
        self.flush()

    def take_file(self, name: str, source: str, now: float, settle: float) -> None:
        """One legacy file into the chunk, or buried if it is not JSON; refused if it is not a regular
        file, left for later if it is not JSON yet (changed less than ``settle`` seconds ago)."""
        mb, report = self.mb, self.report
        try:
            st = os.stat(name, dir_fd=self.folder_fd, follow_symlinks=False)
            raw = _fs.read_regular(name, mb.max_message_size, dir_fd=self.folder_fd)
        except FileNotFoundError:
            return
        except OSError as exc:
            _refuse(report, mb.agent_id, source, why_refused(exc))
            return
        try:
            obj = _json.loads(raw)
        except ValueError as exc:
            if now - st.st_mtime < settle:
                report.waiting.append(_fs.shown(source))  # perhaps still being written by an unlocked writer
                return
            _bury(mb, report, raw, _bury_name(self.label, name), f"not valid JSON: {exc}", source)
            self.add(name, len(raw))  # removed with its chunk (buried again is a no-op)
            return
        self.add(name, len(raw), (source, raw, obj))

    def add(self, name: str, size: int, item: tuple[str, bytes, Any] | None = None) -> None:
        """One file of the chunk (``item``: to publish; None: already buried); a full chunk goes."""
        self.names.append(name)
        if item is not None:
            self.items.append(item)
        self.size += size
        if len(self.names) >= CHUNK_ENTRIES or self.size >= CHUNK_CHARS:
            self.flush()

    def flush(self) -> None:
        """Journal and publish the chunk, then remove its files and tell ``on_taken``."""
        if not self.names:
            return
        carried = self.carried

        def record(ids: list[str]) -> None:
            self.journal.write(ids + sorted(carried.difference(ids)))

        ids = _publish(self.mb, self.items, self.report, record, carried, self.seen, label=self.label)
        remove_taken(self.folder_fd, self.names)
        self.carried -= ids  # met: published now, or found published
        self.seen |= ids
        self.budget.spend()
        if self.on_taken is not None:
            self.on_taken(len(self.names))
        self.names, self.items, self.size = [], [], 0

    def finish(self) -> None:
        """Every chunk published (or the budget spent between two): the journal keeps only what an
        interrupted ingestion was publishing that was not met yet, if the folder was not all taken."""
        if self.carried and self.report.more:
            self.journal.write(sorted(self.carried))
        else:
            self.journal.end()


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
    record: Callable[[list[str]], None],
    carried: set[str],
    previous: Container[str] = frozenset(),
    *,
    label: str | None = None,
) -> set[str]:
    """Convert, journal (``record`` the batch's ids), publish; bury what does not convert. Returns
    the batch's ids. ``carried``: ids an interrupted ingestion was publishing (those found in the
    mailbox are not published again); ``previous``: ids just published (an entry appended twice in a
    row is delivered once)."""
    messages = _converted(mb, items, report, previous, label)
    if not messages:
        return set()
    pending = carried.intersection(messages)
    already = ids_present(mb, (State.NEW, State.PROCESSING, State.DONE, State.DEAD), among=pending)
    report.duplicates += len(already)
    record(list(messages))  # all of them: killed again, those published already are known too
    _put_fresh(mb, report, messages, already)
    return set(messages)


def _put_fresh(
    mb: FileMailbox, report: IngestReport, messages: dict[str, Message], already: set[str]
) -> None:
    """Publish the messages not ``already`` in the mailbox, and report them ingested."""
    fresh = [m for i, m in messages.items() if i not in already]
    if fresh:
        mb.put_many(fresh)
        report.add_ingested([m.id for m in fresh])


def _converted(
    mb: FileMailbox,
    items: list[tuple[str, bytes, Any]],
    report: IngestReport,
    previous: Container[str],
    label: str | None,
) -> dict[str, Message]:
    """The batch's messages by id: what does not convert is buried, a message met twice (in the
    batch, or in ``previous``) is counted a duplicate and kept once."""
    messages: dict[str, Message] = {}
    for source, raw, obj in items:
        try:
            message = message_from_legacy(
                obj, agent_id=mb.agent_id, origin=source, raw=raw, max_size=mb.max_message_size
            )
        except MessageError as exc:
            _bury(
                mb, report, raw, _unconverted_name(source, raw, label), f"cannot be converted: {exc}", source
            )
            continue
        if message.id in messages or message.id in previous:
            report.duplicates += 1  # the same message appended twice: delivered once
            continue
        messages[message.id] = message
    return messages


def _unconverted_name(source: str, raw: bytes, label: str | None) -> str:
    """The name in ``dead/`` of an entry that does not convert: a folder's file by its name (``label``:
    the folder's), an ``inbox.json`` entry by its digest."""
    if label is not None:
        return _bury_name(label, source.rsplit("/", 1)[1])
    return _inbox_json_dead_name(source, raw)


def ids_present(mb: FileMailbox, states: tuple[State, ...], *, among: set[str] | None = None) -> set[str]:
    """The message ids that have a file in these folders of ``mb`` (read from the names); with
    ``among``, only those of these ids (the folders are streamed then, never held whole)."""
    found: set[str] = set()
    if among is not None and not among:
        return found
    for state in states:
        found |= _ids_in(mb, state, among)
    return found


def _ids_in(mb: FileMailbox, state: State, among: set[str] | None) -> set[str]:
    """The message ids of the files in one folder of ``mb`` (with ``among``: only those); those read
    before an error, if it cannot be read to the end."""
    found: set[str] = set()
    try:  # through the folders the mailbox holds open: never a path walked again
        if mb.folders.has(state):
            with os.scandir(mb.folders.fd(state)) as entries:
                found.update(_named_ids(entries, among))
    except (OSError, HybridCommsError):
        pass
    return found


def _named_ids(entries: Iterator[os.DirEntry[str]], among: set[str] | None) -> Iterator[str]:
    """The message ids these folder entries' names give (with ``among``: only those of these ids)."""
    for entry in entries:
        info = parse_name(entry.name)
        if info is not None and (among is None or info.id in among):
            yield info.id


class IngestProbe:
    """Decides cheaply when an agent's legacy files need another look: when ``inbox.json`` or the
    ``inbox/`` folder changed since the last ingestion, at least every ``every`` seconds anyway, and
    at once while more is waiting or a lock was held (its backoff decides when it is tried again).

    It never waits for a legacy lock another process holds (`ingest` with ``skip_held``), and takes
    at most ``max_chunks`` chunks a call (None: everything), so a loop that calls it between
    deliveries goes on delivering whatever legacy writers (or a co-tenant) do."""

    def __init__(self, mailbox: FileMailbox, *, every: float = 30.0, max_chunks: int | None = None) -> None:
        self.mailbox = mailbox
        self.every = every
        self.max_chunks = max_chunks
        self._seen: tuple[Any, Any] | None = None
        self._next_full = 0.0

    def _signature(self) -> tuple[Any, Any]:
        out: list[tuple[int, int, int] | None] = []
        for name in (INBOX_JSON, INBOX_DIR):
            try:
                st = os.stat(self.mailbox.path / name, follow_symlinks=False)
                out.append((st.st_mtime_ns, st.st_size, st.st_ino))
            except OSError:
                out.append(None)
        return out[0], out[1]

    def run(self, *, force: bool = False) -> IngestReport | None:
        """Ingest if something may have changed; None if it was not worth looking."""
        now = time.monotonic()
        sig = self._signature()
        if not force and self._unchanged(sig, now):
            return None
        if sig == (None, None):
            self._seen, self._next_full = sig, now + self.every
            return None
        report = ingest(self.mailbox, max_chunks=self.max_chunks, skip_held=True)
        self._remember(sig, now, report)
        return report

    def _unchanged(self, sig: tuple[Any, Any], now: float) -> bool:
        """Is it the signature of the last look, and a look anyway not due yet?"""
        return sig == self._seen and now < self._next_full

    def _remember(self, sig: tuple[Any, Any], now: float, report: IngestReport) -> None:
        """What the next call compares with: this look's signature, unless something was left (then
        the next call looks again), and when a look is due anyway."""
        # The signature from *before*: a drop that lands during or right after this ingestion changes
        # it, so the next call looks again (our own rewrite of inbox.json costs one extra look).
        self._seen = sig if not (report.waiting or report.held or report.more) else None
        self._next_full = now + self.every


class LegacyIntake:
    """The Dream.OS legacy drops as the core's intake plug-in (`hybridcomms.intake`)."""

    def is_drop(self, parts: tuple[str, ...]) -> bool:
        return (len(parts) == 2 and parts[1] == INBOX_JSON) or (
            len(parts) == 3 and parts[1] == INBOX_DIR and is_drop_name(parts[2])
        )

    def pending(self, root: str | os.PathLike[str], agent: str) -> bool:
        return has_legacy_drops(root, agent)

    def take(self, mailbox: FileMailbox) -> int:
        return ingest(mailbox).n_ingested

    def step(self, mailbox: FileMailbox) -> Step:
        report = ingest(mailbox, max_chunks=1, skip_held=True)
        return Step(report.n_ingested, report.more, report.retry_in)

    def prober(self, mailbox: FileMailbox) -> Callable[[bool], Step]:
        probe = IngestProbe(mailbox, max_chunks=1)

        def run(force: bool = False) -> Step:
            report = probe.run(force=force)
            if report is None:
                return Step()
            return Step(report.n_ingested, report.more, report.retry_in)

        return run


#: The plug-in object `hybridcomms.intake.get` returns.
INTAKE = LegacyIntake()
