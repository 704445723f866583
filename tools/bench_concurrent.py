#!/usr/bin/env python3
"""Many producers and many consumers on one mailbox: FileMailbox against two baselines at equal
durability, in one run, interleaved (the machine is shared and noisy: compare within a run).

    python tools/bench_concurrent.py                       # P, C in {1, 4, 8}, both consumer styles
    python tools/bench_concurrent.py --quick               # 4P+4C, 1P+1C, 4P+8C, 2,000 messages
    python tools/bench_concurrent.py --dir /dev/shm        # on tmpfs: CPU and contention only
    python tools/bench_concurrent.py --json out.json

Queues:
- ``floor``: the bare rename floor: a producer writes ``tmp/x`` (+fsync file) and renames it into
  ``new/`` (+fsync new/); a consumer lists ``new/``, renames a file into ``cur/`` (the claim), reads it,
  unlinks it (the ack). Consumers walk the listing from a random start, so they spread.
- ``dirq``: a dirq-style queue: a consumer locks each file with flock (non-blocking) and skips what
  others hold, reads it, unlinks it; consumers spread over the listing.
- ``contract``: the bare system calls of FileMailbox's on-disk contract, in a plain loop: the same
  producer; a consumer walks the listing like dirq, locks a file with flock, reads it, renames it into
  ``processing/`` (+fsync) and then into ``done/`` (+fsync), where it stays (acked messages are kept).
  FileMailbox cannot beat this in CPython: ``contract / floor`` is the cost of the design's promises,
  ``filemailbox / contract`` the cost of the implementation.
- ``filemailbox``: `FileMailbox` put / claim / ack.

Consumer styles: ``poll`` (a non-blocking claim, 1 ms sleep when it finds nothing) and ``block``
(`claim(timeout)`; the baselines poll every 1 ms). Every run checks that every message was taken exactly
once (0 lost, 0 duplicated). Also measured: the cost of an empty non-blocking `claim()` (nothing arrived
since the last look) and the put -> claim latency (one message in flight, blocking consumer, from
before the put to the claim returning, p50 and p90) against a bare inotify floor: a consumer blocked
in read(2) on an inotify descriptor watching ``new/``, which renames the file it is told of into
``cur/`` and reads it.

Where the files go: ``--dir`` (default: the system temporary folder). On a disk, file creation cost
dominates every queue; on tmpfs (``--dir /dev/shm``) the figures show the CPU and contention costs.
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

KINDS = ("floor", "dirq", "contract", "filemailbox")
_DIR: str | None = os.environ.get("BENCH_DIR")  # --dir
PAYLOAD = {"task": "build", "args": ["--fast"], "blob": "x" * 200}  # about 300 bytes encoded


# -- the queues, one process each -------------------------------------------------------------


def bare_put(tmp: str, new: str, new_fd: int, name: str, data: bytes, fsync: bool) -> None:
    """The floor's put: write in tmp/, (fsync), rename into new/, (fsync new/)."""
    fd = os.open(os.path.join(tmp, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    if fsync:
        os.fsync(fd)
    os.close(fd)
    os.rename(os.path.join(tmp, name), os.path.join(new, name))
    if fsync:
        os.fsync(new_fd)


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
        bare_put(tmp, new, new_fd, name, data, fsync)


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
        done_fd = os.open(os.path.join(root, "done"), os.O_RDONLY)
        while not done.is_set():
            # One listing, walked whole from a random start (consumers spread over it), then the
            # next listing: what dirq's iterator does, and the cheapest way to share a folder.
            names = os.listdir(new_fd)
            if not names:
                time.sleep(0.001)
                continue
            start = random.randrange(len(names))
            got = False
            for name in names[start:] + names[:start]:
                if done.is_set():
                    break
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
                elif kind == "contract":  # lock, read, rename into processing/, then into done/
                    try:
                        fd = os.open(name, os.O_RDONLY, dir_fd=new_fd)
                    except FileNotFoundError:
                        continue
                    try:
                        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        os.close(fd)
                        continue
                    os.read(fd, 65536)
                    try:
                        os.rename(name, name, src_dir_fd=new_fd, dst_dir_fd=cur_fd)
                    except FileNotFoundError:
                        os.close(fd)
                        continue
                    if fsync:
                        os.fsync(cur_fd)
                    os.rename(name, name, src_dir_fd=cur_fd, dst_dir_fd=done_fd)
                    os.close(fd)
                    if fsync:
                        os.fsync(done_fd)
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
                if fsync and kind != "contract":
                    os.fsync(new_fd if kind == "dirq" else cur_fd)
                taken.append(name.rsplit(".", 1)[-1])
                got = True
                if _took(taken_n) >= total:
                    done.set()
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
    base = Path(tempfile.mkdtemp(prefix="hc-bench-conc-", dir=_DIR))
    root = str(base)
    try:
        if kind == "filemailbox":
            FileMailbox(root, "A", fsync="never").close()
        else:
            for d in ("tmp", "new", "cur", "done"):
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
    base = tempfile.mkdtemp(prefix="hc-bench-empty-", dir=_DIR)
    try:
        with FileMailbox(base, "A", fsync="never") as mb:
            mb.claim()  # the first look lists; the rest should not
            t0 = time.perf_counter()
            for _ in range(rounds):
                mb.claim()
            return (time.perf_counter() - t0) / rounds * 1e6
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _latency_consumer(kind: str, root: str, fsync: bool, conn: Any, rounds: int) -> None:
    """Block for each message; send back when it was claimed (CLOCK_MONOTONIC is system-wide)."""
    if kind == "filemailbox":
        with FileMailbox(root, "A", fsync="always" if fsync else "never") as mb:
            mb.claim()  # the first look (watch + listing) is not part of the figure
            conn.send("ready")
            for _ in range(rounds):
                d = None
                while d is None:
                    d = mb.claim(timeout=5)
                got = time.monotonic_ns()
                d.ack()
                conn.send(got)
        return
    from hybridcomms._wakeup import _inotify_calls  # libc's inotify_init / inotify_add_watch

    calls = _inotify_calls()
    assert calls is not None
    ifd = calls[0]()
    calls[1](ifd, os.path.join(root, "new").encode(), 0x80 | 0x100)  # IN_MOVED_TO | IN_CREATE
    new_fd = os.open(os.path.join(root, "new"), os.O_RDONLY)
    cur_fd = os.open(os.path.join(root, "cur"), os.O_RDONLY)
    conn.send("ready")
    for _ in range(rounds):
        data = os.read(ifd, 4096)  # blocks until the producer's rename
        length = int.from_bytes(data[12:16], "little")
        name = data[16 : 16 + length].rstrip(b"\0").decode()
        os.rename(name, name, src_dir_fd=new_fd, dst_dir_fd=cur_fd)
        if fsync:
            os.fsync(cur_fd)
        fd = os.open(name, os.O_RDONLY, dir_fd=cur_fd)
        os.read(fd, 65536)
        os.close(fd)
        got = time.monotonic_ns()
        os.unlink(name, dir_fd=cur_fd)
        conn.send(got)


def latency(kind: str, fsync: bool, rounds: int) -> list[float]:
    """put -> claim in microseconds, one message in flight, ``rounds`` times."""
    base = tempfile.mkdtemp(prefix="hc-bench-lat-", dir=_DIR)
    try:
        if kind == "filemailbox":
            FileMailbox(base, "A", fsync="never").close()
        else:
            for d in ("tmp", "new", "cur"):
                os.mkdir(os.path.join(base, d))
        ctx = mp.get_context("fork")
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_latency_consumer, args=(kind, base, fsync, there, rounds))
        proc.start()
        assert here.recv() == "ready"
        out: list[float] = []
        data = json.dumps({"id": "m0", **PAYLOAD}).encode()
        if kind == "filemailbox":
            with FileMailbox(base, "A", fsync="always" if fsync else "never") as mb:
                for i in range(rounds):
                    t0 = time.monotonic_ns()
                    mb.put(Message("bench", PAYLOAD, id=f"m{i}"))
                    out.append((here.recv() - t0) / 1000)
        else:
            tmp, new = os.path.join(base, "tmp"), os.path.join(base, "new")
            new_fd = os.open(new, os.O_RDONLY)
            for i in range(rounds):
                t0 = time.monotonic_ns()
                name = f"{t0:020d}.m{i}"
                bare_put(tmp, new, new_fd, name, data, fsync)
                out.append((here.recv() - t0) / 1000)
            os.close(new_fd)
        proc.join(30)
        return out
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main() -> int:
    global _DIR
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4P+4C, 1P+1C and 4P+8C, poll only, 2,000 messages")
    ap.add_argument("--messages", type=int, default=None, help="messages per run (default 5,000)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per cell, median shown (default 3)")
    ap.add_argument("--dir", default=_DIR, help="where the queues live (default: the temporary folder)")
    ap.add_argument("--latency-rounds", type=int, default=None, help="round trips per latency figure")
    ap.add_argument("--json", default=None, help="also write every run to this file")
    args = ap.parse_args()
    _DIR = args.dir
    n = args.messages or (2000 if args.quick else 5000)
    repeats = args.repeats or (1 if args.quick else 3)
    shapes = [(4, 4), (1, 1), (4, 8)] if args.quick else [(1, 1), (4, 4), (8, 8), (4, 8), (1, 4), (4, 1)]
    styles = ["poll"] if args.quick else ["poll", "block"]
    results: list[dict[str, Any]] = []
    for fsync in (True, False):
        for style in styles:
            for p, c in shapes:
                for _ in range(repeats):
                    for kind in KINDS:  # interleaved
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
                    for kind in KINDS
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
                        "vs_contract": med["filemailbox"] / med["contract"],
                    }
                )
    empty = empty_claim_cost()
    rounds = args.latency_rounds or (200 if args.quick else 1000)
    lat: dict[str, dict[str, list[float]]] = {"always": {}, "never": {}}
    for fsync in (True, False):
        for _ in range(2):  # interleaved halves
            for kind in ("floor", "filemailbox"):
                lat["always" if fsync else "never"].setdefault(kind, []).extend(
                    latency(kind, fsync, rounds // 2)
                )
    where = args.dir or tempfile.gettempdir()
    print(f"where: {where}   messages per run: {n}   repeats: {repeats} (medians)")
    cols = ("fsync", "style", "P", "C", "floor", "dirq", "contract", "filemailbox")
    cols += ("vs floor", "vs best", "vs contr")
    print("{:<7}{:<6}{:>3}{:>3} {:>8} {:>8} {:>9} {:>12} {:>9} {:>8} {:>9}".format(*cols))
    for r in rows:
        print(
            f"{r['fsync']:<7}{r['style']:<6}{r['p']:>3}{r['c']:>3} {r['floor']:>8.0f} {r['dirq']:>8.0f} "
            f"{r['contract']:>9.0f} {r['filemailbox']:>12.0f} {r['vs_floor']:>8.2f}x {r['vs_best']:>7.2f}x "
            f"{r['vs_contract']:>8.2f}x"
        )
    for r8 in rows:
        if r8["c"] == 8:
            for r4 in rows:
                if (r4["fsync"], r4["style"], r4["p"], r4["c"]) == (r8["fsync"], r8["style"], r8["p"], 4):
                    print(
                        f"{r8['p']}P: 8 consumers / 4 consumers, fsync={r8['fsync']} {r8['style']}: "
                        f"filemailbox {r8['filemailbox'] / r4['filemailbox']:.2f}x, "
                        f"floor {r8['floor'] / r4['floor']:.2f}x"
                    )
    print(f"empty non-blocking claim(): {empty:.1f} us")
    summary = {}
    for mode, kinds in lat.items():
        f50, m50 = _pct(kinds["floor"], 0.5), _pct(kinds["filemailbox"], 0.5)
        summary[mode] = {
            "floor_p50_us": f50,
            "floor_p90_us": _pct(kinds["floor"], 0.9),
            "filemailbox_p50_us": m50,
            "filemailbox_p90_us": _pct(kinds["filemailbox"], 0.9),
            "ratio_p50": m50 / f50,
        }
        print(
            f"put -> claim latency, fsync={mode}: inotify floor p50 {f50:.0f} us "
            f"(p90 {summary[mode]['floor_p90_us']:.0f}), filemailbox p50 {m50:.0f} us "
            f"(p90 {summary[mode]['filemailbox_p90_us']:.0f}): {m50 / f50:.2f}x"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "empty_claim_us": empty, "latency": summary, "runs": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
