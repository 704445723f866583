"""`MemoryMailbox`: the mailbox contract (`hybridcomms.backends.base`) in memory, for the threads of one
process.

It keeps nothing past the process, so it is not a durable mailbox: it is the contract's model (the
shortest code that does everything the contract says, tested by the same suite as the real backends)
and a fast test double for code that takes a `Mailbox`. Messages are stored encoded, as the other
backends store them: what a consumer gets is a copy, and what cannot be encoded is refused at `put`.

Mailboxes of the same store name and agent id share their messages (`MemoryMailbox.named`, or the
URL ``memory://<store>``): a producer and a consumer thread each open their own.
"""

from __future__ import annotations

import builtins
import errno
import heapq
import itertools
import threading
import time
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from .._names import RANK_OF, RANKS, compact_time, make_name
from ..errors import DeliveryLostError, MailboxIOError
from ..message import DEFAULT_MAX_MESSAGE_SIZE, Message, pattern_matches
from ..retry import Backoff, attempts_used_up
from ..states import State
from .base import (
    DEFAULT_BACKOFF,
    DEFAULT_DONE_RETENTION,
    LastError,
    MailboxStats,
    MessageInfo,
    RecoveryReport,
    SettledByMailbox,
    StateStats,
    check_agent_id,
    check_delay,
    check_retention,
    common_options,
    expiry_reason,
    nack_wait,
    purged_state,
    requeue_each,
    requeue_source,
    set_common_options,
    text_of,
)
from .subscriptions import changed

__all__ = ["MemoryDelivery", "MemoryMailbox", "MemorySubscriptions"]

_seq = itertools.count()


@dataclass(eq=False)
class _Entry:
    data: bytes
    id: str
    topic: str
    rank: str
    due: float
    attempt: int = 0  # deliveries so far
    entered: float = field(default_factory=time.time)
    lease_until: float = 0.0
    owner: Any = None  # weakref to the MemoryDelivery holding it
    reason: dict[str, Any] | None = None
    last_error: LastError | None = None  # why its last failed attempt failed, while it waits
    seq: int = field(default_factory=lambda: next(_seq))

    @property
    def name(self) -> str:
        return make_name(self.rank, compact_time(self.due), self.id, self.attempt)

    def key(self) -> tuple[float, int]:
        return (self.due, self.seq)


class _Box:
    """One agent's messages in one store, under one condition."""

    def __init__(self) -> None:
        self.cond = threading.Condition()
        self.new: dict[str, list[tuple[float, int, _Entry]]] = {r: [] for r in RANKS}  # heaps
        self.processing: dict[int, _Entry] = {}  # by seq
        self.done: dict[int, _Entry] = {}
        self.dead: dict[int, _Entry] = {}
        self.wakeups = 0

    def push(self, entry: _Entry) -> None:
        heapq.heappush(self.new[entry.rank], (entry.due, entry.seq, entry))
        self.cond.notify_all()

    def new_entries(self) -> list[_Entry]:
        return [e for heap in self.new.values() for _, _, e in heap]

    def held(self, state: State) -> dict[int, _Entry] | None:
        """The entries in processing, done or dead (``state``) by seq; None for another state."""
        return {State.PROCESSING: self.processing, State.DONE: self.done, State.DEAD: self.dead}.get(state)

    def settled(self, state: State) -> dict[int, _Entry]:
        """The entries done or dead (``state``), by seq."""
        return self.done if state is State.DONE else self.dead


class MemoryMailbox:
    """One agent's mailbox in memory (see the module docstring).

    ``MemoryMailbox(agent_id, *, store="default", lease=300, max_attempts=5, backoff=Backoff(),
    max_message_size=…, done_retention=10000, create=True)``: the options mean what they mean for
    `FileMailbox`;

        done_retention   acked messages kept in ``done`` (the contract's "Retention"): the last N,
                         10,000 by default (exactly N here); 0 keeps none (the ack drops the message),
                         None keeps every one (until `purge`)
    """

    kind = "memory"
    shared = False  # the threads of this process only
    folder: Path | None = None
    lease: float
    max_attempts: int
    backoff: Backoff
    max_message_size: int

    _stores: ClassVar[dict[str, dict[str, _Box]]] = {}
    _stores_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        agent_id: str,
        *,
        store: str = "default",
        lease: float = 300.0,
        max_attempts: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        done_retention: int | None = DEFAULT_DONE_RETENTION,
        create: bool = True,
    ) -> None:
        self.agent_id = check_agent_id(agent_id)
        set_common_options(self, lease, max_attempts, backoff, max_message_size)
        self.done_retention = check_retention(done_retention)
        self.store = store
        self._box = self._box_of(store, self.agent_id, create)
        self._closed = False

    @classmethod
    def _box_of(cls, store: str, agent_id: str, create: bool) -> _Box:
        """The messages of ``agent_id`` in ``store``, made if missing (MailboxIOError unless ``create``)."""
        with cls._stores_lock:
            boxes = cls._stores.setdefault(store, {})
            box = boxes.get(agent_id)
            if box is None:
                if not create:
                    raise MailboxIOError(errno.ENOENT, f"no mailbox {agent_id!r} in memory://{store}")
                box = boxes[agent_id] = _Box()
            return box

    @classmethod
    def named(cls, store: str, agent_id: str, **options: Any) -> MemoryMailbox:
        return cls(agent_id, store=store or "default", **options)

    @classmethod
    def forget_store(cls, store: str) -> None:
        """Drop every mailbox of a store, and its durable subscriptions (tests)."""
        with cls._stores_lock:
            cls._stores.pop(store, None)
        MemorySubscriptions.forget_store(store)

    def __repr__(self) -> str:
        return f"<MemoryMailbox memory://{self.store} {self.agent_id}>"

    def __enter__(self) -> MemoryMailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self.wake()

    def _check(self) -> _Box:
        if self._closed:
            raise MailboxIOError(errno.EBADF, f"{self!r} is closed")
        return self._box

    # -- put ------------------------------------------------------------------------------------

    def _entry(self, message: Message, now: float, delay: float) -> _Entry:
        data = message.encode(self.max_message_size)
        due = now + delay if delay else min(message.created_at.timestamp(), now)
        return _Entry(data, message.id, message.topic, RANK_OF[message.priority], due, entered=now)

    def put(self, message: Message, *, delay: float | None = None) -> str:
        return self.put_many([message], delay=delay)[0]

    def put_many(self, messages: Iterable[Message], *, delay: float | None = None) -> builtins.list[str]:
        """Store all of ``messages`` or none of them (under one lock); their ids, in order."""
        wait = check_delay(delay)
        box = self._check()
        now = time.time()
        entries = [self._entry(m, now, wait) for m in messages]  # all encoded before any is stored
        with box.cond:
            for e in entries:
                box.push(e)
        return [e.id for e in entries]

    # -- claim ----------------------------------------------------------------------------------

    def claim(
        self, timeout: float | None = None, *, cancel: threading.Event | None = None
    ) -> MemoryDelivery | None:
        """The due message with the highest priority, oldest first; None if there is none (after
        waiting up to ``timeout`` seconds for one; setting ``cancel``, then `wake`, ends the wait)."""
        box = self._check()
        deadline = time.monotonic() + (timeout or 0.0)
        with box.cond:
            while cancel is None or not cancel.is_set():
                now = time.time()
                delivery, next_due = self._take_due(box, now)
                if delivery is not None:
                    return delivery
                if not self._wait(box, deadline, next_due, now, cancel):
                    break
        return None

    def _take_due(self, box: _Box, now: float) -> tuple[MemoryDelivery | None, float | None]:
        """Under the lock: the first due message, handed out; else None and when the next one is due."""
        next_due = None
        for rank in RANKS:
            heap = box.new[rank]
            due = self._pop_due(heap, now)
            if due is not None:
                return self._hand_out(box, *due, now), None
            if heap:
                next_due = heap[0][0] if next_due is None else min(next_due, heap[0][0])
        return None, next_due

    def _pop_due(
        self, heap: builtins.list[tuple[float, int, _Entry]], now: float
    ) -> tuple[_Entry, Message] | None:
        """Under the lock: the first due entry of one priority and its message. Those past their
        expiry on the way are dead-lettered, never handed out."""
        while heap and heap[0][0] <= now:
            _, _, entry = heapq.heappop(heap)
            message = Message.decode(entry.data)
            if message.expires is None or not message.expired(now):
                return entry, message
            self._to_dead(entry, expiry_reason(message, entry.attempt, entry.name))
        return None

    def _hand_out(self, box: _Box, entry: _Entry, message: Message, now: float) -> MemoryDelivery:
        """Under the lock: ``entry`` claimed (in processing, its lease running) as a new delivery."""
        entry.attempt += 1
        entry.lease_until = now + self.lease
        entry.entered = now
        box.processing[entry.seq] = entry
        delivery = MemoryDelivery(self, entry, message)
        entry.owner = weakref.ref(delivery)
        return delivery

    def _wait(
        self, box: _Box, deadline: float, next_due: float | None, now: float, cancel: threading.Event | None
    ) -> bool:
        """Under the lock: wait for an arrival, the next due time or the deadline; False once the
        claim is to give up (the deadline passed, the mailbox closed, or woken with ``cancel`` set)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self._closed:
            return False
        seen = box.wakeups
        box.cond.wait(_wait_time(remaining, next_due, now))
        return box.wakeups == seen or not _cancelled(cancel)

    def wake(self) -> None:
        box = self._box
        with box.cond:
            box.wakeups += 1
            box.cond.notify_all()

    # -- settle (called by MemoryDelivery) -------------------------------------------------------

    def _held(self, d: MemoryDelivery) -> _Entry:
        """Under the lock: the entry ``d`` holds, or DeliveryLostError (recovery took it)."""
        entry = self._box.processing.get(d.entry.seq)
        if entry is None or entry.owner is None or entry.owner() is not d:
            raise DeliveryLostError(f"{d.name}: lease expired and the message was recovered")
        return entry

    def settle_ack(self, d: MemoryDelivery) -> None:
        box = self._check()
        with box.cond:
            entry = self._held(d)
            del box.processing[entry.seq]
            entry.owner, entry.entered, entry.last_error = None, time.time(), None
            keep = self.done_retention
            if keep != 0:
                box.done[entry.seq] = entry
            if keep is not None:
                while len(box.done) > keep:  # the oldest acked first (a dict keeps its order)
                    del box.done[next(iter(box.done))]

    def settle_nack(self, d: MemoryDelivery, delay: float | None, error: str | None) -> State:
        if attempts_used_up(d.attempt, self.max_attempts):
            self.settle_dead(d, f"failed {d.attempt} of {self.max_attempts} attempts", error)
            return State.DEAD
        box = self._check()
        with box.cond:
            entry = self._held(d)
            del box.processing[entry.seq]
            self._wait_again(box, entry, nack_wait(self.backoff, d.attempt, delay), error, d.attempt)
        return State.NEW

    @staticmethod
    def _wait_again(box: _Box, entry: _Entry, wait: float, error: str | None, attempt: int) -> None:
        """(Under the lock.) A nacked entry back to new, due in ``wait`` seconds, with the ``error``
        of its ``attempt`` (if one is given) as its last error."""
        now = time.time()
        entry.owner, entry.entered = None, now
        entry.due = now + wait
        if error is not None:
            entry.last_error = LastError(text_of(error), attempt, now)
        box.push(entry)

    def settle_dead(self, d: MemoryDelivery, reason: str, error: str | None) -> None:
        box = self._check()
        with box.cond:
            entry = self._held(d)
            del box.processing[entry.seq]
            self._to_dead(entry, self._reason(entry, reason, error))

    @staticmethod
    def _reason(entry: _Entry, reason: str, error: str | None) -> dict[str, Any]:
        return {
            "reason": reason,
            "last_error": error,
            "message_file": entry.name,
            "id": entry.id,
            "topic": entry.topic,
            "attempts": entry.attempt,
        }

    def _to_dead(self, entry: _Entry, reason: dict[str, Any]) -> None:
        """To the dead letters with ``reason``; a last error kept from an earlier attempt goes into it
        when it gives none."""
        kept = entry.last_error
        if kept is not None and reason.get("last_error") is None:
            reason = {**reason, "last_error": kept.error, "last_error_attempt": kept.attempt}
        entry.owner, entry.entered, entry.reason, entry.last_error = None, time.time(), reason, None
        self._box.dead[entry.seq] = entry

    def settle_heartbeat(self, d: MemoryDelivery) -> None:
        box = self._check()
        with box.cond:
            entry = self._held(d)
            entry.lease_until = time.time() + self.lease

    # -- recovery ---------------------------------------------------------------------------------

    def recover(self, *, now: float | None = None) -> RecoveryReport:
        box = self._check()
        judged = time.time() if now is None else now
        report = RecoveryReport()
        with box.cond:
            for entry in builtins.list(box.processing.values()):
                died = _holder_died(entry)
                if died or entry.lease_until <= judged:
                    self._take_back(box, entry, died, report)
        return report

    def _take_back(self, box: _Box, entry: _Entry, died: bool, report: RecoveryReport) -> None:
        """(Under the lock.) ``entry``, whose consumer ``died`` or whose lease expired, back to new
        after the backoff, or to the dead letters past ``max_attempts``; said in ``report``."""
        del box.processing[entry.seq]
        why = "its consumer died" if died else f"its lease of {self.lease:g}s expired"
        if attempts_used_up(entry.attempt, self.max_attempts):
            why = f"{why} during attempt {entry.attempt} of {self.max_attempts}"
            self._to_dead(entry, self._reason(entry, why, None))
            report.dead.append(entry.id)
            return
        entry.owner, entry.entered = None, time.time()
        entry.due = time.time() + self.backoff.delay(max(entry.attempt, 1))
        box.push(entry)
        (report.returned if died else report.expired).append(entry.id)

    # -- inspection and repair ----------------------------------------------------------------------

    def _entries(self, state: State) -> builtins.list[_Entry]:
        """(Under the lock.) The entries in ``state`` (none in tmp)."""
        box = self._box
        if state is State.NEW:
            return box.new_entries()
        held = box.held(state)
        return [] if held is None else builtins.list(held.values())

    @staticmethod
    def _info(state: State, e: _Entry) -> MessageInfo:
        return MessageInfo(
            state=state,
            name=e.name,
            path=None,
            id=e.id,
            attempt=e.attempt,
            due=compact_time(e.due),
            size=len(e.data),
            changed_at=e.entered,
            reason=dict(e.reason) if e.reason is not None else None,
            last_error=e.last_error,
        )

    def list(self, state: State | str) -> builtins.list[MessageInfo]:
        st = State(state)
        box = self._check()
        with box.cond:
            return sorted((self._info(st, e) for e in self._entries(st)), key=lambda i: i.name)

    def get(self, message_id: str) -> MessageInfo | None:
        box = self._check()
        with box.cond:
            for st in (State.NEW, State.PROCESSING, State.DONE, State.DEAD):
                found = self._find_in(st, message_id)
                if found is not None:
                    return found
        return None

    def _find_in(self, state: State, message_id: str) -> MessageInfo | None:
        """(Under the lock.) The message ``message_id`` (an id or a name) in ``state``, the first in
        due order; None if it is not there."""
        for e in sorted(self._entries(state), key=_Entry.key):
            if message_id in (e.id, e.name):
                return self._info(state, e)
        return None

    def read(self, info: MessageInfo) -> Message:
        box = self._check()
        with box.cond:
            for e in self._entries(info.state):
                if e.name == info.name:
                    return Message.decode(e.data)
        raise KeyError(f"{info.name} is no longer in {info.state.value}")

    def requeue_all(
        self,
        from_state: State | str = State.DEAD,
        *,
        reset_attempts: bool = True,
        step: Callable[[int], None] | None = None,
    ) -> builtins.list[str]:
        return requeue_each(self, from_state, reset_attempts, step)

    def sibling(self, agent_id: str, *, create: bool = False) -> MemoryMailbox:
        return MemoryMailbox(agent_id, store=self.store, create=create, **common_options(self))

    def requeue(
        self, message_id: str, *, from_state: State | str = State.DEAD, reset_attempts: bool = True
    ) -> builtins.list[str]:
        src = requeue_source(from_state)
        box = self._check()
        out: builtins.list[str] = []
        with box.cond:
            held = box.settled(src)
            for seq, e in builtins.list(held.items()):
                if message_id in (e.id, e.name):
                    del held[seq]
                    _back_to_new(box, e, reset_attempts)
                    out.append(e.name)
        return out

    def purge(self, state: State | str, older_than: float = 0.0) -> int:
        st = purged_state(state)
        box = self._check()
        cutoff = time.time() - older_than
        with box.cond:
            held = box.settled(st)
            gone = [seq for seq, e in held.items() if e.entered <= cutoff]
            for seq in gone:
                del held[seq]
        return len(gone)

    def stats(self) -> MailboxStats:
        box = self._check()
        now = time.time()
        with box.cond:
            states = {
                st: _state_stats(self._entries(st), now)
                for st in (State.NEW, State.PROCESSING, State.DONE, State.DEAD)
            }
            delayed = sum(1 for e in box.new_entries() if e.due > now)
        return MailboxStats(self.agent_id, states, delayed)


def _state_stats(entries: builtins.list[_Entry], now: float) -> StateStats:
    """The count of ``entries`` and the age of the oldest (None if there is none)."""
    oldest = min((e.entered for e in entries), default=None)
    return StateStats(len(entries), None if oldest is None else max(now - oldest, 0.0))


def _back_to_new(box: _Box, entry: _Entry, reset_attempts: bool) -> None:
    """(Under the lock.) A requeued entry back to new, due now, its reason forgotten."""
    now = time.time()
    entry.due, entry.entered, entry.reason = now, now, None
    if reset_attempts:
        entry.attempt = 0
    box.push(entry)


def _holder_died(entry: _Entry) -> bool:
    """Whether the delivery holding ``entry`` was dropped unsettled (its consumer is gone)."""
    return entry.owner is None or entry.owner() is None


def _wait_time(remaining: float, next_due: float | None, now: float) -> float:
    """How long a claim waits: ``remaining`` at most, until the next message is due if one is."""
    return remaining if next_due is None else min(remaining, max(next_due - now, 0.001))


def _cancelled(cancel: threading.Event | None) -> bool:
    """Whether a claim's ``cancel`` is given and set."""
    return cancel is not None and cancel.is_set()


def _matches_any(patterns: list[str], topic: str) -> bool:
    """Whether one of ``patterns`` matches ``topic``."""
    return any(pattern_matches(p, topic) for p in patterns)


class MemoryDelivery(SettledByMailbox):
    """A message claimed from a `MemoryMailbox` (see `hybridcomms.backends.base.MailboxDelivery`)."""

    __slots__ = ("__weakref__", "entry")

    def __init__(self, mailbox: MemoryMailbox, entry: _Entry, message: Message) -> None:
        super().__init__(mailbox, entry.name, message, entry.attempt)
        self.entry = entry


class MemorySubscriptions:
    """Subscriptions of the agents of one in-memory store (`MemoryMailbox`), in this process."""

    _stores: dict[str, dict[str, list[str]]] = {}
    _lock = threading.Lock()

    def __init__(self, store: str) -> None:
        self.store = store or "default"

    def record(self, agent: str, pattern: str, add: bool) -> None:
        with self._lock:
            changed(
                self._stores.setdefault(self.store, {}).setdefault(check_agent_id(agent), []), pattern, add
            )

    def subscribers(self, topic: str) -> list[str]:
        with self._lock:
            agents = self._stores.get(self.store, {})
            return sorted(a for a, ps in agents.items() if _matches_any(ps, topic))

    @classmethod
    def forget_store(cls, store: str) -> None:
        with cls._lock:
            cls._stores.pop(store, None)

    def close(self) -> None:
        pass
