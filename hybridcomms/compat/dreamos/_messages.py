"""The Dream.OS mailbox message dict: create and validate (re-exported by the compat ``mailbox_utils``).

The legacy ``create_mailbox_message`` always raised: it wrote ``message_type`` while its validator
required ``type``. Here a created message carries both spellings, and validation accepts either (and
``body`` or ``content``), so old and new readers are both satisfied. Validation logs what is wrong and
returns False; it never raises.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping
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


def validate_mailbox_message_schema(message_data: Any) -> bool:
    """True if ``message_data`` is a mailbox message with every documented field, of the right type."""
    if not isinstance(message_data, Mapping):
        log.error("mailbox message must be a JSON object, not %s", type(message_data).__name__)
        return False
    missing = [" or ".join(keys) for keys in _ALTERNATIVES if not any(k in message_data for k in keys)]
    if missing:
        log.error("mailbox message is missing: %s", ", ".join(missing))
        return False
    for key in (
        "message_id",
        "sender_agent_id",
        "recipient_agent_id",
        "timestamp_utc",
        "subject",
        "priority",
    ):
        if not isinstance(message_data[key], str):
            log.error(
                "mailbox message field %r must be a string, not %s", key, type(message_data[key]).__name__
            )
            return False
    kind = message_data.get("type", message_data.get("message_type"))
    if not isinstance(kind, str):
        log.error("mailbox message type must be a string, not %s", type(kind).__name__)
        return False
    try:
        datetime.fromisoformat(message_data["timestamp_utc"].replace("Z", "+00:00"))
    except ValueError:
        log.error("mailbox message timestamp_utc %r is not ISO 8601", message_data["timestamp_utc"])
        return False
    return True


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
    kind = message_type.value if isinstance(message_type, Enum) else message_type
    prio = priority.name if isinstance(priority, Priority) else priority
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
