"""Delivery that follows the recipient, for every legacy send path (``mailbox_utils``, ``mailbox``,
the compat ``AgentBus``).

Agents move to hybridcomms one at a time, so a sender cannot assume its reader is new:

- an *adopted* recipient (its ``new/`` folder exists, or the routing policy's ``adopt`` list names it)
  gets a native, durable file in ``new/``;
- a message whose policy rule names a ``backend`` (``redis://…``, ``memory://…``) goes there, natively
  (`deliver_to`): a legacy reader cannot read those anyway;
- any other recipient gets exactly the legacy format it reads: an append to ``inbox.json`` under
  ``inbox.json.lock``, or a ``msg_*.json`` file in ``inbox/`` where that is the layout in use.

Folders created here are 0o770 and files 0o660, as Dream.OS sets them up for a shared group.

The policy is the compat ``AgentBus``'s (set when it is made or configured); until there is one, it is
found once, as every part finds it (`hybridcomms.policy.find_policy`), and its source is logged.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ... import _log
from ...backends import Mailbox, open_mailbox
from ...backends.base import check_agent_id
from ...backends.file import FileMailbox
from ...message import Message, new_id
from ...policy import Policy, find_policy
from ._legacy_store import append_to_inbox_json, write_inbox_file
from .legacy import LegacyLayout, is_adopted, legacy_layout, message_from_legacy

__all__ = [
    "DREAMOS_MODES",
    "close_kept",
    "complete",
    "current_policy",
    "deliver",
    "deliver_to",
    "mailbox_for",
    "set_policy",
]

log = _log.get("hybridcomms.compat.dreamos")

#: Folder and file modes for mailboxes the compat layer creates (Dream.OS shares them with a group).
DREAMOS_MODES: dict[str, Any] = {"dir_mode": 0o770, "file_mode": 0o660}

_policy: Policy | None = None
_policy_lock = threading.Lock()
_open: OrderedDict[tuple[str, str, int], FileMailbox] = OrderedDict()
_remote: OrderedDict[tuple[str, str, int], Mailbox] = OrderedDict()
_open_lock = threading.Lock()


def set_policy(policy: Policy | None) -> None:
    """The policy of every Dream.OS send path (its ``adopt`` list marks agents as adopted before their
    ``new/`` exists); None: find it again at the next use."""
    global _policy
    with _policy_lock:
        _policy = policy


def current_policy() -> Policy:
    """The policy set by the compat ``AgentBus``, else the one `find_policy` finds (once; logged)."""
    global _policy
    with _policy_lock:
        if _policy is None:
            _policy = find_policy()
            log.info("Dream.OS compat: routing policy from %s", _policy.provenance)
        return _policy


def mailbox_for(root: str | os.PathLike[str], agent_id: str, *, create: bool = True) -> FileMailbox:
    """An open `FileMailbox`, shared in this process (at most 64 kept open)."""
    key = (os.path.abspath(root), check_agent_id(agent_id), os.getpid())
    with _open_lock:
        mb = _open.get(key)
        if mb is not None:
            _open.move_to_end(key)
            return mb
    mb = FileMailbox(root, agent_id, create=create, **DREAMOS_MODES)
    with _open_lock:
        _open[key] = mb
        while len(_open) > 64:
            _, old = _open.popitem(last=False)
            old.close()
    return mb


def close_kept() -> None:
    """Close the mailboxes this process keeps open for the Dream.OS send paths (`mailbox_for`,
    `deliver_to`); the next send opens them again. For a process done with them (and the tests)."""
    with _open_lock:
        kept: list[Mailbox] = [*_open.values(), *_remote.values()]
        _open.clear()
        _remote.clear()
    for mb in kept:
        mb.close()


def adopted(root: str | os.PathLike[str], agent_id: str) -> bool:
    return is_adopted(root, agent_id) or current_policy().adopts(agent_id)


def deliver_to(url: str, agent_id: str, message: Message) -> None:
    """Put ``message`` into ``agent_id``'s mailbox at ``url`` (a policy rule's backend). The mailboxes
    are kept open in this process (at most 64)."""
    key = (url, check_agent_id(agent_id), os.getpid())
    with _open_lock:
        mb = _remote.get(key)
        if mb is not None:
            _remote.move_to_end(key)
    if mb is None:
        mb = open_mailbox(url, agent_id)
        with _open_lock:
            _remote[key] = mb
            while len(_remote) > 64:
                _, old = _remote.popitem(last=False)
                old.close()
    mb.put(message)


def complete(message: dict[str, Any], recipient: str | None = None) -> dict[str, Any]:
    """A copy with what every legacy reader needs filled in: id, time, recipient, both type spellings."""
    out = dict(message)
    out.setdefault("message_id", out.get("id") or new_id())
    _fill_timestamp(out)
    if recipient is not None:
        out.setdefault("recipient_agent_id", recipient)
    _fill_type_spellings(out)
    return out


def _fill_timestamp(out: dict[str, Any]) -> None:
    """``timestamp_utc`` filled in if missing: the legacy ``timestamp``, else now."""
    if "timestamp_utc" not in out:
        out["timestamp_utc"] = out.get("timestamp") or datetime.now(timezone.utc).isoformat()


def _fill_type_spellings(out: dict[str, Any]) -> None:
    """Both ``type`` and ``message_type`` set if either is (``type`` first)."""
    kind = out.get("type", out.get("message_type"))
    if kind is not None:
        out.setdefault("type", kind)
        out.setdefault("message_type", kind)


def _put_adopted(root: str | os.PathLike[str], agent_id: str, message: dict[str, Any], exact: bool) -> Path:
    """The legacy message into the adopted agent's ``new/`` (`deliver`); the file written."""
    mb = mailbox_for(root, agent_id)
    msg = message_from_legacy(
        message if exact else complete(message, agent_id),
        agent_id=agent_id,
        origin=f"send-{new_id()}" if exact else "send",
        max_size=mb.max_message_size,
    )
    return mb.path / "new" / mb.put_file(msg)


def deliver(
    root: str | os.PathLike[str],
    agent_id: str,
    message: dict[str, Any],
    *,
    filename_prefix: str = "msg",
    lock_timeout: float = 10.0,
    layout: LegacyLayout | None = None,
    exact: bool = False,
) -> Path:
    """Deliver one legacy message dict to ``agent_id`` under ``root`` in the form its reader
    expects; returns the file written (``new/<name>``, ``inbox.json`` or ``inbox/msg_*.json``).

    ``MessageError`` (a ``ValueError``) if it cannot become a message; ``OSError`` (including
    `LockTimeoutError`) if the write fails: nothing is half-written either way.

    ``exact``: store the object as it is (the newest ``write_mailbox_message``), with no field added, so
    that a legacy reader gets back exactly what was written; else the missing standard fields (id,
    time, recipient, both type spellings) are filled in first, as the older writers did."""
    check_agent_id(agent_id)
    if adopted(root, agent_id):
        return _put_adopted(root, agent_id, message, exact)
    full = message if exact else complete(message, agent_id)
    return _write_legacy(root, agent_id, full, layout, filename_prefix, lock_timeout)


def _write_legacy(
    root: str | os.PathLike[str],
    agent_id: str,
    message: dict[str, Any],
    layout: LegacyLayout | None,
    filename_prefix: str,
    lock_timeout: float,
) -> Path:
    """The message written in the layout the agent's legacy reader reads (``layout``, else the one
    its folder shows): an ``inbox/`` file, or appended to ``inbox.json``."""
    if (layout or legacy_layout(root, agent_id)) is LegacyLayout.INBOX_DIR:
        return write_inbox_file(
            root, agent_id, message, filename_prefix=filename_prefix, timeout=lock_timeout
        )
    return append_to_inbox_json(root, agent_id, message, timeout=lock_timeout)


def owner_of(path: str | os.PathLike[str]) -> tuple[Path, str] | None:
    """``(root, agent)`` for a path inside an agent's folder: ``<root>/<agent>/inbox[/x]``,
    ``<root>/<agent>/inbox.json``, ``<root>/<agent>/<state>/x`` or ``<root>/<agent>/x.json``."""
    agent_dir = _agent_dir_of(Path(os.path.abspath(path)))
    try:
        return agent_dir.parent, check_agent_id(agent_dir.name)
    except ValueError:
        return None


#: The folders an agent's folder holds (legacy and hybridcomms ones).
_AGENT_FOLDERS = {"inbox", "new", "processing", "done", "dead", "tmp", "archive", "processed", "outbox"}


def _agent_dir_of(p: Path) -> Path:
    """The agent's folder of an absolute path: a message file's folder, or the path itself, with
    one of the agent's folders (``inbox/``, ``new/``, ...) stepped out of."""
    if _is_message_file(p):
        return _out_of_agent_folder(p.parent)
    return _out_of_agent_folder(p)


def _is_message_file(p: Path) -> bool:
    """Does the path name a message file (``*.json``, ``inbox.json``) rather than a folder?"""
    return p.suffix == ".json" or p.name == "inbox.json"


def _out_of_agent_folder(p: Path) -> Path:
    """The folder holding ``p`` if ``p`` is one of an agent's folders, else ``p``."""
    return p.parent if p.name in _AGENT_FOLDERS else p
