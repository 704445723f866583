"""What is Redis's own in RedisMailbox: restarts, killed hosts, URLs, poison entries.

The mailbox contract itself is tested for every backend in tests/contract/.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from waiting import eventually

pytest.importorskip("redis")

import redis

from hybridcomms import MailboxIOError, Message, State
from hybridcomms.backends import open_mailbox
from hybridcomms.backends.redis.mailbox import RedisMailbox, redis_agents

pytestmark = pytest.mark.redis
HERE = Path(__file__).parent


@pytest.fixture
def server(tmp_path: Path) -> Iterator[object]:
    """A private Redis with AOF and appendfsync always, that a test may kill and restart."""
    from redis_server import REQUIRE_ENV, RedisServer, available

    if not available():
        if os.environ.get(REQUIRE_ENV):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    srv = RedisServer(tmp_path / "redis-data").start()
    yield srv
    srv.remove()


def lines_in(path: Path) -> int:
    """How many lines the other process wrote to its log so far (the log is the handshake)."""
    try:
        return path.read_bytes().count(b"\n")
    except FileNotFoundError:
        return 0


def host(role: str, url: str, local: Path, *extra: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    args = [sys.executable, str(HERE / "redis_hosts.py"), role, url, str(local), *extra]
    return subprocess.Popen(args, env=env, cwd=local.parent)


@pytest.mark.slow
def test_two_hosts_lose_nothing_through_a_killed_worker_and_a_redis_restart(server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    n = 300
    host_a, host_b = tmp_path / "host-a", tmp_path / "host-b"
    host_a.mkdir()
    host_b.mkdir()
    worker1 = host("worker", server.url, host_b / "w1")
    producer = host("producer", server.url, host_a / "p", str(n))
    procs = [worker1, producer]
    try:
        log = host_b / "w1" / "worked.log"
        eventually(lambda: lines_in(log), f"{n // 5} lines in {log}", 60, until=lambda k: k >= n // 5)
        worker1.send_signal(signal.SIGKILL)  # midway, holding whatever it claimed
        worker1.wait()
        worker2 = host("worker", server.url, host_b / "w2")
        procs.append(worker2)
        log = host_b / "w2" / "worked.log"
        eventually(lambda: lines_in(log), f"{n // 5} lines in {log}", 60, until=lambda k: k >= n // 5)
        server.restart(hard=True)  # kill -9 of Redis; AOF with appendfsync always
        assert producer.wait(120) == 0
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    sent = {f"t{i}" for i in range(n)}
    replies = set((host_a / "p" / "replies.log").read_text().split())
    assert replies == sent, f"lost: {sorted(sent - replies)[:10]}"
    # (the killed worker may have replied to its last task without logging it: a subset)
    worked = set((host_b / "w1" / "worked.log").read_text().split())
    worked |= set((host_b / "w2" / "worked.log").read_text().split())
    assert worked <= replies and len(worked) >= n - 1
    with RedisMailbox(server.url, "B") as b:
        assert b.stats().states[State.DEAD].count == 0


@pytest.mark.slow
def test_what_put_acknowledged_survives_a_redis_kill(server) -> None:  # type: ignore[no-untyped-def]
    with RedisMailbox(server.url, "A") as mb:
        mb.put_many([Message("t", {"i": i}, id=f"m{i}") for i in range(50)])
        d = mb.claim()
        assert d is not None
        d.nack(delay=0.0)
        claimed = mb.claim()
        assert claimed is not None
    server.restart(hard=True)
    with RedisMailbox(server.url, "A", lease=1.0) as mb:
        ids = {i.id for i in mb.list(State.NEW)} | {i.id for i in mb.list(State.PROCESSING)}
        assert ids == {f"m{i}" for i in range(50)}
        mb.recover(now=time.time() + 5)
        seen = set()
        while (d := mb.claim(timeout=2)) is not None:
            seen.add(d.message.id)
            d.ack()
        assert seen == {f"m{i}" for i in range(50)}


def test_a_poison_entry_is_dead_lettered_and_the_claim_moves_on(redis_url: str) -> None:
    ns = f"hct-{uuid.uuid4().hex[:8]}"
    with RedisMailbox(redis_url, "A", namespace=ns) as mb:
        client = redis.Redis.from_url(redis_url)
        client.xadd(f"{ns}:{{A}}:s:0C", {"m": b"\xff not json", "a": "0", "id": "bad", "k": "0C"})
        mb.put(Message("t", {}, id="good"))
        d = mb.claim()
        assert d is not None and d.message.id == "good"
        d.ack()
        dead = mb.list(State.DEAD)
        assert [i.id for i in dead] == ["bad"]
        assert dead[0].reason is not None and "cannot be decoded" in dead[0].reason["reason"]
        client.delete(*client.scan_iter(match=f"{ns}:*"))
        client.close()


def test_url_with_password_and_db_and_the_password_never_shown(server) -> None:  # type: ignore[no-untyped-def]
    admin = redis.Redis.from_url(server.url)
    admin.config_set("requirepass", "s3cret")
    url = f"redis://:s3cret@127.0.0.1:{server.port}/3"
    with open_mailbox(url, "A") as mb:
        assert isinstance(mb, RedisMailbox)
        mb.put(Message("t", {}, id="x"))
        assert "s3cret" not in repr(mb)
    assert redis_agents(url) == ["A"]
    db3 = redis.Redis.from_url(url)
    assert db3.exists("hc:{A}:s:2M") and db3.dbsize() > 0
    assert redis.Redis.from_url(f"redis://:s3cret@127.0.0.1:{server.port}/0").dbsize() == 0
    with pytest.raises(MailboxIOError) as err:
        RedisMailbox(f"redis://:wrong@127.0.0.1:{server.port}/3", "A")
    assert "wrong" not in str(err.value) and "***" in str(err.value)
    with pytest.raises(MailboxIOError):
        RedisMailbox(url, "Nobody", create=False)


def test_no_server_is_a_clear_error() -> None:
    from redis_server import free_port

    with pytest.raises(MailboxIOError) as err:
        RedisMailbox(f"redis://127.0.0.1:{free_port()}/0", "A")
    assert "127.0.0.1" in str(err.value)


def test_acked_messages_leave_the_stream_and_done_is_trimmed(redis_url: str) -> None:
    ns = f"hct-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    try:
        with RedisMailbox(redis_url, "A", namespace=ns, done_retention=0) as mb:
            mb.put_many([Message("t", {}, id=f"m{i}") for i in range(20)])
            while (d := mb.claim()) is not None:
                d.ack()
            assert client.xlen(f"{ns}:{{A}}:s:2M") == 0
            assert client.exists(f"{ns}:{{A}}:done") == 0
    finally:
        keys = list(client.scan_iter(match=f"{ns}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_retention_by_length_or_age_trims_the_streams(redis_url: str) -> None:
    """Opt-in retention (it drops messages not yet delivered: for bounded, lossy queues only)."""
    ns = f"hct-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    try:
        with RedisMailbox(redis_url, "A", namespace=ns, maxlen=10) as mb:
            for i in range(500):
                mb.put(Message("t", {}, id=f"m{i}"))
            assert client.xlen(f"{ns}:{{A}}:s:2M") < 500  # trimmed (approximately, by whole nodes)
        with RedisMailbox(redis_url, "B", namespace=ns, max_age=0.05) as mb:
            mb.put_many([Message("t", {}, id=f"old{i}") for i in range(200)])
            time.sleep(0.1)  # the entries must be older than max_age: this is the condition, not a wait
            mb.put(Message("t", {}, id="new"))
            left = client.xlen(f"{ns}:{{B}}:s:2M")
            assert left < 201
        with pytest.raises(ValueError):
            RedisMailbox(redis_url, "C", namespace=ns, maxlen=5, max_age=1.0)
    finally:
        keys = list(client.scan_iter(match=f"{ns}:*"))
        if keys:
            client.delete(*keys)
        client.close()


def test_a_poison_entry_does_not_end_a_waiting_claim_early(redis_url: str) -> None:
    ns = f"hct-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(redis_url)
    try:
        with RedisMailbox(redis_url, "A", namespace=ns) as mb:
            client.xadd(f"{ns}:{{A}}:s:2M", {"m": b"{broken", "a": "0", "id": "bad", "k": "2M"})
            t0 = time.monotonic()
            assert mb.claim(timeout=0.5) is None  # dead-lettered the poison, then waited the rest
            assert time.monotonic() - t0 >= 0.4
            assert [i.id for i in mb.list(State.DEAD)] == ["bad"]
    finally:
        client.delete(*client.scan_iter(match=f"{ns}:*"))
        client.close()
