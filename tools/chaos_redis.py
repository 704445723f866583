"""The Redis phase of ``tools/chaos.py --redis`` (or run alone: ``python tools/chaos_redis.py``):
producers and consumers on one `RedisMailbox`, SIGKILLed and restarted at random, and the Redis server
itself SIGKILLed and restarted (AOF, ``appendfsync always``); nobody runs ``recover``. Then the
mailbox is drained and every message accounted for.

What is checked (the durable path: nothing acknowledged is lost):

- **lost**: ids whose put returned (each producer logs an id after its put returns) that are in
  neither ``done`` nor ``dead`` after the drain; must be 0;
- **leftovers**: entries still waiting, delayed or pending after the drain; must be 0.

Reported, not failed: ``duplicates`` (ids acked more than once: an ack that failed while Redis was down
is delivered again, at least once) and ``redeliveries``. Needs ``redis-server`` on the PATH.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

AGENT = "Chaos-R"
LEASE = 1.0
KEEP_DONE = 10_000_000  # done_retention: every ack stays countable


def _mailbox(url: str) -> Any:
    from hybridcomms import Backoff
    from hybridcomms.backends.redis.mailbox import RedisMailbox

    return RedisMailbox(
        url,
        AGENT,
        lease=LEASE,
        max_attempts=1_000_000,
        backoff=Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0),
        done_retention=KEEP_DONE,
    )


# -- roles (each runs in its own process) ---------------------------------------------------------


def _connect(url: str) -> Any:
    """A mailbox, once the server answers (it may be down at the start of an incarnation)."""
    from hybridcomms import HybridCommsError

    while True:
        try:
            return _mailbox(url)
        except (OSError, HybridCommsError):
            time.sleep(0.05)


def role_producer(url: str, log_path: str, prefix: str, stop_file: str) -> None:
    from hybridcomms import HybridCommsError, Message

    mb = _connect(url)
    n = 0
    with open(log_path, "a", buffering=1) as log:
        while not os.path.exists(stop_file):
            msg_id = f"{prefix}-{n}"
            try:
                mb.put(Message("chaos.job", {"n": n}, id=msg_id))
            except (OSError, HybridCommsError):
                time.sleep(0.05)  # Redis is down: the same id again (a put that raised may be stored)
                continue
            log.write(msg_id + "\n")  # only once the put returned
            n += 1
            time.sleep(0.002)


def role_consumer(url: str, log_path: str) -> None:
    from hybridcomms import HybridCommsError

    mb = _connect(url)
    with open(log_path, "a", buffering=1) as log:
        while True:
            try:
                d = mb.claim(timeout=0.5)
                if d is None:
                    continue
                log.write(f"claimed {d.message.id} {d.attempt}\n")
                d.ack()
                log.write(f"acked {d.message.id}\n")
            except (OSError, HybridCommsError):
                time.sleep(0.05)  # Redis is down, or the lease was lost: its claims take it back


# -- the server -----------------------------------------------------------------------------------


class _Server:
    def __init__(self, folder: Path) -> None:
        self.dir = folder
        self.dir.mkdir(parents=True, exist_ok=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = int(s.getsockname()[1])
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        args = ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.dir),
                "--save", "", "--appendonly", "yes", "--appendfsync", "always",
                "--maxmemory-policy", "noeviction", "--protected-mode", "no"]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer in time")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# -- the run ----------------------------------------------------------------------------------------


def _spawn(role: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--role", role, *args])


def _lines(paths: list[Path]) -> list[str]:
    out: list[str] = []
    for p in paths:
        if p.exists():
            out += [line for line in p.read_text().splitlines() if line]
    return out


#: What the producers must have put, in all, before the run ends (see `run_redis`).
MIN_PRODUCED = 20


def run_redis(
    base: Path, seconds: float, producers: int, consumers: int, redis_kills: int, seed: int | None
) -> dict[str, Any]:
    if shutil.which("redis-server") is None:
        return {"ok": False, "error": "redis-server is not installed"}
    rng = random.Random(seed)
    work = base / "redis-chaos"
    work.mkdir(parents=True, exist_ok=True)
    server = _Server(work / "data")
    server.start()
    url = server.url
    stop_file = work / "stop"
    prod_logs: list[Path] = []
    cons_logs: list[Path] = []
    procs: dict[str, subprocess.Popen[bytes]] = {}
    incarnation = collections.Counter[str]()

    def start(name: str) -> None:
        incarnation[name] += 1
        if name.startswith("p"):
            log = work / f"{name}.{incarnation[name]}.log"
            prod_logs.append(log)
            procs[name] = _spawn("producer", url, str(log), f"{name}i{incarnation[name]}", str(stop_file))
        else:
            log = work / f"{name}.{incarnation[name]}.log"
            cons_logs.append(log)
            procs[name] = _spawn("consumer", url, str(log))

    for i in range(producers):
        start(f"p{i}")
    for i in range(consumers):
        start(f"c{i}")
    kills = server_kills = 0
    deadline = time.monotonic() + seconds
    next_server_kill = time.monotonic() + seconds / (redis_kills + 1)
    try:
        while time.monotonic() < deadline:
            time.sleep(rng.uniform(0.1, 0.4))
            if server_kills < redis_kills and time.monotonic() >= next_server_kill:
                server.kill()  # kill -9 of Redis: what the AOF holds is what was acknowledged
                server_kills += 1
                time.sleep(rng.uniform(0.1, 0.5))
                server.start()
                next_server_kill = time.monotonic() + seconds / (redis_kills + 1)
                continue
            name = rng.choice(sorted(procs))
            procs[name].send_signal(signal.SIGKILL)
            procs[name].wait()
            kills += 1
            start(name)
        # Bounded by progress too: on a loaded machine a producer may be killed before its first put
        # returns, every time. The chaos is over; the producers run on, unharmed, until they have
        # put MIN_PRODUCED messages in all (at most a minute more).
        calm_until = time.monotonic() + 60
        while len(set(_lines(prod_logs))) < MIN_PRODUCED and time.monotonic() < calm_until:
            time.sleep(0.05)
        stop_file.touch()
        for name, p in procs.items():
            if name.startswith("p"):
                p.wait(60)
        for name, p in procs.items():
            if name.startswith("c") and p.poll() is None:
                p.send_signal(signal.SIGKILL)  # holding whatever it claimed
                p.wait()
        # The drain: one more consumer, until nothing is left; its claims take back the leases of the
        # killed ones (nobody runs recover).
        mb = _mailbox(url)
        drained = 0
        quiet_until = time.monotonic() + 3 * LEASE + 1
        while time.monotonic() < quiet_until:
            d = mb.claim(timeout=0.2)
            if d is None:
                continue
            d.ack()
            drained += 1
            quiet_until = time.monotonic() + 3 * LEASE + 1
        produced = set(_lines(prod_logs))
        from hybridcomms import State

        done_ids = collections.Counter(i.id for i in mb.list(State.DONE))
        dead_ids = {i.id for i in mb.list(State.DEAD)}
        stats = mb.stats()
        leftovers = stats.states[State.NEW].count + stats.states[State.PROCESSING].count
        claims = [line for line in _lines(cons_logs) if line.startswith("claimed ")]
        mb.close()
    finally:
        stop_file.touch()
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
        server.kill()
    lost = sorted(i for i in produced if i not in done_ids and i not in dead_ids)
    result = {
        "produced": len(produced),
        "acked": len(done_ids),
        "dead": len(dead_ids),
        "lost": len(lost),
        "duplicates": sum(n - 1 for n in done_ids.values() if n > 1),
        "redeliveries": sum(1 for line in claims if not line.endswith(" 1")),
        "kills": kills,
        "redis_kills": server_kills,
        "drained": drained,
        "leftovers": leftovers,
    }
    result["ok"] = result["lost"] == 0 and leftovers == 0 and result["produced"] > 0
    if lost:
        result["lost_ids"] = lost[:20]
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--role", help=argparse.SUPPRESS)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--producers", type=int, default=2)
    ap.add_argument("--consumers", type=int, default=3)
    ap.add_argument("--redis-kills", type=int, default=2, help="times Redis is killed (-9) and restarted")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--root", help="where the logs and Redis's data go (default: a new temporary folder)")
    args, rest = ap.parse_known_args(argv)
    if args.role == "producer":
        role_producer(*rest)
        return 0
    if args.role == "consumer":
        role_consumer(*rest)
        return 0
    base = Path(args.root or tempfile.mkdtemp(prefix="hybridcomms-chaos-"))
    result = run_redis(base, args.seconds, args.producers, args.consumers, args.redis_kills, args.seed)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
