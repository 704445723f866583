"""What the fanout's co-tenant tests share: a group root with its bus folder, registrations and
sockets placed by hand as a co-tenant would."""

from __future__ import annotations

import os
import socket
from pathlib import Path
from typing import Any

import orjson

from hybridcomms.bus import AgentBus
from hybridcomms.bus.fanout import BUS_FOLDER, _shared
from hybridcomms.bus.fanout import local as fanout


def fanout_of(b: AgentBus, root: Path) -> Any:
    return _shared[(id(b), os.path.abspath(root))][0]


def group_root(tmp_path: Path) -> Path:
    """A 0770 root with its bus folder, as agents of one group share it."""
    root = tmp_path / "root"
    (root / BUS_FOLDER).mkdir(parents=True)
    os.chmod(root, 0o770)
    return root


def place(folder: Path, name: str, body: Any) -> None:
    """A registration ``name`` (its body as given, or as JSON), renamed into place."""
    tmp = folder / f".{name}.placing"
    tmp.write_bytes(body if isinstance(body, bytes) else orjson.dumps(body))
    tmp.rename(folder / f"{name}.json")


def bind(folder: Path, name: str) -> socket.socket:
    """A datagram socket bound at ``<name>.sock`` in ``folder`` (through the folder's descriptor)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        s.bind(f"/proc/self/fd/{fd}/{name}.sock")
    finally:
        os.close(fd)
    return s


def registration(
    patterns: list[str], pid: int | None = None, host: str | None = None, **extra: Any
) -> dict[str, Any]:
    return {"pid": pid or os.getpid(), "host": host or fanout._HOST, "patterns": patterns, **extra}
