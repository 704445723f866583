"""Inspect and repair from the shell: ls, show, requeue, purge, tail, doctor, as real subprocesses,
with the schema of their --json output checked and their errors as one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from cli_runner import run_cli

from hybridcomms import FileMailbox, Message, State

HC = [sys.executable, "-m", "hybridcomms"]


def hc(root: Path, *args: str, real: bool = False) -> subprocess.CompletedProcess[str]:
    """``hybridcomms --root ROOT ARGS`` in this process, or as a real subprocess (``real``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    argv = ["--root", str(root), "--fsync", "never", *args]
    if not real:
        return run_cli(argv, cwd=root.parent, env=env)
    return subprocess.run(
        [*HC, *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=root.parent,
    )


def js(out: subprocess.CompletedProcess[str]) -> Any:
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


@pytest.fixture
def filled(root: Path) -> dict[str, str]:
    """Agent-1 with one waiting, one done and one dead message."""
    with FileMailbox(root, "Agent-1", fsync="never", max_attempts=1) as mb:
        waiting = mb.put(Message("dreamos.task.build", {"n": 1}))
        done = mb.put(Message("dreamos.status", {"n": 2}))
        dead = mb.put(Message("dreamos.task.fail", {"n": 3}))
        for _ in range(3):
            d = mb.claim()
            assert d is not None
            if d.message.id == done:
                d.ack()
            elif d.message.id == dead:
                d.nack(error="ValueError: bad input")
            else:
                d.nack(delay=0)  # with max_attempts=1 this dead-letters it too...
        mb.requeue(waiting)  # ...so it is put back: waiting in new/ again
    return {"waiting": waiting, "done": done, "dead": dead}


ROW_KEYS = {"agent", "state", "id", "file", "attempt", "age", "size", "topic"}


def test_ls_lists_filters_and_prints_json(root: Path, filled: dict[str, str]) -> None:
    rows = js(hc(root, "ls", "Agent-1", "--json"))
    assert all(set(r) >= ROW_KEYS for r in rows)
    assert {r["id"]: r["state"] for r in rows}[filled["dead"]] == "dead"
    dead_row = next(r for r in rows if r["id"] == filled["dead"])
    assert "ValueError: bad input" in (dead_row["last_error"] or "") and isinstance(dead_row["age"], float)
    tasks = js(hc(root, "ls", "Agent-1", "--topic", "dreamos.task.*", "--json"))
    assert {r["topic"] for r in tasks} == {"dreamos.task.build", "dreamos.task.fail"}
    only_dead = js(hc(root, "ls", "Agent-1", "--state", "dead", "--json"))
    assert [r["id"] for r in only_dead] == [filled["dead"]]
    assert js(hc(root, "ls", "Agent-1", "--older-than", "1h", "--json")) == []
    table = hc(root, "ls", "Agent-1")
    assert table.returncode == 0 and "dreamos.task.fail" in table.stdout and "failed 1 of 1" in table.stdout


def test_show_finds_a_message_anywhere_and_says_why_it_died(root: Path, filled: dict[str, str]) -> None:
    out = js(hc(root, "show", filled["dead"], "--json"))
    assert out["state"] == "dead" and out["agent"] == "Agent-1" and out["message"]["payload"] == {"n": 3}
    assert "failed 1 of 1" in out["dead_reason"] and "bad input" in out["last_error"]
    missing = hc(root, "show", "no-such-id")
    assert missing.returncode == 1 and len(missing.stderr.strip().splitlines()) == 1


def test_requeue_and_purge(root: Path, filled: dict[str, str]) -> None:
    out = js(hc(root, "requeue", "Agent-1", "--all-dead", "--keep-attempts", "--json"))
    assert len(out["requeued"]) == 1 and out["not_found"] == []
    with FileMailbox(root, "Agent-1", create=False) as mb:
        info = mb.get(filled["dead"])
        assert info is not None and info.state is State.NEW and info.attempt == 1  # attempts kept
    bad = hc(root, "requeue", "Agent-1", "nope")
    assert bad.returncode == 1
    both = hc(root, "requeue", "Agent-1", "x", "--all-dead")
    assert both.returncode != 0 and "not both" in both.stderr
    dry = js(hc(root, "purge", "Agent-1", "--state", "done", "--older-than", "0s", "--dry-run", "--json"))
    assert len(dry["would_delete"]) == 1
    kept = js(hc(root, "purge", "Agent-1", "--state", "done", "--older-than", "7d", "--json"))
    assert kept["deleted"] == 0
    gone = js(hc(root, "purge", "Agent-1", "--state", "done", "--older-than", "0", "--json"))
    assert gone["deleted"] == 1 and os.listdir(root / "Agent-1" / "done") == []


def test_requeue_gives_a_fresh_attempt_count_by_default(tmp_path: Path) -> None:
    """As `FileMailbox.requeue` and the dashboard do: a message that used its attempts gets them all
    again (keeping the count gave one more try, then "failed 4 of 3 attempts")."""
    root = tmp_path / "root"
    with FileMailbox(root, "W", max_attempts=3) as mb:
        mb.put(Message("job", {}, id="j1"))
        for _ in range(3):
            d = mb.claim()
            assert d is not None
            d.nack(delay=0, error="boom")
        assert mb.get("j1").state is State.DEAD  # type: ignore[union-attr]
    out = js(hc(root, "requeue", "W", "j1", "--json"))
    assert out["not_found"] == [] and len(out["requeued"]) == 1
    with FileMailbox(root, "W", create=False) as mb:
        info = mb.get("j1")
        assert info is not None and info.state is State.NEW and info.attempt == 0
    both = hc(root, "requeue", "W", "j1", "--keep-attempts", "--reset-attempts")
    assert both.returncode == 2 and "not allowed with" in both.stderr


def test_doctor_finds_problems_fixes_them_and_exits_0_only_when_healthy(
    root: Path, filled: dict[str, str]
) -> None:
    assert js(hc(root, "doctor", "--json"))["healthy"] is True
    mb_path = root / "Agent-1"
    old = time.time() - 7200
    (mb_path / "tmp" / "half").write_bytes(b"x")
    os.utime(mb_path / "tmp" / "half", (old, old))
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        d = mb.claim()  # a claim whose consumer "dies"
        assert d is not None
        d._release()
    (mb_path / "new" / "junk.json").write_bytes(b"{not json")
    os.chmod(mb_path / "new", 0o777)
    sick = hc(root, "doctor", "--json")
    assert sick.returncode == 1
    report = json.loads(sick.stdout)
    kinds = {f["kind"] for f in report["findings"]}
    assert {"undecodable", "stale-tmp", "orphaned-claim", "mode"} <= kinds and report["healthy"] is False
    assert all({"agent", "kind", "where", "detail", "fixed"} <= set(f) for f in report["findings"])
    fixed = hc(root, "doctor", "--fix")
    assert fixed.returncode == 0, fixed.stdout + fixed.stderr
    assert js(hc(root, "doctor", "--json"))["healthy"] is True


def test_tail_prints_events_as_json_lines(root: Path, filled: dict[str, str]) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    p = subprocess.Popen(
        [*HC, "--root", str(root), "tail", "Agent-1", "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert p.stderr is not None and "following" in p.stderr.readline()  # handshake: it is watching
        with FileMailbox(root, "Agent-1", fsync="never") as mb:
            mid = mb.put(Message("t"))
        assert p.stdout is not None
        while True:
            ev = json.loads(p.stdout.readline())
            if ev["id"] == mid:
                break
        assert ev["kind"] == "delivered" and ev["agent"] == "Agent-1"
        p.terminate()
        assert p.wait(30) == 0
    finally:
        p.kill()


@pytest.mark.parametrize(
    "args",
    [
        ["ls", "Nobody"],
        ["ls", "Agent-1", "--older-than", "soon"],
        ["purge", "Agent-1", "--state", "new", "--older-than", "1d"],
        ["purge", "Agent-1", "--state", "done"],
        ["requeue", "Nobody", "--all-dead"],
        ["doctor", "Nobody"],
    ],
)
def test_bad_arguments_fail_in_one_line(root: Path, filled: dict[str, str], args: list[str]) -> None:
    out = hc(root, *args)
    assert out.returncode != 0 and len(out.stderr.strip().splitlines()) == 1, out.stderr
