"""Shell completion for ``hybridcomms`` (bash, zsh, fish), generated from the argparse parser.

The argcomplete library does both halves: `script` prints the shell's part (a few lines, the same for
every version of the parser), and on each TAB the shell runs ``hybridcomms`` with ``_ARGCOMPLETE`` set,
where `complete_if_asked` answers from the parser itself, so the completion always matches the
commands and options installed. shtab (static scripts) was the alternative; it has no fish support.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from .common import EXIT_OK, Parents

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["SHELLS", "complete_if_asked", "register", "script"]

SHELLS = ("bash", "zsh", "fish")


def script(shell: str, command: str = "hybridcomms") -> str:
    """The completion script of ``shell`` for the command ``command`` (as typed, found on the PATH)."""
    from argcomplete.shell_integration import shellcode

    if shell not in SHELLS:
        raise ValueError(f"no completion for {shell!r}: use one of {', '.join(SHELLS)}")
    return shellcode([command], shell=shell)


def complete_if_asked(parser: argparse.ArgumentParser) -> None:
    """When the shell asks for completions (``_ARGCOMPLETE`` set), print them and exit; else return at
    once (argcomplete is imported only then: no cost for a normal run)."""
    if "_ARGCOMPLETE" not in os.environ:
        return
    import argcomplete

    argcomplete.autocomplete(parser)


def cmd_completion(args: argparse.Namespace, root: Path) -> int:
    sys.stdout.write(script(args.shell))
    return EXIT_OK


def register(sub: Subparsers, parents: Parents) -> None:
    cp = sub.add_parser(
        "completion",
        help="print the shell completion script for bash, zsh or fish",
        description="Prints the script that makes TAB complete hybridcomms commands and options in bash, "
        "zsh or fish, generated from this parser by the argcomplete library. Install it once, e.g. "
        "'hybridcomms completion bash > ~/.local/share/bash-completion/completions/hybridcomms' "
        "(docs/cli.md gives the line for each shell), then open a new shell.",
    )
    cp.add_argument("shell", choices=SHELLS, help="the shell to print the script for")
    cp.set_defaults(func=cmd_completion)
