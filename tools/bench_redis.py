#!/usr/bin/env python3
"""RedisMailbox against redis-py doing the bare stream calls on the same server, in one run, interleaved.

    python tools/bench_redis.py                    # starts a private redis-server (needs it installed)
    python tools/bench_redis.py --url redis://127.0.0.1:6379/0   # an existing server (keys hcbench:*)
    python tools/bench_redis.py --quick --json out.json

Measured (messages of ~300 bytes, medians of interleaved rounds):

- put: `RedisMailbox.put` against a bare ``XADD`` of the same bytes;
- claim+ack: `claim()` + `ack()` against a bare ``XREADGROUP COUNT 1`` + ``XACK`` (the bare loop does
  not delete the entry nor keep a copy in ``done``, nor look at priorities or delayed messages: that
  is what the ratio prices);
- put -> claim latency: one message in flight, the consumer blocked (`claim(timeout)` against a bare
  ``XREADGROUP BLOCK``), from before the put to the claim returning in the consumer process;
- beside them, in the same run, `FileMailbox` put and claim+ack at ``fsync="never"`` and ``"always"``.

A private server runs twice: without persistence (what the client and the scripts cost) and with
``appendonly yes`` + ``appendfsync always`` (what durability costs; there the disk dominates both).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

import redis

from hybridcomms import FileMailbox, Message
from hybridcomms.backends.redis.mailbox import RedisMailbox

PAYLOAD = {"task": "build", "args": ["--fast"], "blob": "x" * 200}
NS = "hcbench"


def _flush(url: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{NS}*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def bare_put(url: str, n: int) -> float:
    r = redis.Redis.from_url(url)
    data = Message("bench", PAYLOAD).encode()
    t0 = time.perf_counter()
    for _ in range(n):
        r.xadd(f"{NS}:bare", {"m": data})
    dt = time.perf_counter() - t0
    r.close()
    return n / dt


def ours_put(url: str, n: int) -> float:
    with RedisMailbox(url, "A", namespace=NS) as mb:
        msgs = [Message("bench", PAYLOAD) for _ in range(n)]
        t0 = time.perf_counter()
        for m in msgs:
            mb.put(m)
        return n / (time.perf_counter() - t0)


def bare_claim_ack(url: str, n: int) -> float:
    r = redis.Redis.from_url(url)
    stream = f"{NS}:bare"
    try:
        r.xgroup_create(stream, "g", id="0", mkstream=True)
    except redis.ResponseError:
        pass
    data = Message("bench", PAYLOAD).encode()
    pipe = r.pipeline(transaction=False)
    for _ in range(n):
        pipe.xadd(stream, {"m": data})
    pipe.execute()
    t0 = time.perf_counter()
    for _ in range(n):
        got = r.xreadgroup("g", "c", {stream: ">"}, count=1)
        entry_id = got[0][1][0][0]
        r.xack(stream, "g", entry_id)
    dt = time.perf_counter() - t0
    r.close()
    return n / dt


def ours_claim_ack(url: str, n: int) -> float:
    with RedisMailbox(url, "A", namespace=NS) as mb:
        mb.put_many([Message("bench", PAYLOAD) for _ in range(n)])
        t0 = time.perf_counter()
        for _ in range(n):
            d = mb.claim()
            assert d is not None
            d.ack()
        return n / (time.perf_counter() - t0)


def file_rates(n: int, fsync: str) -> tuple[float, float]:
    base = tempfile.mkdtemp(prefix="hc-bench-redis-file-")
    try:
        with FileMailbox(base, "A", fsync=fsync) as mb:
            msgs = [Message("bench", PAYLOAD) for _ in range(n)]
            t0 = time.perf_counter()
            for m in msgs:
                mb.put(m)
            put = n / (time.perf_counter() - t0)
            t0 = time.perf_counter()
            for _ in range(n):
                d = mb.claim()
                assert d is not None
                d.ack()
            return put, n / (time.perf_counter() - t0)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _latency_consumer(kind: str, url: str, conn: Any, rounds: int) -> None:
    if kind == "ours":
        with RedisMailbox(url, "L", namespace=NS) as mb:
            conn.send("ready")
            for _ in range(rounds):
                d = None
                while d is None:
                    d = mb.claim(timeout=5)
                got = time.monotonic_ns()
                d.ack()
                conn.send(got)
        return
    r = redis.Redis.from_url(url)
    stream = f"{NS}:lat"
    try:
        r.xgroup_create(stream, "g", id="$", mkstream=True)
    except redis.ResponseError:
        pass
    conn.send("ready")
    for _ in range(rounds):
        got_entries = None
        while not got_entries:
            got_entries = r.xreadgroup("g", "c", {stream: ">"}, count=1, block=5000)
        got = time.monotonic_ns()
        r.xack(stream, "g", got_entries[0][1][0][0])
        conn.send(got)


def latency(kind: str, url: str, rounds: int) -> list[float]:
    ctx = mp.get_context("fork")
    here, there = ctx.Pipe()
    proc = ctx.Process(target=_latency_consumer, args=(kind, url, there, rounds))
    proc.start()
    assert here.recv() == "ready"
    out: list[float] = []
    data = Message("bench", PAYLOAD).encode()
    if kind == "ours":
        with RedisMailbox(url, "L", namespace=NS) as mb:
            for _ in range(rounds):
                m = Message("bench", PAYLOAD)
                t0 = time.monotonic_ns()
                mb.put(m)
                out.append((here.recv() - t0) / 1000)
    else:
        r = redis.Redis.from_url(url)
        for _ in range(rounds):
            t0 = time.monotonic_ns()
            r.xadd(f"{NS}:lat", {"m": data})
            out.append((here.recv() - t0) / 1000)
        r.close()
    proc.join(30)
    return out


def run(url: str, n: int, rounds: int, lat_rounds: int) -> dict[str, Any]:
    res: dict[str, list[float]] = {k: [] for k in ("bare_put", "ours_put", "bare_ca", "ours_ca")}
    for _ in range(rounds):  # interleaved
        for name, fn in (
            ("bare_put", bare_put),
            ("ours_put", ours_put),
            ("bare_ca", bare_claim_ack),
            ("ours_ca", ours_claim_ack),
        ):
            _flush(url)
            res[name].append(fn(url, n))
    lat: dict[str, list[float]] = {"bare": [], "ours": []}
    for _ in range(2):
        for kind in ("bare", "ours"):
            _flush(url)
            lat[kind] += latency(kind, url, lat_rounds // 2)
    _flush(url)
    med = {k: statistics.median(v) for k, v in res.items()}
    lat50 = {k: statistics.median(v) for k, v in lat.items()}
    return {
        "put_per_s": {
            "bare": med["bare_put"],
            "ours": med["ours_put"],
            "ratio": med["ours_put"] / med["bare_put"],
        },
        "claim_ack_per_s": {
            "bare": med["bare_ca"],
            "ours": med["ours_ca"],
            "ratio": med["ours_ca"] / med["bare_ca"],
        },
        "latency_p50_us": {
            "bare": lat50["bare"],
            "ours": lat50["ours"],
            "ratio": lat50["bare"] / lat50["ours"],
        },
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default=None, help="an existing Redis (default: start private ones)")
    ap.add_argument("--quick", action="store_true", help="fewer messages and rounds")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    n = 1000 if args.quick else 3000
    rounds = 3 if args.quick else 5
    lat_rounds = 200 if args.quick else 1000
    setups: list[tuple[str, str | None, bool]] = (
        [("given server", args.url, False)]
        if args.url
        else [("no persistence", None, False), ("AOF, appendfsync always", None, True)]
    )
    report: dict[str, Any] = {}
    for label, url, aof in setups:
        server = None
        if url is None:
            from redis_server import RedisServer

            server = RedisServer(appendonly=aof).start()
            url = server.url
        try:
            report[label] = run(url, n, rounds, lat_rounds)
        finally:
            if server is not None:
                server.remove()
    file_never = file_rates(n, "never")
    file_always = file_rates(min(n, 1000), "always")
    report["file"] = {
        "never": {"put_per_s": file_never[0], "claim_ack_per_s": file_never[1]},
        "always": {"put_per_s": file_always[0], "claim_ack_per_s": file_always[1]},
    }
    print(f"messages per round: {n}, rounds: {rounds} (medians); latency: {lat_rounds} round trips")
    print(f"{'server':<26}{'':<14}{'bare redis-py':>14}{'RedisMailbox':>14}{'ratio':>8}")
    for label, r in report.items():
        if label == "file":
            continue
        print(
            f"{label:<26}{'put/s':<14}{r['put_per_s']['bare']:>14.0f}{r['put_per_s']['ours']:>14.0f}"
            f"{r['put_per_s']['ratio']:>7.2f}x"
        )
        print(
            f"{'':<26}{'claim+ack/s':<14}{r['claim_ack_per_s']['bare']:>14.0f}"
            f"{r['claim_ack_per_s']['ours']:>14.0f}{r['claim_ack_per_s']['ratio']:>7.2f}x"
        )
        print(
            f"{'':<26}{'put->claim p50':<14}{r['latency_p50_us']['bare']:>12.0f}us"
            f"{r['latency_p50_us']['ours']:>12.0f}us{r['latency_p50_us']['ratio']:>7.2f}x"
        )
    for mode, r in report["file"].items():
        print(
            f"FileMailbox fsync={mode:<8}  put/s {r['put_per_s']:.0f}, claim+ack/s {r['claim_ack_per_s']:.0f}"
        )
    print("(ratio: RedisMailbox / bare for rates, bare / RedisMailbox for latency; higher is better)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
