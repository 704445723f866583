"""Dream.OS compatibility: the legacy module names, signatures and behaviours (../shared/DREAMOS_API.md),
on hybridcomms. See docs/compatibility.md.

- `hybridcomms.compat.dreamos.mailbox_utils`: ``MAILBOX_ROOT``, ``write_mailbox_message`` (all three call
  shapes), ``read_mailbox_messages``, the awaitable read / list / delete functions,
  ``create_mailbox_message``, ``validate_mailbox_message_schema`` and the path helpers;
- `hybridcomms.compat.dreamos.mailbox`: ``MailboxHandler`` on real claim and ack, ``MailboxError``, the
  folder-name constants, ``send_message``;
- `hybridcomms.compat.dreamos.file_locking`: ``acquire_lock``, ``read_json_locked``, ``write_json_locked``;
- `hybridcomms.compat.dreamos.agent_bus`: the ``AgentBus`` singleton on the hybridcomms bus and routing
  policy, ``SimpleEventBus``, ``BaseEvent`` and its subclasses, the 61-member ``EventType``, the errors;
- `hybridcomms.compat.dreamos.event_types`: the 55-member ``EventType``.

`install()` makes the legacy module paths resolve to these, in this process and in the processes it
starts.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

__all__ = ["LEGACY_MODULES", "install", "installed", "uninstall"]

#: Legacy module path -> the module of this package it resolves to after `install`.
LEGACY_MODULES: dict[str, str] = {
    "dreamos.core.comms.mailbox_utils": "mailbox_utils",
    "dreamos.core.comms.mailbox": "mailbox",
    "dreamos.core.utils.file_locking": "file_locking",
    "dreamos.coordination.agent_bus": "agent_bus",
    "dreamos.core.coordination.agent_bus": "agent_bus",
    "dreamos.core.coordination.event_types": "event_types",
}

#: A folder holding a small ``dreamos`` package whose legacy modules *are* these ones.
SHIM_PATH = str(Path(__file__).resolve().parent / "_shim")
ENV_FLAG = "HYBRIDCOMMS_DREAMOS_COMPAT"


def install() -> None:
    """Make ``import dreamos.core.comms.mailbox_utils`` (and the other `LEGACY_MODULES`) give the
    hybridcomms modules, here and in every Python process started from here.

    - in this process: the modules are put into ``sys.modules`` under their legacy names now;
    - in child processes: a shim ``dreamos`` package is put first on ``sys.path`` (multiprocessing's
      spawn and forkserver children receive ``sys.path``; fork children inherit everything) and on
      ``PYTHONPATH`` (for ``subprocess`` Python children).

    A real Dream.OS installation stays importable for every other module (the shim extends
    ``dreamos.__path__`` over it). Calling it again does nothing more."""
    if SHIM_PATH not in sys.path:
        sys.path.insert(0, SHIM_PATH)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if SHIM_PATH not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([SHIM_PATH, *parts])
    os.environ[ENV_FLAG] = "1"
    for legacy, ours in LEGACY_MODULES.items():
        module = importlib.import_module(f"{__name__}.{ours}")
        _alias(legacy, module)


def _alias(legacy: str, module: object) -> None:
    sys.modules[legacy] = module  # type: ignore[assignment]
    parent_name, _, child = legacy.rpartition(".")
    parent = sys.modules.get(parent_name)
    if parent is None:
        parent = importlib.import_module(parent_name)  # the shim package (first on sys.path)
    setattr(parent, child, module)


def installed() -> bool:
    """True if the legacy module paths resolve to hybridcomms in this process."""
    ours = sys.modules.get(f"{__name__}.mailbox_utils")
    return ours is not None and sys.modules.get("dreamos.core.comms.mailbox_utils") is ours


def uninstall() -> None:
    """Undo `install` in this process (for tests): the legacy names are forgotten."""
    while SHIM_PATH in sys.path:
        sys.path.remove(SHIM_PATH)
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p and p != SHIM_PATH]
    if parts:
        os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    else:
        os.environ.pop("PYTHONPATH", None)
    os.environ.pop(ENV_FLAG, None)
    for name in [n for n in sys.modules if n == "dreamos" or n.startswith("dreamos.")]:
        del sys.modules[name]
