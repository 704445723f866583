#!/usr/bin/env python3
"""The legacy intake against a large ``inbox.json``: peak memory, and how long a consumer stalls.

    python tools/bench_legacy_ingest.py [--mib 64] [--typical-mib 5] [--dir /dev/shm] [--fsync never]
                                        [--only SHAPE...] [--json F]

Each shape is written as ``<agent>/inbox.json`` of about ``--mib`` MiB (under the 64 MiB cap), and one
child process per shape ingests it (``--fsync``, never by default, on ``--dir``: tmpfs where there is one):

- ``typical``: Dream.OS messages of ~200 bytes (indent=2, as ``json.dump`` wrote them), ``--typical-mib``
  MiB of them (5 MiB are ~20,000 messages);
- ``non-latin``: entries of 64 KiB of ``é`` (2 bytes a character in UTF-8, 2 in memory);
- ``one-huge``: one string entry of the whole size (over the entry limit: buried as written);
- ``corrupt``: the entries of ``non-latin``, cut before the end (not JSON: the file buried whole).

For each: the peak of the child's own memory during the ingestion (VmHWM, reset before it), the time
the whole ingestion took, and the longest time one step took (`ingest(max_chunks=1)`, what a consumer
loop does between two deliveries; the first step reads the file whole once to check it is JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r"""
import json, os, sys, time
from hybridcomms import FileMailbox, State
from hybridcomms.compat.dreamos import legacy

def peak(reset=False):
    if reset:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    with open("/proc/self/status") as f:
        return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])

root, agent, mode, fsync = sys.argv[1:5]
with FileMailbox(root, agent, fsync=fsync) as mb:
    before = peak(reset=True)
    started = time.perf_counter()
    longest = 0.0
    steps = 0
    if mode == "steps" and "max_chunks" in legacy.ingest.__kwdefaults__:
        while True:
            t = time.perf_counter()
            report = legacy.ingest(mb, max_chunks=1)
            longest = max(longest, time.perf_counter() - t)
            steps += 1
            if not report.more:
                break
    else:
        legacy.ingest(mb)
        longest = time.perf_counter() - started
        steps = 1
    took = time.perf_counter() - started
    print(json.dumps({"peak_mib": (peak() - before) / 1024, "seconds": took, "longest_step": longest,
                      "steps": steps, "new": mb.stats().states[State.NEW].count}))
"""


def shapes(size: int, typical_size: int) -> dict[str, bytes]:
    typical = []
    n = 0
    while n * 230 <= typical_size:
        entry = {
            "message_id": f"m{n:08d}",
            "sender_agent_id": "Agent-9",
            "recipient_agent_id": "Agent-1",
            "timestamp_utc": "2025-05-01T12:00:00+00:00",
            "type": "TASK_COMMAND",
            "body": {"task": "x" * 40},
        }
        typical.append(entry)
        n += 1
    big = b'{"type": "T", "body": "' + "é".encode() * (32 << 10) + b'"}'
    entries = b",".join([big] * (size // len(big)))
    return {
        "typical": json.dumps(typical, indent=2).encode(),
        "non-latin": b"[" + entries + b"]",
        "one-huge": b'["' + b"z" * (size - 8) + b'"]',
        "corrupt": b"[" + entries + b",",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=64)
    parser.add_argument("--typical-mib", type=float, default=5)
    parser.add_argument("--dir", default="/dev/shm" if os.access("/dev/shm", os.W_OK) else None)
    parser.add_argument("--fsync", default="never", choices=["never", "batch", "always"])
    parser.add_argument("--only", nargs="*", help="these shapes only")
    parser.add_argument("--json", help="write the results there too")
    args = parser.parse_args()
    from hybridcomms import FileMailbox

    results: dict[str, dict[str, dict[str, float]]] = {}
    base = Path(tempfile.mkdtemp(dir=args.dir, prefix="bench-legacy-"))
    try:
        size = min(args.mib << 20, (64 << 20) - 4096)
        for name, data in shapes(size, int(args.typical_mib * (1 << 20))).items():
            if args.only and name not in args.only:
                continue
            results[name] = {}
            for mode in ("whole", "steps"):
                root = base / f"{name}-{mode}"
                FileMailbox(root, "Agent-1", fsync="never").close()
                (root / "Agent-1" / "inbox.json").write_bytes(data)
                out = subprocess.run(
                    [sys.executable, "-c", CHILD, str(root), "Agent-1", mode, args.fsync],
                    capture_output=True,
                    text=True,
                    check=True,
                )
                results[name][mode] = json.loads(out.stdout)
                shutil.rmtree(root)
            whole, steps = results[name]["whole"], results[name]["steps"]
            print(
                f"{name:10} {len(data) / (1 << 20):5.1f} MiB: peak +{whole['peak_mib']:6.1f} MiB, "
                f"{whole['seconds']:6.2f} s whole; in steps: peak +{steps['peak_mib']:6.1f} MiB, "
                f"{steps['steps']} steps, longest {steps['longest_step']:.3f} s, {steps['new']} messages"
            )
    finally:
        shutil.rmtree(base, ignore_errors=True)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
