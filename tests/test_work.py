"""`hybridcomms work AGENT -- CMD`: a real subprocess consuming a real mailbox."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import workers
from waiting import eventually, while_running

from hybridcomms import Backoff, FileMailbox, Message, State

# The command each message runs: it does what the message's payload says.
HANDLER = r"""
import json, os, sys, time
msg = json.loads(sys.stdin.read())
p = msg["payload"] or {}
env = {k: v for k, v in os.environ.items() if k.startswith("HYBRIDCOMMS_")}
with open(os.environ["LOG"], "a") as log:
    log.write(json.dumps({"id": msg["id"], "env": env}) + "\n")
if p.get("child"):  # a grandchild in the same process group
    import subprocess
    c = subprocess.Popen(["sleep", "60"])
    open(p["child"], "w").write(str(c.pid))
if p.get("ready"):
    open(p["ready"], "w").close()
time.sleep(p.get("sleep", 0))
sys.stderr.write(p.get("stderr", ""))
sys.stdout.write(p.get("stdout", ""))
sys.exit(p.get("exit", 0))
"""


def work(
    root: Path, tmp_path: Path, *extra: str, cmd: list[str] | None = None, **kw: Any
) -> subprocess.Popen[str]:
    """``hybridcomms work Agent-1 EXTRA --json -- CMD``; CMD is the HANDLER script by default."""
    handler = tmp_path / "handler.py"
    handler.write_text(HANDLER)
    env = {**os.environ, "LOG": str(tmp_path / "log.jsonl")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hybridcomms",
            "--root",
            str(root),
            "--fsync",
            "never",
            "work",
            "Agent-1",
            *extra,
            "--json",
            "--",
            *(cmd or [sys.executable, str(handler)]),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        **kw,
    )
    workers.STARTED.append(proc)  # killed after the test if it is still running
    return proc


def outcomes(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def mb(root: Path) -> FileMailbox:
    m = FileMailbox(root, "Agent-1", fsync="never", max_attempts=2)
    yield m
    m.close()


def test_exit_status_settles_each_message(root: Path, tmp_path: Path, mb: FileMailbox) -> None:
    mb.backoff = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)
    ok = Message("job", {"exit": 0}, sender="Agent-2", correlation_id="c1")
    temp = Message("job", {"exit": 75})
    bad = Message("job", {"exit": 3, "stderr": "boom: the disk is on fire\n"})
    for m in (ok, temp, bad):
        mb.put(m)
    # 1 + 2 runs of the temporary failure (then it is dead too), 2 of the failing one
    p = work(root, tmp_path, "--max-attempts", "2", "--retry-delay", "0", "--max-messages", "5")
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    rows = outcomes(out)
    assert [r["outcome"] for r in rows if r["id"] == ok.id] == ["acked"]
    assert [r["outcome"] for r in rows if r["id"] == temp.id] == ["retry", "dead"]  # on its last attempt
    bad_rows = [r for r in rows if r["id"] == bad.id]
    assert [r["outcome"] for r in bad_rows] == ["retry", "dead"]
    assert bad_rows[-1]["exit"] == 3 and "boom: the disk is on fire" in bad_rows[-1]["error"]
    [dead] = [i for i in mb.list(State.DEAD) if i.id == bad.id]
    assert "exit status 3" in dead.reason["reason"] and "disk is on fire" in dead.reason["reason"]
    [tempfailed] = [i for i in mb.list(State.DEAD) if i.id == temp.id]
    assert "exit status 75" in tempfailed.reason["reason"]
    envs = {
        json.loads(line)["id"]: json.loads(line)["env"]
        for line in (tmp_path / "log.jsonl").read_text().splitlines()
    }
    e = envs[ok.id]
    assert (
        e["HYBRIDCOMMS_ID"] == ok.id
        and e["HYBRIDCOMMS_TOPIC"] == "job"
        and e["HYBRIDCOMMS_SENDER"] == "Agent-2"
    )
    assert e["HYBRIDCOMMS_ATTEMPT"] == "1" and e["HYBRIDCOMMS_CORRELATION_ID"] == "c1"
    assert e["HYBRIDCOMMS_AGENT"] == "Agent-1" and e["HYBRIDCOMMS_REPLY_TO"] == ""


def test_a_request_gets_the_commands_stdout_as_its_reply(root: Path, tmp_path: Path, mb: FileMailbox) -> None:
    asker = FileMailbox(root, "Agent-2", fsync="never")
    req = Message("query.status", {"stdout": '{"status": "idle"}'}, sender="Agent-2", reply_to="Agent-2")
    mb.put(req)
    p = work(root, tmp_path, "--max-messages", "1")
    _, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    d = asker.claim()
    assert d is not None and d.message.correlation_id == req.id and d.message.payload == {"status": "idle"}
    assert d.message.topic == "query.status.reply"
    d.ack()
    asker.close()


def test_a_command_past_its_timeout_is_killed_with_its_children_and_retried(
    root: Path, tmp_path: Path, mb: FileMailbox
) -> None:
    child = tmp_path / "child.pid"
    mb.put(Message("job", {}))
    # A shell that starts a grandchild in its process group and waits: it has written the grandchild's
    # pid within milliseconds of starting, long before the timeout, even on a loaded machine (a
    # Python handler could take longer than the timeout only to start).
    script = 'sleep 60 & echo $! > "$0.tmp" && mv "$0.tmp" "$0"; wait'
    p = work(
        root,
        tmp_path,
        "--timeout",
        "1",
        "--retry-delay",
        "60",
        "--max-messages",
        "1",
        cmd=["sh", "-c", script, str(child)],
    )  # the retry is due in a minute: still waiting when stats looks, however slow the exit
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    [row] = outcomes(out)
    assert row["outcome"] == "retry" and "timed out after 1s" in row["error"] and row["seconds"] < 30
    st = mb.stats()
    assert st.states[State.NEW].count == 1 and st.delayed == 1  # waiting for its retry
    pid = int(child.read_text())

    def gone() -> bool:
        try:
            return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] == "Z"
        except FileNotFoundError:
            return True

    eventually(gone, "the command's child to go with its process group", 10)


def test_sigterm_lets_running_commands_finish_within_the_grace(
    root: Path, tmp_path: Path, mb: FileMailbox
) -> None:
    ready = tmp_path / "ready"
    m = Message("job", {"sleep": 1.0, "ready": str(ready)})
    mb.put(m)
    p = work(root, tmp_path, "--grace", "20")
    eventually(while_running(p, ready.exists), "the command to run", 60)  # the handshake
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert [r["outcome"] for r in outcomes(out)] == ["acked"]
    assert mb.stats().states[State.DONE].count == 1


def test_sigterm_past_the_grace_kills_and_keeps_the_message(
    root: Path, tmp_path: Path, mb: FileMailbox
) -> None:
    ready = tmp_path / "ready"
    m = Message("job", {"sleep": 60, "ready": str(ready)})
    mb.put(m)
    p = work(root, tmp_path, "--grace", "0.3")
    eventually(while_running(p, ready.exists), "the command to run", 60)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and time.monotonic() - t0 < 20, err
    [row] = outcomes(out)
    assert row["outcome"] == "retry" and "after SIGTERM" in row["error"]
    assert mb.get(m.id) is not None and mb.get(m.id).state is not State.DONE  # not lost, not done


@pytest.mark.slow
def test_heartbeats_keep_a_long_job_from_being_taken_away(root: Path, tmp_path: Path) -> None:
    # The job outlasts the lease; the renewals (a third of the lease apart) keep it. The lease is long
    # enough that only a stall of over a second (a loaded machine) could miss two renewals.
    mb = FileMailbox(root, "Agent-1", fsync="never", lease=1.5)
    ready = tmp_path / "ready"
    m = Message("job", {"sleep": 2.5, "ready": str(ready)})
    mb.put(m)
    p = work(root, tmp_path, "--lease", "1.5", "--max-messages", "1")
    eventually(while_running(p, ready.exists), "the command to run", 60)
    taken = []
    while p.poll() is None:  # a recoverer running all along never finds the lease expired
        taken += mb.recover().expired
        time.sleep(0.05)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and taken == [], err
    assert [r["outcome"] for r in outcomes(out)] == ["acked"]
    mb.close()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["work", "Agent-1"], "give the command after '--'"),
        (["work", "Nobody", "--", "true"], "no mailbox for Nobody"),
        (["work", "../x", "--", "true"], "unsafe agent id"),
        (["work", "Agent-1", "--concurrency", "0", "--", "true"], "--concurrency must be at least 1"),
    ],
)
def test_bad_arguments_are_one_line_and_a_non_zero_exit(
    root: Path, mb: FileMailbox, args: list[str], needle: str
) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hybridcomms", "--root", str(root), *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0 and needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, (
        out.stderr
    )


def test_ctrl_c_says_what_becomes_of_running_commands_and_a_second_one_ends_it_now(
    root: Path, tmp_path: Path, mb: FileMailbox
) -> None:
    """A newcomer's Ctrl-C got no answer for the whole --grace (30 s), a second one neither, and the
    retry's reason said SIGTERM."""
    ready = tmp_path / "ready"
    m = Message("job", {"sleep": 60, "ready": str(ready)})
    mb.put(m)
    p = work(root, tmp_path, "--grace", "60")
    eventually(while_running(p, ready.exists), "the command to run", 60)  # the handshake
    assert p.stderr is not None and "stop with SIGTERM or Ctrl-C" in p.stderr.readline()
    p.send_signal(signal.SIGINT)
    said = p.stderr.readline()
    assert "SIGINT: no new messages; 1 running command get --grace 60s" in said, said
    assert "(SIGINT again: now)" in said
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and time.monotonic() - t0 < 20, err
    [row] = outcomes(out)
    assert row["outcome"] == "retry" and row["error"].startswith("stopped by a second SIGINT"), row
    assert mb.get(m.id) is not None and mb.get(m.id).state is State.NEW  # retried later, not lost
