#!/usr/bin/env python3
"""Publishing on a shared bus whose ``.bus/`` a co-tenant filled, against an empty one, in one run.

    python tools/bench_fanout_hostile.py [--registrations 1000] [--rounds 7] [--round-seconds 0.5] [--json F]

Two publishers of this process, each with a bus shared on a root of its own (`hybridcomms.fanout`):

- **empty**: its ``.bus/`` holds nobody else;
- **hostile**: its ``.bus/`` holds ``--registrations`` large registrations (~64 KiB each, just under
  the read cap): half garbage, half valid-looking ones of a live process subscribing to ``*`` whose
  socket is a plain file; and two stale sockets, registrations of a live process (a child of this
  one) subscribing to ``*``: one bound and never read (every event goes to it: its buffer fills, its
  backlog fills, then each event is dropped for it, counted, and the publisher reports its drops in
  its registration every second, which changes the folder every second), one whose socket was
  closed (every connect to it is refused).
- **churn** (beside them): the hostile folder, with another child rewriting one of the
  registrations every millisecond (the folder changes all the time).

Each side publishes for ``--round-seconds`` per round (``fleet.status``, a small dict, in runs of
100), rounds alternate the sides; rates are medians, the ratio is the median of per-round ratios
(target for hostile / empty: >= 0.5x, issue #21). Before the rounds, each publisher publishes for
``--settle`` seconds (the hostile ones read the registrations then: a look reads at most 64, spaced
by its own cost); the time its first publish took is printed too.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import shutil
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from hybridcomms.bus import AgentBus
from hybridcomms.fanout import _HOST, BUS_FOLDER, FANOUT_STATS, share_bus

PAYLOAD = {"agent": "Agent-1", "status": "busy", "task": "build-42"}
SIZE = 64 * 1024 - 512  # just under what a publisher reads of a registration


def _place(folder: Path, name: str, data: bytes) -> None:
    tmp = folder / f".{name}.placing"
    tmp.write_bytes(data)
    os.replace(tmp, folder / f"{name}.json")


def _body(pid: int, pad: int) -> bytes:
    body: dict[str, Any] = {"pid": pid, "host": _HOST, "patterns": ["*"], "padding": ""}
    body["padding"] = "x" * (pad - len(orjson.dumps(body)))
    return orjson.dumps(body)


def hostile_folder(folder: Path, n: int, live_pid: int) -> None:
    folder.mkdir()
    for i in range(n):
        name = f"{i + 1}-{i:08x}"
        if i % 2:
            _place(folder, name, os.urandom(SIZE))
        else:
            _place(folder, name, _body(live_pid, SIZE))
            (folder / f"{name}.sock").write_bytes(b"not a socket")


def _stale_sockets(folder: str, ready: Any, stop: Any) -> None:
    """A live process with two registrations subscribing to everything: one socket that never reads,
    one closed (refused)."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    body = orjson.dumps({"pid": os.getpid(), "host": _HOST, "patterns": ["*"]})
    sockets = []
    for name in (f"{os.getpid()}-5a1e5a1e", f"{os.getpid()}-dead50c4"):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(f"/proc/self/fd/{fd}/{name}.sock")
        _place(Path(folder), name, body)
        sockets.append(s)
    sockets.pop().close()  # its file stays: a connect to it is refused
    ready.set()
    stop.wait()
    sockets[0].close()


def _churner(folder: str, n: int, stop: Any) -> None:
    """A co-tenant rewriting one registration every millisecond."""
    i = 0
    while not stop.is_set():
        k = (i % (n // 2)) * 2  # a valid-looking one
        _place(Path(folder), f"{k + 1}-{k:08x}", _body(os.getpid(), SIZE - (i % 7)))
        i += 1
        time.sleep(0.001)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--registrations", type=int, default=1000)
    ap.add_argument("--round-seconds", type=float, default=0.5, help="publishing time per side per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of publishing before the rounds")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="hc-bench-hostile-", dir="/tmp"))
    ctx = mp.get_context("fork")
    stop = ctx.Event()
    children = []
    releases = []
    try:
        roots = {side: base / side for side in ("empty", "hostile", "churn")}
        for root in roots.values():
            root.mkdir()
            os.chmod(root, 0o770)  # a group root, as Dream.OS runs them
        (roots["empty"] / BUS_FOLDER).mkdir()
        for side in ("hostile", "churn"):
            folder = roots[side] / BUS_FOLDER
            hostile_folder(folder, args.registrations, os.getpid())
            ready = ctx.Event()
            child = ctx.Process(target=_stale_sockets, args=(str(folder), ready, stop))
            child.start()
            children.append(child)
            assert ready.wait(30)
        churn = ctx.Process(
            target=_churner, args=(str(roots["churn"] / BUS_FOLDER), args.registrations, stop)
        )
        churn.start()
        children.append(churn)

        buses = {side: AgentBus() for side in roots}
        first_publish = {}
        for side, b in buses.items():
            releases.append(share_bus(b, root=roots[side]))
            t0 = time.perf_counter()
            b.publish("fleet.status", PAYLOAD)
            first_publish[side] = time.perf_counter() - t0
        settle_until = time.monotonic() + args.settle
        while time.monotonic() < settle_until:
            for b in buses.values():
                for _ in range(100):
                    b.publish("fleet.status", PAYLOAD)

        rates: dict[str, list[float]] = {side: [] for side in buses}
        dropped = dict.fromkeys(buses, 0)
        sides = list(buses)
        for r in range(args.rounds):
            for side in sides[r % 3 :] + sides[: r % 3]:  # each side takes each place in turn
                publish = buses[side].publish
                before = FANOUT_STATS["dropped_full"]
                n = 0
                t0 = time.perf_counter()
                end = t0 + args.round_seconds
                while (now := time.perf_counter()) < end:
                    for _ in range(100):
                        publish("fleet.status", PAYLOAD)
                    n += 100
                rates[side].append(n / (now - t0))
                dropped[side] += FANOUT_STATS["dropped_full"] - before
        med = {side: statistics.median(v) for side, v in rates.items()}
        ratio = {
            side: statistics.median(h / e for h, e in zip(rates[side], rates["empty"], strict=True))
            for side in ("hostile", "churn")
        }
        left = {side: len(os.listdir(roots[side] / BUS_FOLDER)) for side in roots}
    finally:
        for release in releases:
            release()
        stop.set()
        for child in children:
            child.join(10)
            if child.is_alive():
                child.kill()
        shutil.rmtree(base, ignore_errors=True)

    print(f"{args.registrations} hostile registrations of ~{SIZE // 1024} KiB and two stale sockets")
    print(f"seconds of publishing per side per round: {args.round_seconds}, rounds: {args.rounds} (medians)")
    print()
    print(f"{'side':>8} {'publish/s':>10} {'vs empty':>9} {'first publish':>14}")
    for side in buses:
        vs = f"{ratio[side]:.2f}x" if side in ratio else ""
        print(f"{side:>8} {med[side]:>10.0f} {vs:>9} {first_publish[side] * 1000:>11.1f} ms")
    print()
    print(f"events dropped for the stale socket during the rounds (counted), by side: {dropped}")
    print(f"entries left in each .bus/ after the run: {left}")
    if args.json:
        result = {"rates": med, "ratio": ratio, "first_publish_s": first_publish, "dropped": dropped}
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
