"""`send` and `recv` as scripts use them: payloads from stdin and files, headers, idempotent resends,
the routing policy, several messages, following, peeking, not acking. Real subprocesses."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from cli_runner import run_cli
from waiting import eventually

from hybridcomms import FileMailbox, Message, State

HC = [sys.executable, "-m", "hybridcomms"]


def hc(
    root: Path, *args: str, stdin: str | None = None, real: bool = False
) -> subprocess.CompletedProcess[str]:
    """``hybridcomms --root ROOT ARGS`` in this process, or as a real subprocess (``real``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    argv = ["--root", str(root), "--fsync", "never", *args]
    if not real:
        return run_cli(argv, cwd=root.parent, env=env, stdin=stdin)
    return subprocess.run(
        [*HC, *argv],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=root.parent,
    )


def test_payloads_from_stdin_and_files_with_headers_and_ids(root: Path, tmp_path: Path) -> None:
    big = {"blob": "x" * 500_000}  # far over what one command-line argument may hold
    sent = hc(
        root, "send", "--to", "A", "--topic", "t", "--payload", "-", "--header", "k=v", stdin=json.dumps(big)
    )
    assert sent.returncode == 0, sent.stderr
    f = tmp_path / "p.json"
    f.write_text('{"from": "file"}')
    sent2 = hc(
        root,
        "send",
        "--to",
        "A",
        "--topic",
        "t",
        "--payload",
        f"@{f}",
        "--id",
        "job-1",
        "--correlation-id",
        "c-9",
        "--reply-to",
        "B",
        "--priority",
        "high",
    )
    assert sent2.returncode == 0 and sent2.stdout.strip() == "job-1"
    again = hc(root, "send", "--to", "A", "--topic", "t", "--payload", f"@{f}", "--id", "job-1")
    assert again.returncode == 0 and "already in A's mailbox" in again.stderr
    with FileMailbox(root, "A", fsync="never") as mb:
        assert mb.stats().states[State.NEW].count == 2  # the resend made no second message
        first = mb.claim()
        second = mb.claim()
        assert first is not None and second is not None
        assert first.message.id == "job-1" and first.message.priority.name == "HIGH"  # higher first
        assert first.message.correlation_id == "c-9" and first.message.reply_to == "B"
        assert second.message.payload == big and second.message.headers == {"k": "v"}


@pytest.mark.parametrize(
    ("args", "stdin", "needle"),
    [
        (["--priority", "URGENT"], None, "unknown priority 'URGENT'"),
        (["--priority", "7"], None, "unknown priority '7'"),
        (["--payload", "-"], "x" * (1 << 20 + 1), "over the limit"),
        (["--payload", "@/nonexistent/file"], None, "cannot read --payload"),
        (["--header", "novalue"], None, "--header wants KEY=VALUE"),
        (["--topic", "dreamos.agent.status.updated"], None, "ephemeral under the routing policy"),
    ],
)
def test_send_refuses_what_it_cannot_do_in_one_line(
    root: Path, args: list[str], stdin: str | None, needle: str
) -> None:
    base = ["send", "--to", "A", "--topic", "t"]
    if "--topic" in args:
        base = ["send", "--to", "A"]
    out = hc(root, *base, *args, stdin=stdin)
    assert out.returncode != 0 and needle in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_an_ephemeral_topic_goes_when_the_route_is_overridden(root: Path) -> None:
    out = hc(root, "send", "--to", "A", "--topic", "dreamos.agent.status.updated", "--route", "durable")
    assert out.returncode == 0, out.stderr


def test_recv_count_peek_and_no_ack(root: Path) -> None:
    with FileMailbox(root, "A", fsync="never") as mb:
        ids = [mb.put(Message("t", i)) for i in range(3)]
    peek = hc(root, "recv", "A", "--peek", "--count", "5")
    assert [json.loads(line)["id"] for line in peek.stdout.splitlines()] == ids  # nothing claimed
    noack = hc(root, "recv", "A", "--no-ack", "--lease", "3600")
    assert json.loads(noack.stdout)["id"] == ids[0]
    two = hc(root, "recv", "A", "--count", "5")
    assert [json.loads(line)["id"] for line in two.stdout.splitlines()] == ids[1:]
    with FileMailbox(root, "A", fsync="never") as mb:
        st = mb.stats()
        assert st.states[State.DONE].count == 2 and st.delayed == 1  # the unacked one comes back later
    empty = hc(root, "recv", "A")
    assert empty.returncode == 3


def test_recv_follow_prints_json_lines_as_messages_arrive_until_sigterm(root: Path) -> None:
    FileMailbox(root, "A", fsync="never").close()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    p = subprocess.Popen(
        [*HC, "--root", str(root), "recv", "A", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        with FileMailbox(root, "A", fsync="never") as mb:
            for i in range(3):
                mb.put(Message("t", i))
                assert p.stdout is not None
                line = p.stdout.readline()  # handshake: each arrives, is printed, then acked
                assert json.loads(line)["payload"] == i
            eventually(lambda: mb.stats().states[State.DONE].count, "3 acked", until=lambda n: n == 3)
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    finally:
        p.kill()
