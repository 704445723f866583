"""Prometheus metrics, through the ``prometheus-client`` library (the ``metrics`` extra).

Two kinds:

- **State of the mailboxes**, read from the folders at scrape time (names and ``stat`` only, never a
  message body): `MailboxCollector`. One exporter per root owns it: ``hybridcomms watch
  --metrics-port`` (or ``hybridcomms stats --prometheus`` where no watch service runs); ``hybridcomms
  work`` never exports it, so the depth of a mailbox is never scraped twice.
- **What happened**, counted from the watcher's events (`EventCounter`, fed by ``hybridcomms watch``),
  by ``hybridcomms work`` (`WorkMetrics`), by the in-process bus and `Comms` (`BusCollector`), and the
  backend outages this process went through (`OutageCollector`, part of `BusCollector`, and served
  by ``hybridcomms work``).

Every metric is listed in docs/operations.md, with a Grafana dashboard and alert rules.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
    from prometheus_client.registry import Collector
except ImportError as exc:  # pragma: no cover - the metrics extra is in dev
    raise ImportError(
        "hybridcomms metrics need the prometheus-client library: pip install 'hybridcomms[metrics]'"
    ) from exc

import orjson

from . import _fs
from ._names import REASON_SUFFIX
from .backends.base import MailboxStats
from .backends.file import FileMailbox
from .backends.file.inspection import RootEntry, survey_root
from .errors import HybridCommsError
from .states import State

__all__ = [
    "BusCollector",
    "EventCounter",
    "MailboxCollector",
    "OutageCollector",
    "WorkMetrics",
    "dead_reason_class",
    "registry_for",
]

_STATES = (State.NEW, State.PROCESSING, State.DONE, State.DEAD, State.TMP)


class MailboxCollector(Collector):
    """Depth per agent and state, age of the oldest message per agent and state, and the delayed
    (backing off) messages, for every mailbox under ``root``: read at each scrape, read-only.

    One exporter per root owns these: ``hybridcomms watch --metrics-port`` (or ``hybridcomms stats
    --prometheus`` where no watch service runs); ``hybridcomms work`` exports only its own `WorkMetrics`
    and its backend's outages (`OutageCollector`)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def collect(self) -> Iterator[Any]:
        yield from self._mailbox_metrics()
        yield from self._bus_metrics()

    def _mailbox_metrics(self) -> Iterator[Any]:
        """Depth, oldest age and delayed messages per mailbox; how many mailboxes were read or not."""
        depth = GaugeMetricFamily(
            "hybridcomms_messages", "Messages in each state's folder", labels=["agent", "state"]
        )
        oldest = GaugeMetricFamily(
            "hybridcomms_oldest_age_seconds",
            "Seconds since the oldest message entered its state's folder",
            labels=["agent", "state"],
        )
        delayed = GaugeMetricFamily(
            "hybridcomms_delayed_messages", "Messages in new/ not due yet (backing off)", labels=["agent"]
        )
        up = GaugeMetricFamily("hybridcomms_mailboxes", "Mailboxes under the root, read at this scrape")
        unreadable = GaugeMetricFamily(
            "hybridcomms_unreadable_mailboxes",
            "Entries under the root that are or claim to be mailboxes but cannot be read "
            "(hybridcomms stats names them)",
        )
        read, bad = self._read_stats()
        for agent, st in read:
            for state in _STATES:
                s = st.states[state]
                depth.add_metric([agent, state.value], s.count)
                oldest.add_metric([agent, state.value], s.oldest_age or 0.0)
            delayed.add_metric([agent], st.delayed)
        up.add_metric([], len(read))
        unreadable.add_metric([], bad)
        yield from (depth, oldest, delayed, up, unreadable)

    def _read_stats(self) -> tuple[list[tuple[str, MailboxStats]], int]:
        """The stats of every mailbox under the root that can be read, and how many entries that
        are or claim to be mailboxes cannot (legacy Dream.OS folders are neither)."""
        read: list[tuple[str, MailboxStats]] = []
        bad = 0
        for entry in self._entries():
            if entry.kind == "legacy":
                continue
            stats = self._readable(entry)
            if stats is None:
                bad += 1
            else:
                read.append(stats)
        return read, bad

    def _entries(self) -> list[RootEntry]:
        """The entries of the root that are or claim to be mailboxes; none if the root is not there."""
        try:
            return survey_root(self.root)
        except FileNotFoundError:
            return []

    def _readable(self, entry: RootEntry) -> tuple[str, MailboxStats] | None:
        """The agent and stats of a mailbox entry; None if it is broken or cannot be read."""
        if entry.kind == "broken" or entry.agent is None:
            return None
        st = self._stats_of(entry.agent)
        return None if st is None else (entry.agent, st)

    def _stats_of(self, agent: str) -> MailboxStats | None:
        """``agent``'s mailbox stats, read-only; None if the mailbox cannot be read."""
        try:
            with FileMailbox(self.root, agent, read_only=True, fsync="never") as mb:
                return mb.stats()
        except (OSError, HybridCommsError):
            return None

    def _bus_metrics(self) -> Iterator[Any]:
        """The processes sharing the root's bus events, and the events they dropped."""
        from .bus.fanout import bus_peers

        peers = bus_peers(self.root)
        yield _bus_processes(peers)
        yield _bus_dropped(peers)


def _bus_processes(peers: list[dict[str, Any]]) -> GaugeMetricFamily:
    """The processes sharing the root's bus events, counted as alive or not."""
    procs = GaugeMetricFamily(
        "hybridcomms_bus_processes",
        "Processes sharing the root's bus events, alive or not",
        labels=["alive"],
    )
    alive = sum(1 for p in peers if p["alive"])
    procs.add_metric(["true"], alive)
    procs.add_metric(["false"], len(peers) - alive)
    return procs


def _bus_dropped(peers: list[dict[str, Any]]) -> GaugeMetricFamily:
    """The bus events the sharing processes dropped for a subscriber."""
    dropped = GaugeMetricFamily(
        "hybridcomms_bus_dropped_events",
        "Bus events the sharing processes dropped for a subscriber (as reported by live processes of "
        "this host whose socket is bound)",
    )
    dropped.add_metric([], sum(p["dropped"] for p in peers))
    return dropped


def dead_reason_class(reason: str | None) -> str:
    """A small, fixed set of classes for dead-letter reasons (a label must not be free text)."""
    text = (reason or "").lower()
    if not text:
        return "unknown"
    if _gave_up(text):
        return "attempts"
    return _class_by_words(text)


def _class_by_words(text: str) -> str:
    """The first class whose marking words the (lower-case) reason holds; "handler" for none."""
    for name, words in _REASON_WORDS:
        if any(w in text for w in words):
            return name
    return "handler"


#: The classes of dead-letter reasons after "attempts", first match wins: the words that mark each.
_REASON_WORDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("expired", ("expired",)),
    ("undecodable", ("json", "decode", "too large", "not a regular", "symlink", "timestamp", "field")),
    ("rejected", ("cannot be", "out of range", "already in processing")),
)


def _gave_up(text: str) -> bool:
    """Whether a (lower-case) reason says every attempt failed, or a worker's process exited."""
    return ("failed" in text and "attempts" in text) or "during attempt" in text or "exit status" in text


class EventCounter:
    """Counts the watcher's events: feed it `MailboxEvent` s (``on_event``)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.events = Counter(
            "hybridcomms_events",
            "Things that happened to messages, by kind",
            ["agent", "kind"],
            registry=registry,
        )
        self.redeliveries = Counter(
            "hybridcomms_redeliveries", "Claims past the first of a message", ["agent"], registry=registry
        )
        self.dead = Counter(
            "hybridcomms_dead_letters",
            "Messages dead-lettered, by reason class",
            ["agent", "reason"],
            registry=registry,
        )

    def __call__(self, ev: Any) -> None:
        if ev.kind == "waiting":
            return  # what already waited at the start: no event (the depth gauges count it)
        self.events.labels(ev.agent, ev.kind).inc()
        if ev.kind == "claimed" and ev.attempt > 1:
            self.redeliveries.labels(ev.agent).inc()
        if ev.kind == "dead":
            self.dead.labels(ev.agent, dead_reason_class(_reason_of(ev.path))).inc()


def _reason_of(path: str) -> str | None:
    try:
        value = orjson.loads(_fs.read_regular(path + REASON_SUFFIX, 1 << 20))
    except (OSError, ValueError):
        return None
    return value.get("reason") if isinstance(value, dict) else None


class WorkMetrics:
    """What ``hybridcomms work`` did: handled messages by outcome, and how long commands ran."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.handled = Counter(
            "hybridcomms_work_messages",
            "Messages handled by work, by outcome",
            ["agent", "outcome"],
            registry=registry,
        )
        self.seconds = Histogram(
            "hybridcomms_work_seconds",
            "How long work's command ran per message",
            ["agent"],
            registry=registry,
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 2, 5, 10, 30, 60, 300, 900),
        )

    def observe(self, agent: str, outcome: str, seconds: float) -> None:
        self.handled.labels(agent, outcome).inc()
        self.seconds.labels(agent).observe(seconds)


class BusCollector(Collector):
    """What this process did (in-process use: ``registry_for(bus=True)``): events published on the
    in-memory bus, and the runs of `Comms` durable handlers (failures and time spent)."""

    def collect(self) -> Iterator[Any]:
        yield _bus_publishes()
        yield _fanout_events()
        yield from _handler_runs()
        yield from OutageCollector().collect()


def _bus_publishes() -> CounterMetricFamily:
    """Events published on this process's in-memory bus."""
    from .bus import published_count

    c = CounterMetricFamily("hybridcomms_bus_publishes", "Events published on the in-memory bus")
    c.add_metric([], published_count())
    return c


def _fanout_events() -> CounterMetricFamily:
    """Bus events to and from other processes, by what became of them."""
    from .bus.fanout import FANOUT_STATS
    from .bus.fanout import STATS_LOCK as fanout_lock

    fan = CounterMetricFamily(
        "hybridcomms_bus_fanout_events",
        "Bus events to and from other processes: sent, received, dropped_full (a subscriber's buffer "
        "and its backlog were full), dropped_bad (did not decode), unsendable, pruned (dead "
        "subscribers), dropped_queue (Redis send queue full), deferred (sent late from a backlog), "
        "dropped_busy (async handlers had too many runs unfinished), refused_durable (an event on a "
        "durable topic from another process, not handed to a Comms handler), dropped_budget (not "
        "sent: the subscribers of one user took turns)",
        labels=["result"],
    )
    with fanout_lock:
        counts = dict(FANOUT_STATS)
    for result, n in counts.items():
        fan.add_metric([result], n)
    return fan


def _handler_runs() -> tuple[CounterMetricFamily, CounterMetricFamily]:
    """The runs of `Comms` durable handlers per agent, by result, and the seconds they took."""
    from ._consumer import handler_rows

    runs = CounterMetricFamily(
        "hybridcomms_handler_runs", "Comms durable handler runs, by result", labels=["agent", "result"]
    )
    spent = CounterMetricFamily(
        "hybridcomms_handler_seconds", "Seconds spent in Comms durable handlers", labels=["agent"]
    )
    for agent, (ok, failed, seconds) in handler_rows().items():
        runs.add_metric([agent, "ok"], ok)
        runs.add_metric([agent, "failed"], failed)
        spent.add_metric([agent], seconds)
    return runs, spent


class OutageCollector(Collector):
    """Backend outages this process went through (a `Comms`'s consumer loop and router, ``hybridcomms
    work``), per agent and backend kind (``file``, ``redis``, ``memory``): how many, how long, and
    whether the backend works now (`hybridcomms._outage`)."""

    def collect(self) -> Iterator[Any]:
        from ._outage import outage_rows

        labels = ["agent", "backend"]
        outages = CounterMetricFamily(
            "hybridcomms_backend_outages",
            "Times the mailbox backend started failing (unreachable, I/O errors, mailbox folder gone)",
            labels=labels,
        )
        seconds = CounterMetricFamily(
            "hybridcomms_backend_outage_seconds",
            "Seconds the mailbox backend was failing, the current outage included",
            labels=labels,
        )
        up = GaugeMetricFamily(
            "hybridcomms_backend_up", "1 while the mailbox backend works, 0 during an outage", labels=labels
        )
        for agent, backend, count, lasted, ok in outage_rows():
            outages.add_metric([agent, backend], count)
            seconds.add_metric([agent, backend], lasted)
            up.add_metric([agent, backend], 1 if ok else 0)
        yield from (outages, seconds, up)


def registry_for(root: str | os.PathLike[str] | None = None, *, bus: bool = False) -> CollectorRegistry:
    """A registry with the mailbox state of ``root`` (and the bus counter of this process)."""
    registry = CollectorRegistry()
    if root is not None:
        registry.register(MailboxCollector(root))
    if bus:
        registry.register(BusCollector())
    return registry


def write_textfile(path: str | os.PathLike[str], registry: CollectorRegistry) -> None:
    """For node_exporter's textfile collector: written atomically (temp file, rename)."""
    from prometheus_client import write_to_textfile

    write_to_textfile(os.fspath(path), registry)
