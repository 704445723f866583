"""Durable subscriptions of file mailboxes: ``<root>/<agent>/subscriptions.json`` beside each mailbox
(`hybridcomms.backends.subscriptions`)."""

from __future__ import annotations

import os
from pathlib import Path

from ... import _fs
from ..._locking import hold_lock_file
from ...message import pattern_matches
from ..base import check_agent_id
from ..subscriptions import changed, decode, encode, log
from .mailbox import list_agents

__all__ = ["SUBSCRIPTIONS_FILE", "FileSubscriptions", "durable_subscribers"]

SUBSCRIPTIONS_FILE = "subscriptions.json"


class FileSubscriptions:
    """Subscriptions recorded beside each mailbox under a root."""

    _cache: dict[Path, tuple[int, int, tuple[str, ...]]] = {}

    def __init__(self, root: str | os.PathLike[str], file_mode: int = 0o600) -> None:
        self.root = Path(root)
        self.file_mode = file_mode

    def record(self, agent: str, pattern: str, add: bool) -> None:
        path = self.root / check_agent_id(agent) / SUBSCRIPTIONS_FILE
        with hold_lock_file(str(path) + ".lock"):
            patterns = self._read(path)
            if changed(patterns, pattern, add):
                _fs.replace_atomically(path, encode(agent, patterns), self.file_mode)

    def subscribers(self, topic: str) -> list[str]:
        return [a for a in list_agents(self.root) if self._subscribed(a, topic)]

    def _subscribed(self, agent: str, topic: str) -> bool:
        """Whether one of the patterns ``agent`` recorded matches ``topic``."""
        return any(pattern_matches(p, topic) for p in self._patterns(agent))

    def _patterns(self, agent: str) -> tuple[str, ...]:
        path = self.root / agent / SUBSCRIPTIONS_FILE
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return ()
        cached = self._cached(path, st)
        if cached is not None:
            return cached
        patterns = tuple(self._read(path))
        self._remember(path, st, patterns)
        return patterns

    def _cached(self, path: Path, st: os.stat_result) -> tuple[str, ...] | None:
        """The patterns last read from ``path``, if the file (``st``) has not changed since."""
        cached = self._cache.get(path)
        if cached is not None and cached[:2] == (st.st_mtime_ns, st.st_size):
            return cached[2]
        return None

    def _remember(self, path: Path, st: os.stat_result, patterns: tuple[str, ...]) -> None:
        """Keep what ``path`` (as ``st``) holds, for the next lookups (at most about 10,000 files)."""
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[path] = (st.st_mtime_ns, st.st_size, patterns)

    @staticmethod
    def _read(path: Path) -> list[str]:
        try:
            raw = _fs.read_regular(str(path), 1 << 20, follow=False)  # a link there is not ours
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("%s cannot be read (%s); ignoring it", path, exc)
            return []
        return decode(raw, path)

    def close(self) -> None:
        pass


def durable_subscribers(root: str | os.PathLike[str], topic: str) -> list[str]:
    """Agents under ``root`` whose ``subscriptions.json`` has a pattern matching ``topic``."""
    return FileSubscriptions(root).subscribers(topic)
