"""The same agent code on every mailbox backend: only the URL changes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from waiting import eventually

from hybridcomms import Backoff, Comms, FileMailbox, Policy, PolicyError, Received, Rule, State
from hybridcomms.backends.memory import MemoryMailbox
from hybridcomms.backends.redis.mailbox import RedisMailbox

FAST = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)


@pytest.fixture(params=["file", "memory", pytest.param("redis", marks=pytest.mark.redis)])
def url(request: pytest.FixtureRequest) -> Iterator[str | None]:
    if request.param == "file":
        yield None
    elif request.param == "memory":
        store = uuid.uuid4().hex
        yield f"memory://{store}"
        MemoryMailbox.forget_store(store)
    else:
        import redis

        base = request.getfixturevalue("redis_url")
        client = redis.Redis.from_url(base)
        client.flushdb()  # the agents below use the default namespace
        yield base
        client.flushdb()
        client.close()


def run_agents(root: Path, url: str | None) -> dict[str, Any]:
    """Agent code as an agent writes it: a worker that answers requests and records audits, and a
    client that asks and publishes. Nothing in it knows the backend."""
    seen: dict[str, Any] = {"audits": []}
    got_audit = threading.Event()
    opts: dict[str, Any] = {"root": root, "url": url, "fsync": "never", "backoff": FAST}
    with Comms("Worker", **opts) as worker, Comms("Client", **opts) as client:

        def answer(m: Received) -> None:
            worker.reply(m, {"sum": sum(m.payload["xs"])})

        def audit(m: Received) -> None:
            seen["audits"].append(m.payload)
            got_audit.set()

        worker.subscribe("task.sum", answer)
        worker.subscribe("audit.*", audit)
        reply = client.request("Worker", "task.sum", {"xs": [1, 2, 3]}, timeout=15)
        seen["sum"] = reply.payload["sum"]
        sent = client.publish("audit.login", {"user": "ada"}, route="durable")
        seen["published_to"] = sent.durable_to
        assert got_audit.wait(15)
    return seen


def test_the_same_agent_code_runs_on_every_backend(tmp_path: Path, url: str | None) -> None:
    seen = run_agents(tmp_path / "root", url)
    assert seen["sum"] == 6
    assert seen["published_to"] == ("Worker",)
    assert seen["audits"] == [{"user": "ada"}]


def test_the_url_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, url: str | None
) -> None:
    if url is None:  # no URL anywhere: files under the root
        monkeypatch.delenv("HYBRIDCOMMS_URL", raising=False)
        with Comms("Solo", root=tmp_path / "root", fsync="never") as c:
            assert c.url is None and isinstance(c.mailbox, FileMailbox)
            assert (tmp_path / "root" / "Solo" / "new").is_dir()
        return
    monkeypatch.setenv("HYBRIDCOMMS_URL", url)
    with Comms("Solo", root=tmp_path / "root", fsync="never") as c:
        assert c.url == url
        assert not isinstance(c.mailbox, FileMailbox)
        assert not (tmp_path / "root" / "Solo").exists()  # nothing on disk: the mailbox is elsewhere


def test_a_policy_rule_sends_its_durable_copies_to_another_backend(tmp_path: Path) -> None:
    store = uuid.uuid4().hex
    policy = Policy(rules=(Rule(("audit.*",), "durable", "audits to memory", backend=f"memory://{store}"),))
    try:
        with Comms("Client", root=tmp_path / "root", fsync="never", policy=policy) as client:
            sent = client.send("Auditor", "audit.login", {"user": "ada"})
            assert sent.durable_to == ("Auditor",)
            client.send("Auditor", "task.other", {})
        auditor = MemoryMailbox("Auditor", store=store)
        assert [i.id for i in auditor.list(State.NEW)] == [sent.message.id]
        assert (tmp_path / "root" / "Auditor" / "new").is_dir()  # the other message: on files
        assert len(list((tmp_path / "root" / "Auditor" / "new").iterdir())) == 1
    finally:
        MemoryMailbox.forget_store(store)


def test_a_rule_backend_must_be_a_mailbox_url() -> None:
    with pytest.raises(PolicyError):
        Rule(("a.*",), "durable", backend="ftp://x")
    text = '[[rules]]\nmatch = "audit.*"\nroute = "durable"\nbackend = "redis://127.0.0.1:6379/0"\n'
    assert Policy.from_toml(text).rules[0].backend == "redis://127.0.0.1:6379/0"


@pytest.mark.redis
def test_durable_subscribers_are_seen_across_hosts_on_redis(tmp_path: Path, redis_url: str) -> None:
    """Two "hosts" (separate roots) share only the Redis: a subscription made on one is seen by the other."""
    import redis

    redis.Redis.from_url(redis_url).flushdb()
    got = threading.Event()
    with Comms("Listener", root=tmp_path / "host1", url=redis_url, fsync="never") as listener:
        listener.subscribe("fleet.*", lambda m: got.set())
        with Comms("Speaker", root=tmp_path / "host2", url=redis_url, fsync="never") as speaker:
            sent = speaker.publish("fleet.news", {"v": 1}, route="durable")
            assert sent.durable_to == ("Listener",)
        assert got.wait(15)
    with RedisMailbox(redis_url, "Listener") as mb:
        assert mb.stats().states[State.DONE].count == 1
    redis.Redis.from_url(redis_url).flushdb()


@pytest.mark.parametrize("retention", [0, 2, None])
def test_comms_keeps_as_many_acked_messages_as_done_retention_says(
    tmp_path: Path, url: str | None, retention: int | None
) -> None:
    """The one option, with one meaning, through `Comms` on every backend: 0 keeps no acked message,
    2 keeps about the last 2 (never fewer), None keeps every one."""
    handled = threading.Semaphore(0)
    opts: dict[str, Any] = {"root": tmp_path / "root", "url": url, "fsync": "never", "backoff": FAST}
    with Comms("Keeper", done_retention=retention, **opts) as keeper:
        assert keeper.mailbox.done_retention == retention
        keeper.subscribe("job.*", lambda m: handled.release())
        for i in range(40):
            keeper.send("Keeper", "job.run", {"n": i}, route="durable")
        for _ in range(40):
            assert handled.acquire(timeout=15)

        def done() -> int:
            return keeper.mailbox.stats().states[State.DONE].count

        # The last ack settles just after its handler returned: wait for the count it leads to.
        if retention is None:
            eventually(lambda: done() == 40, "40 acked messages kept")
        elif retention == 0:
            eventually(lambda: done() == 0, "no acked message kept")
        else:
            eventually(lambda: 2 <= done() <= 2 + 32 + 1, "about the last 2 kept")
