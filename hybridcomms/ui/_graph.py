"""Who talks to whom: the flow of messages between agents over a recent window.

Flows come from three places: a look at the durable messages of every mailbox when the dashboard
starts (their senders, and the mailbox they are in as recipient: the newest `PER_AGENT` of each within
the window), the watcher's notifications from then on (a message delivered, a message dead), and the
ephemeral bus events that pass through the fanout (sender to recipient, or to ``*`` for a broadcast).
On Redis, which has no notifications, the look is taken again now and then.
"""

from __future__ import annotations

import hashlib
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from ._listing import HeadCache
from ._source import (
    STATES,
    HybridCommsError,
    Mailbox,
    MessageInfo,
    Source,
    State,
    listing,
    mailbox_agents,
    printable,
)

WINDOW = 15 * 60.0
PER_AGENT = 200
MAX_FLOWS = 200_000
#: What the flows may hold, in (estimated) bytes: a producer chooses the names, not how much is kept.
FLOW_BYTES = 32 << 20
#: The estimated cost of one flow beyond its names (the object, its slot in the deque).
FLOW_OVERHEAD = 160
#: The longest name kept for a node (characters); a longer one is cut and given a digest of the whole
#: name, so two long names that start alike stay two nodes (`node_key`).
NAME_LIMIT = 120
#: The dashboard's own nodes. Their ids start with "~", which no agent id can (they start with a letter
#: or a digit); a claimed sender that starts with "~" gets one more (`node_key`), so no producer can
#: name itself as one of these.
EVERYONE = "~everyone"  # where a bus event without a recipient goes (a broadcast)
UNKNOWN = "~unknown"  # the sender of a message that names none
OTHERS = "~others"  # the less busy nodes, merged
LABELS = {EVERYONE: "*", UNKNOWN: "?", OTHERS: "(others)"}
#: The most nodes drawn: the busiest; the rest are one node (`OTHERS`). A producer can claim any
#: sender it likes: 3,000 made-up senders must not make 3,000 nodes.
MAX_NODES = 40


def node_key(name: str | None, default: str = UNKNOWN) -> str:
    """The node a claimed name is drawn as: ``default`` for None or ""; else the name, with one more
    "~" in front if it starts with one (never one of the dashboard's own nodes), cut to about
    `NAME_LIMIT` characters with a digest of the whole name when longer (distinct names stay distinct)."""
    if not name:
        return default
    if name.startswith("~"):
        name = "~" + name
    if len(name) <= NAME_LIMIT:
        return name
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{name[: NAME_LIMIT - 20]}…#{digest}"


def _label(key: str) -> str:
    """What a node shows: its name (without the escaping "~"), or the mark of one of the own nodes."""
    own = LABELS.get(key)
    if own is not None:
        return own
    return key[1:] if key.startswith("~~") else key


@dataclass(frozen=True, slots=True)
class Flow:
    """One message from ``sender`` to ``recipient`` (node keys: `node_key`; `Flows.note` makes them)."""

    at: float
    sender: str
    recipient: str
    kind: str  # "durable" or "bus"
    dead: bool = False

    def cost(self) -> int:
        """Its estimated size in bytes (what `Flows` counts)."""
        return FLOW_OVERHEAD + 4 * (len(self.sender) + len(self.recipient))  # 4: the widest str storage


def flow(at: float, sender: str | None, recipient: str | None, kind: str, dead: bool = False) -> Flow:
    """A flow between two claimed names (None: no sender / a broadcast), as node keys."""
    return Flow(at, node_key(sender), node_key(recipient, EVERYONE), kind, dead)


class Flows:
    """The flows of the window, bounded by their bytes (`FLOW_BYTES`) and their number, oldest out
    first."""

    def __init__(self, window: float = WINDOW, budget: int = FLOW_BYTES) -> None:
        self.window = window
        self.budget = budget
        self.bytes = 0  # the estimated bytes held
        self._flows: deque[Flow] = deque()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._flows)

    def note(self, f: Flow) -> None:
        f = _keyed(f)
        with self._lock:
            self._flows.append(f)
            self.bytes += f.cost()
            self._trim()

    def replace(self, flows: list[Flow]) -> None:
        """The durable flows of a fresh look (bus flows are kept)."""
        flows = [_keyed(f) for f in flows]
        with self._lock:
            kept = [f for f in self._flows if f.kind == "bus"]
            self._flows = deque(sorted([*flows, *kept], key=lambda f: f.at))
            self.bytes = sum(f.cost() for f in self._flows)
            self._trim()

    def _trim(self) -> None:
        while self._flows and (self.bytes > self.budget or len(self._flows) > MAX_FLOWS):
            self.bytes -= self._flows.popleft().cost()

    def graph(self, now: float | None = None, agents: frozenset[str] | None = None) -> dict[str, Any]:
        """Nodes and edges for the page: per (sender, recipient, kind) the messages in the window, their
        rate per minute and how many of them are dead. At most `MAX_NODES` nodes: the busiest, the rest
        merged into `OTHERS`. ``agents``: the agents of the root (a mailbox of that name); a node that
        is none of them (nor a broadcast) is marked unverified (a sender is what its producer claims).
        Each node has an ``id`` (what edges name) and a ``label`` (what is shown)."""
        now = time.time() if now is None else now
        flows = self._in_window(now)
        kept, merged = _busiest(flows)
        ids = {n: printable(n) for n in kept}  # keys are short (`node_key`): this is cheap
        return {
            "window": self.window,
            "nodes": _nodes(kept, ids, agents, merged),
            "edges": _edges(flows, ids, self.window / 60.0),
        }

    def _in_window(self, now: float) -> list[Flow]:
        """The flows of the window ending ``now`` (the older ones are dropped)."""
        cutoff = now - self.window
        with self._lock:
            while self._flows and self._flows[0].at < cutoff:
                self.bytes -= self._flows.popleft().cost()
            return list(self._flows)


def _busiest(flows: list[Flow]) -> tuple[set[str], int]:
    """The nodes drawn (the busiest, at most `MAX_NODES` with the merged one) and how many others are
    merged into `OTHERS`."""
    busy = _busy(flows)
    kept = set(sorted(busy, key=lambda n: (-busy[n], n))[: MAX_NODES - 1 if len(busy) > MAX_NODES else None])
    return kept, len(busy) - len(kept)


def _busy(flows: list[Flow]) -> dict[str, int]:
    """How many flows each node takes part in."""
    busy: dict[str, int] = {}
    for f in flows:
        for n in (f.sender, f.recipient):
            busy[n] = busy.get(n, 0) + 1
    return busy


def _nodes(
    kept: set[str], ids: dict[str, str], agents: frozenset[str] | None, merged: int
) -> list[dict[str, Any]]:
    """The graph's nodes, by id, and the node of the ``merged`` others when there are any."""
    nodes: list[dict[str, Any]] = [
        {"id": ids[n], "label": printable(_label(n)), "verified": _verified(n, agents)}
        for n in sorted(kept, key=lambda n: ids[n])
    ]
    if merged:
        nodes.append({"id": OTHERS, "label": LABELS[OTHERS], "verified": False, "others": merged})
    return nodes


def _verified(node: str, agents: frozenset[str] | None) -> bool:
    """Whether a node is an agent of the root (or a broadcast): not only what a producer claims."""
    return agents is None or node in agents or node == EVERYONE


def _edges(flows: list[Flow], ids: dict[str, str], minutes: float) -> list[dict[str, Any]]:
    """The graph's edges, sorted: per (sender, recipient, kind) the messages, the dead ones, the rate."""
    return [
        {
            "source": s,
            "target": r,
            "kind": k,
            "count": c[0],
            "dead": c[1],
            "per_minute": round(c[0] / minutes, 3),
        }
        for (s, r, k), c in sorted(_edge_counts(flows, ids).items())
    ]


def _edge_counts(flows: list[Flow], ids: dict[str, str]) -> dict[tuple[str, str, str], list[int]]:
    """Per (sender id, recipient id, kind): [messages, dead ones] (a node not drawn counts as `OTHERS`)."""
    edges: dict[tuple[str, str, str], list[int]] = {}
    for f in flows:
        key = (ids.get(f.sender, OTHERS), ids.get(f.recipient, OTHERS), f.kind)
        counts = edges.setdefault(key, [0, 0])
        counts[0] += 1
        counts[1] += f.dead
    return edges


def _keyed(f: Flow) -> Flow:
    """``f`` with names no longer than a node key can be (a flow made by hand with long names is cut:
    `node_key`; a flow from `flow` is already)."""
    limit = NAME_LIMIT + 2
    if len(f.sender) <= limit and len(f.recipient) <= limit:
        return f
    return Flow(f.at, node_key(f.sender), node_key(f.recipient, EVERYONE), f.kind, f.dead)


def look(source: Source, heads: HeadCache, window: float = WINDOW, now: float | None = None) -> list[Flow]:
    """The durable flows of the window: the newest `PER_AGENT` messages of each mailbox that entered a
    state within it, with the sender their content names."""
    now = time.time() if now is None else now
    cutoff = now - window
    out: list[Flow] = []
    for agent in mailbox_agents(source.entries()):
        try:
            with source.reading(agent) as mb:
                out.extend(_recent_flows(mb, agent, heads, cutoff))
        except (KeyError, OSError, HybridCommsError, ValueError):
            continue
    return out


def _recent_flows(mb: Mailbox, agent: str, heads: HeadCache, cutoff: float) -> Iterator[Flow]:
    """The flows into ``agent`` of its newest `PER_AGENT` messages that entered a state since ``cutoff``."""
    for info in _recent(mb, cutoff)[:PER_AGENT]:
        sender = heads.head(mb, info).sender
        yield flow(info.changed_at, sender, agent, "durable", info.state is State.DEAD)


def _recent(mb: Mailbox, cutoff: float) -> list[MessageInfo]:
    """The messages of every state of ``mb`` that entered it since ``cutoff``, newest first."""
    recent = [info for state in STATES for info in listing(mb, state) if info.changed_at >= cutoff]
    recent.sort(key=lambda i: i.changed_at, reverse=True)
    return recent
