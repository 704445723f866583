"""A backend that goes away, as `Comms` and ``hybridcomms work`` tell it: one warning when the outage
starts (with the reason, no traceback), one when it ends (with how long it lasted), retries with a
capped backoff meanwhile, the outage counted in the metrics, and delivery going on afterwards."""

from __future__ import annotations

import errno
import itertools
import logging
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from redis_server import RedisServer, available
from waiting import eventually

from hybridcomms import AgentBus, Backoff, Comms, FileMailbox, Message, _outage
from hybridcomms.errors import BackendUnavailableError
from hybridcomms.metrics import OutageCollector, registry_for

HC = [sys.executable, "-m", "hybridcomms"]
TOPIC = "outage.test"


@pytest.fixture
def fast_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tries every 50 ms while the backend fails: many tries in a short outage."""
    monkeypatch.setattr(_outage, "RETRY", Backoff(initial=0.05, factor=1.0, maximum=0.05, jitter=0.0))


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    if not available():
        pytest.skip("needs redis-server")
    server = RedisServer(tmp_path / "redis").start()
    try:
        yield server
    finally:
        server.remove()


def metric(name: str, agent: str, backend: str) -> float | None:
    registry = registry_for(None)
    registry.register(OutageCollector())
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name == name and s.labels == {"agent": agent, "backend": backend}:
                return float(s.value)
    return None


def told(caplog: pytest.LogCaptureFixture) -> tuple[list[logging.LogRecord], list[logging.LogRecord]]:
    """The package's warnings: exactly the start and the end of one outage, each once, no traceback."""
    warnings = [
        r for r in caplog.records if r.name.startswith("hybridcomms") and r.levelno >= logging.WARNING
    ]
    started = [r for r in warnings if "backend failing" in r.getMessage()]
    ended = [r for r in warnings if "works again after" in r.getMessage()]
    shown = [r.getMessage() for r in warnings]
    assert len(started) == 1 and len(ended) == 1 and len(warnings) == 2, shown
    assert warnings.index(started[0]) < warnings.index(ended[0])
    assert all(r.exc_info is None for r in warnings), shown
    return started, ended


def failed_tries(record: logging.LogRecord) -> int:
    m = re.search(r"works again after [\d.]+s \((\d+) failed tries\)", record.getMessage())
    assert m is not None, record.getMessage()
    return int(m.group(1))


def test_comms_tells_a_redis_outage_once_when_it_starts_and_once_when_it_ends(
    fast_retry: None, redis_server: RedisServer, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    caplog.set_level(logging.INFO, logger="hybridcomms")
    agent = f"Outage-{uuid.uuid4().hex[:8]}"  # the metrics are per process: a row of its own
    got: list[int] = []
    url = redis_server.url
    with Comms(agent, url=url, root=tmp_path / "root", bus=AgentBus()) as comms:
        comms.subscribe(TOPIC, lambda m: got.append(m.payload))
        comms.send(agent, TOPIC, 1, route="durable")
        eventually(lambda: got == [1], "the first message handled", 30)
        assert metric("hybridcomms_backend_up", agent, "redis") == 1

        redis_server.kill()
        eventually(lambda: metric("hybridcomms_backend_up", agent, "redis") == 0, "the outage seen", 30)
        with pytest.raises(BackendUnavailableError) as sent:  # a sender hears of it at once, each time
            comms.send(agent, TOPIC, 2, route="durable")
        assert sent.value.url == url and "Connection refused" in sent.value.reason
        # The consumer keeps trying (every 50 ms here) for half a second at least.
        seconds = "hybridcomms_backend_outage_seconds_total"
        eventually(lambda: (metric(seconds, agent, "redis") or 0) >= 0.5, "half a second of outage", 30)

        redis_server.start()  # the same port and data
        eventually(lambda: metric("hybridcomms_backend_up", agent, "redis") == 1, "the end of the outage", 30)
        comms.send(agent, TOPIC, 3, route="durable")
        eventually(lambda: got == [1, 3], "a message sent after the outage handled", 30)

    started, ended = told(caplog)
    assert f"{agent}: {url}: backend failing: " in started[0].getMessage()
    assert failed_tries(ended[0]) >= 5  # many tries, one line
    assert metric("hybridcomms_backend_outages_total", agent, "redis") == 1
    assert (metric(seconds, agent, "redis") or 0) >= 0.5


def test_comms_tells_a_mailbox_folder_that_vanished_once_and_once_when_it_is_made_again(
    fast_retry: None, caplog: pytest.LogCaptureFixture, root: Path
) -> None:
    caplog.set_level(logging.INFO, logger="hybridcomms")
    agent = f"Outage-{uuid.uuid4().hex[:8]}"
    got: list[int] = []
    with Comms(agent, root=root, fsync="never", bus=AgentBus(), share_bus=False) as comms:
        comms.subscribe(TOPIC, lambda m: got.append(m.payload))
        comms.send(agent, TOPIC, 1, route="durable")
        eventually(lambda: got == [1], "the first message handled", 30)

        shutil.rmtree(root / agent)  # deleted under a running consumer
        eventually(lambda: metric("hybridcomms_backend_up", agent, "file") == 0, "the outage seen", 30)
        seconds = "hybridcomms_backend_outage_seconds_total"
        eventually(lambda: (metric(seconds, agent, "file") or 0) >= 0.3, "a third of a second of outage", 30)

        with FileMailbox(root, agent, fsync="never") as mb:  # a sender makes the mailbox again
            mb.put(Message(TOPIC, 2))
        eventually(lambda: got == [1, 2], "the message in the folder made anew handled", 30)

    started, ended = told(caplog)
    assert "is gone" in started[0].getMessage() and str(root / agent) in started[0].getMessage()
    assert failed_tries(ended[0]) >= 3
    assert metric("hybridcomms_backend_outages_total", agent, "file") == 1
    assert metric("hybridcomms_backend_up", agent, "file") == 1


def test_comms_tells_io_errors_of_its_mailbox_once_each_way_and_retries_with_a_capped_backoff(
    caplog: pytest.LogCaptureFixture, root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.INFO, logger="hybridcomms")
    cap = Backoff(initial=0.01, factor=2.0, maximum=0.08, jitter=0.0)
    monkeypatch.setattr(_outage, "RETRY", cap)
    agent = f"Outage-{uuid.uuid4().hex[:8]}"
    got: list[int] = []
    tries: list[float] = []
    failing = threading.Event()
    failing.set()
    comms = Comms(agent, root=root, fsync="never", bus=AgentBus(), share_bus=False)
    real_claim = comms.mailbox.claim

    def claim(*args: Any, **kwargs: Any) -> Any:
        if failing.is_set():
            tries.append(time.monotonic())
            raise OSError(errno.EIO, "Input/output error")
        return real_claim(*args, **kwargs)

    monkeypatch.setattr(comms.mailbox, "claim", claim)
    with comms:
        comms.subscribe(TOPIC, lambda m: got.append(m.payload))
        comms.send(agent, TOPIC, 1, route="durable")  # waits in new/ while claims fail
        eventually(lambda: len(tries) >= 10, "ten tries", 30)
        failing.clear()
        eventually(lambda: got == [1], "the message handled once claims work again", 30)

    started, ended = told(caplog)
    assert "backend failing: Input/output error" in started[0].getMessage()
    gaps = [b - a for a, b in itertools.pairwise(tries)]
    # Capped: 0.01, 0.02, 0.04, then 0.08 s apart (uncapped, the tenth try would come 2.56 s after the ninth).
    assert max(gaps[5:9]) < 1.0
    assert failed_tries(ended[0]) == len(tries)


def test_work_tells_a_redis_outage_in_two_lines(redis_server: RedisServer, tmp_path: Path) -> None:
    from hybridcomms.backends.redis.mailbox import RedisMailbox

    url = redis_server.url
    with RedisMailbox(url, "Jobs") as mb:
        mb.put(Message("job", 1))
    proc = subprocess.Popen(
        [*HC, "--url", url, "work", "Jobs", "--json", "--", sys.executable, "-c", "pass"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=tmp_path,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert orjson.loads(proc.stdout.readline())["outcome"] == "acked"
        redis_server.kill()
        lines = [proc.stderr.readline()]  # "running …"
        while "backend failing" not in lines[-1]:
            lines.append(proc.stderr.readline())
            assert lines[-1], "work ended"
        redis_server.start()
        with RedisMailbox(url, "Jobs") as mb:
            mb.put(Message("job", 2))
        assert orjson.loads(proc.stdout.readline())["outcome"] == "acked"  # going on after it
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        lines += proc.stderr.read().splitlines()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert sum("backend failing" in line for line in lines) == 1, lines
    assert sum("works again after" in line for line in lines) == 1, lines
    assert "Traceback" not in "".join(lines)
    failing = next(line for line in lines if "backend failing" in line)
    assert failing.startswith(f"hybridcomms work: Jobs: {url}: backend failing: ")


def test_a_sender_keeps_reaching_a_mailbox_folder_made_anew(
    root: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def waiting() -> list[Any]:
        with FileMailbox(root, "Receiver", fsync="never") as mb:
            return [mb.read(info).payload for info in mb.list("new")]

    comms = Comms("Sender", root=root, fsync="never", bus=AgentBus(), share_bus=False)
    try:
        comms.send("Receiver", TOPIC, 1, route="durable")  # its outbox is kept open
        shutil.rmtree(root / "Receiver")
        FileMailbox(root, "Receiver", fsync="never").close()  # the receiver's mailbox, made anew
        comms.send("Receiver", TOPIC, 2, route="durable")
        assert waiting() == [2]
        shutil.rmtree(root / "Receiver")
        comms.send("Receiver", TOPIC, 3, route="durable")  # made again by the send, as for a new agent
        assert waiting() == [3]
    finally:
        comms.close()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


def test_a_mailbox_folder_replaced_by_a_link_is_refused_as_an_io_error_never_followed(
    root: Path, tmp_path: Path
) -> None:
    import os

    from hybridcomms import MailboxIOError

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "2M.20200101T000000000000Z.planted.a0.json").write_bytes(b"{}")
    with FileMailbox(root, "Agent-1", fsync="never", rescan_interval=0) as mb:
        assert mb.claim() is None
        os.rename(root / "Agent-1" / "new", root / "Agent-1" / "new.moved")
        os.symlink(elsewhere, root / "Agent-1" / "new")
        with pytest.raises(MailboxIOError, match="symlink"):
            mb.claim(timeout=5)  # (the check comes with the next listing of new/)
        os.unlink(root / "Agent-1" / "new")
        os.rename(root / "Agent-1" / "new.moved", root / "Agent-1" / "new")  # the real one, back
        mb.put(Message(TOPIC, 1))
        d = mb.claim(timeout=5)
        assert d is not None and d.message.payload == 1
        d.ack()
    assert (elsewhere / "2M.20200101T000000000000Z.planted.a0.json").exists()  # never touched
