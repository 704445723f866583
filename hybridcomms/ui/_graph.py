"""Who talks to whom: the flow of messages between agents over a recent window.

Flows come from three places: a look at the durable messages of every mailbox when the dashboard
starts (their senders, and the mailbox they are in as recipient: the newest `PER_AGENT` of each within
the window), the watcher's notifications from then on (a message delivered, a message dead), and the
ephemeral bus events that pass through the fanout (sender to recipient, or to ``*`` for a broadcast).
On Redis, which has no notifications, the look is taken again now and then.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Any

from ._listing import HeadCache
from ._source import STATES, HybridCommsError, Source, State, listing, printable

WINDOW = 15 * 60.0
PER_AGENT = 200
MAX_FLOWS = 200_000
#: Where a bus event without a recipient goes (a broadcast).
EVERYONE = "*"
#: The most nodes drawn: the busiest; the rest are one node (`OTHERS`). A producer can claim any
#: sender it likes: 3,000 made-up senders must not make 3,000 nodes.
MAX_NODES = 40
OTHERS = "(others)"


@dataclass(frozen=True, slots=True)
class Flow:
    at: float
    sender: str
    recipient: str
    kind: str  # "durable" or "bus"
    dead: bool = False


class Flows:
    """The flows of the window, bounded."""

    def __init__(self, window: float = WINDOW) -> None:
        self.window = window
        self._flows: deque[Flow] = deque(maxlen=MAX_FLOWS)
        self._lock = threading.Lock()

    def note(self, flow: Flow) -> None:
        with self._lock:
            self._flows.append(flow)

    def replace(self, flows: list[Flow]) -> None:
        """The durable flows of a fresh look (bus flows are kept)."""
        with self._lock:
            kept = [f for f in self._flows if f.kind == "bus"]
            self._flows = deque(sorted([*flows, *kept], key=lambda f: f.at), maxlen=MAX_FLOWS)

    def graph(self, now: float | None = None, agents: frozenset[str] | None = None) -> dict[str, Any]:
        """Nodes and edges for the page: per (sender, recipient, kind) the messages in the window, their
        rate per minute and how many of them are dead. At most `MAX_NODES` nodes: the busiest, the rest
        merged into `OTHERS`. ``agents``: the agents of the root (a mailbox of that name); a node that
        is none of them (nor a broadcast) is marked unverified (a sender is what its producer claims)."""
        now = time.time() if now is None else now
        cutoff = now - self.window
        with self._lock:
            while self._flows and self._flows[0].at < cutoff:
                self._flows.popleft()
            flows = list(self._flows)
        busy: dict[str, int] = {}
        for f in flows:
            for n in (f.sender, f.recipient):
                busy[n] = busy.get(n, 0) + 1
        kept = set(
            sorted(busy, key=lambda n: (-busy[n], n))[: MAX_NODES - 1 if len(busy) > MAX_NODES else None]
        )
        merged = len(busy) - len(kept)

        def node(name: str) -> str:
            return printable(name, 200) if name in kept else OTHERS

        edges: dict[tuple[str, str, str], list[int]] = {}
        for f in flows:
            counts = edges.setdefault((node(f.sender), node(f.recipient), f.kind), [0, 0])
            counts[0] += 1
            counts[1] += f.dead
        shown = {printable(n, 200): n for n in kept}
        nodes = [
            {"id": n, "verified": agents is None or shown[n] in agents or shown[n] == EVERYONE}
            for n in sorted(shown)
        ]
        if merged:
            nodes.append({"id": OTHERS, "verified": False, "others": merged})
        minutes = self.window / 60.0
        return {
            "window": self.window,
            "nodes": nodes,
            "edges": [
                {
                    "source": s,
                    "target": r,
                    "kind": k,
                    "count": c[0],
                    "dead": c[1],
                    "per_minute": round(c[0] / minutes, 3),
                }
                for (s, r, k), c in sorted(edges.items())
            ],
        }


def look(source: Source, heads: HeadCache, window: float = WINDOW, now: float | None = None) -> list[Flow]:
    """The durable flows of the window: the newest `PER_AGENT` messages of each mailbox that entered a
    state within it, with the sender their content names."""
    now = time.time() if now is None else now
    cutoff = now - window
    out: list[Flow] = []
    for entry in source.entries():
        if entry.kind != "mailbox" or entry.agent is None:
            continue
        try:
            with source.reading(entry.agent) as mb:
                recent = [
                    info for state in STATES for info in listing(mb, state) if info.changed_at >= cutoff
                ]
                recent.sort(key=lambda i: i.changed_at, reverse=True)
                for info in recent[:PER_AGENT]:
                    sender = heads.head(mb, info).sender or "?"
                    dead = info.state is State.DEAD
                    out.append(Flow(info.changed_at, sender, entry.agent, "durable", dead))
        except (KeyError, OSError, HybridCommsError, ValueError):
            continue
    return out
