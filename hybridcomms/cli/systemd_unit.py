"""``hybridcomms systemd-unit watch|work``: print a systemd unit shipped in the package."""

from __future__ import annotations

import argparse
import sys
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from .common import EXIT_OK, Parents

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["SYSTEMD_UNITS", "register"]

#: The systemd units shipped in the package (``hybridcomms/systemd/``) that ``systemd-unit`` prints.
SYSTEMD_UNITS = {"watch": "hybridcomms-watch.service", "work": "hybridcomms-work@.service"}


def cmd_systemd_unit(args: argparse.Namespace, root: Path) -> int:
    sys.stdout.write((files("hybridcomms") / "systemd" / SYSTEMD_UNITS[args.service]).read_text())
    return EXIT_OK


def register(sub: Subparsers, parents: Parents) -> None:
    su = sub.add_parser(
        "systemd-unit",
        help="print a systemd unit for the watch service or a work consumer (to adjust)",
        description="Prints one of the systemd units shipped in the package (hybridcomms/systemd/): "
        "'watch' the watch service, 'work' the template of a work consumer per agent "
        "(hybridcomms-work@AGENT). Adjust User, WorkingDirectory and the paths, then install it: "
        "hybridcomms systemd-unit watch > /etc/systemd/system/hybridcomms-watch.service",
    )
    su.add_argument("service", choices=list(SYSTEMD_UNITS), help="which unit")
    su.set_defaults(func=cmd_systemd_unit)
