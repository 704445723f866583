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
- ``contract``: the bare system calls of FileMailbox's on-disk contract with ``done_retention=0``, in
  a plain loop: the same producer; a consumer walks the listing like dirq, locks a file with flock,
  reads it, renames it into ``processing/`` (not committed: a claim commits nothing) and removes it
  there (+fsync of ``processing/``: the ack). FileMailbox cannot beat this in CPython:
  ``contract / floor`` is the cost of the design's promises, ``filemailbox-r0 / contract`` the cost
  of the implementation. (Before issue #22 it committed the claim and kept every acked file.)
- ``redis``: Redis Streams (a private ``redis-server``, when installed), driven by bare redis-py as
  ``tools/bench_redis.py`` drives it: one stream, one consumer group; producers ``XADD``, consumers
  ``XREADGROUP COUNT 1`` (``BLOCK`` when blocking) + ``XACK``. Durable (``appendonly yes``,
  ``appendfsync always``) at fsync=always, without persistence at fsync=never; its files live in
  ``--dir`` too.
- ``filemailbox``: `FileMailbox` put / claim / ack with its defaults; ``filemailbox-r0`` with
  ``done_retention=0`` (the ack removes the file), ``filemailbox-all`` with ``done_retention=None``
  (every acked file kept). With ``--prefill-done N`` the ``done/`` of every FileMailbox that keeps
  acked files starts with N of them (the steady state of a mailbox that has run a while: with the
  default retention, each ack then trims one). A kind with ``@sN`` (``filemailbox-r0@s1``) sets how
  far a claimer that lost a race jumps ahead (``FileMailbox.SPREAD``; 1: not at all), as measured in
  docs/performance.md.

Ratios are printed twice: of the medians, and as the median of per-round ratios (steadier on a disk
whose speed drifts). Each run's folder is removed and the removal committed (``sync``) before the next.

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

KINDS = ("floor", "dirq", "redis", "filemailbox")
_FM_RETENTION = {"filemailbox": "default", "filemailbox-r0": 0, "filemailbox-all": None}
_REDIS_URL: dict[bool, str] = {}  # fsync -> the private server of that durability (see main)
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


def _mailbox(kind: str, root: str, fsync: bool) -> FileMailbox:
    """The FileMailbox of a ``filemailbox*`` kind (its done/ retention; ``@sN``: spread N)."""
    kind, _, spread = kind.partition("@s")
    retention = _FM_RETENTION[kind]
    options: dict[str, Any] = {} if retention == "default" else {"done_retention": retention}
    mb = FileMailbox(root, "A", fsync="always" if fsync else "never", **options)
    if spread:
        mb._spread = int(spread)
    return mb


def _produce(kind: str, root: str, first: int, count: int, fsync: bool, go: Any) -> None:
    go.wait()
    if kind.startswith("filemailbox"):
        with _mailbox(kind, root, fsync) as mb:
            for i in range(first, first + count):
                mb.put(Message("bench", PAYLOAD, id=f"m{i}"))
        return
    if kind == "redis":
        import redis

        r = redis.Redis.from_url(_REDIS_URL[fsync])
        data = Message("bench", PAYLOAD).encode()
        for i in range(first, first + count):
            r.xadd(root, {"i": f"m{i}", "m": data})
        r.close()
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
    if kind == "redis":
        import redis

        r = redis.Redis.from_url(_REDIS_URL[fsync])
        me = f"c{os.getpid()}"
        while not done.is_set():
            got = r.xreadgroup("g", me, {root: ">"}, count=1, block=200 if style == "block" else None)
            if not got:
                if style == "poll":
                    time.sleep(0.001)
                continue
            entry_id, fields = got[0][1][0]
            r.xack(root, "g", entry_id)
            taken.append(fields[b"i"].decode())
            if _took(taken_n) >= total:
                done.set()
        r.close()
    elif kind.startswith("filemailbox"):
        with _mailbox(kind, root, fsync) as mb:
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
                elif kind == "contract":  # lock, read, rename into processing/, remove there
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
                    os.unlink(name, dir_fd=cur_fd)
                    os.close(fd)
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
            if not got:
                time.sleep(0.001)
    with open(log, "w") as f:
        f.write("\n".join(taken))


def _took(counter: Any) -> int:
    """Count one more message taken (by any consumer); the total so far."""
    with counter.get_lock():
        counter.value += 1
        return int(counter.value)


def prefill_done(root: str, count: int, durable: bool) -> None:
    """``count`` acked messages in ``done/`` (of earlier ids and times): the ``done/`` of a mailbox that
    has run a while, written out (``sync``) so that their writeback does not fall into the run.
    ``durable`` (fsync=always): with their bytes, whose blocks a trim then frees, as puts at
    fsync=always leave them. Else empty: at fsync=never a busy mailbox trims files younger than the
    kernel's writeback delay (~30 s), which have no blocks on the disk yet either. (A mailbox at
    fsync=never whose acked files outlive that delay pays what the durable case pays.)"""
    done = os.path.join(root, "A", "done")
    data = Message("bench", PAYLOAD).encode() if durable else b""
    for i in range(count):
        name = f"2M.20200101T000000{i:06d}Z.old{i}.a1.json"
        fd = os.open(os.path.join(done, name), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(fd, data)
        os.close(fd)
    os.sync()


def run_once(kind: str, p: int, c: int, n: int, fsync: bool, style: str, prefill: int = 0) -> dict[str, Any]:
    base = Path(tempfile.mkdtemp(prefix="hc-bench-conc-", dir=_DIR))
    root = str(base)
    try:
        if kind.startswith("filemailbox"):
            _mailbox(kind, root, False).close()
            if prefill and _FM_RETENTION[kind.partition("@")[0]] != 0:
                prefill_done(root, prefill, fsync)
        elif kind == "redis":
            import redis

            root = f"bench:{base.name}"  # the stream
            r = redis.Redis.from_url(_REDIS_URL[fsync])
            r.xgroup_create(root, "g", id="0", mkstream=True)
            r.close()
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
        logs = [os.path.join(base, f"c{i}.log") for i in range(c)]
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
        if kind == "redis":
            import redis

            r = redis.Redis.from_url(_REDIS_URL[fsync])
            r.delete(root)
            r.close()
        shutil.rmtree(base, ignore_errors=True)
        # Committed now, not in the next run: on a disk mounted with `discard` the removal of
        # thousands of files (a prefilled done/) slows the filesystem for seconds after it.
        os.sync()


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
                d.ack()  # before the next put starts: its commit is not part of the next figure
                conn.send(got)
        return
    if kind == "redis":
        import redis

        r = redis.Redis.from_url(_REDIS_URL[fsync])
        r.xgroup_create(root, "g", id="$", mkstream=True)
        conn.send("ready")
        for _ in range(rounds):
            entries = None
            while not entries:
                entries = r.xreadgroup("g", "c", {root: ">"}, count=1, block=5000)
            got = time.monotonic_ns()
            r.xack(root, "g", entries[0][1][0][0])
            conn.send(got)
        r.close()
        return
    from hybridcomms.backends.file.wakeup import _inotify_calls  # libc's inotify_init / inotify_add_watch

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
        fd = os.open(name, os.O_RDONLY, dir_fd=cur_fd)
        os.read(fd, 65536)
        os.close(fd)
        got = time.monotonic_ns()
        os.unlink(name, dir_fd=cur_fd)
        conn.send(got)


def latency(kind: str, fsync: bool, rounds: int) -> list[float]:
    """put -> claim in microseconds, one message in flight, ``rounds`` times."""
    base = tempfile.mkdtemp(prefix="hc-bench-lat-", dir=_DIR)
    root = base
    try:
        if kind == "filemailbox":
            FileMailbox(base, "A", fsync="never").close()
        elif kind == "redis":
            root = f"lat:{os.path.basename(base)}"
        else:
            for d in ("tmp", "new", "cur"):
                os.mkdir(os.path.join(base, d))
        ctx = mp.get_context("fork")
        here, there = ctx.Pipe()
        proc = ctx.Process(target=_latency_consumer, args=(kind, root, fsync, there, rounds))
        proc.start()
        assert here.recv() == "ready"
        out: list[float] = []
        data = json.dumps({"id": "m0", **PAYLOAD}).encode()
        if kind == "filemailbox":
            with FileMailbox(base, "A", fsync="always" if fsync else "never") as mb:
                for i in range(rounds):
                    message = Message("bench", PAYLOAD, id=f"m{i}")  # made before, as the floor's bytes
                    t0 = time.monotonic_ns()
                    mb.put(message)
                    out.append((here.recv() - t0) / 1000)
        elif kind == "redis":
            import redis

            r = redis.Redis.from_url(_REDIS_URL[fsync])
            data = Message("bench", PAYLOAD).encode()
            for i in range(rounds):
                t0 = time.monotonic_ns()
                r.xadd(root, {"i": f"m{i}", "m": data})
                out.append((here.recv() - t0) / 1000)
            r.delete(root)
            r.close()
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


def _start_redis(durable: bool) -> Any:
    """A private redis-server with its files in ``--dir`` (None when it is not installed)."""
    if shutil.which("redis-server") is None:
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
    from redis_server import RedisServer

    data = tempfile.mkdtemp(prefix="hc-bench-redis-", dir=_DIR)
    return RedisServer(data, appendonly=durable).start()


def main() -> int:
    global _DIR
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="4P+4C, 1P+1C and 4P+8C, poll only, 2,000 messages")
    ap.add_argument("--messages", type=int, default=None, help="messages per run (default 5,000)")
    ap.add_argument("--repeats", type=int, default=None, help="runs per cell, median shown (default 3)")
    ap.add_argument("--dir", default=_DIR, help="where the queues live (default: the temporary folder)")
    ap.add_argument("--latency-rounds", type=int, default=None, help="round trips per latency figure")
    ap.add_argument("--shapes", default=None, help="P x C to run, e.g. 4x4,4x8 (default: see --quick)")
    ap.add_argument("--styles", default=None, help="consumer styles: poll,block (default: see --quick)")
    ap.add_argument("--fsync", default="always,never", help="fsync settings to run (default: both)")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"queues (default {','.join(KINDS)})")
    ap.add_argument("--prefill-done", type=int, default=0, help="acked files in done/ at the start")
    ap.add_argument("--json", default=None, help="also write every run to this file")
    args = ap.parse_args()
    _DIR = args.dir
    n = args.messages or (2000 if args.quick else 5000)
    repeats = args.repeats or (1 if args.quick else 3)
    shapes = [(4, 4), (1, 1), (4, 8)] if args.quick else [(1, 1), (4, 4), (8, 8), (4, 8), (1, 4), (4, 1)]
    if args.shapes:
        shapes = [(int(a), int(b)) for a, b in (s.split("x") for s in args.shapes.split(","))]
    styles = args.styles.split(",") if args.styles else (["poll"] if args.quick else ["poll", "block"])
    modes = [m == "always" for m in args.fsync.split(",")]
    kinds = args.kinds.split(",")
    servers = {}
    if "redis" in kinds:
        for fsync in modes:
            servers[fsync] = _start_redis(durable=fsync)
        if None in servers.values():
            kinds.remove("redis")
            print("(no redis-server installed: Redis Streams left out)")
        else:
            _REDIS_URL.update({f: s.url for f, s in servers.items()})
    try:
        return _run(args, n, repeats, shapes, styles, modes, kinds)
    finally:
        for server in servers.values():
            if server is not None:
                server.remove()


def _run(
    args: Any,
    n: int,
    repeats: int,
    shapes: list[tuple[int, int]],
    styles: list[str],
    modes: list[bool],
    kinds: list[str],
) -> int:
    results: list[dict[str, Any]] = []
    for fsync in modes:
        for style in styles:
            for p, c in shapes:
                for _ in range(repeats):
                    for kind in kinds:  # interleaved
                        r = run_once(kind, p, c, n, fsync, style, args.prefill_done)
                        results.append(r)
                        assert r["lost"] == 0 and r["duplicated"] == 0, r
    fm = [k for k in kinds if k.startswith("filemailbox")]
    rows = []
    for fsync in modes:
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
                    for kind in kinds
                }
                best = max(med.get("floor", 0.0), med.get("dirq", 0.0))
                row: dict[str, Any] = {
                    "fsync": "always" if fsync else "never",
                    "style": style,
                    "p": p,
                    "c": c,
                }
                row.update(med)
                for k in fm:
                    row[f"{k}/floor"] = med[k] / med["floor"] if "floor" in med else None
                    row[f"{k}/best"] = med[k] / best if best else None
                    if "redis" in med:
                        row[f"{k}/redis"] = med[k] / med["redis"]
                # The same ratios taken within each round (every queue ran back to back), then the
                # median: steadier than a ratio of medians on a disk whose speed drifts for minutes.
                rounds = [
                    {r["queue"]: r["msg_per_s"] for r in results[i : i + len(kinds)]}
                    for i in range(0, len(results), len(kinds))
                    if (results[i]["fsync"], results[i]["style"], results[i]["p"], results[i]["c"])
                    == (fsync, style, p, c)
                ]
                for k in fm:
                    for ref in ("floor", "redis"):
                        if ref in kinds:
                            row[f"{k}/{ref} per round"] = statistics.median(x[k] / x[ref] for x in rounds)
                    if "floor" in kinds and "dirq" in kinds:
                        row[f"{k}/best per round"] = statistics.median(
                            x[k] / max(x["floor"], x["dirq"]) for x in rounds
                        )
                rows.append(row)
    where = args.dir or tempfile.gettempdir()
    print(f"where: {where}   messages per run: {n}   repeats: {repeats} (medians)", end="")
    print(f"   done/ prefilled with: {args.prefill_done}")
    print("msg/s:")
    print(f"{'fsync':<7}{'style':<6}{'P':>3}{'C':>3} " + " ".join(f"{k:>15}" for k in kinds))
    for r in rows:
        print(
            f"{r['fsync']:<7}{r['style']:<6}{r['p']:>3}{r['c']:>3} "
            + " ".join(f"{r[k]:>15.0f}" for k in kinds)
        )
    labels = (("median msg/s over median msg/s", ""), ("median of per-round ratios", " per round"))
    for label, suffix in labels:
        print(f"ratios ({label}; best = the better of floor and dirq):")
        for r in rows:
            parts = []
            for k in fm:
                for ref in ("floor", "best", "redis"):
                    v = r.get(f"{k}/{ref}{suffix}")
                    if v is not None:
                        parts.append(f"{k}/{ref} {v:.2f}x")
            print(f"{r['fsync']:<7}{r['style']:<6}{r['p']:>3}{r['c']:>3} " + ", ".join(parts))
    for r8 in rows:
        if r8["c"] == 8:
            for r4 in rows:
                if (r4["fsync"], r4["style"], r4["p"], r4["c"]) == (r8["fsync"], r8["style"], r8["p"], 4):
                    print(
                        f"{r8['p']}P: 8 consumers / 4 consumers, fsync={r8['fsync']} {r8['style']}: "
                        + ", ".join(f"{k} {r8[k] / r4[k]:.2f}x" for k in kinds)
                    )
    empty = empty_claim_cost()
    print(f"empty non-blocking claim(): {empty:.1f} us")
    rounds = args.latency_rounds or (200 if args.quick else 1000)
    lat_kinds = ["floor", "filemailbox"] + (["redis"] if "redis" in kinds else [])
    lat: dict[str, dict[str, list[float]]] = {}
    for fsync in modes:
        mode = "always" if fsync else "never"
        lat[mode] = {}
        for _ in range(2):  # interleaved halves
            for kind in lat_kinds:
                lat[mode].setdefault(kind, []).extend(latency(kind, fsync, rounds // 2))
    summary: dict[str, Any] = {}
    for mode, by_kind in lat.items():
        summary[mode] = {f"{k}_p50_us": _pct(v, 0.5) for k, v in by_kind.items()}
        summary[mode].update({f"{k}_p90_us": _pct(v, 0.9) for k, v in by_kind.items()})
        f50, m50 = summary[mode]["floor_p50_us"], summary[mode]["filemailbox_p50_us"]
        summary[mode]["ratio_p50"] = m50 / f50
        extra = ""
        if "redis" in by_kind:
            r50 = summary[mode]["redis_p50_us"]
            extra = f", redis streams p50 {r50:.0f} us (p90 {summary[mode]['redis_p90_us']:.0f})"
        print(
            f"put -> claim latency, fsync={mode}: inotify floor p50 {f50:.0f} us "
            f"(p90 {summary[mode]['floor_p90_us']:.0f}), filemailbox p50 {m50:.0f} us "
            f"(p90 {summary[mode]['filemailbox_p90_us']:.0f}): {m50 / f50:.2f}x{extra}"
        )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"rows": rows, "empty_claim_us": empty, "latency": summary, "runs": results}, indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
