"""`hybridcomms migrate` on a mailbox root built from every legacy layout (L1-L4), strays included."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from hybridcomms import FileMailbox, State
from hybridcomms.compat.dreamos.migrate import migrate, survey


def legacy(i: int, recipient: str, **extra: Any) -> dict[str, Any]:
    return {
        "message_id": f"id{i:04d}",
        "sender_agent_id": "Agent-9",
        "recipient_agent_id": recipient,
        "timestamp_utc": "2025-05-01T12:00:00+00:00",
        "subject": f"s{i}",
        "type": "TASK_COMMAND",
        "body": {"i": i},
        "priority": "MEDIUM",
        **extra,
    }


def build_legacy_root(root: Path) -> None:
    # L1: inbox.json with two messages, one of them not an object (a legacy reader reads it all the same)
    (root / "Agent-1").mkdir(parents=True)
    (root / "Agent-1" / "inbox.json").write_bytes(orjson.dumps([legacy(1, "Agent-1"), "just a string"]))
    # L1, corrupt
    (root / "Agent-6").mkdir()
    (root / "Agent-6" / "inbox.json").write_text('[{"message_id": "x", ')
    # L2: inbox/msg_*.json, an archive of processed ones, a note, invalid JSON
    inbox = root / "Agent-2" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "msg_20250501_120000_000001_id0002.json").write_bytes(orjson.dumps(legacy(2, "Agent-2")))
    (inbox / "notes.md").write_text("# a note someone left")
    (inbox / "msg_broken.json").write_text("{{ message | tojson }}")  # an unrendered template
    old = 1_600_000_000
    os.utime(inbox / "msg_broken.json", (old, old))
    (root / "Agent-2" / "archive").mkdir()
    (root / "Agent-2" / "archive" / "msg_done.json").write_bytes(orjson.dumps(legacy(3, "Agent-2")))
    # L3: bootstrap runner folders
    for sub in ("inbox", "outbox", "processed", "state", "workspace"):
        (root / "Agent3" / sub).mkdir(parents=True)
    spelled = {"from": "Agent-1", "to": "Agent3", "message_type": "DIRECTIVE", "content": "do it"}
    (root / "Agent3" / "inbox" / "20250501_120000_Agent-1_Agent3.json").write_bytes(orjson.dumps(spelled))
    (root / "Agent3" / "processed" / "20250430_090000_Agent-1_Agent3.json").write_bytes(
        orjson.dumps({**spelled, "content": "done already"})
    )
    (root / "Agent3" / "state" / "state.json").write_text("{}")
    (root / "Agent3" / "outbox" / "sent.json").write_text("{}")
    # L4: flat files in the agent folder
    (root / "Captain-THEA").mkdir()
    (root / "Captain-THEA" / "20250429_080000_Agent-1.json").write_bytes(
        orjson.dumps({"type": "DIRECTIVE", "body": "flat", "sender": "Agent-1"})
    )
    # strays
    (root / "broadcast").mkdir()
    (root / "broadcast" / "b1.json").write_text('{"type": "SYSTEM_MESSAGE"}')
    (root / "{agent_id}").mkdir()
    (root / "{agent_id}" / "inbox.json").write_text("[]")
    (root / "README.md").write_text("mailboxes")


def tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for f in files:
            p = Path(dirpath) / f
            out[str(p.relative_to(root))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def ids(root: Path, agent: str, state: State) -> list[str]:
    with FileMailbox(root, agent, create=False) as mb:
        return sorted(i.id or i.name for i in mb.list(state))


def test_dry_run_changes_nothing_and_says_what_it_would_do(tmp_path: Path) -> None:
    root = tmp_path / "agent_mailboxes"
    build_legacy_root(root)
    before = tree(root)
    plan = migrate(root, dry_run=True)
    assert tree(root) == before and not list(tmp_path.glob("*.backup-*"))
    assert plan.totals() == {"new": 5, "done": 2, "dead": 2, "left": 7}
    text = plan.describe()
    assert "would move" in text and "notes.md" in text and "broadcast/" in text and "{agent_id}/" in text


def test_migrate_converts_every_layout_keeps_a_backup_and_can_run_twice(tmp_path: Path) -> None:
    root = tmp_path / "agent_mailboxes"
    build_legacy_root(root)
    before = tree(root)
    result = migrate(root, fsync="never")
    assert result.backup is not None and tree(result.backup) == before  # a full, exact copy
    assert result.totals()["new"] == 5 and result.totals()["done"] == 2 and result.totals()["dead"] == 2

    new_ids = ids(root, "Agent-1", State.NEW)
    assert "id0001" in new_ids and len(new_ids) == 2  # "just a string" too, with a derived id
    assert orjson.loads((root / "Agent-1" / "inbox.json").read_bytes()) == []
    assert ids(root, "Agent-1", State.DEAD) == []
    with FileMailbox(root, "Agent-1", create=False) as mb:
        from hybridcomms.compat.dreamos.legacy import LEGACY_TOPIC, to_legacy_dict

        got = [mb.read(i) for i in mb.list(State.NEW)]
        assert sorted(map(repr, (to_legacy_dict(m) for m in got))) == sorted(
            [repr("just a string"), repr(to_legacy_dict(next(m for m in got if m.id == "id0001")))]
        )
        assert any(m.topic == LEGACY_TOPIC for m in got)
    assert len(ids(root, "Agent-6", State.DEAD)) == 1  # the corrupt inbox.json, kept whole
    with FileMailbox(root, "Agent-6", create=False) as mb:
        [info] = mb.list(State.DEAD)
        assert (root / "Agent-6" / "dead" / info.name).read_text() == '[{"message_id": "x", '
    assert ids(root, "Agent-2", State.NEW) == ["id0002"] and ids(root, "Agent-2", State.DONE) == ["id0003"]
    assert (root / "Agent-2" / "inbox" / "notes.md").exists()  # left where it is
    assert not (root / "Agent-2" / "inbox" / "msg_broken.json").exists()
    assert len(ids(root, "Agent-2", State.DEAD)) == 1
    assert len(ids(root, "Agent3", State.NEW)) == 1 and len(ids(root, "Agent3", State.DONE)) == 1
    assert (root / "Agent3" / "state" / "state.json").exists() and (
        root / "Agent3" / "outbox" / "sent.json"
    ).exists()
    assert len(ids(root, "Captain-THEA", State.NEW)) == 1
    assert not (root / "Captain-THEA" / "20250429_080000_Agent-1.json").exists()
    assert (root / "broadcast" / "b1.json").exists() and (root / "{agent_id}" / "inbox.json").exists()
    assert (root / "README.md").exists()

    with FileMailbox(root, "Agent3", create=False) as mb:
        d = mb.claim()
        assert d is not None and d.message.payload == "do it" and d.message.sender == "Agent-1"
        d.nack(delay=0)

    after_first = tree(root)
    again = migrate(root, fsync="never")
    assert again.totals()["new"] == again.totals()["done"] == again.totals()["dead"] == 0
    assert again.backup is None  # nothing to change: no new backup
    assert tree(root) == after_first


def test_an_interrupted_migration_is_finished_by_the_next_run_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "agent_mailboxes"
    root.mkdir()
    (root / "Agent-1").mkdir()
    (root / "Agent-1" / "inbox.json").write_bytes(orjson.dumps([legacy(i, "Agent-1") for i in range(5)]))
    import hybridcomms.compat.dreamos.legacy as legacy_mod

    real = os.rename

    def die_on_inbox(src: Any, dst: Any, **kwargs: Any) -> None:
        if dst == "inbox.json":  # killed before the array was emptied
            raise KeyboardInterrupt("killed")
        real(src, dst, **kwargs)

    monkeypatch.setattr(legacy_mod.os, "rename", die_on_inbox)
    with pytest.raises(KeyboardInterrupt):
        migrate(root, backup=False, fsync="never")
    monkeypatch.setattr(legacy_mod.os, "rename", real)
    migrate(root, backup=False, fsync="never")
    assert ids(root, "Agent-1", State.NEW) == [f"id{i:04d}" for i in range(5)]


def test_migrate_from_the_command_line(tmp_path: Path) -> None:
    root = tmp_path / "agent_mailboxes"
    build_legacy_root(root)
    env = {k: v for k, v in os.environ.items() if k != "HYBRIDCOMMS_ROOT"}
    dry = subprocess.run(
        [sys.executable, "-m", "hybridcomms", "migrate", "--root", str(root), "--dry-run", "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert dry.returncode == 0, dry.stderr
    assert orjson.loads(dry.stdout)["totals"]["new"] == 5
    real = subprocess.run(
        [sys.executable, "-m", "hybridcomms", "--fsync", "never", "migrate", "--root", str(root)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert real.returncode == 0, real.stderr
    assert "total: 5 to new/, 2 to done/, 2 to dead/" in real.stdout and "backup:" in real.stdout
    missing = subprocess.run(
        [sys.executable, "-m", "hybridcomms", "migrate", "--root", str(tmp_path / "nope")],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert missing.returncode == 1 and "no mailbox root" in missing.stderr


def test_survey_of_an_empty_root(tmp_path: Path) -> None:
    assert survey(tmp_path).totals() == {"new": 0, "done": 0, "dead": 0, "left": 0}
