"""Taking legacy Dream.OS drops (inbox.json appends, inbox/ files) into an adopted mailbox."""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
import workers
from waiting import eventually

from hybridcomms import Comms, FileMailbox, MailboxWatcher, State
from hybridcomms.compat.dreamos.legacy import (
    JOURNAL,
    has_legacy_drops,
    ingest,
    is_adopted,
    legacy_layout,
    message_from_legacy,
    to_legacy_dict,
)

spawn = multiprocessing.get_context("spawn")


def legacy(i: int, agent: str = "Agent-1", **extra: Any) -> dict[str, Any]:
    return {
        "message_id": f"m{i:04d}",
        "sender_agent_id": "Agent-9",
        "recipient_agent_id": agent,
        "timestamp_utc": f"2025-05-01T12:00:{i % 60:02d}Z",
        "subject": f"subject {i}",
        "type": "TASK_COMMAND",
        "body": {"i": i},
        "priority": "MEDIUM",
        **extra,
    }


def drain(mb: FileMailbox) -> list[Any]:
    out = []
    while (d := mb.claim()) is not None:
        out.append(d.message)
        d.ack()
    return out


def test_adoption_and_legacy_layout(root: Path, make_mailbox: Callable[..., FileMailbox]) -> None:
    assert not is_adopted(root, "Agent-1")
    assert legacy_layout(root, "Agent-1").value == "inbox.json"  # nothing yet: the most used layout
    (root / "Agent-2" / "inbox").mkdir(parents=True)
    assert legacy_layout(root, "Agent-2").value == "inbox/"
    (root / "Agent-2" / "inbox.json").write_text("[]")
    assert legacy_layout(root, "Agent-2").value == "inbox.json"
    make_mailbox("Agent-1")
    assert is_adopted(root, "Agent-1")


def test_inbox_json_entries_move_to_new_in_order_and_the_array_is_emptied(
    root: Path, mailbox: FileMailbox
) -> None:
    entries = [legacy(3), legacy(1), legacy(2, priority="HIGH")]
    (mailbox.path / "inbox.json").write_bytes(orjson.dumps(entries))
    assert has_legacy_drops(root, "Agent-1")
    report = ingest(mailbox)
    assert sorted(report.ingested) == ["m0001", "m0002", "m0003"]
    assert orjson.loads((mailbox.path / "inbox.json").read_bytes()) == []
    assert not has_legacy_drops(root, "Agent-1")
    assert not (mailbox.path / JOURNAL).exists()
    got = drain(mailbox)
    assert [m.id for m in got] == ["m0002", "m0001", "m0003"]  # HIGH first, then oldest first
    first = got[1]
    assert first.topic == "TASK_COMMAND" and first.payload == {"i": 1} and first.sender == "Agent-9"
    assert first.headers["subject"] == "subject 1"
    assert to_legacy_dict(first)["message_id"] == "m0001"
    assert not ingest(mailbox)  # nothing more to do


def test_inbox_dir_files_move_to_new_and_other_files_stay(root: Path, mailbox: FileMailbox) -> None:
    inbox = mailbox.path / "inbox"
    inbox.mkdir()
    (inbox / "msg_20250501_120000_000001_m0001.json").write_bytes(orjson.dumps(legacy(1)))
    spelled = {"from": "Agent-7", "to": "Agent-1", "message_type": "DIRECTIVE", "content": "go"}
    (inbox / "20250501_120000_Agent-7_Agent-1.json").write_bytes(orjson.dumps(spelled))  # L3, no id
    (inbox / "notes.md").write_text("# not a message")
    (inbox / "msg_x.json.123.tmp").write_text("{")  # a legacy writer's temp file
    report = ingest(mailbox)
    assert len(report.ingested) == 2
    assert sorted(os.listdir(inbox)) == [".inbox.lock", "msg_x.json.123.tmp", "notes.md"]
    by_topic = {m.topic: m for m in drain(mailbox)}
    assert by_topic["DIRECTIVE"].payload == "go" and by_topic["DIRECTIVE"].sender == "Agent-7"
    assert by_topic["DIRECTIVE"].id.startswith("legacy-")  # derived, stable id


def test_what_does_not_convert_goes_to_dead_with_its_bytes_and_a_reason(mailbox: FileMailbox) -> None:
    huge = legacy(5, body="x" * (2 << 20))
    entries = [legacy(1), 42, {"no": "type"}, huge, legacy(2)]
    (mailbox.path / "inbox.json").write_bytes(orjson.dumps(entries))
    inbox = mailbox.path / "inbox"
    inbox.mkdir()
    bad = inbox / "msg_broken.json"
    bad.write_bytes(b'{"message_id": "half')
    old = time.time() - 60
    os.utime(bad, (old, old))
    fresh_bad = inbox / "msg_being_written.json"
    fresh_bad.write_bytes(b'{"message_id": ')
    report = ingest(mailbox)
    # Any JSON value a legacy reader would read is a message (42 and the object with no type too);
    # only what is too large or not JSON at all goes to dead/.
    assert len(report.ingested) == 4 and {"m0001", "m0002"} <= set(report.ingested)
    assert len(report.dead) == 2 and report.waiting == ["Agent-1/inbox/msg_being_written.json"]
    assert fresh_bad.exists() and not bad.exists()  # a half-written file may still be completed
    dead = mailbox.list(State.DEAD)
    assert len(dead) == 2
    reasons = sorted(str(i.reason["reason"]) for i in dead if i.reason)
    assert any("over the limit" in r for r in reasons) and any("not valid JSON" in r for r in reasons)
    kept = [(mailbox.path / "dead" / i.name).read_bytes() for i in dead]
    assert b'{"message_id": "half' in kept
    assert ingest(mailbox).dead == []  # buried once, not again
    from hybridcomms.compat.dreamos.legacy import LEGACY_TOPIC, to_legacy_dict

    got = []
    while (d := mailbox.claim()) is not None:
        got.append(d.message)
        d.ack()
    assert sorted(map(repr, (to_legacy_dict(m) for m in got))) == sorted(
        map(repr, [legacy(1), 42, {"no": "type"}, legacy(2)])
    )
    assert sum(m.topic == LEGACY_TOPIC for m in got) == 2


def test_a_corrupt_inbox_json_is_kept_in_dead_not_replaced_by_an_empty_list(mailbox: FileMailbox) -> None:
    (mailbox.path / "inbox.json").write_bytes(b'[{"message_id": "a", trunc')
    report = ingest(mailbox)
    assert report.dead == ["inbox.json"]
    [info] = mailbox.list(State.DEAD)
    assert (mailbox.path / "dead" / info.name).read_bytes() == b'[{"message_id": "a", trunc'
    assert orjson.loads((mailbox.path / "inbox.json").read_bytes()) == []


def test_an_ingestion_killed_after_publishing_does_not_publish_twice(
    mailbox: FileMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [legacy(1), legacy(2), {"type": "NO_ID", "body": 1}]
    (mailbox.path / "inbox.json").write_bytes(orjson.dumps(entries))
    import hybridcomms.compat.dreamos.legacy as legacy_mod

    real = os.rename

    def killed_before_emptying(src: Any, dst: Any, **kwargs: Any) -> None:
        if dst == "inbox.json":
            raise KeyboardInterrupt("killed before inbox.json was emptied")
        real(src, dst, **kwargs)

    monkeypatch.setattr(legacy_mod.os, "rename", killed_before_emptying)
    with pytest.raises(KeyboardInterrupt):
        ingest(mailbox)
    monkeypatch.setattr(legacy_mod.os, "rename", real)
    assert mailbox.stats().states[State.NEW].count == 3 and (mailbox.path / JOURNAL).exists()
    report = ingest(mailbox)
    assert report.ingested == [] and not report.dead  # the journal says all 3 were taken
    assert len(drain(mailbox)) == 3
    assert not (mailbox.path / JOURNAL).exists()
    assert sorted(os.listdir(mailbox.path)) == [  # the file that was to empty the array is gone too
        "dead",
        "done",
        "inbox.json",
        "inbox.json.lock",
        "new",
        "processing",
        "tmp",
    ]
    assert orjson.loads((mailbox.path / "inbox.json").read_bytes()) == []


def test_message_from_legacy_keeps_an_unusable_id(tmp_path: Path) -> None:
    m = message_from_legacy(legacy(1, message_id="has spaces/and slash"), agent_id="Agent-1", origin="x")
    assert m.id.startswith("legacy-") and m.headers["legacy_message_id"] == "has spaces/and slash"
    assert to_legacy_dict(m)["message_id"] == "has spaces/and slash"
    again = message_from_legacy(legacy(1, message_id="has spaces/and slash"), agent_id="Agent-1", origin="x")
    assert again.id == m.id


@pytest.mark.parametrize("layout", ["inbox.json", "inbox/"])
def test_ingestion_racing_a_legacy_filelock_writer_takes_every_message_once(
    root: Path, mailbox: FileMailbox, layout: str
) -> None:
    count = 400
    target = workers.legacy_inbox_json_writer if layout == "inbox.json" else workers.legacy_inbox_dir_writer
    p = spawn.Process(target=target, args=(str(root), "Agent-1", count, "race"))
    p.start()
    seen: list[str] = []

    def all_taken() -> bool:  # taking what is there while the writer writes (polled finely: a race)
        alive = p.is_alive()
        ingest(mailbox, settle=0.0)
        seen.extend(m.id for m in drain(mailbox))
        return not alive and len(seen) >= count

    eventually(all_taken, f"the {count} legacy drops taken", 120, max_interval=0.002)
    p.join(10)
    assert p.exitcode == 0
    assert len(seen) == count and sorted(seen) == [f"race-{i:05d}" for i in range(count)]
    assert mailbox.list(State.DEAD) == []


def test_a_plain_comms_never_looks_at_legacy_files(root: Path) -> None:
    with Comms("Agent-1", root=root, fsync="never") as comms:
        workers.legacy_inbox_json_writer(str(root), "Agent-1", 3, "c")
        assert comms.ingest_legacy(force=True) == 0
        assert not comms.process_one(timeout=0)
    assert len(orjson.loads((root / "Agent-1" / "inbox.json").read_bytes())) == 3


def test_the_comms_consumer_ingests_legacy_drops(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HYBRIDCOMMS_LEGACY_INTAKE", "1")  # the operator turns the intake on
    got: list[Any] = []
    with Comms("Agent-1", root=root, fsync="never") as comms:
        comms.subscribe("TASK_COMMAND", got.append)
        workers.legacy_inbox_json_writer(str(root), "Agent-1", 3, "c")

        def handled() -> int:
            comms.process_one(timeout=0.1)
            return len(got)

        eventually(handled, "the 3 legacy drops handled", until=lambda n: n >= 3)
    assert sorted(m.id for m in got) == ["c-00000", "c-00001", "c-00002"]
    assert all(m.durable and m.attempt == 1 for m in got)


def test_the_watcher_ingests_legacy_drops_of_adopted_agents_only(
    root: Path, make_mailbox: Callable[..., FileMailbox]
) -> None:
    mb = make_mailbox("Agent-1")
    (root / "Agent-2").mkdir()  # not adopted: its legacy reader takes what is dropped
    delivered: list[str] = []
    on = {"ingest_legacy": True}  # the operator turns the intake on (watch --legacy)
    with MailboxWatcher(root, on_event=lambda e: delivered.append(e.kind), rescan_every=60, **on):
        workers.legacy_inbox_dir_writer(str(root), "Agent-1", 2, "w")
        workers.legacy_inbox_json_writer(str(root), "Agent-1", 2, "j")
        workers.legacy_inbox_json_writer(str(root), "Agent-2", 2, "k")
        eventually(
            lambda: mb.stats().states[State.NEW].count, "Agent-1's 4 drops taken", until=lambda n: n >= 4
        )
    assert mb.stats().states[State.NEW].count == 4
    assert len(orjson.loads((root / "Agent-2" / "inbox.json").read_bytes())) == 2
    assert not (root / "Agent-2" / "new").exists()
