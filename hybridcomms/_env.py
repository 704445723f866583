"""Every ``HYBRIDCOMMS_*`` environment variable, named and read in one place.

========================================  =========================================================
variable                                  meaning (who reads it)
========================================  =========================================================
``HYBRIDCOMMS_ROOT``                      the mailbox root when none is given (`Comms`, the CLI's
                                          ``--root``, the Dream.OS ``mailbox_utils`` module)
``HYBRIDCOMMS_URL``                       where the mailboxes are: ``redis://…``, ``memory://…`` or
                                          files (`Comms`, the CLI's ``--url``)
``HYBRIDCOMMS_URL_FILE``                  a file whose first line is that URL (``ps`` cannot read a
                                          file; ``work`` and ``watch --exec`` pass a URL with a
                                          password to their commands this way)
``HYBRIDCOMMS_POLICY``                    the routing policy file (`hybridcomms.policy.find_policy`)
``HYBRIDCOMMS_SHARE_BUS``                 ``0`` keeps ephemeral events in their process (`Comms`, the
                                          Dream.OS AgentBus); default on
``HYBRIDCOMMS_LEGACY_INTAKE``             ``1`` takes Dream.OS legacy drops into the mailbox
                                          (`hybridcomms.intake`)
``HYBRIDCOMMS_DREAMOS_COMPAT``            set by `hybridcomms.compat.dreamos.install` for its child
                                          processes (turns the legacy intake on too)
``HYBRIDCOMMS_DREAMOS_ERA``               which Dream.OS era the compatibility modules imitate
``HYBRIDCOMMS_DEBUG``                     ``1``: the CLI prints a traceback with an unexpected error
``HYBRIDCOMMS_ALLOW_OTHER_OWNER``         ``1``: open mailbox folders another user owns
========================================  =========================================================

A flag is on when set to anything but ``""`` or ``"0"``. Readers take an optional ``environ``
mapping (default: this process's), so a caller can resolve for another environment (a child's).
No imports from the package: every layer may use it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

__all__ = [
    "ALLOW_OTHER_OWNER",
    "DEBUG",
    "DREAMOS_COMPAT",
    "DREAMOS_ERA",
    "LEGACY_INTAKE",
    "POLICY",
    "ROOT",
    "SHARE_BUS",
    "URL",
    "URL_FILE",
    "flag",
    "value",
]

ROOT = "HYBRIDCOMMS_ROOT"
URL = "HYBRIDCOMMS_URL"
URL_FILE = "HYBRIDCOMMS_URL_FILE"
POLICY = "HYBRIDCOMMS_POLICY"
SHARE_BUS = "HYBRIDCOMMS_SHARE_BUS"
LEGACY_INTAKE = "HYBRIDCOMMS_LEGACY_INTAKE"
DREAMOS_COMPAT = "HYBRIDCOMMS_DREAMOS_COMPAT"
DREAMOS_ERA = "HYBRIDCOMMS_DREAMOS_ERA"
DEBUG = "HYBRIDCOMMS_DEBUG"
ALLOW_OTHER_OWNER = "HYBRIDCOMMS_ALLOW_OTHER_OWNER"


def _read(environ: Mapping[str, str] | None) -> Mapping[str, str]:
    """The environment to read: ``environ``, else this process's."""
    return os.environ if environ is None else environ


def value(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """The variable's value; None when it is unset or empty."""
    return _read(environ).get(name) or None


def flag(name: str, default: bool = False, environ: Mapping[str, str] | None = None) -> bool:
    """Whether the flag is on: ``default`` when unset, off when ``""`` or ``"0"``, else on."""
    raw = _read(environ).get(name)
    if raw is None:
        return default
    return raw not in ("", "0")
