"""Durable subscriptions: which agents want a durable copy of a published topic.

`Comms.subscribe` records the pattern, `Comms.publish` on a durable route puts a copy into the mailbox
of every agent with a matching pattern. Where the record lives follows the mailbox backend:

- files: ``<root>/<agent>/subscriptions.json`` (``{"agent": …, "patterns": [...]}``), written
  atomically under a lock file; each file is read again only when its size or mtime changed;
- Redis: the hash ``<namespace>:subscriptions`` (agent -> the same JSON), so publishers on every host
  see subscribers on every host.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any, Protocol

import orjson

from . import _fs, _log
from ._locking import hold_lock_file
from ._urls import backend_of
from .bus import pattern_matches
from .mailbox import check_agent_id, list_agents

__all__ = [
    "SUBSCRIPTIONS_FILE",
    "FileRegistry",
    "MemoryRegistry",
    "RedisRegistry",
    "SubscriptionRegistry",
    "durable_subscribers",
    "registry_for",
]

log = _log.get("hybridcomms.registry")

SUBSCRIPTIONS_FILE = "subscriptions.json"


class SubscriptionRegistry(Protocol):
    def record(self, agent: str, pattern: str, add: bool) -> None:
        """Add (or remove) one pattern of ``agent``."""

    def subscribers(self, topic: str) -> list[str]:
        """Agents with a pattern matching ``topic``, sorted."""

    def close(self) -> None: ...


def _decode(raw: bytes, where: object) -> list[str]:
    try:
        data = orjson.loads(raw)
        patterns = data["patterns"]
        if isinstance(patterns, list) and all(isinstance(p, str) for p in patterns):
            return patterns
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    log.warning("%s is not a valid subscriptions record; ignoring it", where)
    return []


def _encode(agent: str, patterns: list[str]) -> bytes:
    return orjson.dumps({"agent": agent, "patterns": patterns}, option=orjson.OPT_INDENT_2)


def _changed(patterns: list[str], pattern: str, add: bool) -> bool:
    if add and pattern not in patterns:
        patterns.append(pattern)
        return True
    if not add and pattern in patterns:
        patterns.remove(pattern)
        return True
    return False


class FileRegistry:
    """Subscriptions recorded beside each mailbox under a root."""

    _cache: dict[Path, tuple[int, int, tuple[str, ...]]] = {}

    def __init__(self, root: str | os.PathLike[str], file_mode: int = 0o600) -> None:
        self.root = Path(root)
        self.file_mode = file_mode

    def record(self, agent: str, pattern: str, add: bool) -> None:
        path = self.root / check_agent_id(agent) / SUBSCRIPTIONS_FILE
        with hold_lock_file(str(path) + ".lock"):
            patterns = self._read(path)
            if _changed(patterns, pattern, add):
                _fs.replace_atomically(path, _encode(agent, patterns), self.file_mode)

    def subscribers(self, topic: str) -> list[str]:
        return [
            a for a in list_agents(self.root) if any(pattern_matches(p, topic) for p in self._patterns(a))
        ]

    def _patterns(self, agent: str) -> tuple[str, ...]:
        path = self.root / agent / SUBSCRIPTIONS_FILE
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return ()
        cached = self._cache.get(path)
        if cached is not None and cached[:2] == (st.st_mtime_ns, st.st_size):
            return cached[2]
        patterns = tuple(self._read(path))
        if len(self._cache) > 10_000:
            self._cache.clear()
        self._cache[path] = (st.st_mtime_ns, st.st_size, patterns)
        return patterns

    @staticmethod
    def _read(path: Path) -> list[str]:
        try:
            raw = _fs.read_regular(str(path), 1 << 20, follow=False)  # a link there is not ours
        except FileNotFoundError:
            return []
        except OSError as exc:
            log.warning("%s cannot be read (%s); ignoring it", path, exc)
            return []
        return _decode(raw, path)

    def close(self) -> None:
        pass


class RedisRegistry:
    """Subscriptions recorded in one Redis hash, seen from every host."""

    def __init__(self, url: str, namespace: str = "hc") -> None:
        import redis

        self._r: Any = redis.Redis.from_url(url)
        self.key = f"{namespace}:subscriptions"

    def record(self, agent: str, pattern: str, add: bool) -> None:
        import redis

        check_agent_id(agent)
        with self._r.pipeline() as pipe:
            while True:  # optimistic: retried if another writer changed the hash meanwhile
                try:
                    pipe.watch(self.key)
                    raw = pipe.hget(self.key, agent)
                    patterns = _decode(raw, f"{self.key}[{agent}]") if raw else []
                    if not _changed(patterns, pattern, add):
                        pipe.unwatch()
                        return
                    pipe.multi()
                    pipe.hset(self.key, agent, _encode(agent, patterns))
                    pipe.execute()
                    return
                except redis.WatchError:
                    continue

    def subscribers(self, topic: str) -> list[str]:
        found = []
        for agent, raw in self._r.hgetall(self.key).items():
            name = agent.decode() if isinstance(agent, bytes) else agent
            if any(pattern_matches(p, topic) for p in _decode(raw, f"{self.key}[{name}]")):
                found.append(name)
        return sorted(found)

    def close(self) -> None:
        self._r.close()


class MemoryRegistry:
    """Subscriptions of the agents of one in-memory store (`MemoryMailbox`), in this process."""

    _stores: dict[str, dict[str, list[str]]] = {}
    _lock = threading.Lock()

    def __init__(self, store: str) -> None:
        self.store = store or "default"

    def record(self, agent: str, pattern: str, add: bool) -> None:
        with self._lock:
            _changed(
                self._stores.setdefault(self.store, {}).setdefault(check_agent_id(agent), []), pattern, add
            )

    def subscribers(self, topic: str) -> list[str]:
        with self._lock:
            agents = self._stores.get(self.store, {})
            return sorted(a for a, ps in agents.items() if any(pattern_matches(p, topic) for p in ps))

    @classmethod
    def forget_store(cls, store: str) -> None:
        with cls._lock:
            cls._stores.pop(store, None)

    def close(self) -> None:
        pass


def registry_for(
    root: str | os.PathLike[str], url: str | None, file_mode: int = 0o600
) -> SubscriptionRegistry:
    """The registry that goes with the mailboxes at ``url`` (None: files under ``root``)."""
    kind = backend_of(url)
    if url is not None and kind == "redis":
        return RedisRegistry(url)
    if url is not None and kind == "memory":
        return MemoryRegistry(url[len("memory://") :])
    return FileRegistry(root, file_mode)


def durable_subscribers(root: str | os.PathLike[str], topic: str) -> list[str]:
    """Agents under ``root`` whose ``subscriptions.json`` has a pattern matching ``topic``."""
    return FileRegistry(root).subscribers(topic)
