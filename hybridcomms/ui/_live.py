"""What keeps the dashboard current: notifications in, updates out to every open page.

On files the watcher's notifications (the ones ``hybridcomms tail`` prints) mark the agent whose
mailbox changed, count its rates and note its flows; a refresher thread counts the marked mailboxes
again and hands each open page (a server-sent event stream) the new numbers. No mailbox is polled.
On Redis, which has no such notifications, the refresher marks every mailbox each ``poll`` seconds
(5 by default) and takes the rates from the change of the counts.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from typing import Any

from ._fleet import Fleet, row_json
from ._graph import Flows, flow, look
from ._listing import HeadCache
from ._source import MailboxEvent, State, get_logger, printable

log = get_logger("hybridcomms.ui")  # its records made inert, as every logger of the package

#: Watcher event kinds counted as each rate.
_RATE_OF = {"delivered": "in", "requeued": "in", "imported": "in", "acked": "acked", "dead": "dead"}
#: Updates are sent at most this often (a burst of notifications is one update).
MIN_INTERVAL = 0.25


class Live:
    def __init__(self, fleet: Fleet, flows: Flows, heads: HeadCache, *, poll: float = 5.0) -> None:
        self.fleet = fleet
        self.flows = flows
        self.heads = heads
        self.poll = poll
        self._stops: list[Callable[[], None]] = []
        self._queues: set[tuple[asyncio.AbstractEventLoop, asyncio.Queue[dict[str, Any]]]] = set()
        self._lock = threading.Lock()
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None
        self._looking: threading.Thread | None = None  # the graph's last look (`_look`)
        self._last: dict[str, Any] | None = None
        self._polled_at = self._looked_at = 0.0  # when the refresher last marked all, took a look

    # -- in -----------------------------------------------------------------------------------------

    def on_event(self, ev: MailboxEvent) -> None:
        self.fleet.mark(ev.agent)
        kind = _RATE_OF.get(ev.kind)
        if kind is not None:
            self.fleet.rate(ev.agent, kind, 1, ev.time)
        if ev.kind == "delivered":
            self.flows.note(flow(ev.time, ev.sender, ev.agent, "durable"))
        elif ev.kind == "dead":
            self.flows.note(flow(ev.time, ev.sender, ev.agent, "durable", dead=True))

    def on_bus(self, sender: str | None, recipient: str | None, topic: str) -> None:
        self.flows.note(flow(time.time(), sender, recipient, "bus"))

    def start(self, *, bus: bool = True) -> None:
        source = self.fleet.source
        stop = source.watch(self.on_event)
        if stop is not None:
            self._stops.append(stop)
        if bus:
            with contextlib.suppress(OSError, ValueError):
                stop_bus = source.watch_bus(self.on_bus)
                if stop_bus is not None:
                    self._stops.append(stop_bus)
        self._thread = threading.Thread(target=self._run, name="hybridcomms-ui-live", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._closing.set()
        self.fleet.mark_all()  # wakes the refresher
        for thread in (self._thread, self._looking):  # the refresher first: it may start a look
            if thread is not None:
                thread.join(5)
        while self._stops:
            self._stops.pop()()

    # -- the refresher ------------------------------------------------------------------------------

    def _run(self) -> None:
        polled = not self.fleet.source.files
        with contextlib.suppress(Exception):  # an outage is reported by the loop below
            self.fleet.refresh()  # the counts first: the fleet page is what a person opens
        self._look()
        self._polled_at = self._looked_at = time.monotonic()
        timeout = min(self.poll, 1.0) if polled else 1.0
        version = -1
        before: dict[str, dict[str, int]] = {}
        while not self._closing.is_set():
            self._poll(polled)
            if not self._counted():
                continue
            if self.fleet.version != version:
                version = self.fleet.version
                self._send(polled, before)
            self.fleet.wait_changed(version, timeout=timeout)
            self._closing.wait(MIN_INTERVAL)

    def _poll(self, polled: bool) -> None:
        """On a backend without notifications: every mailbox marked each ``poll`` seconds, the
        graph's look taken again each minute."""
        if not polled:
            return
        now = time.monotonic()
        if now - self._polled_at >= self.poll:
            self.fleet.mark_all()
            self._polled_at = now
        if now - self._looked_at >= 60.0:
            self._look()
            self._looked_at = now

    def _counted(self) -> bool:
        """Counts what was marked (for two seconds at most); False when the backend failed (after a
        pause: the loop tries again)."""
        try:
            self.fleet.refresh(budget=2.0)
        except Exception as exc:  # the backend went away (Redis down, the root removed): try again
            log.warning("cannot count the mailboxes: %s", printable(str(exc), 500))
            self._closing.wait(self.poll)
            return False
        return True

    def _send(self, polled: bool, before: dict[str, dict[str, int]]) -> None:
        """Hands every open page the new numbers (with the rates the counts show, when polled)."""
        update = self.snapshot()
        if polled:
            self._rates_from_counts(update, before)
        self.publish(update)

    def _look(self) -> None:
        """The graph's look at the durable messages, in a thread of its own (it reads many folders)."""

        def run() -> None:
            try:
                self.flows.replace(look(self.fleet.source, self.heads))
            except Exception as exc:  # the backend went away: the graph keeps what it had
                log.warning("cannot look at the messages for the graph: %s", printable(str(exc), 500))

        self._looking = threading.Thread(target=run, name="hybridcomms-ui-look", daemon=True)
        self._looking.start()

    def _rates_from_counts(self, update: dict[str, Any], before: dict[str, dict[str, int]]) -> None:
        """Rates on a backend without notifications: what the counts grew by since the last poll."""
        at = time.time()
        for row in update["rows"]:
            now = _rate_counts(row)
            prev = before.get(row["agent"])
            if prev is not None:
                self._rate_growth(row["agent"], prev, now, at)
            before[row["agent"]] = now

    def _rate_growth(self, agent: str, prev: dict[str, int], now: dict[str, int], at: float) -> None:
        """What each count grew by since the last poll, counted as that rate (a count that fell: none)."""
        for kind, value in now.items():
            if value > prev[kind]:
                self.fleet.rate(agent, kind, value - prev[kind], at)

    def snapshot(self) -> dict[str, Any]:
        rows = self.fleet.rows(budget=0.0)
        return {
            "type": "fleet",
            "at": time.time(),
            "rows": [row_json(r, self.fleet.rates(r.key)) for r in rows if r.stats is not None],
            "dead_total": sum(r.count(State.DEAD) for r in rows),
        }

    # -- out ----------------------------------------------------------------------------------------

    def publish(self, update: dict[str, Any]) -> None:
        with self._lock:
            self._last = update
            queues = list(self._queues)
        for loop, queue in queues:
            with contextlib.suppress(RuntimeError):  # its loop is closed: the page is gone
                loop.call_soon_threadsafe(_offer, queue, update)

    def subscribe(self) -> asyncio.Queue[dict[str, Any]]:
        queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(maxsize=4)
        with self._lock:
            self._queues.add((asyncio.get_running_loop(), queue))
            if self._last is not None:
                queue.put_nowait(self._last)
        return queue

    def unsubscribe(self, queue: asyncio.Queue[dict[str, Any]]) -> None:
        with self._lock:
            self._queues = {(lp, q) for lp, q in self._queues if q is not queue}


def _rate_counts(row: dict[str, Any]) -> dict[str, int]:
    """The counts of a row that the rates follow: every message that came in, the acked, the dead."""
    total = row["waiting"] + row["delayed"] + row["processing"] + row["done"] + row["dead"]
    return {"in": total, "acked": row["done"], "dead": row["dead"]}


def _offer(queue: asyncio.Queue[dict[str, Any]], update: dict[str, Any]) -> None:
    """The newest update wins: a page that is behind skips the ones it did not read."""
    while queue.full():
        queue.get_nowait()
    queue.put_nowait(update)
