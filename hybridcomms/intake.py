"""The one hook through which messages that arrive *beside* a mailbox (not by `put`) are taken in.

The core knows nothing about where such messages come from. An intake is a plug-in: today the only
one is Dream.OS legacy ingestion (``inbox.json`` appends and ``inbox/`` files of agents whose readers
moved to hybridcomms), in `hybridcomms.compat.dreamos.legacy`. It is off unless one of these says so:

- `hybridcomms.compat.dreamos.install` ran (in this process or a parent: ``HYBRIDCOMMS_DREAMOS_COMPAT``);
- the routing policy has an ``adopt`` entry (agents whose legacy writers still run);
- the operator turns it on: ``HYBRIDCOMMS_LEGACY_INTAKE=1``, or ``hybridcomms watch --legacy``.

When it is off, a `Comms` consumer and the watch service never look at anything but the mailbox.

The command line reaches the same plug-in for what it offers on top (`adoption`): whether an agent
still reads a legacy layout and how many messages wait there (``stats``, ``send``, ``recv``), a
delivery in the form such an agent reads (``send``), taking its drops in at adoption
(``hybridcomms recv --adopt``, ``hybridcomms doctor --fix``) and the one-time conversion of a whole
root (``migrate``). The plug-in registers them as ``ADOPTION`` beside ``INTAKE``; nothing outside the
plug-in imports ``hybridcomms.compat``.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol

from . import _env

if TYPE_CHECKING:
    from .backends.file import FileMailbox
    from .message import Message
    from .policy import Policy

__all__ = ["ENV", "Adoption", "Intake", "Step", "adoption", "enabled", "get"]

#: Set to 1 to turn the legacy intake on for every `Comms` and watch service of this environment.
ENV = _env.LEGACY_INTAKE
_INSTALLED_ENV = _env.DREAMOS_COMPAT  # set by hybridcomms.compat.dreamos.install()
_PLUGIN = "hybridcomms.compat.dreamos.legacy"
_ADOPTION_PLUGIN = "hybridcomms.compat.dreamos.adoption"


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


class Taken(Protocol):
    """What taking an agent's drops in did (`Adoption.ingest`); said in one line by ``str()``."""

    refused: list[tuple[str, str]]  # (path under the root, why): left in place
    waiting: list[str]  # left for later (maybe still being written)


class Converted(Protocol):
    """What a conversion of a root did, or would do (`Adoption.migrate`)."""

    def to_dict(self) -> dict[str, Any]: ...

    def describe(self) -> str: ...


class Adoption(Protocol):
    """What the command line asks of the plug-in about agents whose readers may not be on hybridcomms."""

    def status(self, root: str | os.PathLike[str], agent: str) -> dict[str, Any] | None:
        """For an agent still on a legacy layout: ``{"agent", "layout", "waiting"}``; else None."""

    def deliver(self, root: str | os.PathLike[str], agent: str, message: Message) -> Path:
        """Write ``message`` where such an agent's reader reads, in its form; the file written."""

    def has_drops(self, root: str | os.PathLike[str], agent: str) -> bool:
        """A cheap look: is anything dropped beside the mailbox, waiting to be taken in?"""

    def ingest(self, mailbox: FileMailbox) -> Taken:
        """Take what was dropped beside the mailbox into its ``new/``."""

    def migrate(self, root: str | os.PathLike[str], **options: Any) -> Converted:
        """Convert a whole root to the hybridcomms layout (options: dry_run, backup, fsync, dir_mode,
        file_mode, progress)."""


def adoption() -> Adoption:
    """The plug-in's operations for the command line (imported on first use)."""
    module = importlib.import_module(_ADOPTION_PLUGIN)
    found: Adoption = module.ADOPTION
    return found


def enabled(policy: Policy | None = None) -> bool:
    """Is an intake asked for (see the module docstring)?"""
    if _env.flag(ENV) or _env.flag(_INSTALLED_ENV):
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
