from __future__ import annotations

from datetime import datetime, timedelta, timezone

import orjson
import pytest

from hybridcomms import Message, MessageDecodeError, MessageError, MessageTooLargeError, Priority


def test_a_message_round_trips_through_json_unchanged() -> None:
    m = Message(
        "dreamos.agent.Agent-1.task.command",
        {"task": "build", "n": [1, 2.5, None, True]},
        sender="Captain-THEA",
        recipient="Agent-1",
        priority="HIGH",
        correlation_id="c1",
        reply_to="Captain-THEA",
        headers={"trace": "x"},
    )
    back = Message.decode(m.encode())
    assert back == m
    assert back.priority is Priority.HIGH
    assert back.created_at.tzinfo is not None and back.created_at.utcoffset() == timedelta(0)


def test_defaults_are_a_uuid4_hex_id_medium_priority_and_utc_now() -> None:
    m = Message("t")
    assert len(m.id) == 32 and int(m.id, 16) >= 0
    assert m.priority is Priority.MEDIUM
    assert abs((datetime.now(timezone.utc) - m.created_at).total_seconds()) < 5
    assert Message("t").id != m.id


def test_the_native_form_is_one_flat_json_object_with_a_format_version() -> None:
    obj = orjson.loads(Message("t", 1).encode())
    assert obj["version"] == 1
    assert obj["created_at"].endswith("Z")
    assert set(obj) >= {"id", "topic", "sender", "recipient", "payload", "priority", "headers"}


def test_a_message_is_immutable() -> None:
    m = Message("t")
    with pytest.raises(AttributeError):
        m.topic = "other"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("low", Priority.LOW),
        ("MEDIUM", Priority.MEDIUM),
        ("NORMAL", Priority.MEDIUM),
        ("INFO", Priority.LOW),
        ("critical", Priority.CRITICAL),
        (0, Priority.LOW),
        (3, Priority.CRITICAL),
        (7, Priority.CRITICAL),
        ("2", Priority.HIGH),
        (Priority.HIGH, Priority.HIGH),
    ],
)
def test_priorities_are_read_from_names_aliases_and_numbers(given: object, expected: Priority) -> None:
    assert Priority.parse(given) is expected


@pytest.mark.parametrize("bad", ["urgentish", True, None, 1.5])
def test_an_unknown_priority_is_a_clear_error(bad: object) -> None:
    with pytest.raises(MessageError, match="priority"):
        Priority.parse(bad)


def test_dreamos_spellings_are_read() -> None:
    legacy = {
        "message_id": "abc-123",
        "sender_agent_id": "Agent-2",
        "recipient_agent_id": "Agent-1",
        "timestamp_utc": "2025-05-01T10:00:00Z",
        "subject": "hello",
        "type": "TASK_COMMAND",
        "body": {"do": "it"},
        "priority": "NORMAL",
        "read_status": False,
    }
    m = Message.decode(orjson.dumps(legacy))
    assert (m.id, m.sender, m.recipient, m.topic, m.payload) == (
        "abc-123",
        "Agent-2",
        "Agent-1",
        "TASK_COMMAND",
        {"do": "it"},
    )
    assert m.created_at == datetime(2025, 5, 1, 10, tzinfo=timezone.utc)
    assert m.priority is Priority.MEDIUM
    assert m.headers["subject"] == "hello" and m.headers["read_status"] is False


@pytest.mark.parametrize(
    "legacy",
    [
        {
            "message_type": "X",
            "content": "hi",
            "timestamp": "2025-05-01T10:00:00+00:00",
            "sender": "a",
            "recipient": "b",
        },
        {"type": "X", "content": "hi", "timestamp": 1746093600.0, "from_agent": "a", "to_agent": "b"},
        {"type": "X", "body": "hi", "timestamp": "2025-05-01T10:00:00", "from": "a", "to": "b"},
    ],
)
def test_every_legacy_spelling_of_sender_recipient_time_and_body_is_accepted(
    legacy: dict[str, object],
) -> None:
    m = Message.from_dict(legacy)
    assert (m.topic, m.payload, m.sender, m.recipient) == ("X", "hi", "a", "b")
    assert m.created_at == datetime(2025, 5, 1, 10, tzinfo=timezone.utc)


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        (b"", "empty"),
        (b"{not json", "invalid JSON"),
        (b"[1, 2]", "JSON object"),
        (b'{"payload": 1}', "no topic"),
        (b'{"type": "x", "message_id": "../../etc"}', "not safe"),
        (b'{"type": "x", "timestamp": "yesterday"}', "timestamp"),
        (b'{"version": 99, "topic": "x"}', "newer"),
        (b'{"version": 1, "topic": "x"}', "id"),
    ],
)
def test_undecodable_bytes_raise_a_decode_error_that_keeps_the_bytes(raw: bytes, why: str) -> None:
    with pytest.raises(MessageDecodeError, match=why) as info:
        Message.decode(raw, path="/x/y.json")
    assert info.value.raw == raw
    assert info.value.path == "/x/y.json"


def test_a_message_over_the_size_limit_is_refused_with_its_size() -> None:
    m = Message("t", "x" * 2000)
    with pytest.raises(MessageTooLargeError) as info:
        m.encode(max_size=1000)
    assert info.value.size > 2000 and info.value.limit == 1000
    assert len(m.encode(max_size=None)) > 2000


def test_a_payload_that_is_not_json_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="JSON"):
        Message("t", {"when": object()}).encode()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"topic": ""},
        {"topic": "a\nb"},
        {"topic": 5},
        {"topic": "t", "id": "a/b"},
        {"topic": "t", "id": ".hidden"},
        {"topic": "t", "id": "x" * 200},
        {"topic": "t", "sender": 5},
        {"topic": "t", "created_at": datetime(2025, 1, 1)},
        {"topic": "t", "headers": {1: "x"}},
    ],
)
def test_wrong_types_and_unsafe_values_are_rejected_at_construction(kwargs: dict[str, object]) -> None:
    with pytest.raises(MessageError):
        Message(**kwargs)  # type: ignore[arg-type]


def test_created_at_in_another_timezone_is_stored_as_utc() -> None:
    t = datetime(2025, 1, 1, 12, tzinfo=timezone(timedelta(hours=2)))
    assert Message("t", created_at=t).created_at == datetime(2025, 1, 1, 10, tzinfo=timezone.utc)


def test_headers_given_as_any_mapping_encode_as_an_object() -> None:
    import types

    m = Message("t", headers=types.MappingProxyType({"trace": "x"}))
    assert orjson.loads(m.encode())["headers"] == {"trace": "x"}


def test_a_creation_time_on_a_whole_second_round_trips() -> None:
    m = Message("t", created_at=datetime(2025, 1, 1, tzinfo=timezone.utc))
    assert Message.decode(m.encode()) == m


def test_our_own_encoding_takes_the_fast_decoder_on_every_supported_python() -> None:
    """The claim path relies on `from_native` accepting what `encode` writes (a regression here
    would not fail anything else: claims would silently take the slow general path)."""
    from hybridcomms.message import from_native

    for priority in Priority:
        sent = Message("t", {"n": [1, None]}, sender="a", priority=priority, headers={"h": "v"})
        fast = from_native(orjson.loads(sent.encode()), True)
        assert fast is not None and fast == sent
        assert fast.created_at.tzinfo is timezone.utc


def test_the_fast_decoder_leaves_a_dict_it_does_not_own_untouched() -> None:
    from hybridcomms.message import from_native

    obj = orjson.loads(Message("t", 1).encode())
    before = dict(obj)
    assert from_native(obj) is not None
    assert obj == before
