"""How one publish of a shared bus visits the peers that want its topic (`hybridcomms.bus.fanout`), with a
bounded amount of work whatever a co-tenant registers.

The peers an index entry names (`_fanout_index`) are grouped by owner (the uid of their socket): one
`Turns` per owner. A publish sends to the peers of one `Turns` at most `budget` sends' worth (a peer
without a connected socket costs several: a connect per datagram); past it, they take turns (each
publish starts where the last one stopped), and each event not sent to a peer is dropped for it,
counted. Peers found not reading (a full backlog, or a refused send to one without a socket) are
*asleep*: a publish does not visit them, and counts what they miss in one addition. Those counts are
exact: each peer's misses are the publishes through its `Turns` that did not visit it."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from typing import Any

from .folder import HOST

__all__ = ["Link", "Turns"]


class Link:
    """How this process sends to one peer: a datagram socket connected to the peer's (one path lookup,
    at connect), while there is room (`fanout.MAX_LINKS`); else *unlinked*: each send connects a
    socket of its own for that one datagram and closes it (no buffer shared with another peer).

    A connected link has a backlog: what finds the peer's buffer full waits there (bounded), in order,
    until the peer reads again; the flusher thread sends it then. An unlinked peer whose buffer is full
    is not tried again for `fanout.STUCK_RETRY` seconds (its events are dropped, counted)."""

    __slots__ = (
        "backlog",
        "backlog_bytes",
        "behind_since",
        "cost",
        "full",
        "gone",
        "local",
        "name",
        "ok",
        "owner",
        "peer",
        "pid",
        "send",
        "skip_until",
        "sock",
    )

    def __init__(
        self, peer: Any, send: Callable[[bytes, int], int], sock: Any, owner: int, cost: int
    ) -> None:
        self.peer = peer
        self.name: str = peer.name
        self.pid: int = peer.pid
        self.local = peer.host == HOST
        self.owner = owner  # the uid of the peer's socket
        self.cost = cost  # what a send to it counts against a publish's budget
        self.sock = sock
        self.send = send
        self.backlog: collections.deque[bytes] = collections.deque()
        self.backlog_bytes = 0
        self.full = False  # its backlog is full: events are dropped for it until it drains some
        self.behind_since = 0.0  # when its backlog began to wait (a connected link)
        self.skip_until = 0.0  # an unlinked peer that did not read: not tried before then
        self.ok = False  # an unlinked peer: its last send went through (it reads)
        self.gone = False

    @property
    def asleep(self) -> bool:
        """Found not reading: not visited by publishes until it is seen reading again."""
        return self.full or self.skip_until > 0.0


class Turns:
    """The links of one owner among the peers of one index entry: those awake, visited in turns within
    ``budget`` per publish, and those asleep, not visited. ``count`` is the publishes through it."""

    __slots__ = ("asleep", "budget", "costs", "count", "cursor", "ring", "visits", "whole")

    def __init__(self, links: list[Link], budget: int) -> None:
        self.ring, self.asleep = _awake_and_asleep(links)
        self.costs = tuple(link.cost for link in self.ring)
        self.budget = budget
        self.whole = sum(self.costs) <= budget  # all of them at every publish
        self.visits = [] if self.whole else [0] * len(self.ring)
        self.cursor = 0
        self.count = 0

    def window(self) -> list[Link]:
        """The links this publish visits (the next ones in turn, ``budget`` sends' worth)."""
        ring, costs, visits = self.ring, self.costs, self.visits
        n = len(ring)
        i = self.cursor
        spent = 0
        out = []
        budget = self.budget
        for _ in range(n):
            if spent >= budget:
                break
            out.append(ring[i])
            visits[i] += 1
            spent += costs[i]
            i = i + 1 if i + 1 < n else 0
        self.cursor = i
        return out

    def missed(self) -> Iterator[tuple[Link, int]]:
        """(link, events it missed): not visited by a publish through this `Turns`."""
        count = self.count
        if not count:
            return
        if not self.whole:
            yield from self._not_visited(count)
        for link in self.asleep:
            yield link, count

    def _not_visited(self, count: int) -> Iterator[tuple[Link, int]]:
        """(link, events it missed) of the links awake that took turns and were not visited by all
        ``count`` publishes."""
        for link, seen in zip(self.ring, self.visits, strict=True):
            if count > seen:
                yield link, count - seen


def _awake_and_asleep(links: list[Link]) -> tuple[tuple[Link, ...], tuple[Link, ...]]:
    """(the links awake, the links asleep) among ``links``, each in its order."""
    awake: list[Link] = []
    asleep: list[Link] = []
    for link in links:
        (asleep if link.asleep else awake).append(link)
    return tuple(awake), tuple(asleep)
