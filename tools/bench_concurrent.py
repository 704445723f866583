#!/usr/bin/env python3
"""Many producers and many consumers on one mailbox: FileMailbox against two baselines at equal
durability, in one run, interleaved (the machine is shared and noisy: compare within a run).

    python tools/bench_concurrent.py                       # P, C in {1, 4, 8}, both consumer styles
    python tools/bench_concurrent.py --quick               # 4P+4C and 1P+1C only, 2,000 messages
    python tools/bench_concurrent.py --json out.json

Queues:
- ``floor``: the bare rename floor: a producer writes ``tmp/x`` (+fsync file) and renames it into
  ``new/`` (+fsync new/); a consumer lists ``new/``, renames a file into ``cur/`` (the claim), reads it,
  unlinks it (the ack). Consumers walk the listing from a random start, so they spread.
- ``dirq``: a dirq-style queue: a consumer locks each file with flock (non-blocking) and skips what
  others hold, reads it, unlinks it; consumers spread over the listing.
- ``filemailbox``: `FileMailbox` put / claim / ack.

Consumer styles: ``poll`` (a non-blocking claim, 1 ms sleep when it finds nothing) and ``block``
(`claim(timeout)`; the baselines poll every 1 ms). Every run checks that every message was taken exactly
once (0 lost, 0 duplicated). Also measured: the cost of an empty non-blocking `claim()` (nothing arrived
since the last look) and the put -> claim latency against a bare inotify floor.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import multiprocessing as mp
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridcomms import FileMailbox, Message

PAYLOAD = {"task": "build", "args": ["--fast"], "blob": "x" * 200}  # about 300 bytes encoded


# -- the queues, one process each -------------------------------------------------------------


def _produce(kind: str, root: str, first: int, count: int, fsync: bool, go: Any) -> None:
    go.wait()
    if kind == "filemailbox":
        with FileMailbox(root, "A", fsync="always" if fsync else "never") as mb:
            for i in range(first, first + count):
                mb.put(Message("bench", PAYLOAD, id=f"m{i}"))
        return
    data = json.dumps({"id": "m0", **PAYLOAD}).encode()
    tmp, new = os.path.join(root, "tmp"), os.path.join(root, "new")
    new_fd = os.open(new, os.O_RDONLY)
    for i in range(first, first + count):
        name = f"{time.time_ns():020d}.{os.getpid()}.m{i}"
        fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        if fsync:
            os.fsync(fd)
        os.close(fd)
        os.rename(os.path.join(tmp, name), os.path.join(new, name))
        if fsync:
            os.fsync(new_fd)


def _consume(
    kind: str, root: str, total: int, fsync: bool, style: str, log: str, go: Any, done: Any, taken_n: Any
) -> None:
    go.wait()
    taken: list[str] = []
    if kind == "filemailbox":
        with FileMailbox(root, "A", fsync="always" if fsync else "never") as mb:
            while not done.is_set():
                d = mb.claim(timeout=0.2, cancel=done) if style == "block" else mb.claim()
                if d is None:
                    if style == "poll":
                        time.sleep(0.001)
                    continue
                d.ack()
                taken.append(d.message.id)
                if _took(taken_n) >= total:
                    done.set()
    else:
        new, cur = os.path.join(root, "new"), os.path.join(root, "cur")
        new_fd, cur_fd = os.open(new, os.O_RDONLY), os.open(cur, os.O_RDONLY)
        while not done.is_set():
            names = os.listdir(new_fd)
            if not names:
                time.sleep(0.001)
                continue
            start = random.randrange(len(names))
            got = False
            for name in names[start:] + names[:start]:
                if kind == "floor":
                    try:
                        os.rename(name, name, src_dir_fd=new_fd, dst_dir_fd=cur_fd)
                    except FileNotFoundError:
                        continue
                    if fsync:
                        os.fsync(cur_fd)
                    fd = os.open(name, os.O_RDONLY, dir_fd=cur_fd)
                    os.read(fd, 65536)
                    os.close(fd)
                    os.unlink(name, dir_fd=cur_fd)
                else:  # dirq: lock in place
                    try:
                        fd = os.open(name, os.O_RDONLY, dir_fd=new_fd)
                    except FileNotFoundError:
                        continue
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        os.close(fd)
                        continue
                    try:
                        os.read(fd, 65536)
                        os.unlink(name, dir_fd=new_fd)
                    except FileNotFoundError:
                        os.close(fd)
                        continue
                    os.close(fd)
                if fsync:
                    os.fsync(new_fd if kind == "dirq" else cur_fd)
                taken.append(name.rsplit(".", 1)[-1])
                got = True
                if _took(taken_n) >= total:
                    done.set()
                break
            if not got:
                time.sleep(0.001)
    with open(log, "w") as f:
        f.write("\n".join(taken))


def _took(counter: Any) -> int:
    """Count one more message taken (by any consumer); the total so far."""
    with counter.get_lock():
        counter.value += 1
        return int(counter.value)


def run_once(kind: str, p: int, c: int, n: int, fsync: bool, style: str) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="hc-bench-conc-", dir=os.environ.get("BENCH_DIR")))
    root = str(base)
    try:
        if kind == "filemailbox":
            FileMailbox(root, "A", fsync="never").close()
        else:
            for d in ("tmp", "new", "cur"):
                os.mkdir(os.path.join(root, d))
        ctx = mp.get_context("fork")
        go, done = ctx.Event(), ctx.Event()
        taken_n = ctx.Value("q", 0)
        per = n // p
        producers = [
            ctx.Process(
                target=_produce,
                args=(kind, root, i * per, per if i < p - 1 else n - per * (p - 1), fsync, go),
            )
            for i in range(p)
        ]
        logs = [os.path.join(root, f"c{i}.log") for i in range(c)]
        consumers = [
            ctx.Process(target=_consume, args=(kind, root, n, fsync, style, logs[i], go, done, taken_n))
            for i in range(c)
        ]
        for proc in producers + consumers:
            proc.start()
        t0 = time.perf_counter()
        go.set()
        for proc in producers:
            proc.join()
        deadline = time.monotonic() + 300
        while not done.wait(0.005) and time.monotonic() < deadline:
            pass
        elapsed = time.perf_counter() - t0
        for proc in consumers:
            proc.join(30)
        taken: list[str] = []
        for log in logs:
            if os.path.exists(log):
                taken += [x for x in Path(log).read_text().splitlines() if x]
        lost = n - len(set(taken))
        duplicated = len(taken) - len(set(taken))
        return {
            "queue": kind,
            "p": p,
            "c": c,
            "fsync": fsync,
            "style": style,
            "n": n,
            "seconds": elapsed,
            "msg_per_s": n / elapsed,
            "lost": lost,
            "duplicated": duplicated,
        }
    finally:
        shutil.rmtree(base, ignore_errors=True)


def empty_claim_cost(rounds: int = 20_000) -> float:
    """Microseconds per non-blocking claim() on a mailbox where nothing has arrived."""
    base = tempfile.mkdtemp(prefix="hc-bench-empty-")
    try:
        with FileMailbox(base, "A", fsync="never") as mb:
            mb.claim()  # the first look lists; the rest should not
            t0 = time.perf_counter()
            for _ in range(rounds):
                mb.claim()
            return (time.perf_counter() - t0) / rounds * 1e6
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--messages", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n = args.messages or (2000 if args.quick else 5000)
    repeats = args.repeats or (1 if args.quick else 3)
    shapes = [(4, 4), (1, 1)] if args.quick else [(1, 1), (4, 4), (8, 8), (4, 8), (1, 4), (4, 1)]
    styles = ["poll"] if args.quick else ["poll", "block"]
    results: list[dict[str, Any]] = []
    for fsync in (True, False):
        for style in styles:
            for p, c in shapes:
                for _ in range(repeats):
                    for kind in ("floor", "dirq", "filemailbox"):  # interleaved
                        r = run_once(kind, p, c, n, fsync, style)
                        results.append(r)
                        assert r["lost"] == 0 and r["duplicated"] == 0, r
    rows = []
    for fsync in (True, False):
        for style in styles:
            for p, c in shapes:
                med = {
                    kind: statistics.median(
                        r["msg_per_s"]
                        for r in results
                        if r["queue"] == kind
                        and r["p"] == p
                        and r["c"] == c
                        and r["fsync"] == fsync
                        and r["style"] == style
                    )
                    for kind in ("floor", "dirq", "filemailbox")
                }
                best = max(med["floor"], med["dirq"])
                rows.append(
                    {
                        "fsync": "always" if fsync else "never",
                        "style": style,
                        "p": p,
                        "c": c,
                        **med,
                        "vs_floor": med["filemailbox"] / med["floor"],
                        "vs_best": med["filemailbox"] / best,
                    }
                )
    empty = empty_claim_cost()
    cols = ("fsync", "style", "P", "C", "floor", "dirq", "filemailbox", "vs floor", "vs best")
    print("{:<7}{:<6}{:>3}{:>3} {:>9} {:>9} {:>12} {:>9} {:>8}".format(*cols))
    for r in rows:
        print(
            f"{r['fsync']:<7}{r['style']:<6}{r['p']:>3}{r['c']:>3} {r['floor']:>9.0f} {r['dirq']:>9.0f} "
            f"{r['filemailbox']:>12.0f} {r['vs_floor']:>8.2f}x {r['vs_best']:>7.2f}x"
        )
    print(f"empty non-blocking claim(): {empty:.1f} us")
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "empty_claim_us": empty, "runs": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
