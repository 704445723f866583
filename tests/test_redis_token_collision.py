"""Entry ids are per stream: two priorities' streams can hold the same id (two XADDs in one
millisecond). Whatever the mailbox keys by an id must say which stream it came from, or one entry
overwrites the other and is lost without a dead letter."""

from __future__ import annotations

import time
import uuid

import pytest

pytest.importorskip("redis")

import orjson
import redis

from hybridcomms import Message
from hybridcomms.backends.redis.mailbox import RedisMailbox
from hybridcomms.retry import Backoff

pytestmark = pytest.mark.redis

NOW = Backoff(initial=0.0, jitter=0.0)
SAME_ID = "1700000000000-0"  # one id, given to an entry of each of two priorities' streams


def keys_of(agent: str) -> dict[str, str]:
    base = f"hc:{{{agent}}}"
    return {
        "0C": f"{base}:s:0C",
        "2M": f"{base}:s:2M",
        "dead": f"{base}:dead",
        "done": f"{base}:done",
        "delayed": f"{base}:delayed",
        "data": f"{base}:delayed:data",
    }


def drain(mb: RedisMailbox) -> list[Message]:
    got = []
    for _ in range(100):
        d = mb.claim()
        if d is None:
            return got
        got.append(d.message)
        d.ack()
    raise AssertionError("the mailbox never ran dry")


def test_recover_keeps_two_entries_of_one_id_in_two_streams(redis_url: str) -> None:
    """The case the generated test found: `{m: b''}` and an oversized `m`, same id, in two streams.
    Recovery returns both; both are then dead-lettered by the claim, none is only deleted."""
    agent = f"C-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    k = keys_of(agent)
    with RedisMailbox(redis_url, agent, max_message_size=4096, backoff=NOW, lease=5) as mb:
        client.xadd(k["0C"], {"m": b""}, id=SAME_ID)
        client.xadd(k["2M"], {"m": b"x" * 4097}, id=SAME_ID)
        for stream in (k["0C"], k["2M"]):  # a consumer that read them, then died
            client.xreadgroup("hc", "ghost", {stream: ">"}, count=10)
        report = mb.recover(now=time.time() + 60)
        assert len(report.expired) == 2 and report.dead == []
        assert client.zcard(k["delayed"]) == 2 and client.hlen(k["data"]) == 2
        assert drain(mb) == []
        dead = [f for _, f in client.xrange(k["dead"])]
        assert sorted(f[b"m"] for f in dead) == [b"", b"x" * 4097]
        reasons = sorted(orjson.loads(f[b"r"])["reason"] for f in dead)
        assert reasons[0].startswith("cannot be read: cannot be decoded")
        assert reasons[1].startswith("cannot be read: its message is 4097 bytes")
        assert client.zcard(k["delayed"]) == 0 and client.hlen(k["data"]) == 0
    client.close()


def test_nack_keeps_two_deliveries_of_one_id_in_two_streams(redis_url: str) -> None:
    """Two deliveries with the same entry id (two streams), both nacked at the same attempt: both wait
    in the delayed set and both come back."""
    agent = f"N-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    k = keys_of(agent)
    first = Message("job.run", {"n": 1}, sender="tester", priority="critical")
    second = Message("job.run", {"n": 2}, sender="tester")
    with RedisMailbox(redis_url, agent, backoff=NOW) as mb:
        client.xadd(k["0C"], {"m": first.encode(None), "a": 0, "id": first.id}, id=SAME_ID)
        client.xadd(k["2M"], {"m": second.encode(None), "a": 0, "id": second.id}, id=SAME_ID)
        a, b = mb.claim(), mb.claim()
        assert a is not None and b is not None
        assert {a.message.id, b.message.id} == {first.id, second.id}
        a.nack(delay=0, error="again")
        b.nack(delay=0, error="again")
        assert client.zcard(k["delayed"]) == 2 and client.hlen(k["data"]) == 2
        assert sorted(m.payload["n"] for m in drain(mb)) == [1, 2]
        assert client.xlen(k["done"]) == 2 and client.xlen(k["dead"]) == 0
    client.close()


def test_a_token_in_use_is_not_overwritten(redis_url: str) -> None:
    """Any client can write the delayed hash: a nack whose token is already taken picks another one,
    and both entries survive (the other client's garbage is dead-lettered by the claim, as always)."""
    agent = f"T-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    k = keys_of(agent)
    message = Message("job.run", {"n": 3}, sender="tester")
    with RedisMailbox(redis_url, agent, backoff=NOW) as mb:
        client.xadd(k["2M"], {"m": message.encode(None), "a": 0, "id": message.id}, id=SAME_ID)
        d = mb.claim()
        assert d is not None
        client.hset(k["data"], f"{SAME_ID}:2M:1", b"someone else's")
        client.zadd(k["delayed"], {f"{SAME_ID}:2M:1": 0})
        d.nack(delay=0, error="again")
        assert client.hlen(k["data"]) == 2 and client.zcard(k["delayed"]) == 2
        assert [m.id for m in drain(mb)] == [message.id]
        assert [f[b"m"] for _, f in client.xrange(k["dead"])] == [b"someone else's"]
        assert client.hlen(k["data"]) == 0 and client.zcard(k["delayed"]) == 0
    client.close()
