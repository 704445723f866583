#!/usr/bin/env python3
"""Where does claim+ack time go at fsync=never? A ladder of loops, each adding one part of the work.

All loops run on folders filled the same way (FileMailbox.put_many, so the same names and sizes),
in interleaved chunks (the order flips every chunk), and each is reported as the median of its
per-chunk ratios to the floor's chunk next to it: a noisy neighbour hits all loops alike.

    floor      rename new->processing, open/read/close, rename processing->done (bare syscalls)
    syscalls   our syscalls: open in new/ + flock (the liveness lock), read, rename with the attempt
               raised in the name, rename into done/, close
    +json      ... and orjson.loads of what was read
    +decode    ... and the native decoder (every field checked, the Message built)
    ceiling    ... and the rest the design needs, inlined into the loop: the name parsed and the
               attempt counted, a delivery object; no claim index, no error handling, no calls
    mailbox    FileMailbox.claim() + Delivery.ack()

    python tools/bench_claim_ceiling.py [--messages 20000] [--chunk 250]
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from hybridcomms import FileMailbox, Message
from hybridcomms._names import NAME_RE
from hybridcomms.message import from_native

PAYLOAD = {"task": "build", "args": ["--fast", "--target", "x86_64"], "n": 42}
FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
EXCLUSIVE = fcntl.LOCK_EX | fcntl.LOCK_NB
Step = Callable[[int], None]


def fill(n: int) -> str:
    d = tempfile.mkdtemp(prefix="hc-ceiling-")
    with FileMailbox(d, "A", fsync="never") as mb:
        for start in range(0, n, 1000):
            mb.put_many(
                [
                    Message("dreamos.agent.A.task.command", PAYLOAD, sender="B", recipient="A")
                    for _ in range(min(1000, n - start))
                ]
            )
    return d


def _setup(d: str) -> tuple[int, int, int, list[str]]:
    new, proc, done = (
        os.open(f"{d}/A/{f}", os.O_RDONLY | os.O_DIRECTORY) for f in ("new", "processing", "done")
    )
    return new, proc, done, sorted(os.listdir(new), reverse=True)


def floor(d: str) -> Step:
    new, proc, done, names = _setup(d)

    def step(n: int) -> None:
        for _ in range(n):
            x = names.pop()
            os.rename(x, x, src_dir_fd=new, dst_dir_fd=proc)
            fd = os.open(x, os.O_RDONLY, dir_fd=proc)
            os.read(fd, 65536)
            os.close(fd)
            os.rename(x, x, src_dir_fd=proc, dst_dir_fd=done)

    return step


def _ladder(d: str, level: int) -> Step:
    new, proc, done, names = _setup(d)

    def step(n: int) -> None:
        for _ in range(n):
            x = names.pop()
            fd = os.open(x, FLAGS, dir_fd=new)
            fcntl.flock(fd, EXCLUSIVE)
            raw = os.read(fd, 65536)
            if level >= 1:
                obj = orjson.loads(raw)
                if level >= 2:
                    from_native(obj, True)
            target = x[:-6] + "1.json"
            os.rename(x, target, src_dir_fd=new, dst_dir_fd=proc)
            os.rename(target, target, src_dir_fd=proc, dst_dir_fd=done)
            os.close(fd)

    return step


class Claimed:
    __slots__ = ("attempt", "fd", "message", "name")

    def __init__(self, fd: int, name: str, message: object, attempt: int) -> None:
        self.fd, self.name, self.message, self.attempt = fd, name, message, attempt


def ceiling(d: str) -> Step:
    new, proc, done, names = _setup(d)

    def step(n: int) -> None:
        for _ in range(n):
            x = names.pop()
            fd = os.open(x, FLAGS, dir_fd=new)
            fcntl.flock(fd, EXCLUSIVE)
            m = NAME_RE.match(x)
            assert m is not None
            message = from_native(orjson.loads(os.read(fd, 65536)), True, m[3])
            assert message is not None
            rank, due, msg_id, seen = m.groups()
            attempt = int(seen) + 1
            target = f"{rank}.{due}.{msg_id}.a{attempt}.json"
            os.rename(x, target, src_dir_fd=new, dst_dir_fd=proc)
            c = Claimed(fd, target, message, attempt)
            os.rename(c.name, c.name, src_dir_fd=proc, dst_dir_fd=done)
            os.close(c.fd)

    return step


def mailbox(d: str) -> Step:
    mb = FileMailbox(d, "A", fsync="never")

    def step(n: int) -> None:
        for _ in range(n):
            delivery = mb.claim()
            assert delivery is not None and delivery.message.topic
            delivery.ack()

    return step


LOOPS: dict[str, Callable[[str], Step]] = {
    "floor": floor,
    "syscalls": lambda d: _ladder(d, 0),
    "+json": lambda d: _ladder(d, 1),
    "+decode": lambda d: _ladder(d, 2),
    "ceiling": ceiling,
    "mailbox": mailbox,
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=20000)
    ap.add_argument("--chunk", type=int, default=250)
    args = ap.parse_args()
    dirs = {name: fill(args.messages) for name in LOOPS}
    try:
        os.sync()
        steps = {name: make(dirs[name]) for name, make in LOOPS.items()}
        times: dict[str, list[float]] = {name: [] for name in LOOPS}
        order = list(LOOPS)
        for i in range(args.messages // args.chunk):
            for name in order if i % 2 == 0 else reversed(order):
                t = time.perf_counter()
                steps[name](args.chunk)
                times[name].append(time.perf_counter() - t)
    finally:
        for d in dirs.values():
            shutil.rmtree(d, ignore_errors=True)
    floor_times = times["floor"]
    print(f"{'loop':10s} {'µs/msg':>7s}  ratio to floor (median of chunks, quartiles)")
    for name, ts in times.items():
        ratios = [f / t for f, t in zip(floor_times, ts, strict=True)]
        q1, _, q3 = statistics.quantiles(ratios)
        print(
            f"{name:10s} {statistics.median(ts) / args.chunk * 1e6:7.1f}  "
            f"{statistics.median(ratios):.2f}x ({q1:.2f}-{q3:.2f})"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
