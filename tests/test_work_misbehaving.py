"""`hybridcomms work` under commands that misbehave: grandchildren that keep the pipes, floods of output,
commands that cannot start, a consumer thread that dies. Real subprocesses (but the last)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import workers
from waiting import eventually, while_running

from hybridcomms import FileMailbox, Message, State
from hybridcomms.cli.work import EX_CONFIG, EX_SOFTWARE, Worker

pytestmark = pytest.mark.slow


def work(root: Path, *extra: str, cmd: list[str]) -> subprocess.Popen[str]:
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
            "A",
            *extra,
            "--json",
            "--",
            *cmd,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers.STARTED.append(proc)  # killed after the test if it is still running
    return proc


def outcomes(out: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in out.splitlines() if line.strip()]


@pytest.fixture
def mb(tmp_path: Path) -> Iterator[FileMailbox]:
    with FileMailbox(tmp_path / "root", "A", fsync="never", max_attempts=3) as m:
        yield m


@pytest.fixture
def marker() -> Iterator[str]:
    """A sleep length no other process uses: the grandchildren left behind are found and killed."""
    mark = f"{500 + (os.getpid() % 997) + time.time_ns() % 1000 / 1000:.3f}"
    yield mark
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmdline[:2] == [b"sleep", mark.encode()]:
                os.kill(int(pid), signal.SIGKILL)


def test_a_grandchild_holding_stdout_does_not_hold_the_worker_after_a_timeout(
    mb: FileMailbox, marker: str
) -> None:
    # The grandchild has a session of its own: the timeout's process-group kill does not reach it, and
    # it keeps the command's stdout and stderr open for minutes.
    mb.put(Message("job", {}))
    p = work(
        mb.root, "--timeout", "1", "--max-messages", "1", cmd=["sh", "-c", f"setsid sleep {marker} & wait"]
    )
    out, err = p.communicate(timeout=30)  # today's code waited for the grandchild: minutes
    assert p.returncode == 0, err
    [row] = outcomes(out)
    assert row["outcome"] == "retry" and "timed out after 1s" in row["error"]


def test_a_command_that_exits_0_leaving_a_grandchild_on_stdout_is_acked_once(
    mb: FileMailbox, marker: str
) -> None:
    m = Message("job", {})
    mb.put(m)
    p = work(
        mb.root, "--lease", "2", "--max-messages", "1", cmd=["sh", "-c", f"setsid sleep {marker} & echo done"]
    )
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert [r["outcome"] for r in outcomes(out)] == ["acked"]
    info = mb.get(m.id)
    assert info is not None and info.state is State.DONE and info.attempt == 1  # ran once


def test_sigterm_is_prompt_while_a_grandchild_holds_the_pipes(mb: FileMailbox, marker: str) -> None:
    ready = mb.root.parent / "ready"
    mb.put(Message("job", {}))
    script = f"setsid sleep {marker} & touch {ready}; sleep {marker}"
    p = work(mb.root, "--grace", "1", cmd=["sh", "-c", script])
    eventually(while_running(p, ready.exists), "the command to run", 60)  # the handshake
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=30)
    assert p.returncode == 0, err
    assert time.monotonic() - t0 < 15  # the grace (1 s) and the drain, not the grandchild (13 s before)
    [row] = outcomes(out)
    assert row["outcome"] == "retry" and "after SIGTERM" in row["error"]


def test_a_flood_on_stdout_is_capped_at_the_reply_limit(mb: FileMailbox) -> None:
    """300 MB of output made the worker 601 MiB. What is kept of stdout is at most the message size
    limit: a request whose reply would be bigger is retried with a reason, memory stays flat."""
    mb.put(Message("job", {}, reply_to="B", sender="B"))
    mb.put(Message("job", {}))  # no reply wanted: the output is not kept at all beyond the limit
    flood = "import sys\nb = b'x' * (1 << 20)\nfor _ in range(200): sys.stdout.buffer.write(b)\n"
    p = work(mb.root, "--max-messages", "2", cmd=[sys.executable, "-c", flood])
    peak = 0
    while p.poll() is None:
        try:
            status = Path(f"/proc/{p.pid}/status").read_text()
        except OSError:
            break
        for line in status.splitlines():
            if line.startswith("VmHWM:"):
                peak = max(peak, int(line.split()[1]))  # KiB, the worker's peak resident size
        time.sleep(0.05)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    rows = sorted(outcomes(out), key=lambda r: r["outcome"])
    said = f"stdout: {out[-2000:]!r}\nstderr: {err[-2000:]!r}"  # what a failure under load shows
    assert [r["outcome"] for r in rows] == ["acked", "retry"], said
    assert "over the reply limit" in rows[1]["error"], said
    assert peak < 150 * 1024, f"the worker peaked at {peak} KiB for 200 MiB of output"


def test_a_command_that_cannot_start_is_a_configuration_error(mb: FileMailbox, tmp_path: Path) -> None:
    mb.put(Message("job", {}))
    p = work(mb.root, cmd=[str(tmp_path / "no-such-command")])
    _out, err = p.communicate(timeout=30)  # at once, not after dead-lettering the mailbox
    assert p.returncode == EX_CONFIG
    assert "cannot run" in err and "Traceback" not in err
    assert mb.stats().states[State.NEW].count == 1 and not mb.list(State.DEAD)
    [info] = mb.list(State.NEW)
    assert info.attempt == 0  # nothing was claimed


def test_a_command_that_stops_being_runnable_stops_the_worker_and_keeps_the_messages(
    mb: FileMailbox, tmp_path: Path
) -> None:
    script = tmp_path / "job.sh"
    script.write_text("#!/bin/sh\ncat >/dev/null\n")
    script.chmod(0o755)
    p = work(mb.root, cmd=[str(script)])
    assert p.stderr is not None and "running" in p.stderr.readline()  # handshake: it checked and runs
    script.chmod(0o644)  # no longer executable: EACCES at the next start
    for i in range(5):
        mb.put(Message("job", {"i": i}))
    _out, err = p.communicate(timeout=30)
    assert p.returncode == EX_CONFIG, err
    assert "cannot start" in err
    assert not mb.list(State.DEAD)  # nothing dead-lettered over it
    assert mb.stats().states[State.NEW].count == 5


def test_a_consumer_thread_that_dies_makes_the_worker_exit_non_zero(mb: FileMailbox) -> None:
    class Broken(RuntimeError):
        pass

    def claim(*args: Any, **kw: Any) -> None:
        raise Broken("a bug in the claim path")

    mb.claim = claim  # type: ignore[method-assign]
    args = argparse.Namespace(
        concurrency=2, max_messages=0, grace=1.0, timeout=None, json=True, metrics_port=None
    )
    worker = Worker(args, mb, ["true"])
    result: list[int] = []
    t = threading.Thread(target=lambda: result.append(worker.run()))
    t.start()
    t.join(30)
    assert not t.is_alive() and result == [EX_SOFTWARE]


def test_watch_exec_stops_on_sigterm_during_its_start_up_rescan_of_a_backlog(tmp_path: Path) -> None:
    root = tmp_path / "root"
    started = tmp_path / "started"
    with FileMailbox(root, "A", fsync="never") as mb:
        mb.put_many([Message("job", {"i": i}) for i in range(3000)])
    p = subprocess.Popen(
        [
            *(sys.executable, "-m", "hybridcomms", "--root", str(root), "watch", "--recover-every", "0"),
            *("--exec", f"touch {started}; sleep 30", "--exec-jobs", "1", "--exec-queue", "2"),
            *("--grace", "1"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    # Handshake: the first --exec runs; the rescan waits for room.
    eventually(while_running(p, started.exists), "the first --exec to run", 60)
    t0 = time.monotonic()
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)  # before: it waited for the whole backlog to run
    assert p.returncode == 0, err
    assert time.monotonic() - t0 < 20
    assert "left for the next start" in err


@pytest.mark.parametrize("concurrency", ["1", "3"])
def test_max_messages_is_never_exceeded_by_a_message_due_again_at_once(
    mb: FileMailbox, concurrency: str
) -> None:
    """`--max-messages 2` checked the count every 0.2 s while the threads went on claiming: a message
    retried with no delay was run again and again in between (the flood test saw 3 outcomes for 2)."""
    mb.put(Message("job", {}))
    p = work(
        mb.root,
        "--max-messages", "2", "--max-attempts", "50", "--retry-delay", "0", "--concurrency", concurrency,
        cmd=[sys.executable, "-c", "raise SystemExit(75)"],
    )  # fmt: skip
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, err
    assert [(r["outcome"], r["attempt"]) for r in outcomes(out)] == [("retry", 1), ("retry", 2)], err
    assert "1 acked" not in err and "0 acked, 2 to retry, 0 dead-lettered" in err
