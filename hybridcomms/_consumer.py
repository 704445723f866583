"""Comms part: the consumer loop. Claim a durable message, hand it to the handlers of its topic (or to
the request waiting for it), and settle it: ack, nack with backoff, or dead-letter with an event on the
bus; take in legacy drops where an intake is on; run recovery now and then.

When the mailbox's backend fails (Redis down, the mailbox folder gone, I/O errors), the loop says so
once, when it starts and when it ends (`hybridcomms._outage.Outage`, counted for the metrics), and
tries again meanwhile with a capped backoff (`hybridcomms._outage.RETRY`), not once per try with a
traceback. The legacy intake's step can never stop the durable deliveries: whatever it raises (a bug,
a co-tenant's file no version foresaw) is said once when it starts failing for the agent and once when
it works again (`hybridcomms._broken.Broken`), and it is tried again after a backoff that grows
(`LEGACY_BACKOFF_FIRST` doubling up to `LEGACY_BACKOFF_MAX`), the mailbox delivered meanwhile."""

from __future__ import annotations

import asyncio
import inspect
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _log
from ._broken import Broken
from ._handlers import Handler, HandlerTable
from ._outage import Outage, is_outage
from ._requests import PendingRequests
from .backends import Mailbox, MailboxDelivery
from .bus import AgentBus
from .intake import Step
from .message import Message
from .retry import attempts_used_up

__all__ = [
    "DEAD_LETTER_TOPIC",
    "HANDLER_STATS",
    "REPLY_HEADER",
    "ConsumerLoop",
    "Received",
    "handler_rows",
    "received",
]

log = _log.get("hybridcomms.comms")

REPLY_HEADER = "hybridcomms.reply"
DEAD_LETTER_TOPIC = "hybridcomms.deadletter"
#: How often the loop looks for legacy drops, at most (seconds). While more is waiting there, it takes
#: one chunk per turn and gives deliveries at least as long as that chunk took (up to this) in between.
LEGACY_LOOK_EVERY = 0.25
#: After a legacy step failed, the next is tried this long after (seconds), doubling while it keeps
#: failing, up to `LEGACY_BACKOFF_MAX`.
LEGACY_BACKOFF_FIRST = 1.0
LEGACY_BACKOFF_MAX = 60.0

#: Durable handler runs of this process, per agent: [succeeded, failed, seconds in all] (for the metrics).
HANDLER_STATS: dict[str, list[float]] = {}
_stats_lock = threading.Lock()


def handler_rows() -> dict[str, tuple[float, float, float]]:
    """A copy of `HANDLER_STATS`, taken under its lock: per agent (succeeded, failed, seconds)."""
    with _stats_lock:
        return {agent: (ok, failed, seconds) for agent, (ok, failed, seconds) in HANDLER_STATS.items()}


def _record_handler(agent: str, ok: bool, seconds: float) -> None:
    with _stats_lock:
        row = HANDLER_STATS.setdefault(agent, [0, 0, 0.0])
        row[0 if ok else 1] += 1
        row[2] += seconds


class Received(Message):
    """A message as a handler receives it: the `Message`, plus ``attempt`` (1 on the first durable
    delivery, None for an ephemeral one) and ``durable``."""

    attempt: int | None
    durable: bool


def received(message: Message, attempt: int | None, durable: bool) -> Received:
    r = object.__new__(Received)
    object.__setattr__(r, "__dict__", {**message.__dict__, "attempt": attempt, "durable": durable})
    return r


class ConsumerLoop:
    def __init__(
        self,
        agent_id: str,
        mailbox: Mailbox,
        handlers: HandlerTable,
        requests: PendingRequests,
        bus: AgentBus,
        *,
        dead_letter_topic: str,
        recover_every: float,
        intake_probe: Callable[[bool], Step] | None,
        outage: Outage,
    ) -> None:
        self.agent_id = agent_id
        self.mailbox = mailbox
        self.handlers = handlers
        self.requests = requests
        self.bus = bus
        self.dead_letter_topic = dead_letter_topic
        self.recover_every = recover_every
        self.intake_probe = intake_probe
        self.outage = outage  # the mailbox's backend as this loop sees it (shared with the router)
        self.stopping = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None  # the agent's loop, for async handlers
        self._thread: threading.Thread | None = None
        self._next_legacy_look = 0.0
        self._legacy_more = False  # the last intake step left more to take
        self._legacy_failures = 0  # legacy steps failed in a row
        self._legacy_broken = Broken("the legacy intake", log)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if self.running:
            return
        self.stopping.clear()
        self._thread = threading.Thread(target=self._run, name=f"hybridcomms-{self.agent_id}", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        next_recovery = time.monotonic() + self.recover_every if self.recover_every else float("inf")
        while not self.stopping.is_set():
            try:
                self.process_one(timeout=0.5)
                next_recovery = self._recover_if_due(next_recovery)
            except Exception as exc:
                self._after_error(exc)
                continue
            self.outage.ok()

    def _recover_if_due(self, due: float) -> float:
        """Run the mailbox's recovery if it is ``due`` (a monotonic time); when it is due next."""
        if time.monotonic() < due:
            return due
        self.mailbox.recover()
        return time.monotonic() + self.recover_every

    def _after_error(self, exc: Exception) -> None:
        """Wait before the loop's next turn after ``exc``: the outage's backoff when the backend
        fails, half a second (and the traceback logged) for anything else."""
        if is_outage(exc):  # said once when it starts; the wait grows, capped
            self.stopping.wait(self.outage.failed(exc))
        else:  # not the backend: a bug worth its traceback
            log.exception("%s: consumer loop error; continuing", self.agent_id)
            self.stopping.wait(0.5)

    def stop(self, timeout: float) -> None:
        self.stopping.set()
        self.mailbox.wake()
        thread = self._thread
        if thread is not None:
            thread.join(timeout)
            if thread.is_alive():
                log.warning(
                    "%s: consumer still busy after %gs; its claim is left to recovery", self.agent_id, timeout
                )
            else:
                self._thread = None

    def process_one(self, timeout: float | None = None) -> bool:
        if self.intake_probe is not None:
            timeout = self._between_legacy_steps(timeout)
        delivery = self.mailbox.claim(timeout=timeout, cancel=self.stopping)
        if delivery is None:
            return False
        self.dispatch(delivery)
        return True

    def _between_legacy_steps(self, timeout: float | None) -> float | None:
        """Take a step of the legacy drops when one is due; how long the claim may then wait (no
        longer than until the next step, while more drops wait)."""
        now = time.monotonic()
        if now >= self._next_legacy_look:
            self._legacy_turn(now)
        if self._legacy_more and timeout:  # wait for a delivery no longer than until the next step
            timeout = min(timeout, max(self._next_legacy_look - time.monotonic(), 0.0))
        return timeout

    def _legacy_turn(self, now: float) -> None:
        """One bounded step (a chunk; a legacy lock another process holds is skipped, never waited
        on): the mailbox is delivered between steps whatever legacy writers do. Sets when the next is."""
        step = self._legacy_step(False)
        done = time.monotonic()
        self._legacy_more = step.more
        if self._legacy_failures:
            pass  # the step failed: its backoff says when the next is tried
        elif step.more:  # the next chunk after deliveries for as long as this one took (capped)
            self._next_legacy_look = done + min(done - now, LEGACY_LOOK_EVERY)
        else:
            self._next_legacy_look = now + LEGACY_LOOK_EVERY

    def _legacy_step(self, force: bool) -> Step:
        if self.intake_probe is None:
            return Step()
        try:
            step = self.intake_probe(force)
        except Exception as exc:  # never the end of the deliveries: said once, tried again later
            return self._legacy_failed(exc)
        if self._legacy_failures:
            self._legacy_failures = 0
            self._legacy_broken.ok(self.agent_id)
        return step

    def _legacy_failed(self, exc: Exception) -> Step:
        """A legacy step failed with ``exc``: said once, and tried again after a backoff that doubles
        with each failure in a row (capped)."""
        self._legacy_failures += 1
        wait = min(LEGACY_BACKOFF_FIRST * 2 ** min(self._legacy_failures - 1, 16), LEGACY_BACKOFF_MAX)
        self._next_legacy_look = time.monotonic() + wait
        self._legacy_broken.failed(self.agent_id, exc)
        return Step(retry_in=wait)

    def ingest_legacy(self, force: bool = False) -> int:
        """Take every legacy drop waiting now (step after step); a lock another process holds is
        skipped (its drops wait for a later call)."""
        taken = 0
        while True:
            step = self._legacy_step(force)
            taken += step.taken
            if not step.more:
                return taken
            force = True

    def dispatch(self, d: MailboxDelivery) -> None:
        message = d.message
        headers = message.headers
        # A message past its expiry never gets here: the mailbox dead-letters it at claim.
        if headers and headers.get(REPLY_HEADER) and message.correlation_id is not None:
            self._take_reply(d)
            return
        handlers = self.handlers.for_topic(message.topic)
        if not handlers:
            self._fail(d, f"no handler subscribed for topic {message.topic!r} in {self.agent_id}")
            return
        self._handle(d, handlers)

    def _handle(self, d: MailboxDelivery, handlers: tuple[Handler, ...]) -> None:
        """Run every handler on the delivery: acked when they all return, else nacked with why."""
        message = d.message
        r = received(message, d.attempt, True)
        started = time.perf_counter()
        try:
            for handler in handlers:
                result = handler(r)
                if inspect.isawaitable(result):
                    self._run_awaitable(result)
        except Exception as exc:
            _record_handler(self.agent_id, False, time.perf_counter() - started)
            log.warning(
                "%s: handler failed on %s (attempt %d): %s",
                self.agent_id,
                message.id,
                d.attempt,
                exc,
                exc_info=True,
            )
            self._fail(d, f"{type(exc).__name__}: {exc}")
            return
        _record_handler(self.agent_id, True, time.perf_counter() - started)
        d.ack()

    def _run_awaitable(self, awaitable: Any) -> None:
        async def run() -> Any:
            return await awaitable

        loop = self.loop
        if loop is None or loop.is_closed():
            loop = self.bus.background_loop()
        asyncio.run_coroutine_threadsafe(run(), loop).result()

    def _fail(self, d: MailboxDelivery, error: str) -> None:
        last = attempts_used_up(d.attempt, self.mailbox.max_attempts)
        d.nack(error=error)
        if last:
            self._dead_letter_event(d, f"failed {d.attempt} of {self.mailbox.max_attempts} attempts", error)

    def _dead_letter_event(self, d: MailboxDelivery, reason: str, error: str | None) -> None:
        m = d.message
        self.bus.publish(
            self.dead_letter_topic,
            {
                "agent": self.agent_id,
                "id": m.id,
                "topic": m.topic,
                "sender": m.sender,
                "attempts": d.attempt,
                "reason": reason,
                "last_error": error,
            },
            source=self.agent_id,
            correlation_id=m.id,
        )

    def _take_reply(self, d: MailboxDelivery) -> None:
        d.ack()
        if not self.requests.answer(d.message.correlation_id or "", received(d.message, d.attempt, True)):
            log.warning(
                "%s: reply %s to request %s came after its timeout; dropped",
                self.agent_id,
                d.message.id,
                d.message.correlation_id,
            )
