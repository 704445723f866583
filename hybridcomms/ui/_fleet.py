"""The fleet at a glance: every mailbox's counts, kept warm, and its rates over the last minutes.

Counting a mailbox lists its folders (`Mailbox.stats`): over a fleet of 100 agents with 10,000
messages each that is a million entries, too slow to do per page. So the counts are cached per agent,
and an agent is counted again only when a notification says it changed (`mark`: the watcher's events
on files; on Redis, which has no such notifications, a poll marks every agent every few seconds), or
when its count is older than ``max_age`` (a notification lost is a count late, never a count wrong
for long).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ._source import AgentEntry, HybridCommsError, MailboxStats, Source, State, mailbox_agents

#: Rates are counted in buckets of this many seconds, over this many buckets (10 minutes).
BUCKET = 20.0
BUCKETS = 30
#: The kinds of rates shown: messages that came in, were acked, went to the dead letters.
RATE_KINDS = ("in", "acked", "dead")


@dataclass
class Rates:
    """Per-bucket counts of one agent (`RATE_KINDS`), the newest last."""

    buckets: deque[tuple[int, dict[str, int]]] = field(default_factory=deque)

    def add(self, kind: str, n: int, at: float) -> None:
        index = int(at // BUCKET)
        self._open(index)
        counts = self._bucket(index)
        if counts is not None:
            counts[kind] = counts.get(kind, 0) + n

    def _open(self, index: int) -> None:
        """Starts bucket ``index`` when it is newer than the newest (the oldest beyond `BUCKETS` go)."""
        if not self.buckets or self.buckets[-1][0] < index:
            self.buckets.append((index, dict.fromkeys(RATE_KINDS, 0)))
            while len(self.buckets) > BUCKETS:
                self.buckets.popleft()

    def _bucket(self, index: int) -> dict[str, int] | None:
        """The counts of bucket ``index``; None when it is gone (older than the window) or was skipped."""
        for i, counts in reversed(self.buckets):
            if i == index:
                return counts
            if i < index:
                return None
        return None

    def series(self, kind: str, now: float) -> list[float]:
        """Per minute, oldest first, one value per bucket of the window ending now."""
        last = int(now // BUCKET)
        by_index = {i: c.get(kind, 0) for i, c in self.buckets}
        return [by_index.get(i, 0) * 60.0 / BUCKET for i in range(last - BUCKETS + 1, last + 1)]


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the fleet page."""

    entry: AgentEntry
    stats: MailboxStats | None
    error: str | None
    counted_at: float | None

    @property
    def key(self) -> str:
        return self.entry.agent or self.entry.shown

    def count(self, state: State) -> int:
        if self.stats is None:
            return 0
        s = self.stats.states.get(state)
        return 0 if s is None else s.count

    @property
    def waiting(self) -> int:
        return self.count(State.NEW) - self.delayed

    @property
    def delayed(self) -> int:
        return 0 if self.stats is None else self.stats.delayed

    @property
    def oldest(self) -> float | None:
        if self.stats is None:
            return None
        s = self.stats.states.get(State.NEW)
        if s is None or s.oldest_age is None:
            return None
        # counted a while ago: the oldest waiting message has aged since (if it is still there)
        return s.oldest_age + (time.monotonic() - self.counted_at if self.counted_at is not None else 0.0)

    def attention(self) -> tuple[float, ...]:
        """Sort key, most in need of a person first: broken or unreadable, then dead letters, then the
        oldest waiting message, then the backlog; legacy agents after the mailboxes that need care."""
        broken = self.entry.kind == "broken" or self.error is not None
        return (
            0 if broken else 1,
            -self.count(State.DEAD),
            -(self.oldest or 0.0),
            -self.waiting,
            -self.count(State.PROCESSING),
        )


class Fleet:
    """The cached counts and rates of every mailbox of a `Source`."""

    def __init__(self, source: Source, *, max_age: float = 60.0, entries_max_age: float = 2.0) -> None:
        self.source = source
        self.max_age = max_age
        self.entries_max_age = entries_max_age
        self._lock = threading.Lock()
        self._entries: list[AgentEntry] = []
        self._entries_at = float("-inf")
        self._counted: dict[str, tuple[MailboxStats | None, str | None, float]] = {}
        self._dirty: set[str] = set()
        self._rates: dict[str, Rates] = {}
        self._version = 0  # goes up whenever a count changes (what the live view waits on)
        self.changed = threading.Condition(self._lock)

    # -- notifications ------------------------------------------------------------------------------

    def mark(self, agent: str) -> None:
        """``agent``'s mailbox changed: count it again at the next look."""
        with self._lock:
            self._dirty.add(agent)
            self.changed.notify_all()

    def mark_all(self) -> None:
        with self._lock:
            self._dirty.update(self._counted)
            self._entries_at = float("-inf")
            self.changed.notify_all()

    def rate(self, agent: str, kind: str, n: int = 1, at: float | None = None) -> None:
        with self._lock:
            self._rates.setdefault(agent, Rates()).add(kind, n, time.time() if at is None else at)

    def rates(self, agent: str, now: float | None = None) -> dict[str, list[float]]:
        now = time.time() if now is None else now
        with self._lock:
            r = self._rates.get(agent) or Rates()
            return {kind: r.series(kind, now) for kind in RATE_KINDS}

    @property
    def version(self) -> int:
        return self._version

    # -- counting -----------------------------------------------------------------------------------

    def entries(self) -> list[AgentEntry]:
        now = time.monotonic()
        if now - self._entries_at > self.entries_max_age:
            entries = self.source.entries()
            with self._lock:
                self._entries, self._entries_at = entries, now
        return self._entries

    def _count(self, agent: str) -> tuple[MailboxStats | None, str | None, float]:
        try:
            return self.source.stats(agent), None, time.monotonic()
        except KeyError:
            return None, "no mailbox", time.monotonic()
        except (OSError, HybridCommsError, ValueError) as exc:
            return None, f"{type(exc).__name__}: {exc}", time.monotonic()

    def _stale(self, agent: str, now: float) -> bool:
        got = self._counted.get(agent)
        return got is None or agent in self._dirty or now - got[2] > self.max_age

    def refresh(self, budget: float | None = None) -> list[str]:
        """Count again what changed (or was never counted, or is older than ``max_age``), for at most
        ``budget`` seconds (what is left is counted next time: a page never waits for a whole cold
        fleet; the live view's refresher counts the rest); the agents counted."""
        start = time.monotonic()
        stale = self._take_stale(mailbox_agents(self.entries()), start)
        done = []
        for agent in stale:
            if _over_budget(budget, start):
                with self._lock:
                    self._dirty.add(agent)  # next time
                continue
            self._store(agent, self._count(agent))
            done.append(agent)
        return done

    def _take_stale(self, agents: list[str], now: float) -> list[str]:
        """The ``agents`` to count again, no longer marked (counting them is now the caller's job)."""
        with self._lock:
            stale = [a for a in agents if self._stale(a, now)]
            self._dirty.difference_update(stale)
        return stale

    def _store(self, agent: str, got: tuple[MailboxStats | None, str | None, float]) -> None:
        """Keeps ``agent``'s new count; a count that changed wakes the live view."""
        with self._lock:
            before = self._counted.get(agent)
            self._counted[agent] = got
            if before is None or before[:2] != got[:2]:
                self._version += 1
                self.changed.notify_all()

    def rows(self, budget: float | None = 0.5) -> list[Row]:
        """Every entry with its counts, most in need of attention first."""
        self.refresh(budget)
        with self._lock:
            out = [self._row(e) for e in self._entries]
        return sorted(out, key=lambda r: (r.attention(), r.key))

    def _row(self, e: AgentEntry) -> Row:
        """The row of one entry, with its last count (the caller holds the lock)."""
        got = self._counted.get(e.agent) if e.kind == "mailbox" and e.agent else None
        if got is None:
            return Row(e, None, e.problem if e.kind != "mailbox" else None, None)
        return Row(e, got[0], got[1], got[2])

    def row(self, agent: str) -> Row | None:
        for r in self.rows():
            if r.entry.agent == agent:
                return r
        return None

    def wait_changed(self, version: int, timeout: float) -> int:
        """Block until a count changed after ``version`` or something was marked (or ``timeout``)."""
        with self._lock:
            if self._version == version and not self._dirty:
                self.changed.wait(timeout)
            return self._version


def _over_budget(budget: float | None, start: float) -> bool:
    """Whether a refresh that began at ``start`` has used up its ``budget`` (None: no limit)."""
    return budget is not None and time.monotonic() - start > budget


def row_json(row: Row, rates: dict[str, list[float]]) -> dict[str, Any]:
    """What the live view sends of one row (numbers only; the page has the names)."""
    return {
        "agent": row.key,
        "waiting": row.waiting,
        "processing": row.count(State.PROCESSING),
        "delayed": row.delayed,
        "done": row.count(State.DONE),
        "dead": row.count(State.DEAD),
        "oldest": row.oldest,
        "rates": rates,
    }
