"""The wire form of an event between processes: one JSON array per datagram or pub/sub message
(``[1, topic, payload, source, correlation_id, id, timestamp, durable, origin]``), encoded once per
event and decoded with the limits of a message file (size, JSON depth, field types)."""

from __future__ import annotations

from typing import Any, cast

import orjson

from ...message import Message, nulls_hide_non_finite, valid_topic
from ..core import Event

__all__ = ["MAX_DATAGRAM", "MAX_TOPIC", "decode_event", "encode_event", "topic_of"]

#: The longest topic that crosses (and so the longest pattern a registration may hold).
MAX_TOPIC = 256
#: The largest event that is sent to other processes (encoded); bigger ones stay in-process, counted.
MAX_DATAGRAM = 64 * 1024
#: The first time a date cannot show (the year 10000): a timestamp must be before it.
_TIME_LIMIT = 253402300800

_dumps, _loads = orjson.dumps, orjson.loads
_PLAIN = (dict, list, str, int, float, bool)


def _plain(payload: Any) -> Any:
    """A payload as JSON can hold it: a `Message` as its native form, an object with ``model_dump``
    (pydantic) or a dataclass as its fields."""
    if isinstance(payload, Message):
        return {"__message__": payload.to_dict()}
    dump = getattr(payload, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    fields = getattr(payload, "__dataclass_fields__", None)
    if fields is not None:
        return {name: getattr(payload, name) for name in fields}
    return payload


def encode_event(event: Event, origin: str) -> bytes | None:
    """The datagram of ``event``; None if it cannot be sent (not JSON, or bigger than MAX_DATAGRAM)."""
    payload = event.payload
    if not (payload is None or type(payload) in _PLAIN):
        payload = _plain(payload)
    try:  # an array, not an object: no keys to write or read (this runs once per event)
        fields = (event.source, event.correlation_id, event.id, event.timestamp, event.durable, origin)
        data = _dumps([1, event.topic, payload, *fields])
    except (TypeError, ValueError):
        return None
    if nulls_hide_non_finite(data, (event.source is None) + (event.correlation_id is None), payload):
        return None  # refused, never sent changed
    return data if len(data) <= MAX_DATAGRAM else None


def _opt_str(value: Any) -> bool:
    return value is None or (type(value) is str and len(value) <= 1024)


def _is_topic(topic: Any) -> bool:
    """Printable and bounded: it is printed by watch/tail --bus, matched by patterns."""
    return type(topic) is str and 0 < len(topic) <= MAX_TOPIC and valid_topic(topic)


def _is_time(ts: Any) -> bool:
    """A time a date can show (NaN fails too)."""
    return type(ts) in (int, float) and 0 <= ts < _TIME_LIMIT


def _array_of(data: bytes) -> list[Any] | None:
    """The wire array in ``data``: 9 items, version 1; None if it is not one."""
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        obj = _loads(data)  # orjson refuses nesting deeper than 1024
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not list or len(obj) != 9 or obj[0] != 1:
        return None
    return obj


def _valid(fields: list[Any]) -> bool:
    """Whether the wire array's fields have their types and bounds (the payload aside)."""
    _, topic, _, source, correlation_id, event_id, ts, durable, origin = fields
    if not (_is_topic(topic) and _is_time(ts) and type(durable) is bool):
        return False
    return _opt_str(source) and _opt_str(correlation_id) and type(event_id) is str and type(origin) is str


_BAD: Any = object()


def _payload_of(payload: Any) -> Any:
    """The payload as the handlers get it: a `Message` sent as one is one again (`_BAD` if broken)."""
    if not (type(payload) is dict and len(payload) == 1 and "__message__" in payload):
        return payload
    try:
        return Message.from_dict(payload["__message__"])
    except Exception:
        return _BAD


def decode_event(data: bytes) -> Event | None:
    """The event in a datagram, or None if it is not one (checked as a message file is)."""
    obj = _array_of(data)
    if obj is None or not _valid(obj):
        return None
    _, topic, payload, source, correlation_id, event_id, ts, durable, origin = obj
    payload = _payload_of(payload)
    if payload is _BAD:
        return None
    return Event(topic, payload, source, correlation_id, event_id, float(cast(float, ts)), durable, origin)


def topic_of(data: bytes) -> str | None:
    """The topic of a datagram, read from its head (``[1,"<topic>",``) without decoding the rest;
    None if it is not plainly there (then the whole datagram is decoded, and checked)."""
    if not data.startswith(b'[1,"'):
        return None
    end = data.find(b'"', 4, 4 + 4 * MAX_TOPIC + 1)
    if end < 0:
        return None
    raw = data[4:end]
    if b"\\" in raw:
        return None
    try:
        topic = raw.decode()
    except UnicodeDecodeError:
        return None
    return topic if _is_topic(topic) else None
