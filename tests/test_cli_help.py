"""Every command, argument and option says what it is for; usage errors name options as people type them."""

from __future__ import annotations

import argparse
import subprocess
import sys

import pytest

from hybridcomms.cli import _parser


def subcommands(
    parser: argparse.ArgumentParser, prefix: str = ""
) -> list[tuple[str, argparse.ArgumentParser]]:
    out = [(prefix or "hybridcomms", parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out += subcommands(sub, f"{prefix} {name}".strip())
    return out


@pytest.mark.parametrize(("name", "parser"), subcommands(_parser()))
def test_every_argument_and_option_has_help(name: str, parser: argparse.ArgumentParser) -> None:
    missing = [
        a.dest
        for a in parser._actions
        if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
        and a.help != argparse.SUPPRESS
        and not a.help
        and a.dest not in ("agent", "agents", "ids", "id", "topic", "service")
    ]
    assert missing == [], f"{name}: no help for {missing}"


@pytest.mark.parametrize(
    "args", [["policy"], [], ["watch", "--exec", "true", "--exec-jobs", "0"], ["send", "--to", "A"]]
)
def test_errors_name_no_internal_names(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hybridcomms", *args], capture_output=True, text=True, timeout=60
    )
    assert out.returncode != 0
    for internal in ("policy_command", "max_workers", "dest=", "Traceback"):
        assert internal not in out.stderr, out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


@pytest.mark.parametrize(
    ("service", "needle"), [("watch", "hybridcomms watch"), ("work", "hybridcomms work %i")]
)
def test_systemd_units_ship_inside_the_package(service: str, needle: str) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "hybridcomms", "systemd-unit", service],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and "[Service]" in out.stdout and needle in out.stdout
