"""What every fanout transport is (`Transport`), what they count (`FANOUT_STATS`), and how an event
that arrives from another process is handed to this process's bus (`deliver`).

Two transports carry a shared bus's events: `hybridcomms.bus.fanout.local` (a ``.bus/`` folder of
Unix sockets, one host) and `hybridcomms.bus.fanout.redis_pubsub` (Redis pub/sub, across hosts).
`hybridcomms.bus.fanout.share_bus` makes one of them; nothing else tells them apart."""

from __future__ import annotations

import socket
import threading
from typing import Protocol

from ... import _log
from ..core import AgentBus, Event

__all__ = ["FANOUT_STATS", "HOST", "STATS_LOCK", "Transport", "count", "deliver"]

log = _log.get("hybridcomms.fanout")

#: This host's name, in origins and registrations (sockets reach the processes of one host only).
HOST = socket.gethostname()


class Transport(Protocol):
    """Carries the events a bus publishes (`AgentBus.add_outlet`) to the other processes sharing a
    place, and delivers theirs (`deliver`). Never raises into the publisher."""

    #: ``host:pid[...]``: set as ``event.origin`` on what others receive from this process.
    origin: str

    def send(self, event: Event) -> None:
        """Carry ``event`` (published in this process) out; at most once, without waiting."""

    def close(self) -> None:
        """Stop carrying events both ways, and release what the transport holds."""


#: Counters of this process: sent, received, dropped_full (a subscriber's buffer and its backlog here
#: were full, or it was found not reading), dropped_bad (a datagram that did not decode), unsendable
#: (not JSON, or too big), pruned (registrations of dead processes, or without a socket),
#: dropped_queue (Redis: the send queue was full), deferred (sent late, from a backlog), dropped_busy
#: (an event from another process that started no async handler: what the runs started by such
#: events held was at `core.MAX_RECEIVED_RUNS` or `core.MAX_RECEIVED_BYTES`, or the sender's share of
#: them), refused_durable (an event from another process on a topic the policy routes durable, not
#: handed to a `Comms` handler), dropped_budget (an event not sent to a peer because more peers of
#: its owner wanted it than one publish sends to: `local.SENDS_PER_OWNER`; they take turns).
FANOUT_STATS: dict[str, int] = dict.fromkeys(
    (
        "sent",
        "received",
        "dropped_full",
        "dropped_bad",
        "unsendable",
        "pruned",
        "dropped_queue",
        "deferred",
        "dropped_busy",
        "refused_durable",
        "dropped_budget",
    ),
    0,
)
#: Held to change `FANOUT_STATS` where a lost increment matters (and to read them all at once).
STATS_LOCK = threading.Lock()


def count(key: str, n: int = 1) -> None:
    """Add ``n`` to the counter ``key`` of `FANOUT_STATS`."""
    with STATS_LOCK:
        FANOUT_STATS[key] += n


def deliver(bus: AgentBus, event: Event, size: int, sender: int) -> None:
    """Hand an event from another process to this process's subscribers (on a receiving thread).
    ``size`` (its encoded bytes) and ``sender`` (the sending process, -1 if unknown) bound what it
    may hold in async handler runs (`AgentBus.publish_received`)."""
    FANOUT_STATS["received"] += 1  # one receiving thread per transport: no lock on this path
    try:
        result = bus.publish_received(event, size, sender)  # handler failures are the bus's to isolate
    except Exception:
        log.exception("fanout: delivering %s failed", event.topic)
        return
    if result.dropped:  # async handlers of this bus had too much unfinished
        count("dropped_busy")
