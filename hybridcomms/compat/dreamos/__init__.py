"""Dream.OS compatibility: the legacy module names, signatures and behaviours (docs/compatibility.md),
on hybridcomms. See docs/compatibility.md.

- `hybridcomms.compat.dreamos.mailbox_utils`: ``MAILBOX_ROOT``, ``write_mailbox_message`` (all three call
  shapes), ``read_mailbox_messages``, the awaitable read / list / delete functions,
  ``create_mailbox_message``, ``validate_mailbox_message_schema`` and the path helpers;
- `hybridcomms.compat.dreamos.mailbox`: ``MailboxHandler`` on real claim and ack, ``MailboxError``, the
  folder-name constants, ``send_message``;
- `hybridcomms.compat.dreamos.file_locking`: ``acquire_lock``, ``read_json_locked``, ``write_json_locked``;
- `hybridcomms.compat.dreamos.agent_bus`: the ``AgentBus`` singleton on the hybridcomms bus and routing
  policy, ``SimpleEventBus``, ``BaseEvent`` and its subclasses, the 61-member ``EventType``, the errors
  (``dreamos.coordination.agent_bus``, 37fd64c);
- `hybridcomms.compat.dreamos.agent_bus_head`: the newest era's ``AgentBus`` (one bus per instance, async
  methods, exact topics), its 14-member ``EventType`` and pydantic ``BaseEvent``
  (``dreamos.core.coordination.agent_bus``, e563f46, the default at that path);
- `hybridcomms.compat.dreamos.agent_bus_may2025`: the canonical singleton with the 55-member ``EventType``
  (``dreamos.core.coordination.agent_bus``, 814c67e, on request);
- `hybridcomms.compat.dreamos.event_types`: the 55-member ``EventType``.

`install()` makes the legacy module paths resolve to these, in this process and in the processes it
starts. See docs/compatibility.md for the table of eras.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from ... import _env

__all__ = ["DEFAULT_ERA", "ERAS", "LEGACY_MODULES", "era_of", "install", "installed", "uninstall"]

#: The module served at ``dreamos.core.coordination.agent_bus`` for each era of Dream.OS that had one
#: there (two eras conflict at that path; the newest is the default).
ERAS: dict[str, str] = {"e563f46": "agent_bus_head", "814c67e": "agent_bus_may2025"}
ERA_ALIASES: dict[str, str] = {
    "newest": "e563f46",
    "head": "e563f46",
    "june2025": "e563f46",
    "may2025": "814c67e",
}
DEFAULT_ERA = "e563f46"
#: Chooses the era in this process and in the processes started from it (set by `install`).
ERA_ENV = _env.DREAMOS_ERA
_CORE_BUS = "dreamos.core.coordination.agent_bus"

#: Legacy module path -> the module of this package it resolves to after `install` (the core bus path
#: follows the era).
LEGACY_MODULES: dict[str, str] = {
    "dreamos.core.comms.mailbox_utils": "mailbox_utils",
    "dreamos.core.comms.mailbox": "mailbox",
    "dreamos.core.utils.file_locking": "file_locking",
    "dreamos.coordination.agent_bus": "agent_bus",
    _CORE_BUS: ERAS[DEFAULT_ERA],
    "dreamos.core.coordination.event_types": "event_types",
}


def era_of(name: str | None) -> str:
    """The era (a commit) for a name: a commit of `ERAS` or an alias; None or "" gives the environment's
    choice (`ERA_ENV`), else the default. ``ValueError`` for an unknown one."""
    chosen = (name or _env.value(ERA_ENV) or DEFAULT_ERA).strip().lower()
    chosen = ERA_ALIASES.get(chosen, chosen)
    if chosen not in ERAS:
        known = ", ".join([*ERAS, *ERA_ALIASES])
        raise ValueError(f"unknown Dream.OS era {name!r} for {_CORE_BUS}; use one of: {known}")
    return chosen


#: A folder holding a small ``dreamos`` package whose legacy modules *are* these ones.
SHIM_PATH = str(Path(__file__).resolve().parent / "_shim")
ENV_FLAG = _env.DREAMOS_COMPAT


def install(era: str | None = None) -> None:
    """Make ``import dreamos.core.comms.mailbox_utils`` (and the other `LEGACY_MODULES`) give the
    hybridcomms modules, here and in every Python process started from here.

    ``era`` chooses what ``dreamos.core.coordination.agent_bus`` is: ``"e563f46"`` (the newest, the
    default) or ``"814c67e"`` (May 2025); see `ERAS` and `era_of`. It is also taken from
    ``HYBRIDCOMMS_DREAMOS_ERA``, and passed on to child processes that way.

    - in this process: the modules are put into ``sys.modules`` under their legacy names now;
    - in child processes: a shim ``dreamos`` package is put first on ``sys.path`` (multiprocessing's
      spawn and forkserver children receive ``sys.path``; fork children inherit everything) and on
      ``PYTHONPATH`` (for ``subprocess`` Python children).

    A real Dream.OS installation stays importable for every other module (the shim extends
    ``dreamos.__path__`` over it). Calling it again does nothing more."""
    chosen = era_of(era)  # an unknown era changes nothing
    _put_shim_first()
    os.environ[ENV_FLAG] = "1"
    os.environ[ERA_ENV] = chosen
    for legacy, ours in LEGACY_MODULES.items():
        module = importlib.import_module(f"{__name__}.{ERAS[chosen] if legacy == _CORE_BUS else ours}")
        _alias(legacy, module)


def _put_shim_first() -> None:
    """The shim package first on ``sys.path`` and on ``PYTHONPATH`` (once)."""
    if SHIM_PATH not in sys.path:
        sys.path.insert(0, SHIM_PATH)
    parts = _pythonpath()
    if SHIM_PATH not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([SHIM_PATH, *parts])


def _pythonpath() -> list[str]:
    """The entries of ``PYTHONPATH`` (none if it is unset or empty)."""
    return [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]


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
    _drop_shim_from_sys_path()
    _drop_shim_from_pythonpath()
    os.environ.pop(ENV_FLAG, None)
    os.environ.pop(ERA_ENV, None)
    _forget_legacy_modules()


def _drop_shim_from_sys_path() -> None:
    """``sys.path`` without the shim, however many times it was put there."""
    while SHIM_PATH in sys.path:
        sys.path.remove(SHIM_PATH)


def _forget_legacy_modules() -> None:
    """Every ``dreamos`` module imported so far dropped from ``sys.modules``."""
    for name in [n for n in sys.modules if _is_legacy_module(n)]:
        del sys.modules[name]


def _is_legacy_module(name: str) -> bool:
    """Is this module name the legacy ``dreamos`` package or one of its modules?"""
    return name == "dreamos" or name.startswith("dreamos.")


def _drop_shim_from_pythonpath() -> None:
    """``PYTHONPATH`` without the shim (unset if nothing else is left in it)."""
    parts = [p for p in _pythonpath() if p != SHIM_PATH]
    if parts:
        os.environ["PYTHONPATH"] = os.pathsep.join(parts)
    else:
        os.environ.pop("PYTHONPATH", None)
