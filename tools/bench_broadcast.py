#!/usr/bin/env python3
"""Ephemeral events to other processes (hybridcomms.fanout, one host) against bare ``sendto``, in one run.

    python tools/bench_broadcast.py            # 1, 3 and 10 subscriber processes
    python tools/bench_broadcast.py --quick
    python tools/bench_broadcast.py --json out.json

Measured, in rounds that alternate the two sides (medians):

- **publish cost**: `AgentBus.publish` on a shared bus with K subscriber processes (each subscribes
  ``bench.*`` through its own shared bus), against a bare loop that sends the same encoded datagram to
  the same K sockets with ``sendto(MSG_DONTWAIT)``. Ratio: bare time / publish time (target >= 0.7x).
- **delivery latency**: one event in flight, from before the publish to the subscriber's handler
  (``CLOCK_MONOTONIC``, the same in every process), p50; against a bare receiver process blocked in
  ``recv`` on its own socket. Ratio: bare p50 / ours p50.
- beside them: `AgentBus.publish` to one in-process handler (the bus without sharing).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import select
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridcomms.bus import AgentBus, Event
from hybridcomms.fanout import BUS_FOLDER, encode_event, share_bus

PAYLOAD = {"agent": "Agent-1", "status": "busy", "task": "build-42"}


def _subscriber(root: str, ready: Any, report: Any, stop: Any) -> None:
    bus = AgentBus()
    fd = report.fileno() if report is not None else -1

    def handler(event: Event) -> None:
        if fd >= 0 and isinstance(event.payload, dict) and event.payload.get("ping"):
            os.write(fd, time.monotonic_ns().to_bytes(8, "little"))

    bus.subscribe("bench.*", handler)
    release = share_bus(bus, root=root)
    ready.set()
    stop.wait()
    release()


def _bare_receiver(path: str, ready: Any, report: Any, stop: Any) -> None:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(0.5)
    fd = report.fileno()
    ready.set()
    while not stop.is_set():
        try:
            s.recv(70000)
        except TimeoutError:
            continue
        os.write(fd, time.monotonic_ns().to_bytes(8, "little"))


def run(k: int, n: int, rounds: int, lat_rounds: int) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="hc-bench-bcast-", dir="/tmp"))
    root = base / "root"
    root.mkdir()
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    procs = []
    here_r, there_w = os.pipe()
    report_w = os.fdopen(there_w, "wb", buffering=0)
    try:
        readies = []
        for i in range(k):
            ready = ctx.Event()
            p = ctx.Process(target=_subscriber, args=(str(root), ready, report_w if i == 0 else None, stop))
            p.start()
            procs.append(p)
            readies.append(ready)
        for ready in readies:
            assert ready.wait(30)
        bare_r, bare_w = os.pipe()
        bare_ready = ctx.Event()
        bare_path = str(base / "bare.sock")
        bare_report = os.fdopen(bare_w, "wb", buffering=0)
        bp = ctx.Process(target=_bare_receiver, args=(bare_path, bare_ready, bare_report, stop))
        bp.start()
        procs.append(bp)
        assert bare_ready.wait(30)

        pub = AgentBus()
        release = share_bus(pub, root=root)
        folder = base / "root" / BUS_FOLDER
        dir_fd = os.open(folder, os.O_RDONLY)
        pub.publish("bench.warm", {})  # the publisher has looked at the registrations
        time.sleep(0.1)
        pub.publish("bench.warm", {})
        socks = [p for p in os.listdir(dir_fd) if p.endswith(".sock")]
        mine = {s for s in socks if s.startswith(f"{os.getpid()}-")}
        addrs = [f"/proc/self/fd/{dir_fd}/{s}" for s in socks if s not in mine]
        assert len(addrs) == k, (addrs, k)
        data = encode_event(Event("bench.tick", PAYLOAD), "bench:0")
        assert data is not None
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)

        ours, bare, local = [], [], []
        solo = AgentBus()
        solo.subscribe("bench.*", lambda e: None)
        for _ in range(rounds):
            t0 = time.perf_counter()
            for _ in range(n):
                pub.publish("bench.tick", PAYLOAD)
            ours.append(n / (time.perf_counter() - t0))
            time.sleep(0.05)  # let the subscribers drain, so both sides meet the same buffers
            t0 = time.perf_counter()
            for _ in range(n):
                for a in addrs:
                    try:
                        raw.sendto(data, socket.MSG_DONTWAIT, a)
                    except BlockingIOError:
                        pass
            bare.append(n / (time.perf_counter() - t0))
            time.sleep(0.05)
            t0 = time.perf_counter()
            for _ in range(n):
                solo.publish("bench.tick", PAYLOAD)
            local.append(n / (time.perf_counter() - t0))

        def one_way(send: Any, fd: int) -> float:
            """One event in flight; sent again if its datagram was dropped (at most once)."""
            while True:
                t0 = time.monotonic_ns()
                send()
                if select.select([fd], [], [], 2.0)[0]:
                    got = int.from_bytes(os.read(fd, 8), "little")
                    return (got - t0) / 1000

        ping = {"ping": True}
        bare_ping = encode_event(Event("bench.ping", ping), "bench:0")
        assert bare_ping is not None
        # The bare side does the same fan-out: the datagram to the other K-1 subscribers, then to the
        # bare receiver (whose recv is the whole of its work).
        first = f"{procs[0].pid}-"
        others = [a for a in addrs if not a.rsplit("/", 1)[1].startswith(first)]

        def bare_send() -> None:
            for a in others:
                try:
                    raw.sendto(bare_ping, socket.MSG_DONTWAIT, a)
                except BlockingIOError:
                    pass
            raw.sendto(bare_ping, bare_path)

        for _ in range(50):  # the subscribers have drained what the rate rounds left in their buffers
            one_way(lambda: pub.publish("bench.ping", ping), here_r)
            one_way(bare_send, bare_r)
        lat_ours, lat_bare = [], []
        for _ in range(lat_rounds):
            lat_ours.append(one_way(lambda: pub.publish("bench.ping", ping), here_r))
            lat_bare.append(one_way(bare_send, bare_r))
        release()
        os.close(dir_fd)
        med = {
            "ours": statistics.median(ours),
            "bare": statistics.median(bare),
            "local": statistics.median(local),
        }
        lat = {"ours": statistics.median(lat_ours), "bare": statistics.median(lat_bare)}
        return {
            "subscribers": k,
            "publish_per_s": med,
            "publish_ratio": med["ours"] / med["bare"],
            "latency_p50_us": lat,
            "latency_ratio": lat["bare"] / lat["ours"],
        }
    finally:
        stop.set()
        for p in procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer events and rounds")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()
    n, rounds, lat_rounds = (1000, 3, 200) if args.quick else (5000, 5, 1000)
    results = [run(k, n, rounds, lat_rounds) for k in (1, 3, 10)]
    print(f"events per round: {n}, rounds: {rounds} (medians); latency: {lat_rounds} round trips")
    head = f"{'subs':>4} {'bare sendto/s':>14} {'publish/s':>10} {'ratio':>6}   "
    print(head + f"{'bare p50':>9} {'p50':>8} {'ratio':>6}   {'in-process publish/s':>20}")
    for r in results:
        rate, lat = r["publish_per_s"], r["latency_p50_us"]
        ratio = r["publish_ratio"]
        left = f"{r['subscribers']:>4} {rate['bare']:>14.0f} {rate['ours']:>10.0f} {ratio:>5.2f}x   "
        right = f"{lat['bare']:>7.0f}us {lat['ours']:>6.0f}us {r['latency_ratio']:>5.2f}x   "
        print(left + right + f"{rate['local']:>20.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
