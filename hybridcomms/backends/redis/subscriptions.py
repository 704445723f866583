"""Durable subscriptions of Redis mailboxes: one hash, ``<namespace>:subscriptions``, seen from every
host (`hybridcomms.backends.subscriptions`)."""

from __future__ import annotations

from typing import Any

from ...message import pattern_matches
from ..base import check_agent_id
from ..subscriptions import changed, decode, encode

__all__ = ["RedisSubscriptions"]


class RedisSubscriptions:
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
                    self._record_once(pipe, agent, pattern, add)
                    return
                except redis.WatchError:
                    continue

    def _record_once(self, pipe: Any, agent: str, pattern: str, add: bool) -> None:
        """One try: ``agent``'s patterns read under ``WATCH`` and, if ``pattern`` changes them,
        written back in one transaction (`redis.WatchError` if another writer came first)."""
        pipe.watch(self.key)
        raw = pipe.hget(self.key, agent)
        patterns = decode(raw, f"{self.key}[{agent}]") if raw else []
        if not changed(patterns, pattern, add):
            pipe.unwatch()
            return
        pipe.multi()
        pipe.hset(self.key, agent, encode(agent, patterns))
        pipe.execute()

    def subscribers(self, topic: str) -> list[str]:
        found = []
        for agent, raw in self._r.hgetall(self.key).items():
            name = agent.decode() if isinstance(agent, bytes) else agent
            if self._wants(name, raw, topic):
                found.append(name)
        return sorted(found)

    def _wants(self, agent: str, raw: bytes, topic: str) -> bool:
        """Whether one of the patterns recorded for ``agent`` (``raw``) matches ``topic``."""
        return any(pattern_matches(p, topic) for p in decode(raw, f"{self.key}[{agent}]"))

    def close(self) -> None:
        self._r.close()
