#!/usr/bin/env python3
"""FileMailbox against the physical floor of this disk, measured in the same run.

The floor is the least work any file mailbox must do for the same durability:

    put         open(tmp, O_EXCL) + write [+ fsync file] + rename into new/ [+ fsync new/]
    claim+ack   rename new->processing [+ fsync] + open/read/close + rename processing->done [+ fsync]

FileMailbox does the same moves plus its own work (encode/decode, file names, the liveness lock,
the claim index). Each scenario alternates floor and mailbox rounds and reports the median ratio
(mailbox throughput / floor throughput), so a noisy neighbour hits both sides alike.

    python tools/bench_mailbox.py              # all scenarios, about a minute
    python tools/bench_mailbox.py --quick      # fewer rounds and a 20,000-message backlog
    python tools/bench_mailbox.py --json out.json

Targets (from the issue): put >= 0.8x floor, claim+ack >= 0.7x floor (fsync always and never);
claim+ack with 100,000 waiting >= 0.6x the floor on a folder of that size; put_many(100) at fsync
always >= 3x the single-message durable floor per message.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridcomms import FileMailbox, Message

PAYLOAD = {"task": "build", "args": ["--fast", "--target", "x86_64"], "n": 42}


def sample_bytes() -> bytes:
    return Message(
        "dreamos.agent.Agent-1.task.command", PAYLOAD, sender="Captain-THEA", recipient="Agent-1"
    ).encode()


class Floor:
    """Bare file operations in the same layout, with nothing but the syscalls."""

    def __init__(self, base: Path, fsync: bool) -> None:
        self.fsync = fsync
        for d in ("tmp", "new", "processing", "done"):
            (base / d).mkdir(parents=True, exist_ok=True)
        self.fd = {
            d: os.open(base / d, os.O_RDONLY | os.O_DIRECTORY) for d in ("tmp", "new", "processing", "done")
        }
        self.data = sample_bytes()
        self.counter = 0

    def put(self, n: int) -> None:
        tmp, new, data, sync = self.fd["tmp"], self.fd["new"], self.data, self.fsync
        for _ in range(n):
            self.counter += 1
            name = f"{self.counter:012d}.json"
            fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600, dir_fd=tmp)
            os.write(fd, data)
            if sync:
                os.fsync(fd)
            os.close(fd)
            os.rename(name, name, src_dir_fd=tmp, dst_dir_fd=new)
            if sync:
                os.fsync(new)

    def claim_ack(self, names: list[str]) -> None:
        new, proc, done, sync = self.fd["new"], self.fd["processing"], self.fd["done"], self.fsync
        for name in names:
            os.rename(name, name, src_dir_fd=new, dst_dir_fd=proc)
            if sync:
                os.fsync(proc)
            fd = os.open(name, os.O_RDONLY, dir_fd=proc)
            os.read(fd, 65536)
            os.close(fd)
            os.rename(name, name, src_dir_fd=proc, dst_dir_fd=done)
            if sync:
                os.fsync(done)

    def close(self) -> None:
        for fd in self.fd.values():
            os.close(fd)


def fill(mb: FileMailbox, n: int) -> None:
    for start in range(0, n, 1000):
        mb.put_many(
            [
                Message(
                    "dreamos.agent.Agent-1.task.command", PAYLOAD, sender="Captain-THEA", recipient="Agent-1"
                )
                for _ in range(min(1000, n - start))
            ]
        )


def settle() -> None:
    """Write back what earlier scenarios left dirty, so that no scenario pays for another."""
    os.sync()


def interleaved(
    floor_step: Callable[[int], None], mb_step: Callable[[int], None], total: int, chunk: int
) -> tuple[list[float], list[float], list[float]]:
    """Run both sides in alternating chunks (which side goes first alternates too) and return
    per-chunk rates and ratios: a burst of noise from a neighbour lands on one chunk pair, not
    on one side."""
    settle()
    floor_rates, mb_rates, ratios = [], [], []
    for i, start in enumerate(range(0, total, chunk)):
        n = min(chunk, total - start)
        steps = [(floor_step, floor_rates), (mb_step, mb_rates)]
        if i % 2:
            steps.reverse()
        times = {}
        for step, rates in steps:
            t = time.perf_counter()
            step(n)
            times[id(rates)] = time.perf_counter() - t
            rates.append(n / times[id(rates)])
        ratios.append(times[id(floor_rates)] / times[id(mb_rates)])
    return floor_rates, mb_rates, ratios


def scenario_put(work: Path, fsync: str, total: int, chunk: int) -> dict[str, float]:
    base = work / f"put-{fsync}"
    floor = Floor(base / "floor", fsync == "always")
    mb = FileMailbox(base / "mb", "Agent-1", fsync=fsync)
    msgs = iter(
        [
            Message("dreamos.agent.Agent-1.task.command", PAYLOAD, sender="Captain-THEA", recipient="Agent-1")
            for _ in range(total)
        ]
    )

    def mb_step(n: int) -> None:
        for _ in range(n):
            mb.put(next(msgs))

    try:
        return summary(*interleaved(floor.put, mb_step, total, chunk))
    finally:
        floor.close()
        mb.close()


def scenario_claim_ack(work: Path, fsync: str, total: int, chunk: int, backlog: int = 0) -> dict[str, float]:
    """claim+ack of ``total`` messages from folders that start with max(total, backlog) waiting."""
    size = max(total, backlog)
    base = work / f"claim-{fsync}-{backlog}"
    floor = Floor(base / "floor", False)
    floor.put(size)
    floor.fsync = fsync == "always"
    names = iter(sorted(os.listdir(base / "floor" / "new")))  # the floor needs no scan
    mb = FileMailbox(base / "mb", "Agent-1", fsync=fsync)
    fill(mb, size)
    mb.close()
    os.sync()
    mb = FileMailbox(base / "mb", "Agent-1", fsync=fsync)  # a fresh claimer: its first claim lists the folder

    def floor_step(n: int) -> None:
        floor.claim_ack([next(names) for _ in range(n)])

    def mb_step(n: int) -> None:
        for _ in range(n):
            d = mb.claim()
            assert d is not None and d.message.topic
            d.ack()

    try:
        return summary(*interleaved(floor_step, mb_step, total, chunk))
    finally:
        floor.close()
        mb.close()


def scenario_put_many(work: Path, batch: int, total: int) -> dict[str, float]:
    """put_many(batch) at fsync=always, per message, against the single-message durable floor."""
    base = work / "many"
    floor = Floor(base / "floor", True)
    mb = FileMailbox(base / "mb", "Agent-1", fsync="always")

    groups = iter(
        [
            [
                Message(
                    "dreamos.agent.Agent-1.task.command", PAYLOAD, sender="Captain-THEA", recipient="Agent-1"
                )
                for _ in range(batch)
            ]
            for _ in range(total // batch + 1)
        ]
    )

    def mb_step(n: int) -> None:
        mb.put_many(next(groups)[:n])

    try:
        return summary(*interleaved(floor.put, mb_step, total, batch))
    finally:
        floor.close()
        mb.close()


def summary(floor_rates: list[float], mb_rates: list[float], ratios: list[float]) -> dict[str, float]:
    return {
        "floor_per_s": statistics.median(floor_rates),
        "mailbox_per_s": statistics.median(mb_rates),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def machine() -> dict[str, str]:
    disk = "?"
    try:
        with open("/proc/mounts") as f:
            target = os.path.realpath(tempfile.gettempdir())
            best = ""
            for line in f:
                dev, mnt, fstype, opts = line.split()[:4]
                if target.startswith(mnt) and len(mnt) > len(best):
                    best, disk = mnt, f"{dev} {fstype} ({opts.split(',')[0]})"
    except OSError:
        pass
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": str(os.cpu_count()),
        "filesystem": disk,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer rounds, smaller backlog")
    ap.add_argument("--dir", default=None, help="where to put the files (default: a temp dir)")
    ap.add_argument("--json", default=None, help="also write the results as JSON here")
    args = ap.parse_args()
    rounds = 3 if args.quick else 8
    backlog = 20_000 if args.quick else 100_000
    work = Path(tempfile.mkdtemp(prefix="hc-bench-", dir=args.dir))
    print(f"machine: {machine()}")
    results: dict[str, dict[str, float]] = {}
    targets = {
        "put fsync=always": 0.8,
        "put fsync=never": 0.8,
        "claim+ack fsync=always": 0.7,
        "claim+ack fsync=never": 0.7,
        f"claim+ack fsync=never, {backlog:,} waiting": 0.6,
        "put_many(100) fsync=always vs durable put floor": 3.0,
    }
    try:
        # Files are only deleted at the very end: a mass delete (the 100,000-message backlog) makes
        # the filesystem slow for a while afterwards (journal, discard), which would skew what follows.
        results["put fsync=always"] = scenario_put(work, "always", 300 * rounds, 100)
        results["put fsync=never"] = scenario_put(work, "never", 3000 * rounds, 500)
        results["put_many(100) fsync=always vs durable put floor"] = scenario_put_many(
            work, 100, 100 * 4 * rounds
        )
        results["claim+ack fsync=always"] = scenario_claim_ack(work, "always", 300 * rounds, 100)
        results["claim+ack fsync=never"] = scenario_claim_ack(work, "never", 3000 * rounds, 500)
        results[f"claim+ack fsync=never, {backlog:,} waiting"] = scenario_claim_ack(
            work, "never", 3000 * rounds, 500, backlog=backlog
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print("| scenario | floor ops/s | FileMailbox ops/s | ratio (median of chunks, min-max) | target | ok |")
    print("|---|---:|---:|---|---:|---|")
    ok_all = True
    for name, res in results.items():
        ok = res["ratio"] >= targets[name]
        ok_all &= ok
        print(
            f"| {name} | {res['floor_per_s']:,.0f} | {res['mailbox_per_s']:,.0f} | "
            f"{res['ratio']:.2f}x ({res['ratio_min']:.2f}-{res['ratio_max']:.2f}) | >= {targets[name]}x | "
            f"{'yes' if ok else 'NO'} |"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"machine": machine(), "results": results, "targets": targets}, indent=2)
        )
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
