"""The one hook through which messages that arrive *beside* a mailbox (not by `put`) are taken in.

The core knows nothing about where such messages come from. An intake is a plug-in: today the only
one is Dream.OS legacy ingestion (``inbox.json`` appends and ``inbox/`` files of agents whose readers
moved to hybridcomms), in `hybridcomms.compat.dreamos.legacy`. It is off unless one of these says so:

- `hybridcomms.compat.dreamos.install` ran (in this process or a parent: ``HYBRIDCOMMS_DREAMOS_COMPAT``);
- the routing policy has an ``adopt`` entry (agents whose legacy writers still run);
- the operator turns it on: ``HYBRIDCOMMS_LEGACY_INTAKE=1``, or ``hybridcomms watch --legacy``.

When it is off, a `Comms` consumer and the watch service never look at anything but the mailbox.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple, Protocol

if TYPE_CHECKING:
    from .backends.file import FileMailbox
    from .policy import Policy

__all__ = ["ENV", "Intake", "Step", "enabled", "get"]

#: Set to 1 to turn the legacy intake on for every `Comms` and watch service of this environment.
ENV = "HYBRIDCOMMS_LEGACY_INTAKE"
_INSTALLED_ENV = "HYBRIDCOMMS_DREAMOS_COMPAT"  # set by hybridcomms.compat.dreamos.install()
_PLUGIN = "hybridcomms.compat.dreamos.legacy"


class Step(NamedTuple):
    """What one bounded step of an intake did (`Intake.step`, and the prober's calls)."""

    taken: int = 0  # messages taken into new/
    more: bool = False  # more is waiting: take the next step soon (after some deliveries)
    retry_in: float | None = None  # something was skipped (a lock another process holds): look again then


class Intake(Protocol):
    """What the core asks of an intake."""

    def is_drop(self, parts: tuple[str, ...]) -> bool:
        """Is the path ``<root>/<parts...>`` (``parts[0]`` is the agent) a place messages are dropped?"""

    def pending(self, root: str | os.PathLike[str], agent: str) -> bool:
        """A cheap look: is anything waiting to be taken in for this agent?"""

    def take(self, mailbox: FileMailbox) -> int:
        """Take what is waiting into the mailbox's ``new/``; how many messages."""

    def step(self, mailbox: FileMailbox) -> Step:
        """Take a bounded part of what is waiting, never waiting on another process (for a service
        that has other mailboxes to look after)."""

    def prober(self, mailbox: FileMailbox) -> Callable[[bool], Step]:
        """For a consumer loop: a call (``force``) that takes a bounded step of the drops in when
        something may have changed, never waiting on another process."""


def enabled(policy: Policy | None = None) -> bool:
    """Is an intake asked for (see the module docstring)?"""
    if os.environ.get(ENV, "") not in ("", "0") or os.environ.get(_INSTALLED_ENV, "") not in ("", "0"):
        return True
    return bool(policy is not None and getattr(policy, "adopt", ()))


def get(policy: Policy | None = None, *, force: bool | None = None) -> Intake | None:
    """The intake to use, or None when it is off (``force`` True/False overrides the configuration)."""
    on = enabled(policy) if force is None else force
    if not on:
        return None
    module = importlib.import_module(_PLUGIN)
    intake: Intake = module.INTAKE
    return intake


def agent_of(root: str | os.PathLike[str], path: str) -> tuple[str, ...] | None:
    """The parts of ``path`` under ``root`` (None if it is not under it)."""
    try:
        return Path(path).relative_to(root).parts
    except ValueError:
        return None
