"""The Dream.OS legacy intake against a co-tenant of the group (second round).

A co-tenant can rename or replace anything in another agent's folder under a 0770 setgid root, and
the operator may run ``doctor --fix`` / ``migrate`` as root:

- the ingestion journals are reached through the agent folder's descriptor only: a folder swapped for
  a link mid-ingestion never makes a journal be written or removed elsewhere;
- one legacy entry that cannot become a message (NaN, a lone surrogate) never blocks the rest of the
  file, a consumer's durable deliveries, ``migrate --dry-run`` or ``doctor`` for the other agents;
- ``migrate``'s backup skips hard links and sparse files and stops at a total cap.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hybridcomms import FileMailbox, Message
from hybridcomms.compat.dreamos import legacy
from hybridcomms.compat.dreamos.legacy import ingest
from hybridcomms.errors import UnsafePathError
from hybridcomms.states import State

JOURNALS = (".hybridcomms-ingest.json", ".hybridcomms-ingest-inbox.json", ".hybridcomms-ingest-flat.json")


def _entries(n: int, prefix: str = "m") -> list[dict[str, object]]:
    return [
        {"id": f"{prefix}{i:04d}", "sender": "x", "content": f"hello {i}", "type": "text"} for i in range(n)
    ]


def _outside(tmp_path: Path) -> Path:
    """A folder outside the root, holding a sentinel where every journal would go."""
    out = tmp_path / "outside"
    out.mkdir()
    for name in JOURNALS:
        (out / name).write_text("sentinel")
    return out


def _swap(root: Path, agent: str, target: Path) -> None:
    """The co-tenant's move: the agent's folder renamed aside, a link to ``target`` in its place."""
    os.rename(root / agent, root / f"{agent}.moved")
    os.symlink(target, root / agent)


def _assert_untouched(out: Path) -> None:
    assert sorted(os.listdir(out)) == sorted(JOURNALS)
    for name in JOURNALS:
        assert (out / name).read_text() == "sentinel", name


# -- 1. the journals, through the folder's descriptor only ----------------------------------------


def test_inbox_json_journal_never_follows_a_swapped_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(legacy, "CHUNK_ENTRIES", 3)
    root = tmp_path / "root"
    out = _outside(tmp_path)
    with FileMailbox(root, "Victim") as mb:
        (root / "Victim" / "inbox.json").write_text(json.dumps(_entries(10)))
        swapped: list[int] = []

        def after_chunk(n: int) -> None:  # after the first chunk's journal was written
            if not swapped:
                _swap(root, "Victim", out)
                swapped.append(n)

        report = ingest(mb, on_taken=after_chunk)
    assert swapped
    _assert_untouched(out)
    moved = root / "Victim.moved"
    assert report.n_ingested == 10 and len(os.listdir(moved / "new")) == 10
    assert json.loads((moved / "inbox.json").read_text()) == []
    assert not any((moved / name).exists() for name in JOURNALS)  # ended where it was written


def test_inbox_folder_journal_never_follows_a_swapped_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(legacy, "CHUNK_ENTRIES", 2)
    root = tmp_path / "root"
    out = _outside(tmp_path)
    with FileMailbox(root, "Victim") as mb:
        inbox = root / "Victim" / "inbox"
        inbox.mkdir()
        for i, entry in enumerate(_entries(6)):
            (inbox / f"msg_{i}.json").write_text(json.dumps(entry))
        swapped: list[int] = []

        def after_chunk(n: int) -> None:
            if not swapped:
                _swap(root, "Victim", out)
                swapped.append(n)

        report = ingest(mb, on_taken=after_chunk, settle=0)
    assert swapped
    _assert_untouched(out)
    assert report.n_ingested == 6 and len(os.listdir(root / "Victim.moved" / "new")) == 6


def test_ingestion_refuses_a_folder_put_in_place_of_the_mailbox(tmp_path: Path) -> None:
    """Renamed away and another (real) folder made in its place since the mailbox was opened: the
    impostor's files are neither taken nor changed, and no journal is written in it."""
    root = tmp_path / "root"
    with FileMailbox(root, "Victim") as mb:
        os.rename(root / "Victim", root / "Victim.moved")
        impostor = root / "Victim"
        impostor.mkdir()
        text = json.dumps(_entries(3))
        (impostor / "inbox.json").write_text(text)
        with pytest.raises(UnsafePathError):
            ingest(mb)
    assert (impostor / "inbox.json").read_text() == text
    assert sorted(os.listdir(impostor)) == ["inbox.json"]
    assert os.listdir(root / "Victim.moved" / "new") == []


# -- 2. one entry never blocks the others -----------------------------------------------------------

NAN_ENTRY = '{"id": "p-nan", "sender": "x", "type": "text", "content": {"load": NaN}}'
SURROGATE_ENTRY = '{"id": "p-sur", "sender": "Agent-2\\ud800", "type": "text", "content": "x"}'


def _poisoned_inbox(folder: Path, good: int = 4) -> None:
    """``inbox.json`` with good entries around a NaN one (what ``json.dump(float('nan'))`` writes)
    and one whose sender holds a lone surrogate."""
    entries = [json.dumps(e) for e in _entries(good)]
    entries[1:1] = [NAN_ENTRY, SURROGATE_ENTRY]
    (folder / "inbox.json").write_text("[" + ", ".join(entries) + "]")


def test_nan_and_lone_surrogate_entries_are_taken_with_the_rest(tmp_path: Path) -> None:
    with FileMailbox(tmp_path, "V") as mb:
        _poisoned_inbox(tmp_path / "V")
        report = ingest(mb)
        assert report.n_ingested == 6 and not report.buried
        got = {m.id: m for m in (mb.read(i) for i in mb.list(State.NEW))}
    assert set(got) == {"p-nan", "p-sur", "m0000", "m0001", "m0002", "m0003"}
    nan = legacy.to_legacy_dict(got["p-nan"])["content"]["load"]
    assert nan != nan  # a legacy reader gets back exactly the NaN that was written
    assert legacy.to_legacy_dict(got["p-sur"])["sender"] == "Agent-2\ud800"
    assert json.loads((tmp_path / "V" / "inbox.json").read_text()) == []


def test_an_entry_that_cannot_become_a_message_is_buried_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the conversion raises for one entry (here: a fault injected for it), that entry goes
    to dead/ with the reason, and the entries around it are taken."""
    real = legacy._lenient_from_legacy

    def lenient(view: object, *args: object) -> Message:
        if isinstance(view, dict) and view.get("id") == "p-nan":
            raise TypeError("injected: cannot be carried")
        return real(view, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(legacy, "_lenient_from_legacy", lenient)
    with FileMailbox(tmp_path, "V") as mb:
        _poisoned_inbox(tmp_path / "V")
        report = ingest(mb)
        assert report.n_ingested == 5
        assert [b.source for b in report.buried] == ["V/inbox.json[1]"]
        assert "injected: cannot be carried" in report.buried[0].reason
        assert len(mb.list(State.DEAD)) == 1


def test_an_entry_nested_thousands_deep_is_buried_alone(tmp_path: Path) -> None:
    deep = '{"id": "deep", "content": ' + "[" * 3000 + "]" * 3000 + "}"
    entries = [json.dumps(e) for e in _entries(2)]
    with FileMailbox(tmp_path, "V") as mb:
        (tmp_path / "V" / "inbox.json").write_text(f"[{entries[0]}, {deep}, {entries[1]}]")
        report = ingest(mb)
        assert report.n_ingested == 2
        assert [(b.source, b.reason) for b in report.buried] == [
            ("V/inbox.json[1]", "nested too deeply to be read as JSON")
        ]
        dead = [i for i in mb.list(State.DEAD)]
        assert len(dead) == 1
        assert (tmp_path / "V" / "dead" / dead[0].name).read_text() == deep  # its bytes, unchanged


def test_consumer_delivers_durable_and_legacy_messages_past_a_poisoned_entry(tmp_path: Path) -> None:
    from hybridcomms import Comms

    _poisoned_inbox_dir = tmp_path / "Victim"
    with FileMailbox(tmp_path, "Victim") as mb:
        _poisoned_inbox(_poisoned_inbox_dir)
        for i in range(3):
            mb.put(Message("dreamos.agent.Victim.task", {"i": i}, sender="Agent-3", id=f"durable{i}"))
    got: list[str] = []
    all_in = threading.Event()

    def handler(m: Message) -> None:
        got.append(m.id)
        if len(got) == 9:
            all_in.set()

    c = Comms("Victim", root=tmp_path, legacy_intake=True, share_bus=False)
    c.subscribe("*", handler)
    with c:
        assert all_in.wait(10), got
    assert sorted(got) == sorted(
        ["durable0", "durable1", "durable2", "p-nan", "p-sur"] + [f"m{i:04d}" for i in range(4)]
    )


def test_a_failing_legacy_step_never_stops_durable_delivery(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever the intake raises, the consumer delivers the mailbox, says it once, and backs off."""
    from hybridcomms import Comms

    calls: list[float] = []

    def prober(self: object, mailbox: FileMailbox) -> object:
        def run(force: bool = False) -> object:
            calls.append(time.monotonic())
            raise RuntimeError("intake bug")

        return run

    monkeypatch.setattr(legacy.LegacyIntake, "prober", prober)
    with FileMailbox(tmp_path, "Victim") as mb:
        for i in range(3):
            mb.put(Message("dreamos.agent.Victim.task", {"i": i}, sender="Agent-3", id=f"durable{i}"))
    got: list[str] = []
    all_in = threading.Event()

    def handler(m: Message) -> None:
        got.append(m.id)
        if len(got) == 3:
            all_in.set()

    caplog.set_level(logging.WARNING)
    c = Comms("Victim", root=tmp_path, legacy_intake=True, share_bus=False)
    c.subscribe("*", handler)
    with c:
        assert all_in.wait(10), got
        with FileMailbox(tmp_path, "Victim") as mb:  # one more, after the first failure
            mb.put(Message("dreamos.agent.Victim.task", {}, sender="Agent-3", id="durable3"))
        deadline = threading.Event()
        for _ in range(100):
            if "durable3" in got:
                break
            deadline.wait(0.05)
    assert "durable3" in got
    assert calls and all(b - a >= 0.9 for a, b in itertools.pairwise(calls))  # backed off, not every turn
    said = [r for r in caplog.records if "legacy intake" in r.getMessage()]
    assert len(said) == 1 and "intake bug" in said[0].getMessage()
    assert said[0].exc_info is None  # no traceback at every turn


def test_migrate_dry_run_reports_a_poisoned_entry_and_goes_on(tmp_path: Path) -> None:
    (tmp_path / "V").mkdir()
    _poisoned_inbox(tmp_path / "V")
    (tmp_path / "W").mkdir()
    (tmp_path / "W" / "inbox.json").write_text(json.dumps(_entries(2)))
    p = subprocess.run(
        [sys.executable, "-m", "hybridcomms", "--root", str(tmp_path), "migrate", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    assert "V: would move 6 to new/" in p.stdout and "W: would move 2 to new/" in p.stdout
    assert "total: 8 to new/" in p.stdout


# -- 4. doctor goes on past one agent's failure ------------------------------------------------------


def _two_agents(root: Path) -> None:
    for agent in ("Alpha", "Bravo"):
        FileMailbox(root, agent).close()
    (root / "Alpha" / "inbox.json").write_text(json.dumps(_entries(1, "a")))
    (root / "Bravo" / "inbox.json").write_text(json.dumps(_entries(1, "b")))
    stale = root / "Bravo" / "tmp" / "stale.tmp"
    stale.write_text("junk")
    os.utime(stale, (1, 1))


def test_doctor_fix_goes_on_past_an_agent_whose_ingestion_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hybridcomms.cli import main

    _two_agents(tmp_path)
    real = legacy.ingest

    def ingest_fault(mb: FileMailbox, **kw: object) -> legacy.IngestReport:
        if mb.agent_id == "Alpha":
            raise TypeError("injected: a poisoned drop")
        return real(mb, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(legacy, "ingest", ingest_fault)
    assert main(["--root", str(tmp_path), "doctor", "--fix"]) == 1
    out = capsys.readouterr().out
    assert "PROBLEM  Alpha: legacy-drops" in out and "injected: a poisoned drop" in out
    assert "fixed    Bravo: legacy-drops" in out and "fixed    Bravo: stale-tmp" in out
    assert len(os.listdir(tmp_path / "Bravo" / "new")) == 1 and os.listdir(tmp_path / "Bravo" / "tmp") == []


def test_doctor_goes_on_past_an_agent_whose_check_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from hybridcomms.cli import doctor as _inspect_commands
    from hybridcomms.cli import main

    _two_agents(tmp_path)
    real = _inspect_commands._doctor_one

    def doctor_fault(mb: FileMailbox, fix: bool, deep: bool = False) -> list[dict[str, object]]:
        if mb.agent_id == "Alpha":
            raise RuntimeError("injected: check failed")
        return real(mb, fix, deep)

    monkeypatch.setattr(_inspect_commands, "_doctor_one", doctor_fault)
    assert main(["--root", str(tmp_path), "doctor", "--fix", "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    kinds = {(f["agent"], f["kind"], f["fixed"]) for f in report["findings"]}
    assert ("Alpha", "check-failed", False) in kinds
    assert {("Bravo", "legacy-drops", True), ("Bravo", "stale-tmp", True)} <= kinds
    assert not report["healthy"]


# -- 3. the backup: no amplification ----------------------------------------------------------------


def _legacy_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    (root / "Victim").mkdir()
    (root / "Victim" / "inbox.json").write_text(json.dumps(_entries(2)))
    return root


def test_backup_skips_hard_links_and_sparse_files(tmp_path: Path) -> None:
    from hybridcomms.compat.dreamos.migrate import migrate

    root = _legacy_root(tmp_path)
    junk = root / "Victim" / "junk"
    junk.mkdir()
    (junk / "f0").write_bytes(b"x" * 4096)
    for i in (1, 2):
        os.link(junk / "f0", junk / f"f{i}")
    with open(junk / "sparse", "wb") as f:
        f.truncate(8 << 20)  # 8 MiB of nothing on disk
    result = migrate(root)
    assert result.backup is not None
    backup = result.backup
    assert sorted(os.listdir(backup / "Victim" / "junk")) == []
    skipped = dict(result.backup_skipped)
    assert {f"Victim/junk/f{i}" for i in range(3)} | {"Victim/junk/sparse"} <= set(skipped)
    assert "hard links" in skipped["Victim/junk/f0"] and "sparse" in skipped["Victim/junk/sparse"]
    assert json.loads((backup / "Victim" / "inbox.json").read_text()) == _entries(2)  # the rest is there
    assert len(os.listdir(root / "Victim" / "new")) == 2


def test_backup_stops_at_its_limit_and_nothing_is_migrated(tmp_path: Path) -> None:
    from hybridcomms.compat.dreamos._backup import BackupIncompleteError
    from hybridcomms.compat.dreamos.migrate import migrate

    root = _legacy_root(tmp_path)
    (root / "Victim" / "big.bin").write_bytes(b"y" * 5000)
    text = (root / "Victim" / "inbox.json").read_text()
    with pytest.raises(BackupIncompleteError) as info:
        migrate(root, backup_limit=4000)
    assert "incomplete" in str(info.value) and "4000 bytes" in str(info.value)
    assert "Victim/big.bin" in str(info.value)
    assert (root / "Victim" / "inbox.json").read_text() == text  # nothing taken
    assert not (root / "Victim" / "new").exists()
    copied = sum(p.stat().st_size for p in info.value.path.rglob("*") if p.is_file())
    assert copied <= 4000
