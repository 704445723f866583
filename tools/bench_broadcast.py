#!/usr/bin/env python3
"""Ephemeral events to other processes (hybridcomms.bus.fanout, one host) against bare ``sendto``, in one run.

    python tools/bench_broadcast.py            # 1, 3 and 10 subscriber processes
    python tools/bench_broadcast.py --quick [--subs 1,3]
    python tools/bench_broadcast.py --json out.json

Measured, in rounds that alternate the sides (rates: medians, ratios: the median of per-round ratios):

- **publish cost**: `AgentBus.publish` on a shared bus with K subscriber processes (each subscribes
  ``bench.*`` through its own shared bus), against a bare loop that sends the same encoded datagram to
  the same K sockets with ``sendto(MSG_DONTWAIT)`` (the issue's baseline; target >= 0.7x). Beside it,
  the floor: the same datagram sent on sockets already connected to the K peers (what the fanout
  itself does, without the bus). Events go in batches of 8, each followed by a 2 ms pause in which
  the subscribers read them, and only the sending is timed: the cost where buffers have room, as in
  a fleet's normal traffic. (A flood would time something else: the bare loop drops what finds a
  full buffer, the fanout keeps it in a backlog and sends it later, from its flusher thread.) The
  output counts the sends that found a full buffer anyway.
- **delivery latency**: one event in flight, from before the send to the handler of subscriber 0
  (``CLOCK_MONOTONIC``, the same in every process), p50, against
  - *same sockets* (the issue's baseline): the bare ``sendto`` loop of the same datagram to the same
    K sockets, in the order the fanout sends, received by the same subscribers; the ratio is what
    publishing through the bus adds (target >= 0.7x);
  - *bare receiver* (stricter): the same loop, but subscriber 0 replaced by a process waiting in
    ``poll`` and ``recv`` whose whole work is to report the time: it decodes nothing and runs no
    bus, so the ratio also holds the receiving side's work (decoding with the limits of a message
    file, the event, the dispatch), which no bare loop pays.
- **a subscriber that stops reading** (3 and 10 subscribers): the paced publish rate with the last
  subscriber SIGSTOPped, against all reading, alternating (target: unchanged, >= ~1x).
- beside them: `AgentBus.publish` to one in-process handler (the bus without sharing).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import select
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridcomms.bus import AgentBus, Event
from hybridcomms.bus.fanout import (
    BUS_FOLDER,
    FANOUT_STATS,
    _shared,  # the bench reads the fanout's sending order
    encode_event,
    share_bus,
)

PAYLOAD = {"agent": "Agent-1", "status": "busy", "task": "build-42"}
#: Events per timed batch, and the pause after it (seconds) in which the subscribers read them: the
#: publish cost is measured where buffers have room, as in a fleet's normal traffic.
BATCH = 8
PACE = 0.002


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
        fanout = _shared[(id(pub), str(root))][0]
        deadline = time.monotonic() + 30
        while len(fanout.peers_for("bench.tick")) < k and time.monotonic() < deadline:
            time.sleep(0.01)
        order = fanout.peers_for("bench.tick")  # the fanout's sending order, for the bare loops
        assert len(order) == k, (order, k)
        addrs = [f"/proc/self/fd/{dir_fd}/{name}.sock" for name in order]
        data = encode_event(Event("bench.tick", PAYLOAD), "bench:0")
        assert data is not None
        raw = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        connected = []
        for a in addrs:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            c.connect(a)
            connected.append(c)

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
        first = f"{procs[0].pid}-"
        to_bare = [bare_path if a.rsplit("/", 1)[1].startswith(first) else a for a in addrs]

        def loop_to(targets: list[str]) -> Any:
            def send() -> None:
                for a in targets:
                    try:
                        raw.sendto(bare_ping, socket.MSG_DONTWAIT, a)
                    except BlockingIOError:
                        pass

            return send

        sides = {
            "ours": (lambda: pub.publish("bench.ping", ping), here_r),
            "same_sockets": (loop_to(addrs), here_r),
            "bare_receiver": (loop_to(to_bare), bare_r),
        }
        for _ in range(50):  # warm up: every side has run
            for send, fd in sides.values():
                one_way(send, fd)
        lat: dict[str, list[float]] = {name: [] for name in sides}
        names = list(sides)
        for i in range(lat_rounds):
            for name in names[i % 3 :] + names[: i % 3]:  # each side takes each place in turn
                send, fd = sides[name]
                lat[name].append(one_way(send, fd))

        ours, bare, floor, local = [], [], [], []
        solo = AgentBus()
        solo.subscribe("bench.*", lambda e: None)
        full = {"bare": 0, "floor": 0}

        def bare_batch() -> None:
            for a in addrs:
                try:
                    raw.sendto(data, socket.MSG_DONTWAIT, a)
                except BlockingIOError:
                    full["bare"] += 1

        def floor_batch() -> None:
            for c in connected:
                try:
                    c.send(data, socket.MSG_DONTWAIT)
                except BlockingIOError:
                    full["floor"] += 1

        sides_rate = {
            "ours": (lambda: pub.publish("bench.tick", PAYLOAD), ours),
            "bare": (bare_batch, bare),
            "floor": (floor_batch, floor),
            "local": (lambda: solo.publish("bench.tick", PAYLOAD), local),
        }

        def paced(one: Any) -> float:
            spent = 0.0
            for _ in range(n // BATCH):
                t0 = time.perf_counter()
                for _ in range(BATCH):
                    one()
                spent += time.perf_counter() - t0
                time.sleep(PACE)  # the subscribers read the batch: no side meets a full buffer
            return n // BATCH * BATCH / spent

        deferred = FANOUT_STATS["deferred"]
        for _ in range(rounds):
            for one, out in sides_rate.values():
                out.append(paced(one))
        full["ours"] = FANOUT_STATS["deferred"] - deferred

        # A subscriber that stops reading (SIGSTOP): the publisher's rate, against all reading.
        stopped_ratios = []
        if k >= 2:
            victim = procs[k - 1]
            publish = sides_rate["ours"][0]
            for _ in range(rounds):
                reading = paced(publish)
                os.kill(victim.pid, signal.SIGSTOP)
                try:
                    stopped = paced(publish)
                finally:
                    os.kill(victim.pid, signal.SIGCONT)
                stopped_ratios.append(stopped / reading)
                time.sleep(0.2)  # its backlog goes out

        release()
        for c in connected:
            c.close()
        os.close(dir_fd)
        med = {
            "ours": statistics.median(ours),
            "bare": statistics.median(bare),
            "floor": statistics.median(floor),
            "local": statistics.median(local),
        }
        p50 = {name: statistics.median(v) for name, v in lat.items()}
        return {
            "subscribers": k,
            "publish_per_s": med,
            # the median of per-round ratios: each round's sides ran back to back (a noisy host drifts)
            "publish_ratio": statistics.median(o / b for o, b in zip(ours, bare, strict=True)),
            "publish_ratio_floor": statistics.median(o / f for o, f in zip(ours, floor, strict=True)),
            "latency_p50_us": p50,
            "latency_ratio": p50["same_sockets"] / p50["ours"],
            "latency_ratio_bare_receiver": p50["bare_receiver"] / p50["ours"],
            "found_full": full,
            "stopped_reader_ratio": statistics.median(stopped_ratios) if stopped_ratios else None,
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
    ap.add_argument("--subs", default="1,3,10", help="subscriber process counts (default 1,3,10)")
    args = ap.parse_args()
    n, rounds, lat_rounds = (1000, 3, 200) if args.quick else (5000, 5, 1000)
    results = [run(int(k), n, rounds, lat_rounds) for k in args.subs.split(",")]
    print(f"events per round: {n}, rounds: {rounds} (medians); latency: {lat_rounds} round trips")
    print()
    print("publish, events/s (ratio = publish / baseline, median of per-round ratios)")
    head = f"{'subs':>4} {'bare sendto':>12} {'connected':>10} {'publish':>9}"
    print(head + f" {'vs sendto':>10} {'vs floor':>9}")
    for r in results:
        m = r["publish_per_s"]
        print(
            f"{r['subscribers']:>4} {m['bare']:>12.0f} {m['floor']:>10.0f} {m['ours']:>9.0f} "
            f"{r['publish_ratio']:>9.2f}x {r['publish_ratio_floor']:>8.2f}x"
        )
    print()
    print("delivery latency p50, us (ratio = baseline p50 / ours)")
    print(f"{'subs':>4} {'same sockets':>13} {'bare receiver':>14} {'ours':>6} {'vs same':>8} {'vs bare':>8}")
    for r in results:
        p = r["latency_p50_us"]
        print(
            f"{r['subscribers']:>4} {p['same_sockets']:>13.1f} {p['bare_receiver']:>14.1f} {p['ours']:>6.1f} "
            f"{r['latency_ratio']:>7.2f}x {r['latency_ratio_bare_receiver']:>7.2f}x"
        )
    print()
    found = "; ".join(
        f"{r['subscribers']} subs: bare {r['found_full']['bare']}, connected {r['found_full']['floor']}, "
        f"publish {r['found_full']['ours']}"
        for r in results
    )
    stops = "; ".join(
        f"{r['subscribers']} subs: {r['stopped_reader_ratio']:.2f}x"
        for r in results
        if r["stopped_reader_ratio"] is not None
    )
    if stops:
        print(f"publish rate with one subscriber stopped (SIGSTOP) / all reading: {stops}")
    print(f"sends that found a full buffer (dropped, or deferred by the fanout): {found}")
    local = ", ".join(f"{r['publish_per_s']['local']:.0f}" for r in results)
    print(f"in-process AgentBus.publish to one handler, events/s: {local}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
