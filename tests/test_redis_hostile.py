"""RedisMailbox and RedisFanout against hostile peers and failing servers (issue 21, section 3).

Any client of the server can write the mailbox's keys: entries with fields that do not parse, huge
entries, garbage in the delayed set. A server at ``maxmemory`` refuses writes. Pub/sub is one per server.
A password must never show. Each test here failed on the code before the fix.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import eventually

pytest.importorskip("redis")

import orjson
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridcomms import Message, State
from hybridcomms.backends.redis.mailbox import RedisMailbox
from hybridcomms.bus import AgentBus
from hybridcomms.bus.fanout import RedisFanout
from hybridcomms.errors import MailboxIOError
from hybridcomms.retry import Backoff

pytestmark = pytest.mark.redis

RANKS = ["0C", "1H", "2M", "3L"]
NOW = Backoff(initial=0.0, jitter=0.0)  # a nacked or recovered message is due again at once
TAG = b"zz_tag"  # a field of our own on every hostile entry: where it ended up is found by it


@pytest.fixture
def private() -> Iterator[Any]:
    """A Redis of this test alone (what it counts on the server is this test's traffic only)."""
    from redis_server import REQUIRE_ENV, RedisServer, available

    if not available():
        if os.environ.get(REQUIRE_ENV):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    srv = RedisServer(appendonly=False).start()
    yield srv
    srv.remove()


def keys_of(agent: str) -> dict[str, Any]:
    base = f"hc:{{{agent}}}"
    return {
        "streams": [f"{base}:s:{r}" for r in RANKS],
        "delayed": f"{base}:delayed",
        "data": f"{base}:delayed:data",
        "done": f"{base}:done",
        "dead": f"{base}:dead",
    }


def good_message(n: int) -> Message:
    return Message("job.run", {"n": n}, sender="tester")


def drain(mb: RedisMailbox) -> list[Message]:
    """Claim and ack until nothing is left (claim must never raise)."""
    got = []
    for _ in range(1000):
        d = mb.claim()
        if d is None:
            return got
        got.append(d.message)
        d.ack()
    raise AssertionError("the mailbox never ran dry")


def tags_in(client: Any, key: str) -> dict[bytes, dict[bytes, bytes]]:
    """{tag: fields} of the entries of stream ``key`` that carry a tag."""
    return {f[TAG]: f for _, f in client.xrange(key) if TAG in f}


# -- generated entries --------------------------------------------------------------------------------

OUR_FIELDS = [b"m", b"a", b"id", b"t", b"k", b"d", b"e", b"r"]
SMALL_LIMIT = 4096  # the mailbox's max_message_size here: a "huge" value is cheap to make

field_names = st.one_of(st.sampled_from(OUR_FIELDS), st.binary(min_size=1, max_size=6))
field_values = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b"",
            b"-1",
            b"0x10",
            b"1e3",
            b"nan",
            b"inf",
            b"99999999999999999999",
            b"\xff\xfe",
            b"{}",
            b"[]",
            b"null",
            b"0C",
            b"2M",
            b'{"error": 5}',
            b'{"error": "x", "attempt": -1, "failed_at": 1e300}',
        ]
    ),
    st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: str(n).encode()),
    st.integers(min_value=0, max_value=50).map(lambda n: good_message(10_000 + n).encode(None)),
    st.just(b"x" * (SMALL_LIMIT + 1)),
    st.just(orjson.dumps({"version": 1, "id": "x", "topic": "t", "payload": "y" * SMALL_LIMIT})),
)
hostile_entries = st.lists(
    st.tuples(
        st.integers(min_value=0, max_value=3),
        st.dictionaries(field_names.filter(lambda k: k != TAG), field_values, min_size=1, max_size=6),
    ),
    min_size=1,
    max_size=6,
)


def deliverable(fields: dict[bytes, bytes]) -> bool:
    """What the mailbox must deliver: a message within the size limit and a count that is one."""
    a = fields.get(b"a", b"0")
    if b"m" not in fields or not (a.isdigit() and len(a) <= 9) or len(fields[b"m"]) > SMALL_LIMIT:
        return False
    try:
        Message.decode(fields[b"m"])
    except Exception:
        return False
    return True


def add_hostile(client: Any, agent: str, entries: list[tuple[int, dict[bytes, bytes]]]) -> list[bytes]:
    tags = []
    for n, (rank, fields) in enumerate(entries):
        tag = str(n).encode()
        client.xadd(keys_of(agent)["streams"][rank], {TAG: tag, **fields})
        tags.append(tag)
    return tags


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=hostile_entries, good=st.integers(min_value=1, max_value=4))
def test_generated_entries_claim_never_raises_and_every_bad_one_is_dead_lettered(
    redis_url: str, entries: list[tuple[int, dict[bytes, bytes]]], good: int
) -> None:
    agent = f"G-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    with RedisMailbox(redis_url, agent, max_message_size=SMALL_LIMIT, backoff=NOW) as mb:
        mine = [good_message(n) for n in range(good)]
        mb.put(mine[0])
        tags = add_hostile(client, agent, entries)
        for m in mine[1:]:
            mb.put(m)
        for state in State:  # inspection reads the same entries: it must not raise either
            mb.list(state)
        mb.stats()
        got = drain(mb)
        assert [m.id for m in got if m.id in {x.id for x in mine}] == [m.id for m in mine]  # one priority
        k = keys_of(agent)
        done, dead = tags_in(client, k["done"]), tags_in(client, k["dead"])
        for tag, (_, fields) in zip(tags, entries, strict=True):
            if deliverable(fields):
                assert tag in done and tag not in dead, fields
            else:
                assert tag in dead and tag not in done, fields
                reason = orjson.loads(dead[tag][b"r"])
                assert reason["reason"].startswith("cannot be read: "), reason
        assert mb.stats().states[State.DEAD].count == len(dead)
        assert all(client.xlen(s) == 0 for s in k["streams"])
        mb.list(State.DEAD)
    client.close()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=hostile_entries)
def test_generated_entries_recovery_never_deletes_without_a_dead_letter(
    redis_url: str, entries: list[tuple[int, dict[bytes, bytes]]]
) -> None:
    """Entries a consumer took and died with: `recover` returns each (it is then delivered, or buried
    by the claim) or buries it with a reason. It never only deletes one."""
    agent = f"R-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    with RedisMailbox(redis_url, agent, max_message_size=SMALL_LIMIT, backoff=NOW, lease=5) as mb:
        tags = add_hostile(client, agent, entries)
        for stream in keys_of(agent)["streams"]:  # a consumer that read them all, then died
            client.xreadgroup("hc", "ghost", {stream: ">"}, count=100)
        report = mb.recover(now=time.time() + 60)
        assert len(report.expired) + len(report.dead) == len(entries)
        drain(mb)
        k = keys_of(agent)
        dead_tags = tags_in(client, k["dead"])
        done_m = Counter(f[b"m"] for _, f in client.xrange(k["done"]))
        dead_m = Counter(f[b"m"] for _, f in client.xrange(k["dead"]) if b"m" in f)
        want_done: Counter[bytes] = Counter()
        want_dead: Counter[bytes] = Counter()
        for tag, (_, fields) in zip(tags, entries, strict=True):
            a = fields.get(b"a", b"0")
            if b"m" not in fields or not (a.isdigit() and len(a) <= 9):  # buried by recover, as it was
                reason = orjson.loads(dead_tags[tag][b"r"])["reason"]
                assert reason.startswith("cannot be read: "), fields
                if b"m" in fields:
                    want_dead[fields[b"m"]] += 1
            elif deliverable(fields) and int(a) + 1 < mb.max_attempts:
                want_done[fields[b"m"]] += 1
            else:
                want_dead[fields[b"m"]] += 1
        assert done_m == want_done
        assert dead_m == want_dead
        assert all(orjson.loads(f[b"r"])["reason"] for _, f in client.xrange(k["dead"]))
        assert all(client.xlen(s) == 0 for s in k["streams"])
        assert client.zcard(k["delayed"]) == 0 and client.hlen(k["data"]) == 0
    client.close()


@pytest.mark.parametrize(
    "fields",
    [
        {b"id": b"\x80"},  # not UTF-8 (found by the generated test above)
        {b"id": b"\xed\xa0\x80", b"a": b"x"},  # a lone surrogate, UTF-8 encoded
        {b"m": b"{}", b"a": b"9", b"t": b"\xff\xfe", b"id": b"ok-id"},  # used up, its topic not UTF-8
        {b"m": b"{}", b"a": b"9", b"e": b'{"error": "\xc3\x28"}'},  # a kept error that is not UTF-8
    ],
)
def test_a_recovered_entry_with_bytes_that_are_not_utf8_gets_a_readable_reason(
    redis_url: str, fields: dict[bytes, bytes]
) -> None:
    """A dead reason is JSON a reader can load, whatever bytes the entry's fields held (cjson copies
    them as they are: such a field is left out of the reason, the entry itself keeps it)."""
    agent = f"U-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    try:
        with RedisMailbox(redis_url, agent, backoff=NOW, lease=5, max_attempts=3) as mb:
            [tag] = add_hostile(client, agent, [(2, fields)])
            client.xreadgroup("hc", "ghost", {keys_of(agent)["streams"][2]: ">"}, count=10)
            report = mb.recover(now=time.time() + 60)
            assert len(report.dead) == 1
            dead = tags_in(client, keys_of(agent)["dead"])[tag]
            reason = orjson.loads(dead[b"r"])
            assert reason["reason"]
            kept = {k: v for k, v in fields.items() if k not in (b"a", b"e", b"r", b"k")}
            assert all(dead.get(k) == v for k, v in kept.items())  # the entry's own fields as they were
            assert mb.list(State.DEAD)  # and listing it works
    finally:
        client.close()


def test_garbage_in_the_delayed_set_is_dead_lettered_and_claims_go_on(redis_url: str) -> None:
    agent = f"D-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    k = keys_of(agent)
    with RedisMailbox(redis_url, agent) as mb:
        mb.put(good_message(1))
        bad = {b"t1": b"not json", b"t2": b"[1, 2]", b"t3": b'{"k": 9, "m": "x", "a": 0}', b"t4": b'{"k": 1}'}
        for tok, packed in bad.items():
            client.hset(k["data"], tok, packed)
            client.zadd(k["delayed"], {tok: 0})
        client.zadd(k["delayed"], {b"no-data": 0})  # a token without its entry
        assert len(mb.list(State.NEW)) == 1 + len(bad)
        got = drain(mb)
        assert [m.payload for m in got] == [{"n": 1}]
        dead = [f for _, f in client.xrange(k["dead"])]
        assert sorted(f[b"m"] for f in dead) == sorted(bad.values())
        assert all(orjson.loads(f[b"r"])["reason"].startswith("cannot be read") for f in dead)
        assert client.zcard(k["delayed"]) == 0 and client.hlen(k["data"]) == 0
    client.close()


def test_an_entry_id_far_in_the_future_is_delivered_and_listed(redis_url: str) -> None:
    """Another client may give an entry any id: one of 2**64-1 ms names no time a name can hold."""
    agent = f"F-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    with RedisMailbox(redis_url, agent) as mb:
        message = good_message(7)
        client.xadd(
            keys_of(agent)["streams"][0],
            {"m": message.encode(None), "id": message.id},
            id="18446744073709551615-0",
        )
        assert [i.id for i in mb.list(State.NEW)] == [message.id]
        d = mb.claim()
        assert d is not None and d.message.id == message.id
        d.nack(delay=0, error="again")
        assert drain(mb)[0].id == message.id
        assert mb.stats().states[State.DONE].count == 1
    client.close()


def test_max_message_size_holds_on_claim(redis_url: str) -> None:
    """A message over the mailbox's limit, added by another client, is dead-lettered unread."""
    agent = f"S-{uuid.uuid4().hex[:10]}"
    client = redis.Redis.from_url(redis_url)
    with RedisMailbox(redis_url, agent, max_message_size=64 * 1024) as mb:
        big = Message("job.big", "x" * (2 * 1024 * 1024))
        client.xadd(keys_of(agent)["streams"][2], {"m": big.encode(None), "a": "0", "id": big.id})
        mb.put(good_message(1))
        got = drain(mb)
        assert [m.payload for m in got] == [{"n": 1}]
        (dead,) = mb.list(State.DEAD)
        assert dead.id == big.id and "max_message_size" in (dead.reason or {})["reason"]
    client.close()


# -- a server at maxmemory (noeviction) ---------------------------------------------------------------


def test_at_maxmemory_a_nack_does_not_stop_later_claims_and_a_mailbox_still_opens() -> None:
    from redis_server import RedisServer, available

    if not available():
        pytest.skip("redis-server is not installed")
    srv = RedisServer(appendonly=False, extra=("--maxmemory", "64mb")).start()
    client = redis.Redis.from_url(srv.url)
    try:
        with RedisMailbox(srv.url, "A", backoff=NOW) as mb:
            for n in range(3):
                mb.put(good_message(n))
            # Full: the limit under what is used, so every write that may grow memory is refused.
            used = int(client.info("memory")["used_memory"])
            client.config_set("maxmemory", used // 2)
            with pytest.raises(redis.exceptions.OutOfMemoryError):
                client.set("fill", b"x" * 100)
            with pytest.raises(MailboxIOError):
                mb.put(good_message(99))  # what noeviction means: a put fails, said so
            d = mb.claim()
            assert d is not None
            d.nack(delay=0, error="try again")
            seen = sorted(m.payload["n"] for m in drain(mb))
            assert seen == [0, 1, 2]
            with RedisMailbox(srv.url, "A", create=False) as again:  # its group exists: no write needed
                assert again.stats().states[State.DONE].count == 3
    finally:
        client.close()
        srv.remove()


# -- inspection reads each message once at most -------------------------------------------------------


def sent_bytes(client: Any) -> int:
    return int(client.info("stats")["total_net_output_bytes"])


def test_stats_reads_no_message_and_ls_reads_each_once(
    private: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    from hybridcomms.cli import main

    client = redis.Redis.from_url(private.url)
    body = "y" * 32 * 1024
    n = 40
    with RedisMailbox(private.url, "A", backoff=NOW) as mb:
        for i in range(n):
            mb.put(Message("job.big", {"i": i, "body": body}))
        mb.put(good_message(1), delay=600)  # waiting in the delayed set
        d = mb.claim()
        assert d is not None
        d.ack()
        d = mb.claim()
        assert d is not None
        d.dead("no")
        held = mb.claim()  # in processing
        assert held is not None
        total = n * len(body)
        before = sent_bytes(client)
        stats = mb.stats()
        assert sent_bytes(client) - before < 16 * 1024  # counts and ids, not messages
        assert {s: v.count for s, v in stats.states.items()} == {
            State.NEW: n - 3 + 1, State.PROCESSING: 1, State.DONE: 1, State.DEAD: 1,
        }  # fmt: skip
        assert stats.delayed == 1
        assert {s: len(mb.list(s)) for s in stats.states} == {s: v.count for s, v in stats.states.items()}

        before = sent_bytes(client)
        assert main(["ls", "A", "--url", private.url, "--json"]) == 0
        rows = orjson.loads(capsys.readouterr().out)
        assert len(rows) == n + 1 and all(r["topic"] for r in rows)
        # Each message is sent at most twice (the listing, then the one entry `read` fetches); before the
        # fix each `read` listed its whole state again: n times the backlog.
        assert sent_bytes(client) - before < 3 * total
        before = sent_bytes(client)
        assert main(["stats", "--url", private.url, "--json"]) == 0
        capsys.readouterr()
        assert sent_bytes(client) - before < 16 * 1024
        held.ack()
    client.close()


# -- pub/sub ------------------------------------------------------------------------------------------


def test_fleets_on_two_databases_of_one_server_do_not_hear_each_other(redis_url: str) -> None:
    base = redis_url.rsplit("/", 1)[0]
    db_a, db_b = f"{base}/0", f"{base}/1"
    pub_a, sub_a, pub_b, sub_b = AgentBus(), AgentBus(), AgentBus(), AgentBus()
    got_a: list[Any] = []
    got_b: list[Any] = []
    sub_a.subscribe("fleet.*", lambda e: got_a.append(e.payload))
    sub_b.subscribe("fleet.*", lambda e: got_b.append(e.payload))
    fanouts = [
        RedisFanout(pub_a, db_a),
        RedisFanout(sub_a, db_a),
        RedisFanout(pub_b, db_b),
        RedisFanout(sub_b, db_b),
    ]
    try:
        eventually(lambda: (pub_a.publish("fleet.status", "a"), "a" in got_a)[1], "db 0's event in db 0", 20)
        # Redis hands a connection its messages in the order it ran the publishes: once db 1's own
        # event has arrived in db 1, any of db 0's published before it would have arrived first.
        eventually(lambda: (pub_b.publish("fleet.status", "b"), "b" in got_b)[1], "db 1's event in db 1", 20)
        assert "a" not in got_b and "b" not in got_a
    finally:
        for f in fanouts:
            f.close()


def test_overlapping_patterns_in_one_process_deliver_an_event_once_per_subscriber(redis_url: str) -> None:
    pub, sub = AgentBus(), AgentBus()
    counts: dict[str, list[Any]] = {"a.*": [], "*": [], "a.b": []}
    for pattern, seen in counts.items():
        sub.subscribe(pattern, seen.append)
    fanouts = [RedisFanout(pub, redis_url), RedisFanout(sub, redis_url)]
    try:
        eventually(lambda: (pub.publish("warmup.x", 0), len(counts["*"]) > 0)[1], "the subscriptions", 20)
        for pattern in counts:
            counts[pattern].clear()
        for n in range(20):
            pub.publish("a.b", n)
        pub.publish("z.end", "end")  # after every a.b on the same connection: the handshake
        eventually(lambda: any(e.payload == "end" for e in counts["*"]), "the last event", 20)
        for pattern, seen in counts.items():
            assert [e.payload for e in seen if e.topic == "a.b"] == list(range(20)), pattern
    finally:
        for f in fanouts:
            f.close()


def test_changing_subscriptions_never_doubles_an_event(redis_url: str) -> None:
    """While overlapping patterns are added and removed, every event still arrives at most once."""
    pub, sub = AgentBus(), AgentBus()
    seen: list[Any] = []
    sub.subscribe("x.y", seen.append)
    fanouts = [RedisFanout(pub, redis_url), RedisFanout(sub, redis_url)]

    going = threading.Event()  # the churn starts once events flow (a loaded machine may run it first)

    def churn() -> None:
        noop = lambda e: None  # noqa: E731
        going.wait(30)
        for _ in range(40):
            s1 = sub.subscribe("x.*", noop)
            s2 = sub.subscribe("*", noop)
            sub.unsubscribe(s2)
            sub.unsubscribe(s1)

    try:
        eventually(lambda: (pub.publish("x.y", -1), len(seen) > 0)[1], "the subscription", 20)
        t = threading.Thread(target=churn)
        t.start()
        sent = 0
        # Events all along the changes, and 1,000 at least (before and after them too).
        while (t.is_alive() or sent < 1_000) and sent < 50_000:
            pub.publish("x.y", sent)
            sent += 1
            if sent == 50:
                going.set()
            if sent % 50 == 0:
                time.sleep(0.001)  # let the sender thread keep up (its queue drops past 10,000)
        t.join()
        pub.publish("x.y", "end")
        eventually(lambda: any(e.payload == "end" for e in seen), "the last event", 20)
        payloads = [e.payload for e in seen if isinstance(e.payload, int) and e.payload >= 0]
        assert len(payloads) == len(set(payloads))
        assert len(payloads) > 0
    finally:
        for f in fanouts:
            f.close()


# -- leases run out without anyone running recover ----------------------------------------------------


@pytest.fixture
def aof_server(tmp_path: Path) -> Iterator[Any]:
    """A private Redis with AOF and appendfsync always: what it acknowledged survives a kill."""
    from redis_server import REQUIRE_ENV, RedisServer, available

    if not available():
        if os.environ.get(REQUIRE_ENV):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    srv = RedisServer(tmp_path / "redis-data").start()
    yield srv
    srv.remove()


class _Flag(logging.Handler):
    """Sets an event when a record at ``level`` or above is logged (the handshake with a thread)."""

    def __init__(self, level: int) -> None:
        super().__init__(level)
        self.seen = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        self.seen.set()


def _stacks() -> str:
    """Where every thread of this process is (what a failed wait shows, to say why)."""
    import sys
    import traceback

    names = {t.ident: t.name for t in threading.enumerate()}
    return "\n".join(
        f"--- {names.get(ident, ident)}\n{''.join(traceback.format_stack(frame))}"
        for ident, frame in sys._current_frames().items()
    )


def test_a_comms_whose_ack_failed_in_an_outage_gets_the_message_back_within_its_lease(
    aof_server: Any,
) -> None:
    from hybridcomms import Comms

    lease = 2.0
    attempts: list[int | None] = []
    first_in, release, again = threading.Event(), threading.Event(), threading.Event()

    def handler(m: Any) -> None:
        attempts.append(m.attempt)
        if len(attempts) == 1:
            first_in.set()
            release.wait(30)
        else:
            again.set()

    flag = _Flag(logging.WARNING)  # the outage line (or an error) when the ack fails, from any part
    logging.getLogger("hybridcomms").addHandler(flag)
    comms = Comms("A", url=aof_server.url, lease=lease, backoff=NOW, share_bus=False)
    try:
        comms.subscribe("job.run", handler)
        comms.start()
        with RedisMailbox(aof_server.url, "A") as mb:
            mb.put(good_message(1))
        assert first_in.wait(20)
        aof_server.kill()  # Redis dies while the handler works: its ack will fail
        release.set()
        assert flag.seen.wait(60), f"the failed ack was not reported; the threads:\n{_stacks()}"
        aof_server.start()
        # Nobody runs recover: the consumer's own claims take the message back once its lease is over
        # (before the fix: at the Comms' next periodic recovery, 30 s later; `work`: never).
        assert again.wait(lease * 4 + 5), "the message did not come back"
        assert attempts == [1, 2]
    finally:
        release.set()
        comms.close()
        logging.getLogger("hybridcomms").removeHandler(flag)


@pytest.mark.slow
def test_work_whose_ack_failed_in_an_outage_gets_the_message_back(aof_server: Any, tmp_path: Path) -> None:
    import subprocess
    import sys

    runs, go = tmp_path / "runs", tmp_path / "go"
    script = tmp_path / "handle.py"
    script.write_text(
        "import os, pathlib, sys, time\n"
        f"runs, go = pathlib.Path({str(runs)!r}), pathlib.Path({str(go)!r})\n"
        "with runs.open('a') as f:\n"
        "    f.write(os.environ['HYBRIDCOMMS_ATTEMPT'] + '\\n')\n"
        "while not go.exists():\n"
        "    time.sleep(0.02)\n"
    )
    message = good_message(1)
    with RedisMailbox(aof_server.url, "A") as mb:
        mb.put(message)
    out, err = tmp_path / "out", tmp_path / "err"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    with out.open("wb") as o, err.open("wb") as e:
        worker = subprocess.Popen(
            [sys.executable, "-m", "hybridcomms", "work", "A", "--url", aof_server.url, "--lease", "2",
             "--retry-delay", "0", "--", sys.executable, str(script)],
            stdout=o, stderr=e, env=env,
        )  # fmt: skip
    try:
        eventually(lambda: runs.exists() and runs.read_text() == "1\n", "the first run", 20)
        aof_server.kill()
        go.touch()  # the command ends (or its heartbeat fails first): either way, nothing is acked
        lost = f"lost   {message.id}".encode()  # the heartbeat failed first: the command was stopped
        failed = f"hybridcomms work: {message.id}:".encode()  # the ack failed
        eventually(
            lambda: lost in out.read_bytes() or failed in err.read_bytes(),
            "the worker to meet the outage",
            20,
        )
        aof_server.start()
        eventually(lambda: runs.read_text().split() == ["1", "2"], "the second run, without a recover", 15)
    finally:
        worker.terminate()
        worker.wait(30)


# -- a password never shows -----------------------------------------------------------------------------

SECRET = "Sek@r3tPW7"  # with an "@": unencoded, it is where a careless parser splits
SECRET_TEXTS = ("r3tPW7", "Sek%40r3t")  # what no output may hold: the tail after the "@", the encoded form


def url_forms(port: int) -> list[str]:
    host = f"127.0.0.1:{port}"
    return [
        f"redis://:Sek%40r3tPW7@{host}/0",  # percent-encoded in the user information
        f"redis://:{SECRET}@{host}/0",  # an unencoded "@"
        f"redis://default:Sek%40r3tPW7@{host}/0",  # with a user
        f"redis://{host}/0?password=Sek%40r3tPW7",  # as a query parameter
        f"redsi://:Sek%40r3tPW7@{host}/0",  # a mistyped scheme
        f"redis:/:{SECRET}@{host}/0",  # a slash missing: not a URL at all
        f"rediss://:{SECRET}@{host}/0?socket_connect_timeout=1",  # TLS to a server that does not speak it
    ]


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[Any]:
    """A private Redis that wants ``SECRET``."""
    from redis_server import REQUIRE_ENV, RedisServer, available

    if not available():
        if os.environ.get(REQUIRE_ENV):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    srv = RedisServer(tmp_path / "locked", appendonly=False, extra=("--requirepass", SECRET)).start()
    yield srv
    srv.remove()


def assert_no_secret(text: str | bytes, what: str) -> None:
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    for secret in SECRET_TEXTS:
        assert secret not in text, f"{what} shows the password: {text[-2000:]}"


def cli_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    env.update(extra)
    return env


def test_no_cli_command_shows_the_password_whatever_the_url_looks_like(
    locked: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Every command, with every form of URL, from the command line, the environment and a file:
    no output, no log line (at any level) and no error shows the password. The commands run
    in-process (`run_cli`: what a process prints and exits with) and their log records are all
    kept, DEBUG included; `work`, which runs until stopped and starts children, as a real process."""
    import subprocess
    import sys

    from cli_runner import run_cli

    caplog.set_level(logging.DEBUG)
    good = f"redis://:Sek%40r3tPW7@127.0.0.1:{locked.port}/0"
    forms = url_forms(locked.port)
    with RedisMailbox(good, "W") as mb:  # for the one `work` run that gets through
        mb.put(good_message(1))
    commands = [
        ["send", "--to", "A", "--topic", "job.x", "--payload", "{}"],
        ["recv", "A", "--peek"],
        ["stats"],
        ["stats", "--json"],
        ["ls", "A"],
        ["ls", "A", "--json"],
        ["show", "nope"],
        ["show", "nope", "--agent", "A", "--json"],
        ["requeue", "A", "--all-dead"],
        ["purge", "A", "--state", "dead", "--older-than", "1d"],
        ["recover"],
        ["recover", "--json"],
        ["policy", "explain", "job.x"],
        ["watch"],
        ["tail"],
        ["doctor"],
        ["top"],
        ["migrate"],
    ]
    work = ["work", "W", "--max-messages", "1", "--timeout", "5", "--", "true"]
    few = [["stats"], ["show", "nope"], ["ls", "A", "--json"], ["recover", "--json"]]
    root = tmp_path / "root"
    root.mkdir()
    runs: list[tuple[list[str], dict[str, str]]] = []
    # Every command with the forms the issue names (an unencoded "@", ?password=, a mistyped scheme;
    # `work` with the first, which gets through); a few with the others.
    plan = [(forms[1], [*commands, work]), (forms[3], commands), (forms[4], [*commands, work])]
    plan += [(url, few) for url in (forms[0], forms[2], forms[5])]
    plan.append((forms[6], [["stats"]]))  # TLS to a plain server: the run waits for its connect timeout
    for url, chosen in plan:
        for command in chosen:
            args = ["--root", str(root), *command]
            if "--" in args:  # work: its options before the command's "--"
                cut = args.index("--")
                args[cut:cut] = ["--url", url]
            else:
                args += ["--url", url]
            runs.append((args, cli_env()))
    for url in forms[:6]:  # the URL from the environment, and from a file
        url_file = tmp_path / f"url-{len(runs)}"
        url_file.write_text(url + "\n")
        for env in (cli_env(HYBRIDCOMMS_URL=url), cli_env(HYBRIDCOMMS_URL_FILE=str(url_file))):
            for command in (["stats"], ["show", "nope"]):
                runs.append((["--root", str(root), *command], env))
    workers = []

    def in_a_process(args: list[str]) -> bool:  # `work`; TLS waits for its connect timeout meanwhile
        return args[2] == "work" or any(a.startswith("rediss:") for a in args)

    runs.sort(key=lambda run: not in_a_process(run[0]))
    for args, env in runs:
        what = " ".join(args[2:])
        if in_a_process(args):
            argv = [sys.executable, "-m", "hybridcomms", *args]
            workers.append(
                (what, subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE))
            )
            continue
        done = run_cli(args, env=env)
        assert_no_secret(done.stdout, f"stdout of {what}")
        assert_no_secret(done.stderr, f"stderr of {what}")
        assert "Traceback" not in done.stderr, f"{what}: {done.stderr[-1500:]}"
    assert len(workers) == 3
    for what, proc in workers:
        try:  # `work` waits for messages once the mailbox is empty: stopped as a supervisor would
            out, err = proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            proc.terminate()
            out, err = proc.communicate(timeout=60)
        assert_no_secret(out, f"stdout of {what}")
        assert_no_secret(err, f"stderr of {what}")
        assert b"Traceback" not in err, f"{what}: {err.decode(errors='replace')[-1500:]}"
    for record in caplog.records:  # every log line, at every level, with its traceback if any
        assert_no_secret(caplog.handler.format(record), "a log record")
        assert_no_secret(repr(record.args), "a log record's arguments")
    with RedisMailbox(good, "A") as mb:  # the URLs that authenticate did reach the server
        assert mb.stats().states[State.NEW].count >= 1


def test_the_library_logs_and_raises_no_password(locked: Any, caplog: pytest.LogCaptureFixture) -> None:
    from prometheus_client import generate_latest

    from hybridcomms import Comms
    from hybridcomms.backends import open_mailbox
    from hybridcomms.metrics import registry_for

    caplog.set_level(logging.DEBUG)
    texts = []
    for url in url_forms(locked.port):
        try:
            mb = open_mailbox(url, "A")
            texts.append(repr(mb))
            mb.close()
        except Exception as exc:
            texts.append(f"{exc!r} {exc}")
        try:
            comms = Comms("A", url=url, lease=5)
            comms.start()
            comms.publish("job.x", {"n": 1})
            texts.append(repr(comms))
            comms.close()
        except Exception as exc:
            texts.append(f"{exc!r} {exc}")
    for text in texts:
        assert_no_secret(text, "an exception or a repr")
    assert_no_secret(caplog.text, "the log")
    assert_no_secret(generate_latest(registry_for(None, bus=True)), "the metrics")


def test_work_children_get_no_password_in_their_environment_and_still_reach_the_fleet(
    locked: Any, tmp_path: Path
) -> None:
    """`work` started with the URL in $HYBRIDCOMMS_URL: its command gets $HYBRIDCOMMS_URL_FILE instead
    (a private file), with which `hybridcomms send` in the command reaches the same Redis. A worker
    given $HYBRIDCOMMS_URL_FILE has the password in neither its command line nor its environment."""
    import subprocess
    import sys

    good = f"redis://:Sek%40r3tPW7@127.0.0.1:{locked.port}/0"
    dump = tmp_path / "env.json"
    script = tmp_path / "child.py"
    script.write_text(
        "import json, os, subprocess, sys\n"
        f"open({str(dump)!r}, 'w').write(json.dumps(dict(os.environ)))\n"
        "sys.exit(subprocess.call([sys.executable, '-m', 'hybridcomms', 'send', '--to', 'B', '--topic',\n"
        "    'job.reply', '--payload', '{}', '--route', 'durable']))\n"
    )
    with RedisMailbox(good, "W") as mb:
        mb.put(good_message(1))
    work = [sys.executable, "-m", "hybridcomms", "work", "W", "--max-messages", "1", "--timeout", "60"]
    done = subprocess.run(
        [*work, "--", sys.executable, str(script)],
        env=cli_env(HYBRIDCOMMS_URL=good),
        capture_output=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    child_env = orjson.loads(dump.read_bytes())
    assert "HYBRIDCOMMS_URL" not in child_env
    assert_no_secret(dump.read_text(), "the child's environment")
    assert not Path(child_env["HYBRIDCOMMS_URL_FILE"]).exists()  # removed when the worker exited
    with RedisMailbox(good, "B") as b:
        assert b.stats().states[State.NEW].count == 1  # the child's send reached the same Redis

    # From a file: ps and /proc show neither the password nor the URL.
    url_file = tmp_path / "url"
    url_file.write_text(good + "\n")
    url_file.chmod(0o600)
    with RedisMailbox(good, "W") as mb:
        mb.put(good_message(2))
    go = tmp_path / "go"
    waiter = tmp_path / "wait.py"
    waiter.write_text(
        f"import pathlib, time\nwhile not pathlib.Path({str(go)!r}).exists():\n    time.sleep(0.02)\n"
    )
    ran = tmp_path / "ran"
    proc = subprocess.Popen(
        [*work, "--", "sh", "-c", f'touch "{ran}"; exec "{sys.executable}" "{waiter}"'],
        env=cli_env(HYBRIDCOMMS_URL_FILE=str(url_file)),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        eventually(ran.exists, "the command to run", 20)
        assert_no_secret(Path(f"/proc/{proc.pid}/cmdline").read_bytes(), "the worker's command line")
        assert_no_secret(Path(f"/proc/{proc.pid}/environ").read_bytes(), "the worker's environment")
        go.touch()
        out, err = proc.communicate(timeout=60)
    finally:
        go.touch()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert_no_secret(out + err, "the worker's output")


# -- chaos ----------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_short_redis_chaos_run_loses_nothing(tmp_path: Path) -> None:
    """tools/chaos.py --redis: producers, consumers and Redis itself killed at random, nobody runs
    recover; everything whose put returned ends acked or dead, nothing is left waiting."""
    import subprocess
    import sys

    from redis_server import available

    if not available():
        pytest.skip("redis-server is not installed")
    tool = Path(__file__).resolve().parents[1] / "tools" / "chaos.py"
    done = subprocess.run(
        [sys.executable, str(tool), "--messages", "0", "--redis", "--redis-seconds", "2",
         "--redis-kills", "1", "--json", "--root", str(tmp_path), "--seed", "7"],
        capture_output=True, timeout=300, env=cli_env(),
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    result = orjson.loads(done.stdout)["redis"]
    assert result["ok"] and result["lost"] == 0 and result["leftovers"] == 0, result
    assert result["produced"] > 0 and result["redis_kills"] == 1 and result["kills"] > 0, result
