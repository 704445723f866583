#!/usr/bin/env python3
"""How close can any Python claim+ack get to the floor? (fsync=never)

Three loops over the same number of messages, in the same run, three rounds (medians reported):

    floor     rename new->processing, open/read/close, rename processing->done (bare syscalls)
    ceiling   the same plus what the design requires, all inlined into one loop and nothing else:
              open + flock (liveness), read, orjson + the native decoder, the attempt in the name,
              a minimal delivery object, close; no claim index, no state-table checks, no errors handled
    mailbox   FileMailbox.claim() + ack()

The ceiling loop is as fast as this design can be in CPython: see docs/performance.md.

    python tools/bench_claim_ceiling.py [--messages N]
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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from hybridcomms import FileMailbox, Message
from hybridcomms._names import _NAME_RE
from hybridcomms.message import _from_native

PAYLOAD = {"task": "build", "args": ["--fast"], "n": 42}


def fill(n: int) -> str:
    d = tempfile.mkdtemp(prefix="hc-ceiling-")
    with FileMailbox(d, "A", fsync="never") as mb:
        for start in range(0, n, 1000):
            count = min(1000, n - start)
            mb.put_many(
                [
                    Message("dreamos.agent.A.task.command", PAYLOAD, sender="B", recipient="A")
                    for _ in range(count)
                ]
            )
    return d


def folders(d: str) -> tuple[int, int, int]:
    return tuple(os.open(f"{d}/A/{f}", os.O_RDONLY) for f in ("new", "processing", "done"))  # type: ignore[return-value]


def floor(d: str) -> float:
    new, proc, done = folders(d)
    names = sorted(os.listdir(new))
    t = time.perf_counter()
    for n in names:
        os.rename(n, n, src_dir_fd=new, dst_dir_fd=proc)
        fd = os.open(n, os.O_RDONLY, dir_fd=proc)
        os.read(fd, 65536)
        os.close(fd)
        os.rename(n, n, src_dir_fd=proc, dst_dir_fd=done)
    return (time.perf_counter() - t) / len(names)


class Claimed:
    __slots__ = ("attempt", "fd", "message", "name")

    def __init__(self, fd: int, name: str, message: object, attempt: int) -> None:
        self.fd, self.name, self.message, self.attempt = fd, name, message, attempt


def ceiling(d: str) -> float:
    new, proc, done = folders(d)
    names = sorted(os.listdir(new))
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    exclusive = fcntl.LOCK_EX | fcntl.LOCK_NB
    t = time.perf_counter()
    for n in names:
        fd = os.open(n, flags, dir_fd=new)
        fcntl.flock(fd, exclusive)
        message = _from_native(orjson.loads(os.read(fd, 65536)))
        m = _NAME_RE.match(n)
        assert m is not None and message is not None
        rank, due, msg_id, seen = m.groups()
        attempt = int(seen) + 1
        target = f"{rank}.{due}.{msg_id}.a{attempt}.json"
        os.rename(n, target, src_dir_fd=new, dst_dir_fd=proc)
        c = Claimed(fd, target, message, attempt)
        os.rename(c.name, c.name, src_dir_fd=proc, dst_dir_fd=done)
        os.close(c.fd)
    return (time.perf_counter() - t) / len(names)


def mailbox(d: str) -> float:
    with FileMailbox(d, "A", fsync="never") as mb:
        n = len(os.listdir(mb.path / "new"))
        t = time.perf_counter()
        for _ in range(n):
            delivery = mb.claim()
            assert delivery is not None and delivery.message.topic
            delivery.ack()
        return (time.perf_counter() - t) / n


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=5000)
    args = ap.parse_args()
    results: dict[str, list[float]] = {"floor": [], "ceiling": [], "mailbox": []}
    loops = {"floor": floor, "ceiling": ceiling, "mailbox": mailbox}
    for _ in range(3):  # rounds
        for name, loop in loops.items():
            d = fill(args.messages)
            try:
                results[name].append(loop(d))
            finally:
                shutil.rmtree(d, ignore_errors=True)
    med = {k: statistics.median(v) * 1e6 for k, v in results.items()}
    for k, v in med.items():
        print(f"{k:8s} {v:6.1f} µs per claim+ack  ({med['floor'] / v:.2f}x of the floor)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
