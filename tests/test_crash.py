"""kill -9 at random moments: nothing lost, nothing half-visible, every kill counted as an attempt."""

from __future__ import annotations

import multiprocessing as mp
import os
import random
import time
from collections import defaultdict
from pathlib import Path

import orjson
import pytest
import workers
from waiting import eventually

from hybridcomms import Backoff, FileMailbox, Message
from hybridcomms._names import parse_name

spawn = mp.get_context("spawn")
# Children forked from a server that imported the workers once: a restart costs milliseconds, so the
# soak is paced by what the consumers do, not by interpreter start-up.
forkserver = mp.get_context("forkserver")
forkserver.set_forkserver_preload(["workers", "hybridcomms"])


def count_lines(path: Path, prefix: bytes) -> int:
    try:
        return sum(1 for line in path.read_bytes().splitlines() if line.startswith(prefix))
    except FileNotFoundError:
        return 0


pytestmark = pytest.mark.slow

FAST = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)
KILLS = 30


def test_sigkilled_consumers_lose_nothing_and_every_kill_counts_as_an_attempt(tmp_path: Path) -> None:
    total = 10_000
    root = tmp_path / "mb"
    mb = FileMailbox(root, "Agent-1", fsync="never", backoff=FAST, max_attempts=1000)
    ids = [f"m{i:05d}" for i in range(total)]
    for start in range(0, total, 500):
        mb.put_many([Message("work", i, id=ids[i]) for i in range(start, min(start + 500, total))])

    rng = random.Random(20261126)
    logs: list[Path] = []
    procs: list[mp.process.BaseProcess] = []

    def spawn_consumer() -> mp.process.BaseProcess:
        log = tmp_path / f"consumer{len(logs)}.log"
        logs.append(log)
        p = forkserver.Process(
            target=workers.crashy_consume, args=(str(root), "Agent-1", str(log), len(logs))
        )
        p.start()
        return p

    procs = [spawn_consumer() for _ in range(4)]
    proc_logs = logs[-4:]
    kills = 0
    recovered = 0
    deadline = time.monotonic() + 240

    done_seen = {"at": 0.0, "value": False}

    def all_done() -> bool:  # listing done/ (up to 10,000 names) at most every 50 ms
        now = time.monotonic()
        if now - done_seen["at"] >= 0.05:
            done_seen["at"] = now
            done_seen["value"] = len(os.listdir(mb.path / "done")) >= total
        return done_seen["value"]

    def drained() -> bool:  # nothing left in new/ (its first name read, not all 10,000)
        with os.scandir(mb.path / "new") as names:
            return next(names, None) is None

    try:
        # Bounded by progress, not by the clock: KILLS kills spread over the run (each after the victim
        # has claimed a random number of messages; four consumers take about 4x that between kills),
        # then the survivors drain the rest.
        while kills < KILLS and time.monotonic() < deadline and not all_done():
            # The kill lands after the victim has claimed a random number of messages (its log is the
            # handshake): mid-handler, mid-ack or between two claims, wherever it happens to be.
            victim = rng.randrange(len(procs))
            log = proc_logs[victim]
            want = rng.randint(1, 100)
            # (Or nothing is left in new/ for it to claim: the others took the rest; it is killed idle.)
            eventually(
                lambda log=log, want=want: count_lines(log, b"claim") >= want or all_done() or drained(),
                f"consumer {victim} to claim {want} messages",
                30,
            )
            if all_done():
                break
            procs[victim].kill()  # SIGKILL
            procs[victim].join()
            kills += 1
            procs[victim] = spawn_consumer()
            proc_logs[victim] = logs[-1]
            if kills % 5 == 0:
                recovered += len(mb.recover().returned)
        # The survivors take what is left in new/ (what the killed ones held is recovered below).
        eventually(lambda: all_done() or drained(), "the survivors to take what is left in new/", 120)
    finally:
        for p in procs:
            p.kill()
            p.join()
    assert kills >= 20, "the run ended before enough kills to mean anything"

    # Then recover() and drain what is left.
    recovered += len(mb.recover().returned)
    while (d := mb.claim()) is not None:
        d.ack()

    # Every id in exactly one state: all in done/, once, and nothing anywhere else.
    done = [parse_name(n) for n in os.listdir(mb.path / "done")]
    assert all(i is not None for i in done)
    final_attempt = {i.id: i.attempt for i in done if i is not None}
    assert len(done) == total and set(final_attempt) == set(ids)
    for folder in ("new", "processing", "dead", "tmp"):
        assert os.listdir(mb.path / folder) == [], folder

    # Each kill is an attempt: the claims of one id carry distinct, increasing attempt numbers,
    # and the final attempt is at least the last logged claim.
    claims: dict[str, list[int]] = defaultdict(list)
    acks: set[tuple[str, int]] = set()
    for log in logs:
        if not log.exists():
            continue  # killed while starting up, before it opened its log
        for line in log.read_text().splitlines():
            parts = line.split()
            if len(parts) != 3:
                continue  # a line cut short by the kill
            kind, msg_id, attempt = parts[0], parts[1], int(parts[2])
            (claims[msg_id].append(attempt) if kind == "claim" else acks.add((msg_id, attempt)))
    interrupted = 0
    for msg_id, attempts in claims.items():
        assert len(set(attempts)) == len(attempts), (
            f"{msg_id} was claimed twice as the same attempt: {attempts}"
        )
        assert final_attempt[msg_id] >= max(attempts)
        for a in attempts:
            if (msg_id, a) not in acks and final_attempt[msg_id] > a:
                interrupted += 1  # killed while holding it, and it came back as a later attempt
    assert interrupted >= 1, "no kill landed while a message was in flight"
    print(f"kills={kills} interrupted={interrupted} recovered={recovered}")
    assert recovered >= interrupted


def test_a_producer_killed_mid_put_never_leaves_a_partial_file_in_new(tmp_path: Path) -> None:
    root = tmp_path / "mb"
    size = 512 * 1024  # big enough that a write takes a while
    rng = random.Random(7)
    mb = FileMailbox(root, "Agent-1", fsync="never", tmp_max_age=0, max_message_size=2 * size)
    for _ in range(8):
        p = forkserver.Process(target=workers.put_big_forever, args=(str(root), "Agent-1", size))
        p.start()
        # Handshake: the producer is writing once a file of its own is in tmp/; then a random few puts.
        before = len(os.listdir(mb.path / "new"))
        wants = before + rng.randint(0, 3)
        eventually(lambda: os.listdir(mb.path / "tmp"), "the producer writing a file in tmp/", 30)
        eventually(
            lambda: len(os.listdir(mb.path / "new")),
            f"{wants} messages in new/",
            30,
            until=lambda n, wants=wants: n >= wants,
        )
        p.kill()
        p.join()
    seen = 0
    for name in os.listdir(mb.path / "new"):
        raw = (mb.path / "new" / name).read_bytes()
        obj = orjson.loads(raw)  # raises on a torn file
        assert len(obj["payload"]["blob"]) == obj["payload"]["check"] == size
        seen += 1
    assert seen > 0
    # Half-writes can only be in tmp/, and recovery sweeps them.
    mb.recover()
    assert os.listdir(mb.path / "tmp") == []
    got = 0
    while (d := mb.claim()) is not None:
        d.ack()
        got += 1
    assert got == seen
