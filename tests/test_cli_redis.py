"""The CLI on Redis (``--url`` / ``$HYBRIDCOMMS_URL``): send, recv, stats, ls, show, requeue, purge,
recover and work, as real subprocesses. Only the URL differs from the same commands on files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from cli_runner import run_cli

from hybridcomms import Message, State
from hybridcomms.backends.redis.mailbox import RedisMailbox

pytestmark = pytest.mark.redis
HC = [sys.executable, "-m", "hybridcomms"]


@pytest.fixture
def url(redis_url: str) -> Iterator[str]:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()  # the CLI uses the default namespace
    yield redis_url
    client.flushdb()
    client.close()


def hc(
    url: str | None,
    cwd: Path,
    *args: str,
    env_url: str | None = None,
    stdin: str | None = None,
    real: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``hybridcomms [--url URL] ARGS`` in this process, or as a real subprocess (``real``)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    if env_url is not None:
        env["HYBRIDCOMMS_URL"] = env_url
    head = ["--url", url] if url is not None else []
    if not real:
        return run_cli([*head, *args], cwd=cwd, env=env, stdin=stdin)
    return subprocess.run(
        [*HC, *head, *args], input=stdin, capture_output=True, text=True, timeout=60, env=env, cwd=cwd
    )


def test_send_recv_stats_ls_show_through_redis(url: str, tmp_path: Path) -> None:
    sent = hc(url, tmp_path, "send", "--to", "Worker", "--topic", "task.build", "--payload", '{"n": 1}')
    assert sent.returncode == 0, sent.stderr
    msg_id = sent.stdout.strip()
    again = hc(url, tmp_path, "send", "--to", "Worker", "--topic", "task.build", "--id", msg_id)
    assert again.returncode == 0 and "already" in again.stderr  # an idempotent resend
    assert not (tmp_path / "runtime").exists()  # nothing written to files

    stats = hc(url, tmp_path, "stats", "--json")
    assert stats.returncode == 0, stats.stderr
    row = json.loads(stats.stdout)["agents"][0]
    assert row["agent"] == "Worker" and row["new"]["count"] == 1

    ls = hc(url, tmp_path, "ls", "Worker", "--json")
    assert ls.returncode == 0, ls.stderr
    assert [(r["id"], r["state"], r["topic"]) for r in json.loads(ls.stdout)] == [
        (msg_id, "new", "task.build")
    ]

    show = hc(url, tmp_path, "show", msg_id, "--json")
    assert show.returncode == 0, show.stderr
    assert json.loads(show.stdout)["message"]["payload"] == {"n": 1}

    got = hc(url, tmp_path, "recv", "Worker")
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["id"] == msg_id
    empty = hc(url, tmp_path, "recv", "Worker")
    assert empty.returncode != 0 and "no message" in empty.stderr


def test_the_url_comes_from_the_environment_too(url: str, tmp_path: Path) -> None:
    sent = hc(None, tmp_path, "send", "--to", "A", "--topic", "t.x", env_url=url)
    assert sent.returncode == 0, sent.stderr
    with RedisMailbox(url, "A") as mb:
        assert [i.id for i in mb.list(State.NEW)] == [sent.stdout.strip()]


def test_requeue_and_purge_through_redis(url: str, tmp_path: Path) -> None:
    with RedisMailbox(url, "A", max_attempts=1) as mb:
        mb.put_many([Message("t", {}, id=f"m{i}") for i in range(3)])
        for _ in range(3):
            d = mb.claim()
            assert d is not None
            d.nack(error="boom")
        assert mb.stats().states[State.DEAD].count == 3
    one = hc(url, tmp_path, "requeue", "A", "m0")
    assert one.returncode == 0, one.stderr
    rest = hc(url, tmp_path, "requeue", "A", "--all-dead", "--json")
    assert rest.returncode == 0, rest.stderr
    assert len(json.loads(rest.stdout)["requeued"]) == 2
    with RedisMailbox(url, "A") as mb:
        assert mb.stats().states[State.NEW].count == 3
        while (d := mb.claim()) is not None:
            d.ack()
    dry = hc(url, tmp_path, "purge", "A", "--state", "done", "--older-than", "0", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    assert len(json.loads(dry.stdout)["would_delete"]) == 3
    gone = hc(url, tmp_path, "purge", "A", "--state", "done", "--older-than", "0", "--json")
    assert json.loads(gone.stdout)["deleted"] == 3
    rec = hc(url, tmp_path, "recover")
    assert rec.returncode == 0 and "A:" in rec.stdout


def test_work_runs_a_command_per_message_from_redis(url: str, tmp_path: Path) -> None:
    with RedisMailbox(url, "Jobs") as mb:
        mb.put_many([Message("job", {"i": i}, id=f"j{i}") for i in range(3)])
    out = tmp_path / "out.txt"
    script = f"import sys; open({str(out)!r}, 'a').write(sys.stdin.read() + '\\n')"
    proc = hc(
        url, tmp_path, "work", "Jobs", "--max-messages", "3", "--", sys.executable, "-c", script, real=True
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in out.read_text().splitlines() if line]
    assert sorted(m["payload"]["i"] for m in lines) == [0, 1, 2]
    with RedisMailbox(url, "Jobs") as mb:
        assert mb.stats().states[State.DONE].count == 3


def test_file_only_commands_and_bad_urls_say_so(url: str, tmp_path: Path) -> None:
    doctor = hc(url, tmp_path, "doctor")
    assert doctor.returncode != 0 and "not available with --url" in doctor.stderr
    for bad in ("ftp://x", "memory://x"):
        r = hc(bad, tmp_path, "stats")
        assert r.returncode != 0 and len(r.stderr.strip().splitlines()) == 1
    nobody = hc(url, tmp_path, "recv", "Nobody")
    assert nobody.returncode != 0 and "Nobody" in nobody.stderr
    down = hc("redis://127.0.0.1:1/0", tmp_path, "stats", "Somebody", real=True)
    assert down.returncode == 69 and "cannot reach redis://127.0.0.1:1/0" in down.stderr
    odd = hc(
        f"redis://:pw{uuid.uuid4().hex[:4]}@127.0.0.1:1/0?nonsense=1",
        tmp_path,
        "stats",
        "Somebody",
        real=True,
    )
    assert odd.returncode != 0 and "not a usable Redis URL" in odd.stderr and "pw" not in odd.stderr
