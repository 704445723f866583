#!/usr/bin/env python3
"""Publishing on a shared bus whose ``.bus/`` a co-tenant attacks, against an empty one, in one run.

    python tools/bench_fanout_hostile.py [--scenarios hostile,bomb,readers,stopped,flood,junk]
        [--registrations 1000] [--bombs 400] [--readers 2000] [--stopped 256] [--junk 20000]
        [--rounds 7] [--round-seconds 0.5] [--settle 3] [--json F]

Each scenario runs in a process of its own (its RSS peak is its own), publishing on buses shared on
roots of their own (`hybridcomms.bus.fanout`), in alternating rounds of ``--round-seconds`` (each side
takes each place in turn); rates are medians, a ratio is the median of per-round ratios against the
first side (target: >= 0.5x, issue #21). Before the rounds, each side publishes for ``--settle`` s.

- **hostile**: ``--registrations`` large registrations (~63 KiB: half garbage, half valid-looking ones of
  a live process subscribing to ``*`` whose socket is a plain file) and two stale sockets of a live
  process subscribing to ``*`` (one bound and never read, one closed); **churn**: the same, and a
  co-tenant rewriting one of the registrations every millisecond.
- **bomb**: ``--bombs`` registrations of 10,000 patterns each (~60 KiB), of sockets a live process
  bound and never reads, each rewritten every 50 ms by another process.
- **readers**: ``--readers`` registrations subscribing to ``*`` whose sockets another process reads
  (epoll), past MAX_LINKS; and, for reference, a root where one such reader is registered (what one
  legitimate subscriber costs).
- **stopped**: ``--stopped`` registrations subscribing to ``*`` whose sockets are bound and never read
  (stopped peers), events padded to 1 KB (each backlog can hold its 1 MiB).
- **flood**: the publisher's own bus has an async handler that never finishes, and another process
  sends it, as fast as it reads, events of ~60 KiB that decode to ~1.6 MB each (``[[],[],...]``);
  rounds alternate with that process stopped (SIGSTOP) and running.
- **junk**: ``--junk`` empty files named like registrations (``1-<hex>.json``, no socket beside
  them) placed once before the publisher starts (**junk**), and the same re-made by another process
  in a loop as fast as it can (**junk-loop**): what a publisher pays for removing them and for
  listing a folder that big; ``left_in_bus_folder`` shows what is left at the end.

RSS: the scenario process's peak (VmHWM) and its RSS at the end, minus its RSS before it began.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing as mp
import os
import resource
import select
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson

from hybridcomms.bus import AgentBus, Event
from hybridcomms.bus import core as bus_module
from hybridcomms.bus.fanout import BUS_FOLDER, FANOUT_STATS, _shared, encode_event, share_bus
from hybridcomms.bus.fanout.transport import HOST as _HOST

PAYLOAD = {"agent": "Agent-1", "status": "busy", "task": "build-42"}
SIZE = 64 * 1024 - 512  # just under what a publisher reads of a registration
CTX = mp.get_context("fork")


# -- placing things in a bus folder ---------------------------------------------------------------


def _place(folder: Path, name: str, data: bytes) -> None:
    tmp = folder / f".{name}.placing"
    tmp.write_bytes(data)
    os.replace(tmp, folder / f"{name}.json")


def _body(pid: int, pad: int) -> bytes:
    body: dict[str, Any] = {"pid": pid, "host": _HOST, "patterns": ["*"], "padding": ""}
    body["padding"] = "x" * (pad - len(orjson.dumps(body)))
    return orjson.dumps(body)


def _group_root(base: Path, name: str) -> Path:
    root = base / name
    (root / BUS_FOLDER).mkdir(parents=True)
    os.chmod(root, 0o770)  # a group root, as Dream.OS runs them
    return root


def _bind_all(folder: Path, names: list[str]) -> list[socket.socket]:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    socks = []
    try:
        for name in names:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            s.bind(f"/proc/self/fd/{fd}/{name}.sock")
            socks.append(s)
    finally:
        os.close(fd)
    return socks


def _more_fds() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _child(target: Callable[..., None], *args: Any) -> Any:
    """A process running ``target(*args, ready)``, once it has said it is ready."""
    ready = CTX.Event()
    proc = CTX.Process(target=target, args=(*args, ready), daemon=True)
    proc.start()
    if not ready.wait(120):
        raise RuntimeError(f"{target.__name__} did not start")
    return proc


def hostile_folder(folder: Path, n: int, live_pid: int) -> None:
    for i in range(n):
        name = f"{i + 1}-{i:08x}"
        if i % 2:
            _place(folder, name, os.urandom(SIZE))
        else:
            _place(folder, name, _body(live_pid, SIZE))
            (folder / f"{name}.sock").write_bytes(b"not a socket")


def _stale_sockets(folder: str, ready: Any) -> None:
    """A live process with two registrations subscribing to everything: one socket that never reads,
    one closed (refused)."""
    body = orjson.dumps({"pid": os.getpid(), "host": _HOST, "patterns": ["*"]})
    names = [f"{os.getpid()}-5a1e5a1e", f"{os.getpid()}-dead50c4"]
    socks = _bind_all(Path(folder), names)
    for name in names:
        _place(Path(folder), name, body)
    socks.pop().close()  # its file stays: a connect to it is refused
    ready.set()
    signal.pause()


def _churner(folder: str, n: int, ready: Any) -> None:
    """A co-tenant rewriting one registration every millisecond."""
    ready.set()
    i = 0
    while True:
        k = (i % (n // 2)) * 2  # a valid-looking one
        _place(Path(folder), f"{k + 1}-{k:08x}", _body(os.getpid(), SIZE - (i % 7)))
        i += 1
        time.sleep(0.001)


def _base36(n: int) -> str:
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    out = ""
    while True:
        n, r = divmod(n, 36)
        out = digits[r] + out
        if not n:
            return out


def _bomber(folder: str, n: int, ready: Any) -> None:
    """A live process with ``n`` sockets it never reads, each registered with 10,000 patterns, each
    registration rewritten every 50 ms (new inode, new size: every publisher must read it again)."""
    _more_fds()
    names = [f"{os.getpid()}-b{i:07x}" for i in range(n)]
    socks = _bind_all(Path(folder), names)
    bodies = []
    for i in range(n):
        patterns = [_base36(i * 10_000 + k)[-3:] for k in range(10_000)]  # (~60 KiB)
        bodies.append(orjson.dumps({"pid": os.getpid(), "host": _HOST, "patterns": patterns}))
    for name, body in zip(names, bodies, strict=True):
        _place(Path(folder), name, body)
    ready.set()
    k = 0
    while True:
        start = time.monotonic()
        for name, body in zip(names, bodies, strict=True):
            _place(Path(folder), name, body + b" " * (k % 2))
        k += 1
        time.sleep(max(0.0, 0.05 - (time.monotonic() - start)))
    del socks


def _readers(folders: list[tuple[str, int]], ready: Any) -> None:
    """A live process whose sockets read everything sent to them: ``count`` registrations subscribing
    to ``*`` in each folder."""
    _more_fds()
    socks = []
    for folder, count in folders:
        names = [f"{os.getpid()}-e{len(socks) + i:07x}" for i in range(count)]
        made = _bind_all(Path(folder), names)
        for name in names:
            _place(Path(folder), name, orjson.dumps({"pid": os.getpid(), "host": _HOST, "patterns": ["*"]}))
        socks.extend(made)
    ep = select.epoll()
    by_fd = {}
    for s in socks:
        s.setblocking(False)
        ep.register(s.fileno(), select.EPOLLIN)
        by_fd[s.fileno()] = s
    ready.set()
    while True:
        for fd, _ in ep.poll():
            s = by_fd[fd]
            try:
                while True:
                    s.recv(70_000)
            except BlockingIOError:
                pass


def _junk(folder: Path, n: int) -> None:
    for i in range(n):
        (folder / f"1-{i:x}.json").touch()


def _junk_loop(folder: str, n: int, ready: Any) -> None:
    """A co-tenant re-making ``n`` empty registration-like files as fast as it can (those removed)."""
    ready.set()
    while True:
        for i in range(n):
            with contextlib.suppress(FileExistsError):
                os.close(os.open(f"{folder}/1-{i:x}.json", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o660))


def _stopped(folder: str, n: int, ready: Any) -> None:
    """A live process with ``n`` registrations subscribing to ``*`` whose sockets it never reads."""
    _more_fds()
    names = [f"{os.getpid()}-5{i:07x}" for i in range(n)]
    socks = _bind_all(Path(folder), names)
    for name in names:
        _place(Path(folder), name, orjson.dumps({"pid": os.getpid(), "host": _HOST, "patterns": ["*"]}))
    ready.set()
    signal.pause()
    del socks


def _flooder(address: str, ready: Any) -> None:
    """Events of ~60 KiB that decode to ~1.6 MB each, sent as fast as the target reads them."""
    data = encode_event(Event("work.flood", {"x": [[[]] for _ in range(12_000)]}), "elsewhere:1")
    assert data is not None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.connect(address)
    ready.set()
    while True:
        s.send(data)


# -- measuring ------------------------------------------------------------------------------------


def _status() -> dict[str, int]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = int(value.split()[0]) * 1024
    return out


Side = tuple[Callable[[], None], Callable[[], None] | None]  # (publish one event, enter the side)


def measure(sides: dict[str, Side], args: argparse.Namespace) -> dict[str, Any]:
    names = list(sides)
    first: dict[str, float] = {}
    for name, (publish, enter) in sides.items():
        if enter is not None:
            enter()
        t0 = time.perf_counter()
        publish()
        first[name] = time.perf_counter() - t0
    settle_until = time.monotonic() + args.settle
    while time.monotonic() < settle_until:
        for publish, enter in sides.values():
            if enter is not None:
                enter()
            end = time.perf_counter() + 0.05
            while time.perf_counter() < end:
                for _ in range(10):
                    publish()
    rates: dict[str, list[float]] = {name: [] for name in names}
    for r in range(args.rounds):
        k = r % len(names)
        for name in names[k:] + names[:k]:  # each side takes each place in turn
            publish, enter = sides[name]
            if enter is not None:
                enter()
            n = 0
            t0 = time.perf_counter()
            end = t0 + args.round_seconds
            while (now := time.perf_counter()) < end:
                for _ in range(10):
                    publish()
                n += 10
            rates[name].append(n / (now - t0))
    base = names[0]
    return {
        "rates": {name: statistics.median(v) for name, v in rates.items()},
        "ratio": {
            name: statistics.median(h / e for h, e in zip(rates[name], rates[base], strict=True))
            for name in names[1:]
        },
        "first_publish_s": first,
    }


def _publisher(root: Path, payload: Any = PAYLOAD) -> tuple[Callable[[], None], Callable[[], None]]:
    b = AgentBus()
    release = share_bus(b, root=root)
    publish = b.publish
    return (lambda: (publish("fleet.status", payload), None)[1]), release


# -- the scenarios --------------------------------------------------------------------------------


def scenario_hostile(base: Path, args: argparse.Namespace, children: list[Any]) -> dict[str, Any]:
    roots = {side: _group_root(base, side) for side in ("empty", "hostile", "churn")}
    for side in ("hostile", "churn"):
        folder = roots[side] / BUS_FOLDER
        hostile_folder(folder, args.registrations, os.getpid())
        children.append(_child(_stale_sockets, str(folder)))
    children.append(_child(_churner, str(roots["churn"] / BUS_FOLDER), args.registrations))
    return _run(roots, args)


def scenario_bomb(base: Path, args: argparse.Namespace, children: list[Any]) -> dict[str, Any]:
    roots = {side: _group_root(base, side) for side in ("empty", "bomb")}
    children.append(_child(_bomber, str(roots["bomb"] / BUS_FOLDER), args.bombs))
    return _run(roots, args)


def scenario_readers(base: Path, args: argparse.Namespace, children: list[Any]) -> dict[str, Any]:
    roots = {side: _group_root(base, side) for side in ("empty", "one-reader", "readers")}
    folders = [(str(roots["one-reader"] / BUS_FOLDER), 1), (str(roots["readers"] / BUS_FOLDER), args.readers)]
    children.append(_child(_readers, folders))
    return _run(roots, args)


def scenario_stopped(base: Path, args: argparse.Namespace, children: list[Any]) -> dict[str, Any]:
    roots = {side: _group_root(base, side) for side in ("empty", "stopped")}
    children.append(_child(_stopped, str(roots["stopped"] / BUS_FOLDER), args.stopped))
    return _run(roots, args, {**PAYLOAD, "pad": "x" * 1000})


def scenario_flood(base: Path, args: argparse.Namespace, children: list[Any]) -> dict[str, Any]:
    root = _group_root(base, "victim")
    b = AgentBus()
    gate = asyncio.Event()

    async def slow(event: Event) -> None:  # never finishes: every run started holds its event
        await gate.wait()

    b.subscribe("work.*", slow)
    release = share_bus(b, root=root)
    fan = _shared[(id(b), os.path.abspath(root))][0]
    flood = _child(_flooder, f"{root / BUS_FOLDER}/{fan.name}.sock")
    children.append(flood)
    os.kill(flood.pid, signal.SIGSTOP)
    publish = b.publish

    def pub() -> None:
        publish("fleet.status", PAYLOAD)

    def quiet() -> None:
        os.kill(flood.pid, signal.SIGSTOP)

    def flooded() -> None:
        os.kill(flood.pid, signal.SIGCONT)

    try:
        result = measure({"quiet": (pub, quiet), "flooded": (pub, flooded)}, args)
        os.kill(flood.pid, signal.SIGSTOP)
        result["dropped_busy"] = FANOUT_STATS["dropped_busy"]
        result["received"] = FANOUT_STATS["received"]
        result["held_bytes"] = getattr(b, "_received_bytes", None)
        result["held_runs"] = b._received_runs
    finally:
        release()
    return result


def _run(roots: dict[str, Path], args: argparse.Namespace, payload: Any = PAYLOAD) -> dict[str, Any]:
    publishers = {side: _publisher(root, payload) for side, root in roots.items()}
    try:
        result = measure({side: (p, None) for side, (p, _) in publishers.items()}, args)
    finally:
        for _, release in publishers.values():
            release()
    result["left_in_bus_folder"] = {side: len(os.listdir(root / BUS_FOLDER)) for side, root in roots.items()}
    return result


def scenario_junk(base: Path, args: argparse.Namespace, children: list[Any]) -> dict[str, Any]:
    roots = {side: _group_root(base, side) for side in ("empty", "junk", "junk-loop")}
    _junk(roots["junk"] / BUS_FOLDER, args.junk)
    _junk(roots["junk-loop"] / BUS_FOLDER, args.junk)
    children.append(_child(_junk_loop, str(roots["junk-loop"] / BUS_FOLDER), args.junk))
    return _run(roots, args)


SCENARIOS = {
    "hostile": scenario_hostile,
    "bomb": scenario_bomb,
    "readers": scenario_readers,
    "stopped": scenario_stopped,
    "flood": scenario_flood,
    "junk": scenario_junk,
}


def _scenario(name: str, args: argparse.Namespace, out: Any) -> None:
    base = Path(tempfile.mkdtemp(prefix=f"hc-bench-{name}-", dir="/tmp"))
    children: list[Any] = []
    _more_fds()
    before = _status()["VmRSS"]
    try:
        result = SCENARIOS[name](base, args, children)
        status = _status()
        result["rss_peak"] = status["VmHWM"] - before
        result["rss_end"] = status["VmRSS"] - before
        result["dropped_full"] = FANOUT_STATS["dropped_full"]
        result["dropped_budget"] = FANOUT_STATS.get("dropped_budget")
        out.send(result)
    finally:
        for child in children:
            if child.is_alive():
                os.kill(child.pid, signal.SIGCONT)
                child.kill()
            child.join(10)
        shutil.rmtree(base, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--registrations", type=int, default=1000)
    ap.add_argument("--bombs", type=int, default=400)
    ap.add_argument("--readers", type=int, default=2000)
    ap.add_argument("--stopped", type=int, default=256)
    ap.add_argument("--junk", type=int, default=20_000)
    ap.add_argument("--round-seconds", type=float, default=0.5, help="publishing time per side per round")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of publishing before the rounds")
    ap.add_argument("--json", default=None, help="also write the figures to this file")
    args = ap.parse_args()

    results = {}
    for name in args.scenarios.split(","):
        recv, send = CTX.Pipe(duplex=False)
        proc = CTX.Process(target=_scenario, args=(name, args, send))
        proc.start()
        send.close()
        try:
            results[name] = recv.recv()
        except EOFError:
            results[name] = {"error": f"the scenario process exited {proc.exitcode}"}
        proc.join(60)

    mib = 1 << 20
    print(f"seconds of publishing per side per round: {args.round_seconds}, rounds: {args.rounds} (medians)")
    max_received = getattr(bus_module, "MAX_RECEIVED_BYTES", None)
    for name, result in results.items():
        print()
        if "error" in result:
            print(f"{name}: {result['error']}")
            continue
        peak, end = result["rss_peak"] / mib, result["rss_end"] / mib
        print(f"{name}: RSS peak +{peak:.0f} MiB, at the end +{end:.0f} MiB")
        print(f"  {'side':>10} {'publish/s':>10} {'vs first':>9} {'first publish':>14}")
        for side, rate in result["rates"].items():
            vs = f"{result['ratio'][side]:.2f}x" if side in result["ratio"] else ""
            print(f"  {side:>10} {rate:>10.0f} {vs:>9} {result['first_publish_s'][side] * 1000:>11.1f} ms")
        extra = {k: v for k, v in result.items() if k not in ("rates", "ratio", "first_publish_s")}
        print(f"  {extra}")
    if max_received is not None:
        print(f"\n(bus.MAX_RECEIVED_BYTES = {max_received / mib:.0f} MiB)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
