"""The fanout: ephemeral events of a shared `AgentBus` carried to the other processes of the fleet
(`share_bus`), through a folder of Unix sockets on one host (`local`) or Redis pub/sub across hosts.
See `hybridcomms.bus.fanout.local` for the guarantees."""

from __future__ import annotations

from .folder import BUS_FOLDER, bus_peers
from .local import (
    FANOUT_STATS,
    STATS_LOCK,
    LocalFanout,
    RedisFanout,
    count,
    decode_event,
    encode_event,
    redis_bus_prefix,
    share_bus,
)

__all__ = [
    "BUS_FOLDER",
    "FANOUT_STATS",
    "STATS_LOCK",
    "LocalFanout",
    "RedisFanout",
    "bus_peers",
    "count",
    "decode_event",
    "encode_event",
    "redis_bus_prefix",
    "share_bus",
]
