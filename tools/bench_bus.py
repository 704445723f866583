#!/usr/bin/env python3
"""AgentBus publish cost against a minimal matcher of the same rules, measured in the same run.

The minimal matcher is the least a bus with these pattern rules must do: split the topic, one dict
lookup for the exact topic and one per prefix, call the handlers. It builds the same `Event` the
handlers of both receive, so the ratio is what AgentBus adds (the resolution cache, de-duplication,
error isolation, sync/async dispatch, the `PublishResult`).

    python tools/bench_bus.py [--quick] [--json out.json]

Targets (from the issue): with 1,000 subscriptions (mixed exact and prefix.*), publishing to a topic
with one subscriber costs <= 1.5x the minimal matcher; the cost with 10,000 subscriptions is within
1.2x of the cost with 10.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hybridcomms.bus import AgentBus, Event

TOPIC = "dreamos.agent.Agent-7.task.command"


def populate(
    n: int,
) -> tuple[AgentBus, dict[str, list[Callable[[Any], Any]]], dict[str, list[Callable[[Any], Any]]]]:
    """n subscriptions, half exact and half prefix.*, none matching TOPIC but one exact."""
    bus = AgentBus()
    exact: dict[str, list[Callable[[Any], Any]]] = {}
    prefix: dict[str, list[Callable[[Any], Any]]] = {}
    for i in range(n - 1):

        def h(e: Any) -> None:
            return None

        if i % 2:
            pattern = f"dreamos.agent.Agent-{i + 100}.task.command"
            exact.setdefault(pattern, []).append(h)
        else:
            pattern = f"other{i}.*"
            prefix.setdefault(pattern[:-2], []).append(h)
        bus.subscribe(pattern, h)
    hits = [0]

    def target(e: Any) -> None:
        hits[0] += 1

    bus.subscribe(TOPIC, target)
    exact.setdefault(TOPIC, []).append(target)
    return bus, exact, prefix


def minimal_publish(
    exact: dict[str, list[Callable[[Any], Any]]], prefix: dict[str, list[Callable[[Any], Any]]]
) -> Callable[[str, Any], None]:
    def publish(topic: str, payload: Any) -> None:
        event = Event(topic, payload)
        for h in exact.get(topic, ()):
            h(event)
        parts = topic.split(".")
        for i in range(1, len(parts) + 1):
            for h in prefix.get(".".join(parts[:i]), ()):
                h(event)

    return publish


def per_call(fn: Callable[[], object], n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n


def interleaved(
    a: Callable[[], object], b: Callable[[], object], n: int, rounds: int
) -> tuple[float, float, float]:
    """Median per-call time of a and b, and the median of per-round ratios b/a."""
    ta, tb, ratios = [], [], []
    for r in range(rounds):
        first, second = (a, b) if r % 2 == 0 else (b, a)
        x = per_call(first, n)
        y = per_call(second, n)
        xa, xb = (x, y) if r % 2 == 0 else (y, x)
        ta.append(xa)
        tb.append(xb)
        ratios.append(xb / xa)
    return statistics.median(ta), statistics.median(tb), statistics.median(ratios)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    n, rounds = (20_000, 5) if args.quick else (100_000, 11)
    payload = {"task": "build"}

    bus, exact, prefix = populate(1000)
    minimal = minimal_publish(exact, prefix)
    t_min, t_bus, ratio = interleaved(
        lambda: minimal(TOPIC, payload), lambda: bus.publish(TOPIC, payload), n, rounds
    )

    small, _, _ = populate(10)
    large, _, _ = populate(10_000)
    t_small, t_large, growth = interleaved(
        lambda: small.publish(TOPIC, payload), lambda: large.publish(TOPIC, payload), n, rounds
    )

    rows = [
        ("publish, 1,000 subscriptions: AgentBus vs minimal matcher", t_min, t_bus, ratio, 1.5),
        ("publish, AgentBus: 10,000 vs 10 subscriptions", t_small, t_large, growth, 1.2),
    ]
    print("| scenario | baseline µs | measured µs | ratio (median of rounds) | target | ok |")
    print("|---|---:|---:|---:|---:|---|")
    ok_all = True
    for name, base, measured, r, target in rows:
        ok = r <= target
        ok_all &= ok
        verdict = "yes" if ok else "NO"
        print(f"| {name} | {base * 1e6:.2f} | {measured * 1e6:.2f} | {r:.2f}x | <= {target}x | {verdict} |")
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows}, indent=2))
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main())
