"""The first pieces of Dream.OS compatibility: the two EventType enums and file_locking."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import filelock
import orjson
import pytest
import workers
from waiting import eventually

from hybridcomms.compat.dreamos import _bus_event_types, event_types
from hybridcomms.compat.dreamos.file_locking import (
    LockAcquisitionError,
    acquire_lock,
    read_json_locked,
    write_json_locked,
)

DATA = json.loads((Path(__file__).parent / "data" / "dreamos_event_types.json").read_text())
BUS_61 = next(v for k, v in DATA.items() if "61 members" in k)
TYPES_55 = next(v for k, v in DATA.items() if "55 members" in k)
spawn = mp.get_context("spawn")


def test_the_event_types_enum_has_exactly_the_55_legacy_members_and_strings() -> None:
    assert {m.name: m.value for m in event_types.EventType} == TYPES_55
    assert len(event_types.EventType) == 55


def test_the_agent_bus_enum_has_exactly_the_61_legacy_members_and_strings() -> None:
    assert {m.name: m.value for m in _bus_event_types.EventType} == BUS_61
    assert len(_bus_event_types.EventType) == 61


def test_the_two_enums_keep_their_conflicting_strings_apart() -> None:
    assert event_types.EventType.SYSTEM_AGENT_STATUS_CHANGE == "dreamos.system.agent.status_change"
    assert _bus_event_types.EventType.SYSTEM_AGENT_STATUS_CHANGE == "dreamos.agent.status.updated"
    assert str(event_types.EventType.TASK_COMMAND) == "dreamos.task.command"


def test_write_then_read_round_trips_and_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "state" / "inbox.json"
    write_json_locked(target, [{"id": 1}, {"id": 2}])
    assert read_json_locked(target) == [{"id": 1}, {"id": 2}]
    assert sorted(os.listdir(target.parent)) == ["inbox.json", "inbox.json.lock"]


def test_reading_a_missing_file_gives_none(tmp_path: Path) -> None:
    assert read_json_locked(tmp_path / "nothing.json") is None


def test_reading_invalid_json_is_a_clear_error_and_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "broken.json"
    target.write_bytes(b"[{oops")
    with pytest.raises(ValueError, match=r"broken\.json is not valid JSON"):
        read_json_locked(target)
    assert target.read_bytes() == b"[{oops"


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "data.json"
    write_json_locked(target, {"v": 1})
    with pytest.raises(TypeError):
        write_json_locked(target, {"v": object()})
    assert orjson.loads(target.read_bytes()) == {"v": 1}
    assert sorted(os.listdir(tmp_path)) == ["data.json", "data.json.lock"]


def test_a_lock_held_with_the_filelock_library_excludes_acquire_lock(tmp_path: Path) -> None:
    target, ready = tmp_path / "inbox.json", tmp_path / "ready"
    p = spawn.Process(target=workers.hold_filelock, args=(str(target), str(ready), 1.5))
    p.start()
    try:
        eventually(ready.exists, "the other process ready", 60)
        with (
            pytest.raises(LockAcquisitionError, match=r"inbox\.json\.lock"),
            acquire_lock(target, timeout=0.2),
        ):
            pass
        with acquire_lock(target, timeout=30):  # free once the other process lets go
            pass
    finally:
        p.join(60)
    assert isinstance(LockAcquisitionError("x"), TimeoutError)


def test_acquire_lock_excludes_a_filelock_writer(tmp_path: Path) -> None:
    target = tmp_path / "inbox.json"
    with acquire_lock(target), pytest.raises(filelock.Timeout):
        filelock.FileLock(str(target) + ".lock", timeout=0.2).acquire()


def test_five_processes_incrementing_under_the_lock_lose_no_update(tmp_path: Path) -> None:
    target = tmp_path / "counter.json"
    procs = [spawn.Process(target=workers.increment_locked, args=(str(target), 40)) for _ in range(5)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    assert read_json_locked(target) == {"n": 200}


def test_base_event_is_a_dataclass_with_positional_arguments_and_defaults() -> None:
    from dataclasses import is_dataclass

    from hybridcomms.compat.dreamos._bus_event_types import EventType
    from hybridcomms.compat.dreamos._bus_events import BaseEvent

    e = BaseEvent(EventType.TASK_COMPLETED, "Agent-1", {"task_id": "t1"})
    assert is_dataclass(e)
    assert (e.event_type, e.source_id, e.data, e.correlation_id) == (
        EventType.TASK_COMPLETED,
        "Agent-1",
        {"task_id": "t1"},
        None,
    )
    assert len(e.event_id) == 32 and abs(e.timestamp - time.time()) < 5
    assert e.topic == "dreamos.task.completed"
    assert (
        BaseEvent("custom.topic", "x").data == {} and BaseEvent("custom.topic", "x").topic == "custom.topic"
    )
    assert BaseEvent(EventType.TASK_FAILED, "a").event_id != BaseEvent(EventType.TASK_FAILED, "a").event_id


def test_specific_events_check_their_type_and_keep_the_payload_fields_as_data() -> None:
    from dataclasses import dataclass

    from hybridcomms.compat.dreamos import _bus_events as ev
    from hybridcomms.compat.dreamos._bus_event_types import EventType

    @dataclass
    class ToolCallPayload:
        tool_name: str
        arguments: dict[str, object]

    call = ev.ToolCallEvent(EventType.TOOL_CALL, "Agent-1", ToolCallPayload("grep", {"q": "x"}))
    assert call.data == {"tool_name": "grep", "arguments": {"q": "x"}}
    assert isinstance(call, ev.BaseEvent)
    assert ev.MemoryEvent(EventType.MEMORY_READ, "a", {"key_or_query": "k"}).data == {"key_or_query": "k"}
    assert (
        ev.CursorResultEvent("dreamos.cursor.inject.success", "a", {}).event_type
        == "dreamos.cursor.inject.success"
    )
    assert ev.TaskEvent(EventType.TASK_PROGRESS, "a", {"p": 1}).data == {"p": 1}
    with pytest.raises(ValueError, match="Invalid event_type"):
        ev.ToolCallEvent(EventType.TOOL_RESULT, "a", {})
    with pytest.raises(ValueError, match="MEMORY_"):
        ev.MemoryEvent(EventType.TASK_STARTED, "a", {})
    with pytest.raises(TypeError, match="event data"):
        ev.TaskEvent(EventType.TASK_STARTED, "a", 42)


def test_agent_error_event_does_what_the_legacy_code_meant(caplog: pytest.LogCaptureFixture) -> None:
    from hybridcomms.compat.dreamos import _bus_events as ev
    from hybridcomms.compat.dreamos._bus_event_types import EventType

    ok = ev.AgentErrorEvent(EventType.SYSTEM_ERROR, "Agent-1", {"error": "boom"})
    assert ok.data == {"error": "boom"} and "expected SYSTEM_ERROR" not in caplog.text
    odd = ev.AgentErrorEvent(EventType.TASK_FAILED, "Agent-1", {"error": "x"})
    assert odd.event_type is EventType.TASK_FAILED and "expected SYSTEM_ERROR" in caplog.text


def test_the_bus_error_tree_is_the_legacy_one() -> None:
    from hybridcomms.compat.dreamos import _bus_events as ev

    assert issubclass(ev.SubscriptionError, ev.BusError) and issubclass(ev.DispatchError, ev.BusError)
    assert issubclass(ev.EventHandlerError, ev.DispatchError)
    err = ev.EventHandlerError("failed", original_exception=KeyError("k"), handler=print, event=None)
    assert isinstance(err.original_exception, KeyError) and err.handler is print


def test_create_mailbox_message_works_and_carries_both_type_spellings() -> None:
    from hybridcomms import Message
    from hybridcomms.compat.dreamos._bus_event_types import EventType
    from hybridcomms.compat.dreamos._bus_events import BaseEvent
    from hybridcomms.compat.dreamos._messages import create_mailbox_message, validate_mailbox_message_schema

    cause = BaseEvent(EventType.TASK_COMPLETED, "Agent-2", correlation_id="c-9")
    msg = create_mailbox_message("Agent-2", "Agent-1", "done", "TASK_UPDATE", {"ok": True}, base_event=cause)
    assert msg["type"] == msg["message_type"] == "TASK_UPDATE"
    assert (msg["priority"], msg["read_status"], msg["related_event_id"], msg["correlation_id"]) == (
        "MEDIUM",
        False,
        cause.event_id,
        "c-9",
    )
    assert len(msg["message_id"]) == 32 and validate_mailbox_message_schema(msg)
    back = Message.from_dict(msg)  # and hybridcomms reads it
    assert (back.id, back.sender, back.recipient, back.topic, back.payload) == (
        msg["message_id"],
        "Agent-2",
        "Agent-1",
        "TASK_UPDATE",
        {"ok": True},
    )
    fixed = create_mailbox_message(
        "a", "b", "s", "CUSTOM", "x", message_id="m1", timestamp_utc="2025-05-01T10:00:00Z"
    )
    assert (fixed["message_id"], fixed["timestamp_utc"]) == ("m1", "2025-05-01T10:00:00Z")
    with pytest.raises(ValueError, match="not valid"):
        create_mailbox_message(7, "b", "s", "CUSTOM", "x")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("mutate", "valid"),
    [
        (lambda m: m, True),
        (lambda m: {k: v for k, v in m.items() if k != "type"}, True),  # message_type alone
        (lambda m: {**{k: v for k, v in m.items() if k != "body"}, "content": "c"}, True),
        (lambda m: {k: v for k, v in m.items() if k not in ("type", "message_type")}, False),
        (lambda m: {k: v for k, v in m.items() if k != "subject"}, False),
        (lambda m: {**m, "timestamp_utc": "yesterday"}, False),
        (lambda m: {**m, "sender_agent_id": 5}, False),
        (lambda m: {**m, "priority": 3}, False),
        (lambda m: [m], False),
        (lambda m: None, False),
    ],
)
def test_validate_accepts_either_spelling_and_never_raises(mutate: object, valid: bool) -> None:
    from hybridcomms.compat.dreamos._messages import create_mailbox_message, validate_mailbox_message_schema

    base = create_mailbox_message("a", "b", "subject", "CUSTOM", "body")
    assert validate_mailbox_message_schema(mutate(base)) is valid  # type: ignore[operator]


def test_five_processes_appending_to_a_legacy_inbox_json_leave_exactly_five_entries(tmp_path: Path) -> None:
    start = tmp_path / "go"
    procs = [
        spawn.Process(target=workers.append_legacy, args=(str(tmp_path), "Agent-1", i, str(start)))
        for i in range(5)
    ]
    for p in procs:
        p.start()
    # Every writer at the starting line (each says so with a file).
    eventually(
        lambda: sorted(tmp_path.glob("go.ready-*")), "the 5 writers ready", 60, until=lambda r: len(r) == 5
    )
    start.touch()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    entries = orjson.loads((tmp_path / "Agent-1" / "inbox.json").read_bytes())
    assert sorted(e["body"]["n"] for e in entries) == [0, 1, 2, 3, 4]
    assert len({e["message_id"] for e in entries}) == 5


def test_an_append_waits_for_a_legacy_writer_holding_the_filelock(tmp_path: Path) -> None:
    from hybridcomms.compat.dreamos._legacy_store import append_to_inbox_json

    (tmp_path / "Agent-1").mkdir()
    target = tmp_path / "Agent-1" / "inbox.json"
    ready = tmp_path / "ready"
    p = spawn.Process(target=workers.hold_filelock, args=(str(target), str(ready), 0.5))
    p.start()
    try:
        eventually(ready.exists, "the other process ready", 60)
        started = time.monotonic()
        append_to_inbox_json(tmp_path, "Agent-1", {"message_id": "m1", "type": "t"})
        assert time.monotonic() - started > 0.2  # it waited for the legacy writer's lock
    finally:
        p.join(60)
    assert orjson.loads(target.read_bytes()) == [{"message_id": "m1", "type": "t"}]


def test_a_corrupt_inbox_json_is_kept_aside_not_wiped(tmp_path: Path) -> None:
    from hybridcomms.compat.dreamos._legacy_store import append_to_inbox_json

    agent = tmp_path / "Agent-1"
    agent.mkdir()
    (agent / "inbox.json").write_bytes(b'[{"message_id": "old", "type": "t"}, {broken')
    append_to_inbox_json(tmp_path, "Agent-1", {"message_id": "new", "type": "t"})
    assert orjson.loads((agent / "inbox.json").read_bytes()) == [{"message_id": "new", "type": "t"}]
    (kept,) = [p for p in agent.iterdir() if p.name.startswith("inbox.json.corrupt-")]
    assert kept.read_bytes() == b'[{"message_id": "old", "type": "t"}, {broken'


def test_legacy_inbox_files_are_named_as_dreamos_writes_them(tmp_path: Path) -> None:
    import re

    from hybridcomms.compat.dreamos._legacy_store import write_inbox_file

    msg = {"message_id": "0123456789abcdef", "type": "t", "body": "x"}
    first = write_inbox_file(tmp_path, "Agent-1", msg)
    second = write_inbox_file(tmp_path, "Agent-1", msg)
    assert re.fullmatch(r"msg_\d{8}_\d{6}_\d{6}_01234567(_\d+)?\.json", first.name)
    assert first != second and orjson.loads(second.read_bytes()) == msg
    assert not [n for n in os.listdir(first.parent) if n.endswith(".tmp")]
    with pytest.raises(ValueError, match="unsafe"):
        write_inbox_file(tmp_path, "Agent-1", msg, filename_prefix="../x")
    with pytest.raises(ValueError, match="agent id"):
        write_inbox_file(tmp_path, "../x", msg)
