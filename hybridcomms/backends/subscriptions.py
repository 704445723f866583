"""Durable subscriptions: which agents want a durable copy of a published topic.

`Comms.subscribe` records the pattern, `Comms.publish` on a durable route puts a copy into the mailbox
of every agent with a matching pattern. Where the record lives follows the mailbox backend
(`hybridcomms.backends.registry_for` picks it), one implementation per backend behind the one
interface here (`SubscriptionRegistry`):

- files (`file.subscriptions`): ``<root>/<agent>/subscriptions.json`` (``{"agent": …, "patterns":
  [...]}``), written atomically under a lock file; each file is read again only when its size or
  mtime changed;
- Redis (`redis.subscriptions`): the hash ``<namespace>:subscriptions`` (agent -> the same JSON), so
  publishers on every host see subscribers on every host;
- memory (`memory`): a dict per named store, in this process.

A record is the JSON ``{"agent": …, "patterns": [...]}`` on every backend (`encode`, `decode`).
"""

from __future__ import annotations

from typing import Protocol

import orjson

from .. import _log

__all__ = ["SubscriptionRegistry", "changed", "decode", "encode"]

log = _log.get("hybridcomms.registry")


class SubscriptionRegistry(Protocol):
    def record(self, agent: str, pattern: str, add: bool) -> None:
        """Add (or remove) one pattern of ``agent``."""

    def subscribers(self, topic: str) -> list[str]:
        """Agents with a pattern matching ``topic``, sorted."""

    def close(self) -> None: ...


def decode(raw: bytes, where: object) -> list[str]:
    try:
        data = orjson.loads(raw)
        patterns = data["patterns"]
        if isinstance(patterns, list) and all(isinstance(p, str) for p in patterns):
            return patterns
    except (orjson.JSONDecodeError, KeyError, TypeError):
        pass
    log.warning("%s is not a valid subscriptions record; ignoring it", where)
    return []


def encode(agent: str, patterns: list[str]) -> bytes:
    return orjson.dumps({"agent": agent, "patterns": patterns}, option=orjson.OPT_INDENT_2)


def changed(patterns: list[str], pattern: str, add: bool) -> bool:
    if add and pattern not in patterns:
        patterns.append(pattern)
        return True
    if not add and pattern in patterns:
        patterns.remove(pattern)
        return True
    return False
