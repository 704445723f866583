"""A periodic pass over every mailbox (the watcher's recovery) that fails for one of them: said in one
line when it starts failing and in one when it works again, never once per pass.

A co-tenant can break another agent's mailbox for good (make its folder unreadable, put a file where
its ``processing/`` was): a traceback every pass would bury every other line of the log, and tell
nothing new. The traceback is logged only for who asked for debug output.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable

from ._outage import reason

__all__ = ["Broken"]


class Broken:
    """Which agents ``what`` (a pass, "recovery") fails for, since when; says each change once on
    ``log``."""

    def __init__(self, what: str, log: logging.Logger) -> None:
        self.what = what
        self.log = log
        self._since: dict[str, float] = {}  # agent -> monotonic time it started failing
        self._lock = threading.Lock()

    def failed(self, agent: str, exc: BaseException) -> None:
        """The pass failed for ``agent`` with ``exc``: said if it worked the time before."""
        with self._lock:
            first = agent not in self._since
            if first:
                self._since[agent] = time.monotonic()
        if first:
            self.log.error(
                "%s fails for %s: %s (said once; one more line when it works again)",
                self.what,
                agent,
                reason(exc),
                exc_info=exc if self.log.isEnabledFor(logging.DEBUG) else None,
            )

    def ok(self, agent: str) -> None:
        """The pass worked for ``agent``: said if it failed the time before."""
        if agent not in self._since:  # the common case, without the lock
            return
        with self._lock:
            since = self._since.pop(agent, None)
        if since is not None:
            self.log.warning("%s works again for %s after %.0fs", self.what, agent, time.monotonic() - since)

    def keep(self, agents: Iterable[str]) -> None:
        """Forget the agents not in ``agents`` (their folders are gone): a new one of the same name
        that fails is said again."""
        present = set(agents)
        with self._lock:
            for agent in [a for a in self._since if a not in present]:
                del self._since[agent]
