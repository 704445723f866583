#!/usr/bin/env python3
"""How long the inspection commands take over a big root: `stats`, `ls` (one mailbox), a `top` refresh
and `doctor`, over AGENTS mailboxes of MESSAGES waiting messages each (default 100 x 10,000), as real
subprocesses (interpreter start-up included), and counts the message files a `top` refresh (the same
listing as `stats`) opens: none, since counting never reads a message.

    python tools/bench_inspect.py                     # 100 x 10,000 (about 1,000,000 files; minutes to build)
    python tools/bench_inspect.py --agents 20 --messages 2000 --json out.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridcomms import FileMailbox, Message

HC = [sys.executable, "-m", "hybridcomms"]


def build(root: Path, agents: int, messages: int) -> float:
    t0 = time.perf_counter()
    for a in range(agents):
        with FileMailbox(root, f"Agent-{a:03d}", fsync="never") as mb:
            for start in range(0, messages, 1000):
                mb.put_many(
                    Message("bench.task", {"i": i}) for i in range(start, min(start + 1000, messages))
                )
    return time.perf_counter() - t0


def timed(*args: str) -> float:
    t0 = time.perf_counter()
    out = subprocess.run([*HC, *args], capture_output=True, text=True)
    took = time.perf_counter() - t0
    if out.returncode not in (0, 1):
        raise SystemExit(f"{args}: exit {out.returncode}: {out.stderr}")
    return took


def reads_of(fn: object) -> int:
    """Message files (names ending .json under new/) opened for reading while ``fn`` runs."""
    real = os.open
    count = [0]

    def counting(path, flags, *a, **kw):  # type: ignore[no-untyped-def]
        if str(path).endswith(".json") and not flags & (os.O_WRONLY | os.O_RDWR):
            count[0] += 1
        return real(path, flags, *a, **kw)

    os.open = counting  # type: ignore[assignment]
    try:
        fn()  # type: ignore[operator]
    finally:
        os.open = real  # type: ignore[assignment]
    return count[0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--agents", type=int, default=100)
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument("--dir", default=None, help="where to build the root (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args()
    base = Path(args.dir or tempfile.mkdtemp(prefix="hybridcomms-bench-inspect-"))
    root = base / "root"
    try:
        built = build(root, args.agents, args.messages)
        r = str(root)
        results = {
            "agents": args.agents,
            "messages_per_agent": args.messages,
            "files": args.agents * args.messages,
            "build_seconds": round(built, 1),
            "stats_seconds": round(timed("--root", r, "stats", "--json"), 2),
            "ls_one_agent_seconds": round(timed("--root", r, "ls", "Agent-000", "--json"), 2),
            "doctor_seconds": round(timed("--root", r, "doctor", "--json"), 2),
            "doctor_deep_seconds": round(timed("--root", r, "doctor", "--deep", "--json"), 2),
        }
        from hybridcomms.cli.top import _snapshot

        t0 = time.perf_counter()
        _snapshot(root)
        results["top_refresh_seconds"] = round(time.perf_counter() - t0, 2)
        results["stats_message_reads"] = reads_of(lambda: _snapshot(root))
        print(json.dumps(results, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2))
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
