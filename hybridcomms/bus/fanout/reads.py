"""Which waiting registrations a publisher's look reads (`hybridcomms.bus.fanout`), fairly per process.

A look reads a bounded number of new or changed registrations (``MAX_READS_PER_LOOK``); the others
wait. Names are anyone's to make, processes are not: a co-tenant can place registrations faster than
any number of reads per look drains them, but every name says the pid of its process
(``<pid>-<hex>``, `folder.NAME`), and a real process has one registration. So the reads are
shared per pid named, not per name: each pid gets one read per look at most, the pids taking turns
(those never given one first, those already holding a working registration after the others), and
the pids with no process on this host get none: their names are read (and pruned, if they are of
this host) only with what the turns leave of the budget, as before (half the names waiting longest,
half the newest). A new process is then read within
``ceil(P / budget) + 1`` looks, P the live pids named: bounded by the processes running, not by the
names made. The pids come from the names (no call per name); each pid is checked alive (one
``kill(pid, 0)``) only while turns are being given, in their order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection

from .folder import PID_MAX

__all__ = ["ReadQueue", "pid_of"]


def pid_of(name: str) -> int:
    """The pid a registration's name ``<pid>-<hex>`` says (0 if it says none a process can have)."""
    head, _, _ = name.partition("-")
    pid = int(head) if head.isdigit() and len(head) <= 10 else 0
    return pid if 0 < pid < PID_MAX else 0


class ReadQueue:
    """The registrations waiting to be read, by name, in the order first seen, with their pids."""

    __slots__ = ("_looks", "_served", "names")

    def __init__(self) -> None:
        self.names: dict[str, int] = {}
        self._served: dict[int, int] = {}  # a pid: the look that last gave it a turn
        self._looks = 0

    def __len__(self) -> int:
        return len(self.names)

    def __bool__(self) -> bool:
        return bool(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def add(self, name: str) -> None:
        """Queue ``name`` (one queued already keeps its place)."""
        if name not in self.names:
            self.names[name] = pid_of(name)

    def keep_only(self, found: Collection[str]) -> None:
        """Forget the names no longer listed."""
        names = self.names
        for name in [n for n in names if n not in found]:
            del names[name]

    def choose(
        self, budget: int, working: Callable[[], Collection[int]], live: Callable[[int], bool]
    ) -> list[str]:
        """Take ``budget`` names at most off the queue, to be read now: first one per pid, in turns
        (pids never given a turn first, then those given one longest ago; among those given theirs at
        once, the pids in ``working()``, with a working registration known, after the others), only
        pids ``live`` (a process of this host: checked as turns are given); then, with what is left,
        half the names waiting longest and half the newest. A pid's turns read its oldest name and
        its newest by turns."""
        names = self.names
        self._looks += 1
        if len(names) <= budget:
            every = list(names)
            names.clear()
            self._served.clear()
            return every
        chosen = self._turns(budget, working, live)
        self._take(chosen)
        more = self._oldest_and_newest(budget - len(chosen))
        self._take(more)
        return chosen + more

    def _take(self, chosen: list[str]) -> None:
        """Take the names ``chosen`` off the queue."""
        for name in chosen:
            del self.names[name]

    def _turns(
        self, budget: int, working: Callable[[], Collection[int]], live: Callable[[int], bool]
    ) -> list[str]:
        """One name per live pid, ``budget`` at most, the pids in turns (`choose`)."""
        look = self._looks
        first, last = self._ends_by_pid()
        served = self._served_of(first)
        known = working()
        order = sorted(first, key=lambda pid: (served.get(pid, -1), pid in known))  # (stable: first seen)
        chosen: list[str] = []
        for pid in order:
            if len(chosen) >= budget:
                break
            served[pid] = look  # (a pid found dead too: the turns go on past it)
            if live(pid):
                chosen.append(first[pid] if look % 2 else last[pid])
        return chosen

    def _served_of(self, named: dict[int, str]) -> dict[int, int]:
        """The look at which each pid still ``named`` was last served (the others forgotten)."""
        self._served = {pid: at for pid, at in self._served.items() if pid in named}
        return self._served

    def _ends_by_pid(self) -> tuple[dict[int, str], dict[int, str]]:
        """(the oldest name, the newest name) waiting of each pid named (not of names that say none)."""
        first: dict[int, str] = {}
        last: dict[int, str] = {}
        for name, pid in self.names.items():
            first.setdefault(pid, name)
            last[pid] = name
        first.pop(0, None)  # (names that say no pid: read only with what the turns leave)
        return first, last

    def _oldest_and_newest(self, left: int) -> list[str]:
        """``left`` names at most: half those waiting longest, half the newest."""
        names = self.names
        if left <= 0 or not names:
            return []
        if len(names) <= left:
            return list(names)
        oldest = left // 2
        return list(itertools.islice(names, oldest)) + list(itertools.islice(reversed(names), left - oldest))
