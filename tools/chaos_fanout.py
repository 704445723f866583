"""The fanout phase of ``tools/chaos.py --fanout``: publishers and subscribers sharing one root's bus
(`hybridcomms.bus.fanout`), SIGKILLed, stopped (SIGSTOP) and restarted at random; then an accounting of
every event on the ephemeral path.

What is checked, for every pair of a publisher and a subscriber that both ran to the end (the last
incarnation of each, stopped with SIGTERM once the chaos is over):

- **every drop is counted**: from the first event the subscriber got from that publisher to the
  publisher's last, each event was either received once or counted as dropped for that subscriber by
  the publisher (``LocalFanout.dropped_to``, what ``hybridcomms stats`` sums): ``received + dropped ==
  last - first + 1``;
- at most once, in order: no event received twice, none out of its publisher's order;
- **nothing of the dead is left**: once everyone has stopped, a fresh process that shares the root
  finds (and prunes) every registration of a killed process at its first look.

Events lost with a process that was killed (in its socket buffer, or in a killed publisher's backlog)
are not checked: nobody is left to count them (at most once, docs/guarantees.md).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

TOPIC = "chaos.tick"


# -- roles (each runs in its own process) ---------------------------------------------------------


def _fanout_of(bus: Any, root: str) -> Any:
    from hybridcomms.bus.fanout import _shared

    return _shared[(id(bus), os.path.abspath(root))][0]


def role_subscriber(root: str, out: str) -> None:
    """Record every event (publisher, number) until SIGTERM; then read what is still arriving until it
    stops arriving, and write the record (its registration name first) to ``out``."""
    from hybridcomms.bus import AgentBus, Event
    from hybridcomms.bus.fanout import share_bus

    got: list[str] = []
    last = [time.monotonic()]

    def record(event: Event) -> None:
        p = event.payload
        got.append(f"{p['p']} {p['n']}")
        last[0] = time.monotonic()

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    bus = AgentBus()
    bus.subscribe("chaos.*", record)
    release = share_bus(bus, root=root)
    name = _fanout_of(bus, root).name
    stop.wait()
    while time.monotonic() - last[0] < 0.5:  # the publishers have stopped: what is left comes now
        time.sleep(0.05)
    release()
    tmp = out + ".tmp"
    with open(tmp, "w") as f:
        f.write(name + "\n" + "\n".join(got) + "\n")
    os.replace(tmp, out)


def role_publisher(root: str, out: str, ident: str, rate: str) -> None:
    """Publish numbered events at about ``rate`` per second until SIGTERM; then let the backlogs
    drain (bounded), stop sharing, and write what it published and dropped for whom to ``out``."""
    from hybridcomms.bus import AgentBus
    from hybridcomms.bus.fanout import share_bus

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    bus = AgentBus()
    release = share_bus(bus, root=root)
    fanout = _fanout_of(bus, root)
    interval = 1.0 / float(rate)
    n = 0
    next_at = time.monotonic()
    while not stop.is_set():
        bus.publish(TOPIC, {"p": ident, "n": n})
        n += 1
        next_at += interval
        pause = next_at - time.monotonic()
        if pause > 0:
            stop.wait(pause)
    deadline = time.monotonic() + 5
    while fanout.waiting() and time.monotonic() < deadline:
        time.sleep(0.01)
    release()  # what still waited is counted as dropped
    report = {"id": ident, "name": fanout.name, "last": n - 1, "dropped_to": fanout.dropped_to()}
    tmp = out + ".tmp"
    Path(tmp).write_text(json.dumps(report))
    os.replace(tmp, out)


# -- the conductor --------------------------------------------------------------------------------


class _Proc:
    def __init__(self, kind: str, k: int) -> None:
        self.kind = kind
        self.k = k
        self.gen = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.out = ""
        self.stopped_until = 0.0

    def start(self, me: list[str], root: str, work: Path, rate: float) -> None:
        self.gen += 1
        ident = f"{self.kind[0]}{self.k}g{self.gen}"
        self.out = str(work / f"{ident}.out")
        role = ["--role", f"fanout-{self.kind}", root, self.out]
        if self.kind == "publisher":
            role += [ident, str(rate)]
        self.proc = subprocess.Popen([*me, *role], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
        self.stopped_until = 0.0


def _received(path: Path) -> tuple[str, dict[str, list[int]]]:
    lines = path.read_text().splitlines()
    by_publisher: dict[str, list[int]] = {}
    for line in lines[1:]:
        if line:
            p, n = line.split()
            by_publisher.setdefault(p, []).append(int(n))
    return lines[0], by_publisher


def run_fanout(
    root: Path, seconds: float, publishers: int, subscribers: int, rate: float, seed: int | None
) -> dict[str, Any]:
    """The fanout phase (see the module docstring): the result, with ``ok``."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    work = root.parent / (root.name + ".fanout")
    work.mkdir(parents=True, exist_ok=True)
    me = [sys.executable, str(Path(__file__).with_name("chaos.py"))]
    procs = [_Proc("publisher", k) for k in range(publishers)]
    procs += [_Proc("subscriber", k) for k in range(subscribers)]
    for p in procs:
        p.start(me, str(root), work, rate)
    kills = stops = 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(rng.uniform(0.05, 0.25))
        now = time.monotonic()
        for p in procs:  # thaw the stopped ones whose time is up
            if p.stopped_until and now >= p.stopped_until and p.proc is not None:
                p.proc.send_signal(signal.SIGCONT)
                p.stopped_until = 0.0
        victim = rng.choice(procs)
        if victim.stopped_until or victim.proc is None:
            continue
        if rng.random() < 0.4:  # stopped: a subscriber that reads nothing, a publisher that waits
            victim.proc.send_signal(signal.SIGSTOP)
            victim.stopped_until = now + rng.uniform(0.1, 0.8)
            stops += 1
            continue
        victim.proc.kill()
        victim.proc.wait()
        kills += 1
        victim.start(me, str(root), work, rate)
    for p in procs:
        if p.stopped_until and p.proc is not None:
            p.proc.send_signal(signal.SIGCONT)
            p.stopped_until = 0.0
    # The last incarnations: a calm half second (they see each other), one subscriber stopped until
    # a publisher has reported dropping events (its backlog for it filled: those drops are checked
    # below), calm again.
    from hybridcomms.bus.fanout import bus_peers

    def registration_of(pid: int) -> str | None:
        return next((p["name"] for p in bus_peers(root) if p["pid"] == pid), None)

    def dropped_for(name: str) -> int:
        """What the publishers' registrations report as dropped for ``name`` (read as a person would,
        from the files under ``.bus/``)."""
        total = 0
        for reg in (root / ".bus").glob("*.json"):
            try:
                body = json.loads(reg.read_text())
            except (OSError, ValueError):
                continue
            n = body.get("dropped_to", {}).get(name, 0) if isinstance(body, dict) else 0
            total += n if isinstance(n, int) else 0
        return total

    time.sleep(0.5)
    held = next(p for p in procs if p.kind == "subscriber")
    assert held.proc is not None
    held_name = None
    until = time.monotonic() + 30
    while held_name is None and time.monotonic() < until:  # registered by now, but under load...
        held_name = registration_of(held.proc.pid)
        if held_name is None:
            time.sleep(0.05)
    before = dropped_for(held_name) if held_name is not None else 0
    held.proc.send_signal(signal.SIGSTOP)
    stops += 1
    # Held until a publisher reports dropping events for this very subscriber (its backlog for it,
    # fanout.BACKLOG_EVENTS, overflowed): a count for another peer, or one reported late for an
    # earlier stop, is no proof that this hold dropped anything. Bounded: 60 s at most.
    until = time.monotonic() + 60
    while held_name is not None and time.monotonic() < until:
        time.sleep(0.05)
        if dropped_for(held_name) > before:
            break
    held.proc.send_signal(signal.SIGCONT)
    time.sleep(0.5)
    exits = []
    for kind in ("publisher", "subscriber"):
        for p in procs:
            if p.kind == kind and p.proc is not None:
                p.proc.send_signal(signal.SIGTERM)
        for p in procs:
            if p.kind == kind and p.proc is not None:
                try:
                    exits.append(p.proc.wait(30))
                except subprocess.TimeoutExpired:
                    p.proc.kill()
                    exits.append(p.proc.wait())

    pubs = [json.loads(Path(p.out).read_text()) for p in procs if p.kind == "publisher"]
    subs = [_received(Path(p.out)) for p in procs if p.kind == "subscriber"]
    pairs = received = dropped = duplicates = out_of_order = 0
    mismatches = []
    for pub in pubs:
        for name, got in subs:
            seqs = got.get(pub["id"], [])
            lost = pub["dropped_to"].get(name, 0)
            if not seqs:
                if lost:  # dropped everything it had for this subscriber: counted, nothing received
                    pairs += 1
                    dropped += lost
                continue
            pairs += 1
            received += len(seqs)
            dropped += lost
            duplicates += len(seqs) - len(set(seqs))
            out_of_order += sum(1 for a, b in itertools.pairwise(seqs) if b <= a)
            expected = pub["last"] - seqs[0] + 1
            if len(set(seqs)) + lost != expected:
                mismatches.append(
                    {"publisher": pub["id"], "subscriber": name, "expected": expected,
                     "received": len(set(seqs)), "dropped": lost}
                )  # fmt: skip

    # Nothing of the dead is left: a fresh process's first look prunes them.
    from hybridcomms.bus import AgentBus
    from hybridcomms.bus.fanout import share_bus

    bus = AgentBus()
    release = share_bus(bus, root=root)
    bus.publish("chaos.check")
    leftovers = [p for p in bus_peers(root) if p["pid"] != os.getpid()]
    release()
    result: dict[str, Any] = {
        "pairs": pairs,
        "received": received,
        "dropped": dropped,
        "mismatches": mismatches,
        "duplicates": duplicates,
        "out_of_order": out_of_order,
        "kills": kills,
        "stops": stops,
        "leftovers": len(leftovers),
        "bad_exits": sum(1 for code in exits if code != 0),
    }
    result["ok"] = (
        pairs == publishers * subscribers
        and not mismatches
        and duplicates == 0
        and out_of_order == 0
        and not leftovers
        and result["bad_exits"] == 0
    )
    return result
