"""The ``hybridcomms`` command.

    hybridcomms [--root R] send --to AGENT --topic T [--payload JSON|-|@FILE] [--priority P] [--from SENDER]
                                [--id ID] [--delay AGE] [--ttl AGE] [--correlation-id ID] [--reply-to AGENT]
                                [--header KEY=VALUE] [--route R] [--adopt] [--json]
    hybridcomms [--root R] recv AGENT [--timeout S] [--count N] [--follow] [--no-ack [--lease S]] [--peek]
                                [--create] [--adopt]
    hybridcomms [--root R] stats [AGENT ...] [--fail-if COND] [--prometheus FILE] [--json]
    hybridcomms [--root R] recover [AGENT ...] [--json]
    hybridcomms [--root R] demo
    hybridcomms [--root R] watch [--json] [--exec CMD] [--exec-jobs N] [--exec-queue N] [--grace S]
                                 [--recover-every S] [--rescan-every S] [--polling] [--create] [--bus PATTERN]
                                 [--metrics-port P] [--metrics-addr A] [--legacy]
    hybridcomms [--root R] ls AGENT [--state S] [--topic PATTERN] [--older-than AGE] [--json]
    hybridcomms [--root R] show ID [--agent AGENT] [--json]
    hybridcomms [--root R] requeue AGENT (ID ... | --all-dead) [--keep-attempts] [--json]
    hybridcomms [--root R] purge AGENT --state done|dead --older-than AGE [--dry-run] [--json]
    hybridcomms [--root R] tail [AGENT ...] [--waiting] [--bus PATTERN] [--json]
    hybridcomms [--root R] top [--interval S]
    hybridcomms [--root R] doctor [AGENT ...] [--fix] [--deep] [--json]
    hybridcomms [--root R] work AGENT [--concurrency N] [--timeout S] [--grace S] [--max-messages N]
                                [--max-attempts N] [--retry-delay S] [--lease S] [--create] [--json]
                                [--metrics-port P] [--metrics-addr A] -- CMD [ARGS...]
    hybridcomms systemd-unit watch|work
    hybridcomms [--root R] migrate [--dry-run] [--no-backup] [--group] [--json]
    hybridcomms [--policy FILE] policy explain TOPIC [--priority P] [--broadcast] [--route R] [--json]
    hybridcomms [--policy FILE] policy show
    hybridcomms completion bash|zsh|fish

The mailbox root is ``--root``, else ``$HYBRIDCOMMS_ROOT``, else
``runtime/agent_comms/agent_mailboxes`` under the current directory (the Dream.OS location). ``--url``
(else ``$HYBRIDCOMMS_URL``) works on a Redis instead, for the commands that do not read mailbox files.

The routing policy is found as every part finds it (`hybridcomms.policy.find_policy`): ``--policy FILE``,
else ``$HYBRIDCOMMS_POLICY``, else ``./hybridcomms.toml``, else ``[tool.hybridcomms.policy]`` in
``./pyproject.toml``, else the shipped defaults. ``policy explain`` and ``policy show`` say which.

Exit codes: 0 done (also when the reader of the output stopped early: ``ls A | head -1``); 1 an
error (one line on stderr says what; ``HYBRIDCOMMS_DEBUG=1`` adds the traceback); 2 bad usage (also
``top`` without a terminal); 3 ``recv`` found no message; 69 the backend cannot be reached
(``--url``'s Redis refused, timed out, refused the credentials, or its host does not resolve); 70
``work``: a consumer thread died; 78 ``work``: its command cannot be started; 130 interrupted. See
`hybridcomms.cli.common`.

The package: one module per group of commands, each with its options beside its body (a
``register(subparsers, parents)``), and `COMMANDS` below, which assembles the parser from them. A new
command is a new module and one line in `COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .. import _env, ui
from .._version import __version__
from . import (
    completion,
    demo,
    doctor,
    dreamos,
    inspection,
    policy,
    receiving,
    repair,
    sending,
    stats,
    systemd_unit,
    top,
    watch,
    work,
)
from .common import (
    Parents,
    Parser,
    add_common,
    mailbox_url,
    parents,
    resolve_policy,
    resolve_root,
    run_command,
    usage_error,
)
from .systemd_unit import SYSTEMD_UNITS

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["COMMANDS", "SYSTEMD_UNITS", "main", "resolve_policy", "resolve_root"]

Register = Callable[["Subparsers", Parents], None]

#: Every command, in the order ``hybridcomms --help`` lists them.
COMMANDS: tuple[Register, ...] = (
    sending.register,  # send
    receiving.register,  # recv
    stats.register,  # stats
    repair.register_recover,  # recover
    demo.register,  # demo
    watch.register,  # watch
    inspection.register_ls,  # ls
    inspection.register_show,  # show
    repair.register_requeue,  # requeue
    repair.register_purge,  # purge
    inspection.register_tail,  # tail
    top.register,  # top
    doctor.register,  # doctor
    work.register,  # work
    systemd_unit.register,  # systemd-unit
    dreamos.register,  # migrate
    policy.register,  # policy explain|show
    completion.register,  # completion
    ui.register,  # ui (the dashboard: its web stack is imported when it runs)
)


def _parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="hybridcomms",
        description="Durable agent mailboxes: send, receive, inspect, repair, watch and consume them, from "
        "the shell. The mailbox root is --root, else $HYBRIDCOMMS_ROOT, else "
        "./runtime/agent_comms/agent_mailboxes; --url redis://... works on a Redis instead.",
        epilog="'hybridcomms COMMAND --help' describes a command. Exit codes: 0 done, 1 an error (stderr "
        "says what), 2 bad usage, 3 recv found no message, 69 the backend cannot be reached, 70 a "
        "work consumer thread died, 78 work's command cannot be started, 130 interrupted. Shell "
        "completion: 'hybridcomms completion bash|zsh|fish' prints the script (docs/cli.md says where "
        "to put it).",
    )
    p.add_argument("--version", action="version", version=f"hybridcomms {__version__}")
    add_common(p, None)
    shared = parents()  # the same options after the command: they only override what is given
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in COMMANDS:
        register(sub, shared)
    return p


def _run(args: argparse.Namespace, url: str | None) -> int:
    """One command, parsed: where it works (root, URL), then its body."""
    root, args.url_resolved = _where(resolve_root(args.root), getattr(args, "mailbox_url", mailbox_url)(url))
    files_only = getattr(args, "files_only", None)  # "works on mailbox files", "reads mailbox files"
    if args.url_resolved and files_only:
        usage_error(f"hybridcomms {args.command}: {files_only}; not available with --url")
    code: int = args.func(args, root)
    return code


def _where(root: Path, url: str | None) -> tuple[Path, str | None]:
    """(root, URL) a command works on: a ``file://`` URL is a root of mailbox files."""
    if url and url.startswith("file://"):
        return Path(url[len("file://") :]), None
    return root, url


def main(argv: Sequence[str] | None = None) -> int:
    words, command = work.split_argv(list(sys.argv[1:] if argv is None else argv))
    parser = _parser()
    completion.complete_if_asked(parser)  # when the shell asks for TAB completions: print them and exit
    args = parser.parse_args(words)
    if command:
        args.cmd = command
    _log_to_stderr()
    url = getattr(args, "url", None)
    # Errors as one line (69: the backend cannot be reached), a closed output as no error: common.
    return run_command(args.command, _url_said(url), lambda: _run(args, url))


def _log_to_stderr() -> None:
    """Warnings as ``hybridcomms: LEVEL: text`` lines on stderr, unless logging is set up already."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="hybridcomms: %(levelname)s: %(message)s")


def _url_said(url: str | None) -> str | None:
    """The URL an error names: --url, else $HYBRIDCOMMS_URL (None: none given)."""
    return url or _env.value(_env.URL) or None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
