#!/usr/bin/env python3
"""Comms (the facade) against the FileMailbox it is built on, measured in the same run.

    baseline   FileMailbox.put(message), then claim + handler(message) + ack
    Comms      Comms.send(to, topic, payload) (the policy routes it durable), then
               process_one(): claim + dispatch to the subscribed handler + ack

Both at the same fsync policy, in alternating chunks; the ratio is the median of per-chunk ratios
(Comms time / baseline time).

    python tools/bench_comms.py [--quick] [--json out.json]

Target (from the issue): a durable send + handled + acked round trip costs at most 1.3x the
FileMailbox put + claim + ack it is built on.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridcomms import AgentBus, Comms, FileMailbox, Message

TOPIC = "dreamos.agent.Agent-2.task.command"
PAYLOAD = {"task": "build", "args": ["--fast"], "n": 42}


def run(fsync: str, total: int, chunk: int) -> dict[str, float]:
    work = Path(tempfile.mkdtemp(prefix="hc-bench-comms-"))
    bus = AgentBus()
    handled = [0]

    def handler(m: Any) -> None:
        handled[0] += 1

    base_box = FileMailbox(work / "base", "Agent-2", fsync=fsync)
    sender = Comms("Agent-1", root=work / "comms", bus=bus, fsync=fsync)
    receiver = Comms("Agent-2", root=work / "comms", bus=bus, fsync=fsync)
    receiver.subscribe(TOPIC, handler)

    def baseline(n: int) -> None:
        for _ in range(n):
            base_box.put(Message(TOPIC, PAYLOAD, sender="Agent-1", recipient="Agent-2"))
        for _ in range(n):
            d = base_box.claim()
            assert d is not None
            handler(d.message)
            d.ack()

    def comms(n: int) -> None:
        for _ in range(n):
            sender.send("Agent-2", TOPIC, PAYLOAD)
        for _ in range(n):
            assert receiver.process_one()

    times_b, times_c, ratios = [], [], []
    try:
        for i, _ in enumerate(range(0, total, chunk)):
            order = [(baseline, times_b), (comms, times_c)]
            if i % 2:
                order.reverse()
            for fn, out in order:
                t = time.perf_counter()
                fn(chunk)
                out.append(time.perf_counter() - t)
            ratios.append(times_c[-1] / times_b[-1])
    finally:
        sender.close()
        receiver.close()
        base_box.close()
        bus.close()
        shutil.rmtree(work, ignore_errors=True)
    assert handled[0] == 2 * len(ratios) * chunk
    return {
        "baseline_per_s": chunk / statistics.median(times_b),
        "comms_per_s": chunk / statistics.median(times_c),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    rounds = 4 if args.quick else 10
    results = {
        "send+handle+ack fsync=never": run("never", 500 * rounds, 500),
        "send+handle+ack fsync=always": run("always", 100 * rounds, 100),
    }
    print("| scenario | FileMailbox trips/s | Comms trips/s | Comms/FileMailbox time | target | ok |")
    print("|---|---:|---:|---|---:|---|")
    ok_all = True
    for name, r in results.items():
        ok = r["ratio"] <= 1.3
        ok_all &= ok
        verdict = "yes" if ok else "NO"
        print(
            f"| {name} | {r['baseline_per_s']:,.0f} | {r['comms_per_s']:,.0f} | "
            f"{r['ratio']:.2f}x ({r['ratio_min']:.2f}-{r['ratio_max']:.2f}) | <= 1.3x | {verdict} |"
        )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
