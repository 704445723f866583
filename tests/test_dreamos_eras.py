"""Real Dream.OS shapes run unchanged: an agent-shaped program of each era (tests/dreamos_agents/),
each in its own child process after install(); and the legacy behaviours they rely on."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from hybridcomms import FileMailbox, InvalidAgentIdError, State
from hybridcomms.bus import AgentBus as CoreBus
from hybridcomms.compat.dreamos import mailbox_utils
from hybridcomms.compat.dreamos.legacy import LEGACY_TOPIC, ingest, to_legacy_dict
from hybridcomms.compat.dreamos.migrate import migrate

AGENTS = Path(__file__).parent / "dreamos_agents"


def run_agent(script: str, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRIDCOMMS_", "PYTHONPATH"))}
    out = subprocess.run(
        [sys.executable, str(AGENTS / script), str(tmp_path / "work")],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    assert out.returncode == 0 and out.stdout.strip().endswith("OK"), out.stdout + out.stderr


@pytest.mark.slow
@pytest.mark.parametrize("script", ["head_era_agent.py", "may2025_era_agent.py", "canonical_era_agent.py"])
def test_an_agent_of_each_era_runs_unchanged(script: str, tmp_path: Path) -> None:
    run_agent(script, tmp_path)


# -- any JSON object is a legacy message ------------------------------------------------------------

ODD_MESSAGES: list[Any] = [
    {"sender": "Agent-1", "content": "hello"},  # the e563f46 test's shape: no type, no id
    {"sender": "Agent-1", "content": {"n": 1}, "type": "TASK_COMMAND"},
    {1: "an int key", "x": [1, 2]},
    {"big": 2**70, "neg": -(2**80)},
    {"nan": math.nan, "inf": math.inf},
    {"timestamp_utc": "9999-12-31T23:59:59-14:00", "type": "T"},
    {"message_id": "../../etc", "type": "T"},
    {"type": "x" * 1000, "priority": ["odd"]},
    {},
]


def as_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True)


@pytest.mark.parametrize("adopted", [False, True])
def test_write_mailbox_message_stores_any_object_and_readers_get_it_back_exactly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, adopted: bool
) -> None:
    root = tmp_path / "mb"
    monkeypatch.setattr(mailbox_utils, "MAILBOX_ROOT", root)
    if adopted:
        FileMailbox(root, "Agent-9", fsync="never").close()
    for m in ODD_MESSAGES:
        mailbox_utils.write_mailbox_message("Agent-9", m)
    read = mailbox_utils.read_mailbox_messages("Agent-9")
    # json.dumps then loads is what the legacy write and read did (non-string keys become strings)
    assert as_json(read) == as_json([json.loads(json.dumps(m)) for m in ODD_MESSAGES])
    assert (root / "Agent-9" / "new").is_dir() == adopted  # no adoption as a side effect


def test_ingestion_and_migration_never_dead_letter_what_a_legacy_reader_reads(tmp_path: Path) -> None:
    root = tmp_path / "agent_mailboxes"
    (root / "Agent-1").mkdir(parents=True)
    written = ODD_MESSAGES * 30 + [42, "text", None, [1, 2]]  # 274 values, as json.dump wrote them
    (root / "Agent-1" / "inbox.json").write_text(json.dumps(written, indent=2))
    result = migrate(root, fsync="never", backup=False)
    assert result.totals()["dead"] == 0 and result.totals()["new"] == len(written)
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        got = []
        while (d := mb.claim()) is not None:
            got.append(d.message)
            d.ack()
    assert sorted(map(as_json, (to_legacy_dict(m) for m in got))) == sorted(
        as_json(json.loads(json.dumps(v))) for v in written
    )
    assert any(m.topic == LEGACY_TOPIC for m in got)


def test_live_ingestion_of_an_adopted_agent_keeps_every_value(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "mb"
    monkeypatch.setattr(mailbox_utils, "MAILBOX_ROOT", root)
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        (mb.path / "inbox.json").write_text(json.dumps(ODD_MESSAGES))
        report = ingest(mb)
        assert report.dead == [] and len(report.ingested) == len(ODD_MESSAGES)
        assert mb.stats().states[State.NEW].count == len(ODD_MESSAGES)
    read = mailbox_utils.read_mailbox_messages("Agent-1")  # now from new/
    assert sorted(map(as_json, read)) == sorted(as_json(json.loads(json.dumps(m))) for m in ODD_MESSAGES)


# -- behaviours legacy loops rely on ------------------------------------------------------------------


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def on(self, event: Any) -> None:
        self.calls += 1


def test_a_bound_method_under_two_matching_patterns_runs_once_per_event() -> None:
    bus = CoreBus()
    c = Counter()
    bus.subscribe("x.*", c.on)
    bus.subscribe("x.y", c.on)  # c.on is a new bound-method object, equal to the first
    bus.publish("x.y", {})
    assert c.calls == 1
    assert bus.unsubscribe("x.y", c.on) and bus.unsubscribe("x.*", c.on)


def test_an_agent_id_with_a_space_is_refused_with_how_to_move_it_over() -> None:
    with pytest.raises(InvalidAgentIdError, match=r"rename its folder to 'Agent-1'.*hybridcomms migrate"):
        FileMailbox("/tmp", "Agent 1")


# -- the CLI follows the recipient --------------------------------------------------------------------


def cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    return subprocess.run(
        [sys.executable, "-m", "hybridcomms", *args], capture_output=True, text=True, cwd=cwd, env=env
    )


def test_the_cli_sends_to_a_legacy_agent_where_it_reads_and_never_adopts_it(tmp_path: Path) -> None:
    root = tmp_path / "mb"
    (root / "Agent-9").mkdir(parents=True)
    (root / "Agent-9" / "inbox.json").write_text(json.dumps([{"sender": "x", "content": "old"}]))
    sent = cli(
        "--root",
        str(root),
        "send",
        "--to",
        "Agent-9",
        "--topic",
        "TASK",
        "--payload",
        '{"n":1}',
        cwd=tmp_path,
    )
    assert sent.returncode == 0 and "legacy Dream.OS layout" in sent.stderr
    assert not (root / "Agent-9" / "new").exists()
    entries = json.loads((root / "Agent-9" / "inbox.json").read_text())
    assert len(entries) == 2 and entries[1]["type"] == "TASK" and entries[1]["body"] == {"n": 1}

    recv = cli("--root", str(root), "recv", "Agent-9", cwd=tmp_path)
    assert recv.returncode == 1 and "legacy Dream.OS layout" in recv.stderr and "2 message(s)" in recv.stderr
    assert not (root / "Agent-9" / "new").exists()
    stats = cli("--root", str(root), "stats", "--json", cwd=tmp_path)
    assert json.loads(stats.stdout)["legacy"] == [{"agent": "Agent-9", "layout": "inbox.json", "waiting": 2}]

    adopted = cli("--root", str(root), "recv", "Agent-9", "--adopt", cwd=tmp_path)  # explicit adoption
    assert adopted.returncode == 0 and (root / "Agent-9" / "new").is_dir()
    assert json.loads(adopted.stdout)["topic"] in (LEGACY_TOPIC, "TASK")
