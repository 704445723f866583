"""Ephemeral events that reach the other processes of the fleet.

An `AgentBus` delivers in its own process, synchronously, as always. A bus that is *shared*
(`share_bus`) also carries each event it publishes to the other processes whose buses subscribe to a
matching pattern, and delivers theirs to its own subscribers, through one of two transports behind
one small interface (`transport.Transport`):

- **On one host, no daemon** (`local.LocalFanout`): every sharing process binds a Unix datagram
  socket in ``<root>/.bus/`` and registers the patterns its bus subscribes to in
  ``<root>/.bus/<name>.json``. A publisher sends one datagram to each process with a matching
  pattern, without ever waiting: what finds a full socket buffer waits in a bounded backlog for that
  process, then is dropped for that process only, counted. A process that died is pruned (its socket
  and registration removed) the first time a send finds nobody there.
- **Across hosts** (`redis_pubsub.RedisFanout`, when a Redis URL is configured): Redis pub/sub, a
  channel per topic (``hc:<db>:bus:<topic>``: pub/sub is per server, so the database is in the
  name); the publishes go out from a sender thread through a bounded queue, so the publisher never
  waits on the network either.

Still at most once, and never raised into the publisher: an event that cannot be encoded, is too big,
or finds a full buffer is counted (`FANOUT_STATS`, the Prometheus metrics, ``hybridcomms stats``) and
dropped. What arrives is decoded with the limits of a message file (size, JSON depth, field types:
`wire`); a bad datagram is dropped and counted, never raised into a subscriber. Events from other
processes carry ``event.origin`` (``host:pid``) and are never sent on again.

The modules: `transport` (the interface, the counters, `deliver`), `wire` (the encoded form), `local`
with its parts (`folder`: the ``.bus/`` folder and registrations; `index`: who wants a topic; `reads`:
which registrations a look reads; `turns`: how a publish visits the peers), `redis_pubsub`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from ...backends import fanout_url
from ..core import AgentBus
from .folder import BUS_FOLDER, bus_peers
from .local import LocalFanout
from .redis_pubsub import RedisFanout, redis_bus_prefix
from .transport import FANOUT_STATS, STATS_LOCK, Transport, count
from .wire import decode_event, encode_event

__all__ = [
    "BUS_FOLDER",
    "FANOUT_STATS",
    "STATS_LOCK",
    "LocalFanout",
    "RedisFanout",
    "Transport",
    "bus_peers",
    "count",
    "decode_event",
    "encode_event",
    "redis_bus_prefix",
    "share_bus",
]

#: The transports made by `share_bus`, by (bus, place): (the transport, how many hold it).
_shared: dict[tuple[int, str], tuple[Transport, int]] = {}
_shared_lock = threading.Lock()


def _place_of(root: str | os.PathLike[str] | None, url: str | None) -> tuple[str, bool] | None:
    """(where the bus is shared, whether that is a Redis URL); None if nowhere."""
    shared = fanout_url(url)
    if shared is not None:
        return shared, True
    if root is None:
        return None
    return os.path.abspath(os.fspath(root)), False


def _hold(key: tuple[int, str], make: Callable[[], Transport]) -> None:
    """(Under the lock.) One more holder of the transport of ``key``, made by ``make`` if none."""
    held = _shared.get(key)
    transport, holders = (make(), 0) if held is None else held
    _shared[key] = (transport, holders + 1)


def _release(key: tuple[int, str]) -> None:
    """One holder fewer of the transport of ``key``: the last one closes it."""
    with _shared_lock:
        transport, holders = _shared[key]
        if holders > 1:
            _shared[key] = (transport, holders - 1)
            return
        del _shared[key]
    transport.close()


def share_bus(
    bus: AgentBus,
    *,
    root: str | os.PathLike[str] | None = None,
    url: str | None = None,
    allow_other_owner: bool | None = None,
) -> Callable[[], None]:
    """Carry ``bus``'s events to the processes that share ``root`` (this host) or ``url`` (a Redis).
    Idempotent per (bus, place): the fanout is made once and kept while anyone holds it. Returns the
    release (call it once when done: the last release stops the fanout). ``allow_other_owner``: a
    bus folder (``<root>/.bus``) of another user is used (default: ``$HYBRIDCOMMS_ALLOW_OTHER_OWNER``),
    as for mailbox folders; else it is refused with `UnsafePathError`."""
    found = _place_of(root, url)
    if found is None:
        return lambda: None
    place, redis = found

    def make() -> Transport:
        if redis:
            return RedisFanout(bus, place)
        return LocalFanout(bus, place, allow_other_owner=allow_other_owner)

    key = (id(bus), place)
    with _shared_lock:
        _hold(key, make)
    released = threading.Event()

    def release() -> None:
        if not released.is_set():
            released.set()
            _release(key)

    return release
