"""Writing messages the way legacy Dream.OS readers expect them (for recipients not yet on hybridcomms).

- Layout L1: ``<root>/<agent>/inbox.json``, one JSON array. An append takes ``inbox.json.lock`` (flock:
  the lock the ``filelock`` library takes, so legacy writers and these exclude each other), reads the
  array, adds the message, and replaces the file atomically (temp file, fsync, rename, folder fsync).
  A corrupt ``inbox.json`` is never replaced by ``[]`` (the legacy code did that and lost everything):
  it is kept as ``inbox.json.corrupt-<time>`` and a new array starts.
- Layout L2: ``<root>/<agent>/inbox/msg_<YYYYmmdd_HHMMSS_ffffff>_<first 8 of message_id>.json``, one file
  per message, written to ``<final>.<pid>.tmp`` then renamed, under ``inbox/.inbox.lock``.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ... import _log
from ...backends.base import check_agent_id
from . import _json
from .file_locking import acquire_lock, replace_atomically

__all__ = ["INBOX_JSON", "append_to_inbox_json", "write_inbox_file", "write_into_inbox"]

log = _log.get("hybridcomms.compat.dreamos")

INBOX_JSON = "inbox.json"


def append_to_inbox_json(
    root: str | os.PathLike[str], agent_id: str, message: dict[str, Any], *, timeout: float = 10.0
) -> Path:
    """Append ``message`` to ``<root>/<agent_id>/inbox.json`` under its lock; returns the file's path."""
    agent_dir = Path(root) / check_agent_id(agent_id)
    agent_dir.mkdir(parents=True, exist_ok=True)
    path = agent_dir / INBOX_JSON
    with acquire_lock(path, timeout):
        entries = _read_array(path)
        entries.append(message)
        replace_atomically(path, _json.dumps(entries, indent=2))  # as json.dump(..., indent=2) did
    return path


def _read_array(path: Path) -> list[Any]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return []
    if not raw.strip():
        return []
    try:
        value = _json.loads(raw)
    except ValueError:
        value = None
    if isinstance(value, list):
        return value
    keep = path.with_name(f"{path.name}.corrupt-{datetime.now(timezone.utc).strftime('%Y%m%dT%H%M%S%fZ')}")
    os.replace(path, keep)
    log.error("%s was not a JSON array; kept it as %s and started a new one", path, keep.name)
    return []


def write_inbox_file(
    root: str | os.PathLike[str],
    agent_id: str,
    message: dict[str, Any],
    *,
    filename_prefix: str = "msg",
    timeout: float = 10.0,
) -> Path:
    """Write ``message`` as its own file in ``<root>/<agent_id>/inbox/`` (layout L2); returns its path."""
    inbox = Path(root) / check_agent_id(agent_id) / "inbox"
    return write_into_inbox(inbox, message, filename_prefix=filename_prefix, timeout=timeout)


def write_into_inbox(
    inbox: str | os.PathLike[str],
    message: dict[str, Any],
    *,
    filename_prefix: str = "msg",
    timeout: float = 10.0,
) -> Path:
    """The same, in the inbox folder a legacy caller named (whatever it is called)."""
    inbox = Path(inbox)
    inbox.mkdir(parents=True, exist_ok=True)
    _check_prefix(filename_prefix)
    stamp = datetime.now(timezone.utc).strftime("%Y%m%d_%H%M%S_%f")
    msg_id = _legacy_id(message)
    with acquire_lock(inbox / ".inbox", timeout):  # the legacy writer's inbox/.inbox.lock
        final = _free_name(inbox, f"{filename_prefix}_{stamp}_{msg_id[:8]}")
        replace_atomically(final, _json.dumps(message, indent=2))
    return final


def _check_prefix(filename_prefix: str) -> None:
    """``ValueError`` unless the prefix keeps the file a plain, visible name in the inbox."""
    if not filename_prefix or "/" in filename_prefix or filename_prefix.startswith("."):
        raise ValueError(f"unsafe filename prefix {filename_prefix!r}")


def _legacy_id(message: dict[str, Any]) -> str:
    """The message's legacy id as text (``message_id``, else ``id``; empty if neither)."""
    return str(message.get("message_id") or message.get("id") or "")


def _free_name(inbox: Path, stem: str) -> Path:
    """``<stem>.json`` in ``inbox``, or ``<stem>_<n>.json`` with the first ``n`` not taken (two messages
    in the same microsecond with the same id prefix). The caller holds the inbox's lock."""
    final = inbox / f"{stem}.json"
    n = 1
    while final.exists():
        final = inbox / f"{stem}_{n}.json"
        n += 1
    return final
