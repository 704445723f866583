"""The Dream.OS mailbox message dict: create and validate (re-exported by the compat ``mailbox_utils``).

The legacy ``create_mailbox_message`` always raised: it wrote ``message_type`` while its validator
required ``type``. Here a created message carries both spellings, and validation accepts either (and
``body`` or ``content``), so old and new readers are both satisfied. Validation logs what is wrong and
returns False; it never raises.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from enum import Enum
from typing import Any

from ... import _log
from ...message import Priority

__all__ = ["create_mailbox_message", "validate_mailbox_message_schema"]

log = _log.get("hybridcomms.compat.dreamos")

_ALTERNATIVES = (
    ("message_id",),
    ("sender_agent_id",),
    ("recipient_agent_id",),
    ("timestamp_utc",),
    ("subject",),
    ("type", "message_type"),
    ("body", "content"),
    ("priority",),
)


#: The fields that must be strings (``type`` / ``message_type``: `_type_problem`).
_STRING_FIELDS = (
    "message_id",
    "sender_agent_id",
    "recipient_agent_id",
    "timestamp_utc",
    "subject",
    "priority",
)

#: A problem as it is logged: the format and its arguments.
_Problem = tuple[Any, ...]


def validate_mailbox_message_schema(message_data: Any) -> bool:
    """True if ``message_data`` is a mailbox message with every documented field, of the right type."""
    for check in _CHECKS:  # in order: each check may rely on the ones before (a mapping, the fields)
        problem = check(message_data)
        if problem is not None:
            log.error(*problem)
            return False
    return True


def _object_problem(data: Any) -> _Problem | None:
    """Not a JSON object."""
    if not isinstance(data, Mapping):
        return ("mailbox message must be a JSON object, not %s", type(data).__name__)
    return None


def _missing_problem(data: Mapping[str, Any]) -> _Problem | None:
    """A documented field missing (in none of its spellings)."""
    missing = [" or ".join(keys) for keys in _ALTERNATIVES if not any(k in data for k in keys)]
    return ("mailbox message is missing: %s", ", ".join(missing)) if missing else None


def _string_problem(data: Mapping[str, Any]) -> _Problem | None:
    """The first of `_STRING_FIELDS` that is not a string."""
    for key in _STRING_FIELDS:
        if not isinstance(data[key], str):
            return ("mailbox message field %r must be a string, not %s", key, type(data[key]).__name__)
    return None


def _type_problem(data: Mapping[str, Any]) -> _Problem | None:
    """The message type (``type``, else ``message_type``) not a string."""
    kind = data.get("type", data.get("message_type"))
    if not isinstance(kind, str):
        return ("mailbox message type must be a string, not %s", type(kind).__name__)
    return None


def _timestamp_problem(data: Mapping[str, Any]) -> _Problem | None:
    """``timestamp_utc`` not ISO 8601."""
    try:
        datetime.fromisoformat(data["timestamp_utc"].replace("Z", "+00:00"))
    except ValueError:
        return ("mailbox message timestamp_utc %r is not ISO 8601", data["timestamp_utc"])
    return None


_CHECKS: tuple[Callable[[Any], _Problem | None], ...] = (
    _object_problem,
    _missing_problem,
    _string_problem,
    _type_problem,
    _timestamp_problem,
)


def _enum_value(value: Any) -> Any:
    """An enum member's value (a legacy ``MessageType``), or the value as given."""
    return value.value if isinstance(value, Enum) else value


def _priority_name(priority: Any) -> Any:
    """A `Priority` member's name, or the priority as given."""
    return priority.name if isinstance(priority, Priority) else priority


def create_mailbox_message(
    sender_agent_id: str,
    recipient_agent_id: str,
    subject: str,
    message_type: str,
    body: str | dict[str, Any],
    priority: str = "MEDIUM",
    message_id: str | None = None,
    timestamp_utc: str | None = None,
    base_event: Any = None,
) -> dict[str, Any]:
    """A standard mailbox message dict. ``ValueError`` if the result would not validate."""
    kind = _enum_value(message_type)
    prio = _priority_name(priority)
    message: dict[str, Any] = {
        "message_id": message_id or uuid.uuid4().hex,
        "timestamp_utc": timestamp_utc or datetime.now(timezone.utc).isoformat(),
        "sender_agent_id": sender_agent_id,
        "recipient_agent_id": recipient_agent_id,
        "subject": subject,
        "type": kind,
        "message_type": kind,
        "priority": prio,
        "body": body,
        "read_status": False,
        "related_event_id": getattr(base_event, "event_id", None),
        "correlation_id": getattr(base_event, "correlation_id", None),
    }
    if not validate_mailbox_message_schema(message):
        raise ValueError(
            f"mailbox message from {sender_agent_id!r} to {recipient_agent_id!r} is not valid (see log)"
        )
    return message
