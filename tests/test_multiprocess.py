"""Many processes on one mailbox: every message delivered, every id acked exactly once."""

from __future__ import annotations

import multiprocessing as mp
import os
import time
from collections import Counter
from pathlib import Path

import pytest
import workers

from hybridcomms import FileMailbox

spawn = mp.get_context("spawn")
pytestmark = pytest.mark.slow


def join_all(procs: list[mp.process.BaseProcess], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(deadline - time.monotonic(), 0.1))
    alive = [p for p in procs if p.is_alive()]
    for p in alive:
        p.kill()
    assert not alive, f"{len(alive)} processes did not finish in {timeout}s"
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]


@pytest.mark.parametrize(("producers", "per_producer", "fsync"), [(4, 1500, "never"), (4, 250, "always")])
def test_four_producers_and_four_consumers_ack_every_id_exactly_once(
    tmp_path: Path, producers: int, per_producer: int, fsync: str
) -> None:
    root = tmp_path / "mb"
    total = producers * per_producer
    FileMailbox(root, "Agent-1").close()
    deadline = time.time() + 240
    logs = [tmp_path / f"consumer{i}.log" for i in range(4)]
    consumers = [
        spawn.Process(target=workers.consume, args=(str(root), "Agent-1", str(log), total, deadline))
        for log in logs
    ]
    for c in consumers:
        c.start()  # consumers first: they race the producers, not a finished backlog
    prods = [
        spawn.Process(target=workers.produce, args=(str(root), "Agent-1", p, per_producer, fsync))
        for p in range(producers)
    ]
    for p in prods:
        p.start()
    join_all(prods + consumers, timeout=280)

    acked = Counter(line for log in logs for line in log.read_text().split())
    expected = {f"p{p}-{i}" for p in range(producers) for i in range(per_producer)}
    assert set(acked) == expected, (
        f"missing {len(expected - set(acked))}, unexpected {len(set(acked) - expected)}"
    )
    duplicates = {k: v for k, v in acked.items() if v > 1}
    assert not duplicates
    per_consumer = [len(log.read_text().split()) for log in logs]
    assert sum(per_consumer) == total
    mailbox = root / "Agent-1"
    assert len(os.listdir(mailbox / "done")) == total
    for folder in ("new", "processing", "dead", "tmp"):
        assert os.listdir(mailbox / folder) == [], folder
