"""The message envelope and its JSON form.

One message is one JSON object (one file in a file mailbox). The native form is::

    {"version": 1, "id": "…", "topic": "…", "sender": …, "recipient": …,
     "created_at": "2026-11-26T11:24:03.123456Z", "expires": null, "priority": "MEDIUM",
     "correlation_id": …, "reply_to": …, "headers": {…}, "payload": …}

``expires`` is null, or a time in the same form as ``created_at``: a message whose expiry has passed is
dead-lettered with the reason ``expired`` when a mailbox would hand it out, never delivered. A file
written without the field (before it existed) reads as one that never expires.

``Message.from_dict`` also reads the Dream.OS spellings (``message_id``, ``type`` /
``message_type``, ``body`` / ``content``, ``timestamp_utc`` / ``timestamp``,
``sender_agent_id`` / ``from_agent`` / ``from``, ``recipient_agent_id`` / ``to_agent`` / ``to``)
so legacy files stay readable; legacy fields with no envelope slot are kept in ``headers``.
"""

from __future__ import annotations

import hashlib
import math
import operator
import re
import sys
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from enum import IntEnum
from typing import Any, TypeGuard

import orjson

from ._text import printable, shows_as_itself
from .errors import MessageDecodeError, MessageError, MessageTooLargeError

__all__ = ["DEFAULT_MAX_MESSAGE_SIZE", "FORMAT_VERSION", "Message", "Priority", "pattern_matches"]

FORMAT_VERSION = 1
DEFAULT_MAX_MESSAGE_SIZE = 1 << 20  # 1 MiB, encoded

# Message ids become part of file names: keep them to one safe path component.
ID_RE = re.compile(r"[A-Za-z0-9_:@+-][A-Za-z0-9._:@+-]{0,127}\Z")
_MAX_TOPIC = 256


def _topic_ok(topic: str) -> bool:
    """1-256 characters that each show as themselves (`hybridcomms._text.shows_as_itself`): no C0 or
    C1 control, DEL, invisible format character (bidi overrides and isolates, zero-width marks), line
    or paragraph separator, lone surrogate, private-use or unassigned code point, and no
    Default_Ignorable_Code_Point (combining grapheme joiner, variation selectors, Hangul fillers, tag
    characters, soft hyphen…). A topic is printed for people (ls, show, tail, watch --bus) and routed
    by the policy: nothing in it may act on a terminal, and two topics that look alike are equal."""
    return 0 < len(topic) <= _MAX_TOPIC and shows_as_itself(topic)


class Priority(IntEnum):
    """Delivery priority. Higher values are claimed first."""

    LOW = 0
    MEDIUM = 1
    HIGH = 2
    CRITICAL = 3

    @classmethod
    def parse(cls, value: object) -> Priority:
        """Read a priority from a member, a name (any case; Dream.OS ``NORMAL``/``INFO`` too) or 0..3."""
        if isinstance(value, Priority):
            return value
        if isinstance(value, bool):
            raise MessageError(f"priority must be a name or 0..3, not {value!r}")
        if isinstance(value, int):
            return cls(min(max(value, 0), 3))
        if isinstance(value, str):
            return cls._from_text(value)
        raise _unknown_priority(value)

    @classmethod
    def _from_text(cls, value: str) -> Priority:
        """A priority written as a name or alias (any case, spaces around) or as the digits of 0..3."""
        name = value.strip().upper()
        alias = _PRIORITY_ALIASES.get(name)
        if alias is not None:
            return alias
        if name.isdigit():
            return cls.parse(int(name))
        raise _unknown_priority(value)


def _unknown_priority(value: object) -> MessageError:
    """The error for a value that names no priority."""
    return MessageError(f"unknown priority {value!r}; use LOW, MEDIUM, HIGH or CRITICAL")


_PRIORITY_NAMES = {p: p.name for p in Priority}
_PRIORITY_OF_NAME = {p.name: p for p in Priority}
_PRIORITY_ALIASES = _PRIORITY_OF_NAME | {
    "NORMAL": Priority.MEDIUM,
    "INFO": Priority.LOW,
    "URGENT": Priority.CRITICAL,
}


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _as_utc(value: object, what: str = "created_at") -> datetime:
    if not isinstance(value, datetime):
        raise MessageError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None:
        raise MessageError(f"{what} must be timezone-aware (UTC)")
    try:
        return value.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise MessageError(f"{what} {value!r} is out of range in UTC") from None


def _expiry(created_at: datetime, expires: object, ttl: object) -> datetime | None:
    """``expires`` as aware UTC, or ``created_at`` + ``ttl`` (seconds or a timedelta); None for neither."""
    if ttl is None:
        return None if expires is None else _as_utc(expires, "expires")
    if expires is not None:
        raise MessageError("give expires or ttl, not both")
    try:
        return created_at + timedelta(seconds=_ttl_seconds(ttl))
    except OverflowError:
        raise MessageError(f"ttl {ttl!r} puts the expiry past the year 9999") from None


def _ttl_seconds(ttl: object) -> float:
    """A lifetime given as seconds or a `timedelta`, as finite seconds >= 0."""
    seconds = _seconds_of(ttl)
    if not math.isfinite(seconds) or seconds < 0:
        raise MessageError(f"ttl must be a finite number of seconds >= 0, not {ttl!r}")
    return seconds


def _seconds_of(ttl: object) -> float:
    """A lifetime given as a number of seconds or a `timedelta`, as seconds (any float)."""
    if isinstance(ttl, timedelta):
        return ttl.total_seconds()
    if _is_number(ttl):
        return float(ttl)
    raise MessageError(f"ttl must be seconds or a timedelta, not {type(ttl).__name__}")


def _is_number(value: object) -> TypeGuard[int | float]:
    """Whether ``value`` is an int or a float (a bool, although an int, is not a number here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_optional_strings(**values: object) -> None:
    for name, value in values.items():
        if value is not None and not isinstance(value, str):
            raise MessageError(f"{name} must be a string or None, not {type(value).__name__}")


def _check_headers(headers: object) -> None:
    if not isinstance(headers, Mapping) or not all(type(k) is str for k in headers):
        raise MessageError("headers must be a mapping with string keys")


def new_id() -> str:
    """A fresh message id: uuid4 as 32 hex digits."""
    return uuid.uuid4().hex


def check_id(value: object, what: str = "message id") -> str:
    if not isinstance(value, str) or not ID_RE.match(value):
        raise MessageError(
            f"{what} {value!r} is not safe: use 1-128 of A-Z a-z 0-9 . _ : @ + -, not starting with a dot"
        )
    return value


#: The envelope's fields, defined once, in the order they are written (after ``"version"``); a
#: native message file is exactly these and ``version``. Everything else derives from this tuple.
FIELDS: tuple[str, ...] = (
    "id",
    "topic",
    "sender",
    "recipient",
    "created_at",
    "expires",
    "priority",
    "correlation_id",
    "reply_to",
    "headers",
    "payload",
)


def has_non_finite(value: Any) -> bool:
    """True if ``value`` (JSON-shaped) holds a NaN or an infinity: orjson would write them as null,
    changing what was sent without a word, so senders refuse them instead."""
    stack = [value]
    while stack:
        v = stack.pop()
        t = type(v)
        if t is float:
            if v != v or v in (math.inf, -math.inf):
                return True
        elif t is dict:
            stack.extend(v.values())
        elif t is list or t is tuple:
            stack.extend(v)
        elif isinstance(v, float) and not math.isfinite(v):  # a float subclass
            return True
    return False


def nulls_hide_non_finite(data: bytes, known_nulls: int, *values: Any) -> bool:
    """Whether ``data`` (orjson's encoding of ``values`` and of fields with ``known_nulls`` nulls)
    changed a NaN or an infinity into null. The values are walked only when ``data`` holds more nulls
    than the fields account for, so the common case costs one count."""
    return data.count(b"null") > known_nulls and any(has_non_finite(v) for v in values)


@dataclass(frozen=True, init=False)
class Message:
    """An immutable message envelope.

    ``topic`` is the message type (``dreamos.agent.Agent-1.task.command``, ``TASK_COMMAND``…);
    ``payload`` is any JSON value. ``id`` is stable across redeliveries, so handlers can be
    idempotent. ``created_at`` is always timezone-aware UTC. ``priority`` accepts a `Priority`,
    its name (``"HIGH"``) or 0..3, and is always stored as a `Priority`.

    ``expires`` (aware UTC, or None: never) is when the message stops being worth delivering: a
    mailbox dead-letters it with the reason ``expired`` instead of handing it out after that.
    ``ttl=`` (seconds or a `timedelta`) is the same given as a lifetime: ``created_at + ttl``.
    """

    topic: str
    payload: Any
    sender: str | None
    recipient: str | None
    priority: Priority
    id: str
    created_at: datetime
    expires: datetime | None
    correlation_id: str | None
    reply_to: str | None
    headers: Mapping[str, Any]

    def __init__(
        self,
        topic: str,
        payload: Any = None,
        *,
        sender: str | None = None,
        recipient: str | None = None,
        priority: Priority | str | int = Priority.MEDIUM,
        id: str | None = None,
        created_at: datetime | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        headers: Mapping[str, Any] | None = None,
        expires: datetime | None = None,
        ttl: float | timedelta | None = None,
    ) -> None:
        # Checked with cheap type tests and precompiled patterns: this runs on every claim.
        if type(topic) is not str or not _topic_ok(topic):
            raise MessageError(
                f"topic must be a string of 1-{_MAX_TOPIC} characters, with no control, invisible or "
                f"default-ignorable characters: {printable(repr(topic))}"
            )
        if id is None:
            id = new_id()
        elif type(id) is not str or not ID_RE.match(id):
            check_id(id)
        if created_at is None:
            created_at = _utcnow()
        elif type(created_at) is not datetime or created_at.tzinfo is not timezone.utc:
            created_at = _as_utc(created_at)
        if expires is not None or ttl is not None:
            expires = _expiry(created_at, expires, ttl)
        if not (
            (sender is None or type(sender) is str)
            and (recipient is None or type(recipient) is str)
            and (correlation_id is None or type(correlation_id) is str)
            and (reply_to is None or type(reply_to) is str)
        ):
            _check_optional_strings(
                sender=sender, recipient=recipient, correlation_id=correlation_id, reply_to=reply_to
            )
        if headers is None:
            headers = {}
        elif type(headers) is not dict or headers:  # an empty dict needs no look
            _check_headers(headers)
        if type(priority) is not Priority:
            priority = Priority.parse(priority)
        # Frozen: the whole attribute dict is set in one step (also the fast path of decoding), in
        # the order of FIELDS, which is the order on the wire.
        values = (
            id,
            topic,
            sender,
            recipient,
            created_at,
            expires,
            priority,
            correlation_id,
            reply_to,
            headers,
            payload,
        )
        object.__setattr__(self, "__dict__", dict(zip(FIELDS, values, strict=True)))

    # -- JSON ---------------------------------------------------------------------------------

    def _wire(self) -> dict[str, Any]:
        """The native JSON object with ``created_at`` still a datetime (see `FIELDS`)."""
        out = {"version": FORMAT_VERSION, **self.__dict__}
        out["priority"] = _PRIORITY_NAMES[self.priority]
        if type(self.headers) is not dict:
            out["headers"] = dict(self.headers)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The native JSON object (created_at as ISO-8601 with a ``Z``)."""
        out = self._wire()
        out["created_at"] = iso_utc(self.created_at)
        if self.expires is not None:
            out["expires"] = iso_utc(self.expires)
        out["headers"] = dict(self.headers)
        return out

    def expired(self, now: float | None = None) -> bool:
        """Whether ``expires`` has passed at ``now`` (POSIX seconds; default: the clock)."""
        expires = self.expires
        if expires is None:
            return False
        return expires.timestamp() <= (time.time() if now is None else now)

    def encode(self, max_size: int | None = DEFAULT_MAX_MESSAGE_SIZE) -> bytes:
        """Serialise to JSON bytes; raise before anything is written if it cannot be sent."""
        wire = self._wire()
        try:  # created_at: orjson writes RFC 3339, with "Z" under OPT_UTC_Z
            data = orjson.dumps(wire, option=orjson.OPT_UTC_Z)
        except TypeError as exc:  # orjson.JSONEncodeError is a TypeError
            raise TypeError(f"message {self.id} is not JSON-serialisable: {exc}") from exc
        if nulls_hide_non_finite(data, sum(v is None for v in wire.values()), self.payload, wire["headers"]):
            raise TypeError(f"message {self.id} holds NaN or an infinity, which JSON cannot carry")
        if max_size is not None and len(data) > max_size:
            raise MessageTooLargeError(len(data), max_size)
        return data

    @classmethod
    def decode(cls, raw: bytes, *, path: str | None = None) -> Message:
        """Parse JSON bytes (native or Dream.OS form). Raises `MessageDecodeError` with the bytes kept."""
        if not raw:
            raise MessageDecodeError("empty file", raw=raw, path=path)
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise MessageDecodeError(f"invalid JSON: {exc}", raw=raw, path=path) from None
        if not isinstance(obj, dict):
            raise MessageDecodeError(f"expected a JSON object, got {type(obj).__name__}", raw=raw, path=path)
        try:
            return cls.from_dict(obj)
        except _UNREADABLE as exc:
            raise MessageDecodeError(_unreadable_reason(exc), raw=raw, path=path) from None

    @classmethod
    def from_dict(cls, obj: Mapping[str, Any]) -> Message:
        """Build from the native object, or from any Dream.OS spelling of it."""
        if obj.get("version") == FORMAT_VERSION:
            fast = from_native(obj) if type(obj) is dict else None
            return fast if fast is not None else _from_native_checked(obj)
        return _from_unversioned(obj)


#: What reading a decoded JSON object as a message may raise: the file's problem, never the caller's.
_UNREADABLE = (
    MessageError,
    TypeError,
    ValueError,
    ArithmeticError,
    LookupError,
    RecursionError,
    AttributeError,
)


def _unreadable_reason(exc: BaseException) -> str:
    """Why a JSON object is not a message, said from what reading it raised."""
    if isinstance(exc, MessageDecodeError):
        return exc.reason
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    if isinstance(exc, (MessageError, TypeError, ValueError)):
        return str(exc)
    # Values at the edge of their type (a date whose UTC form overflows, …): the file's problem,
    # said as a decode error, never an exception that stops the consumer.
    return f"cannot be read as a message: {type(exc).__name__}: {exc}"


#: The fields every native file has (``expires`` came later: a file without it never expires).
_NATIVE_FIELDS = operator.itemgetter(*(f for f in FIELDS if f != "expires"))


def iso_utc(dt: datetime) -> str:
    """An aware UTC datetime in the native form: ``2026-11-26T11:24:03.123456Z``."""
    return dt.isoformat(timespec="microseconds")[:26] + "Z"


#: Topics that passed `_topic_ok` (a consumer sees few distinct topics; a set lookup is ~10x
#: cheaper than the match). Cleared when it grows past its bound.
_KNOWN_TOPICS: set[str] = set()
_MAX_KNOWN_TOPICS = 4096


def _native_priority(value: Any) -> Any:
    """A priority name of the native form as its member; anything else as it is, for
    `Priority.parse` to accept (0..3, other spellings) or to refuse with a clear error."""
    return _PRIORITY_ALIASES.get(value, value) if type(value) is str else value


def pattern_matches(pattern: str, topic: str) -> bool:
    """Whether a subscription ``pattern`` matches ``topic``: ``*`` (every topic), the topic itself,
    or ``prefix.*`` (the topic ``prefix`` and every topic under ``prefix.``). The one rule of the bus
    and of durable subscriptions."""
    if pattern == "*" or pattern == topic:
        return True
    if pattern.endswith(".*"):
        prefix = pattern[:-2]
        return topic == prefix or topic.startswith(prefix + ".")
    return False


def reply_topic(topic: str) -> str:
    """The topic of a reply to a message on ``topic``: ``<topic>.reply``, shortened (with a digest of
    the whole) when that would pass the topic limit, so that a reply can always be made."""
    out = f"{topic}.reply"
    if len(out) <= _MAX_TOPIC:
        return out
    digest = hashlib.sha256(topic.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{topic[: _MAX_TOPIC - len(digest) - 8]}~{digest}.reply"


def valid_topic(topic: object) -> bool:
    """Whether ``topic`` may be a message's topic (see `Message`); for what arrives from elsewhere."""
    return type(topic) is str and (topic in _KNOWN_TOPICS or _valid_topic(topic))


def _valid_topic(topic: str) -> bool:
    if not _topic_ok(topic):
        return False
    if len(_KNOWN_TOPICS) >= _MAX_KNOWN_TOPICS:
        _KNOWN_TOPICS.clear()
    _KNOWN_TOPICS.add(topic)
    return True


def _from_unversioned(obj: Mapping[str, Any]) -> Message:
    """A message not in the native form: a Dream.OS spelling, refused if it claims a newer format."""
    version = obj.get("version")
    if isinstance(version, int) and not isinstance(version, bool) and version > FORMAT_VERSION:
        raise MessageDecodeError(f"message format version {version} is newer than this hybridcomms")
    return _from_legacy(obj)


def _from_native_checked(obj: Mapping[str, Any]) -> Message:
    """The native form through the general constructor, which says what is wrong with it."""
    fields: dict[str, Any] = {k: obj.get(k) for k in FIELDS}
    expires = obj.get("expires")
    fields.update(
        topic=obj["topic"],
        id=obj["id"],
        priority=_native_priority(obj.get("priority", "MEDIUM")),
        created_at=parse_time(obj["created_at"]),
        expires=None if expires is None else parse_time(expires, "expires"),
        headers=obj.get("headers") or {},
    )
    return Message(**fields)


def from_native(obj: dict[str, Any], owned: bool = False, known_id: str | None = None) -> Message | None:
    """The native form, checked field by field and built without the general constructor (this
    runs on every claim). ``None`` if anything is unusual: the general path then says what.

    ``owned``: ``obj`` was just parsed for this call and nobody else holds it, so when it has
    exactly the native fields it becomes the message's attribute dict (no copy). ``known_id``: an
    id already checked (the one in the file name); an id equal to it needs no second check."""
    try:
        mid, topic, sender, recipient, created, p, correlation_id, reply_to, headers, payload = (
            _NATIVE_FIELDS(obj)
        )
        priority = _PRIORITY_OF_NAME[p]  # exactly "LOW", "MEDIUM", "HIGH" or "CRITICAL"
    except (KeyError, TypeError):  # a field missing, or an unhashable priority
        return None
    if not (
        type(topic) is str
        and (topic in _KNOWN_TOPICS or _valid_topic(topic))
        and type(mid) is str
        and (mid == known_id or ID_RE.match(mid))
        and type(created) is str
        and type(headers) is dict  # orjson makes every key a str
        and (sender is None or type(sender) is str)
        and (recipient is None or type(recipient) is str)
        and (correlation_id is None or type(correlation_id) is str)
        and (reply_to is None or type(reply_to) is str)
    ):
        return None
    try:
        ts = _fromisoformat(created)
    except ValueError:
        return None
    if ts.tzinfo is not timezone.utc:
        return None
    expires = obj.get("expires")
    if expires is not None:  # most messages never expire: no call for them
        expires = _native_time(expires)
        if expires is None:
            return None
    if (
        owned
        and len(obj) == len(FIELDS) + 1
        and "expires" in obj
        and type(version := obj.get("version")) is int
        and version == FORMAT_VERSION
    ):
        del obj["version"]  # what is left are exactly the fields
        obj["priority"] = priority
        obj["created_at"] = ts
        obj["expires"] = expires
        m = object.__new__(Message)  # inline (not `_checked_message`): this is every claim
        object.__setattr__(m, "__dict__", obj)
        return m
    values = (
        mid,
        topic,
        sender,
        recipient,
        ts,
        expires,
        priority,
        correlation_id,
        reply_to,
        headers,
        payload,
    )
    return _checked_message(dict(zip(FIELDS, values, strict=True)))


def _checked_message(fields: dict[str, Any]) -> Message:
    """A message made of ``fields`` (exactly `FIELDS`, each already checked): no constructor."""
    m = object.__new__(Message)
    object.__setattr__(m, "__dict__", fields)
    return m


def _native_time(text: object) -> datetime | None:
    """A time written in the native form, as aware UTC; None for anything else."""
    if type(text) is not str:
        return None
    try:
        ts = _fromisoformat(text)
    except ValueError:
        return None
    return ts if ts.tzinfo is timezone.utc else None


if sys.version_info >= (3, 11):
    _fromisoformat = datetime.fromisoformat
else:  # Python 3.10 does not read the trailing "Z" of the native form

    def _fromisoformat(text: str) -> datetime:
        if text.endswith("Z"):
            return datetime.fromisoformat(text[:-1]).replace(tzinfo=timezone.utc)
        return datetime.fromisoformat(text)


_TOPIC_KEYS = ("topic", "type", "message_type")
_PAYLOAD_KEYS = ("payload", "body", "content")
_TIME_KEYS = ("created_at", "timestamp_utc", "timestamp")
_SENDER_KEYS = ("sender", "sender_agent_id", "from_agent", "from")
_RECIPIENT_KEYS = ("recipient", "recipient_agent_id", "to_agent", "to")
_ID_KEYS = ("id", "message_id")
_CONSUMED = frozenset(
    (*_TOPIC_KEYS, *_PAYLOAD_KEYS, *_TIME_KEYS, *_SENDER_KEYS, *_RECIPIENT_KEYS, *_ID_KEYS)
).union(("priority", "correlation_id", "reply_to", "headers", "version"))


def _first(obj: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = obj.get(key)
        if value is not None:
            return value
    return None


def _from_legacy(obj: Mapping[str, Any]) -> Message:
    topic = _first(obj, _TOPIC_KEYS)
    if topic is None:
        raise MessageDecodeError("no topic: none of 'topic', 'type', 'message_type' is set")
    raw_id = _first(obj, _ID_KEYS)
    created = _first(obj, _TIME_KEYS)
    headers = _legacy_headers(obj)
    priority = obj.get("priority")
    return Message(
        topic=str(topic),
        payload=_first(obj, _PAYLOAD_KEYS),
        sender=_opt_str(_first(obj, _SENDER_KEYS)),
        recipient=_opt_str(_first(obj, _RECIPIENT_KEYS)),
        priority=Priority.parse(priority) if priority is not None else Priority.MEDIUM,
        id=str(raw_id) if raw_id is not None else new_id(),
        created_at=parse_time(created) if created is not None else _utcnow(),
        correlation_id=_opt_str(obj.get("correlation_id")),
        reply_to=_opt_str(obj.get("reply_to")),
        headers=headers,
    )


def _legacy_headers(obj: Mapping[str, Any]) -> dict[str, Any]:
    """The headers of a legacy message: its own, and every legacy field with no envelope slot
    (subject, metadata, read_status, in_reply_to, …), so that nothing of it is lost."""
    headers: dict[str, Any] = dict(obj.get("headers") or {})
    for key, value in obj.items():
        if key not in _CONSUMED:
            headers.setdefault(key, value)
    return headers


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def parse_time(value: Any, what: str = "timestamp") -> datetime:
    """A time of a message file: ISO-8601 (naive is UTC) or POSIX seconds. `MessageDecodeError`
    (the file is then a poison file) for anything else, or out of the range of a UTC datetime."""
    label = what if what == "timestamp" else f"{what} timestamp"
    if type(value) is str:
        return _in_utc(_parse_iso(value, label), value, label)
    if _is_number(value):
        return _from_posix(value, label)
    raise MessageDecodeError(f"{label} must be an ISO-8601 string or a number, not {value!r}")


def _from_posix(value: float, label: str) -> datetime:
    """POSIX seconds as aware UTC; `MessageDecodeError` when out of the range of a datetime."""
    try:
        return datetime.fromtimestamp(value, timezone.utc)
    except (OverflowError, OSError, ValueError):
        raise MessageDecodeError(f"{label} {value!r} is out of range") from None


def _parse_iso(value: str, label: str) -> datetime:
    """An ISO-8601 time, as written by Python or with a ``Z``/``z`` for UTC (naive stays naive)."""
    try:
        return datetime.fromisoformat(value)  # Python >= 3.11 reads a trailing "Z" too
    except ValueError:
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            return datetime.fromisoformat(text)
        except ValueError:
            raise MessageDecodeError(f"unreadable {label} {value!r}") from None


def _in_utc(ts: datetime, value: str, label: str) -> datetime:
    """``ts`` (read from ``value``) as aware UTC: a naive time is UTC already."""
    if ts.tzinfo is None:
        return ts.replace(tzinfo=timezone.utc)
    if ts.tzinfo is timezone.utc:
        return ts
    try:
        return ts.astimezone(timezone.utc)
    except (OverflowError, ValueError):
        raise MessageDecodeError(f"{label} {value!r} is out of range in UTC") from None
