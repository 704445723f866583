"""Who wants a topic, among the peers of a shared bus (`hybridcomms.bus.fanout`): their patterns indexed by
what they match (``*``, an exact topic, a dotted prefix), so that finding the peers of a topic costs
the topic's segments and the peers found, never patterns x peers. Peers are added and removed one at a
time (a registration that changed costs its own patterns). Each peer's patterns are `normalized`: a
topic is matched by at most one of them, so a peer is found at most once per topic."""

from __future__ import annotations

__all__ = ["PeerIndex"]

#: An entry of the index: its key (``"*"``, ``"=" + topic``, ``">" + prefix``) and the names in it.
Entry = tuple[str, dict[str, None]]


class PeerIndex:
    """Names of peers by the patterns they registered (``a.*`` matches ``a`` and ``a.<...>``)."""

    __slots__ = ("_exact", "_prefix", "_star", "held", "names")

    def __init__(self) -> None:
        self._star: dict[str, None] = {}
        self._exact: dict[str, dict[str, None]] = {}
        self._prefix: dict[str, dict[str, None]] = {}
        self.names: dict[str, tuple[str, ...]] = {}  # indexed: their patterns
        self.held = 0  # patterns indexed, in all

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, name: object) -> bool:
        return name in self.names

    def add(self, name: str, patterns: tuple[str, ...]) -> None:
        """Index ``name`` under its (normalized) ``patterns``, replacing what it had."""
        self.remove(name)
        self.names[name] = patterns
        self.held += len(patterns)
        for p in patterns:
            place = self._place(p)
            if place is None:
                self._star[name] = None
            else:
                place[0].setdefault(place[1], {})[name] = None

    def remove(self, name: str) -> None:
        patterns = self.names.pop(name, None)
        if patterns is None:
            return
        self.held -= len(patterns)
        for p in patterns:
            place = self._place(p)
            if place is None:
                self._star.pop(name, None)
            else:
                self._drop(*place, name)

    def _place(self, pattern: str) -> tuple[dict[str, dict[str, None]], str] | None:
        """The table (prefix or exact) of ``pattern`` and its key there; None for ``*``."""
        if pattern == "*":
            return None
        return (self._prefix, pattern[:-2]) if pattern.endswith(".*") else (self._exact, pattern)

    @staticmethod
    def _drop(table: dict[str, dict[str, None]], key: str, name: str) -> None:
        """Take ``name`` out of the peers of ``key`` in ``table`` (the key too once none are left)."""
        names = table.get(key)
        if names is not None:
            names.pop(name, None)
            if not names:
                del table[key]

    def entries(self, topic: str) -> list[Entry]:
        """The entries whose peers want ``topic`` (none of them found in two)."""
        found: list[Entry] = []
        if self._star:
            found.append(("*", self._star))
        names = self._exact.get(topic)
        if names:
            found.append(("=" + topic, names))
        if self._prefix:
            self._add_prefix_entries(topic, found)
        return found

    def _add_prefix_entries(self, topic: str, found: list[Entry]) -> None:
        """Add to ``found`` the entries of the prefix patterns ``p.*`` that match ``topic``: ``p`` is
        the topic itself (``a.*`` matches ``a``) or a dot-bounded start of it."""
        prefix = self._prefix
        names = prefix.get(topic)  # "a.*" matches "a" itself
        if names:
            found.append((">" + topic, names))
        end = topic.find(".")
        while end != -1:
            head = topic[:end]
            names = prefix.get(head)
            if names:
                found.append((">" + head, names))
            end = topic.find(".", end + 1)
