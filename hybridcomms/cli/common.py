"""What the commands of the CLI share: how a command ends, its common options, the mailbox root,
URL and policy it works on, and how it prints.

How a command ends, in one place (``cli.main`` runs every command through `run_command`):

- An error is one line on stderr, ``hybridcomms COMMAND: what happened``, never a traceback: a
  backend that cannot be reached is ``cannot reach URL: REASON`` (the URL without its password) and
  exits `EXIT_UNAVAILABLE`; any other hybridcomms, I/O or value error exits `EXIT_ERROR`. With
  ``HYBRIDCOMMS_DEBUG=1`` the traceback follows the line (for a bug report).
- A reader that stops reading early (``hybridcomms ls AGENT | head -1``) is no error: the command
  stops writing and exits `EXIT_OK`, silently (stdout is pointed at /dev/null, so nothing is left to
  fail when Python flushes it at exit).
- A one-line refusal a command raises (``SystemExit("hybridcomms ls: …")``) is kept to one printable
  line as well (a hostile name with a newline in it cannot add lines).
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn

from .. import _env
from .._outage import one_line, reason, unreachable
from .._text import json_text, printable
from .._urls import shown_url, url_from_environ
from ..backends import Mailbox, in_one_process, served
from ..backends.base import check_agent_id
from ..backends.file import DEFAULT_ROOT, FileMailbox, list_agents
from ..errors import BackendUnavailableError, HybridCommsError
from ..message import Message
from ..policy import Policy, find_policy

__all__ = [
    "DEBUG_ENV",
    "EXIT_EMPTY",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "LineWriter",
    "Parents",
    "Parser",
    "add_bus_option",
    "add_common",
    "agents_of",
    "human_age",
    "mailbox_url",
    "message_json",
    "need_mailbox",
    "need_root",
    "on_mailbox",
    "on_stop_signals",
    "open_existing",
    "output_closed",
    "parse_age",
    "print_json",
    "resolve_policy",
    "resolve_root",
    "restore_signals",
    "run_command",
    "shown_where",
    "usage_error",
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_EMPTY = 0, 1, 2, 3
#: The backend cannot be reached (sysexits.h ``EX_UNAVAILABLE``): a script can tell "Redis is down"
#: from "a condition held" (``stats --fail-if``) or "no such mailbox".
EXIT_UNAVAILABLE = 69
EXIT_INTERRUPTED = 130
#: Set to 1 for the traceback after the one-line error.
DEBUG_ENV = _env.DEBUG


def _errors_said_in_one_line() -> tuple[type[BaseException], ...]:
    kinds: tuple[type[BaseException], ...] = (HybridCommsError, OSError, ValueError, TypeError)
    mod = sys.modules.get("redis.exceptions")  # not imported: no Redis error can have happened
    return (*kinds, mod.RedisError) if mod is not None else kinds


def usage_error(text: str) -> NoReturn:
    """A bad option value found after parsing: one line, exit `EXIT_USAGE` (as argparse does)."""
    print(one_line(text), file=sys.stderr)
    raise SystemExit(EXIT_USAGE)


def output_closed() -> int:
    """Stdout's reader is gone: write nothing more there (not even Python's flush at exit). Returns
    `EXIT_OK`: what the reader wanted, it read."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, sys.stdout.fileno())
        finally:
            os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no stdout descriptor (an embedding, a test)
        pass
    return EXIT_OK


class LineWriter:
    """Lines to stdout from any thread (a watcher's callbacks), one at a time, each flushed. Once the
    reader is gone (a broken pipe) it writes nothing more, sets ``closed`` and calls ``on_close`` (to
    stop the command: its output was its purpose)."""

    def __init__(self, on_close: Callable[[], None] | None = None) -> None:
        self.lock = threading.Lock()
        self.closed = threading.Event()
        self._on_close = on_close

    def __call__(self, line: str) -> None:
        with self.lock:
            if self.closed.is_set():
                return
            try:
                sys.stdout.write(line + "\n")
                sys.stdout.flush()
                return
            except BrokenPipeError:
                self.closed.set()
                output_closed()
        if self._on_close is not None:
            self._on_close()


def run_command(command: str, url: str | None, run: Callable[[], int]) -> int:
    """``run()`` (one command, after parsing), ended as the module docstring says."""
    try:
        code = run()
        sys.stdout.flush()  # a reader that is gone shows here, not in Python's flush at exit
        return code
    except BrokenPipeError:
        return output_closed()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except SystemExit as exc:
        _exit_in_one_line(exc)
        raise
    except _errors_said_in_one_line() as exc:
        return _said_in_one_line(command, url, exc)


def _exit_in_one_line(exc: SystemExit) -> None:
    """A command that ends with a message: the message as one line (the exit code stays 2 or 1)."""
    if isinstance(exc.code, str):
        _flush_quietly()
        raise SystemExit(one_line(exc.code)) from None


def _said_in_one_line(command: str, url: str | None, exc: BaseException) -> int:
    """An error a person can act on: one line on stderr (the traceback too with the debug variable);
    exit 69 for a backend out of reach, else 1."""
    _flush_quietly()
    print(describe(command, url, exc), file=sys.stderr)
    if _env.flag(DEBUG_ENV):
        traceback.print_exception(exc)
    return EXIT_UNAVAILABLE if unreachable(exc) is not None else EXIT_ERROR


def describe(command: str, url: str | None, exc: BaseException) -> str:
    """The one line an error of ``command`` is said as."""
    found = unreachable(exc)
    if found is not None:
        where = found.url if isinstance(found, BackendUnavailableError) else shown_url(url or "the backend")
        return f"hybridcomms {command}: cannot reach {one_line(where)}: {reason(exc)}"
    return f"hybridcomms {command}: {reason(exc)}"


def _flush_quietly() -> None:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        output_closed()
    except (OSError, ValueError):
        pass


# -- the parser and the options every command shares ------------------------------------------------


class Parser(argparse.ArgumentParser):
    """Usage errors in one line (the full usage is in ``--help``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, one_line(f"{self.prog}: {message} (see '{self.prog} --help')") + "\n")


if TYPE_CHECKING:
    #: What ``register(subparsers, parents)`` of a command module is given to add its commands to.
    Subparsers = argparse._SubParsersAction[Parser]


class Parents(NamedTuple):
    """The options a command inherits (``parents=[...]``): ``mailboxes``: --root, --url, --policy and
    --fsync; ``files``: the same for the commands that work on mailbox files only (--url is accepted
    there to be refused in one line, but not offered in the help)."""

    mailboxes: Parser
    files: Parser


def add_common(parser: argparse.ArgumentParser, default: object, url: bool = True) -> None:
    """--root, --url, --policy and --fsync, accepted before or after the command (``hybridcomms watch
    --root R``). Without ``url`` (the commands that work on mailbox files only) --url is still accepted,
    to be refused in one line that says why, but not offered in the help."""
    parser.add_argument(
        "--root",
        default=default,
        help="mailbox root (default: $HYBRIDCOMMS_ROOT or ./runtime/agent_comms/agent_mailboxes)",
    )
    parser.add_argument(
        "--url",
        default=default,
        help="mailboxes elsewhere: redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://… (Redis Streams); "
        "default: $HYBRIDCOMMS_URL, else files under --root"
        if url
        else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--policy",
        default=default,
        help="routing policy file (TOML, or a pyproject.toml); default: $HYBRIDCOMMS_POLICY, else "
        "./hybridcomms.toml, else [tool.hybridcomms.policy] in ./pyproject.toml, else the shipped rules",
    )
    parser.add_argument(
        "--fsync",
        choices=["always", "batch", "never"],
        default="always" if default is None else default,
        help="durability of writes (default: always)",
    )


def parents() -> Parents:
    """The two option sets, given after the command: they only override what is given."""
    mailboxes = Parser(add_help=False)
    add_common(mailboxes, argparse.SUPPRESS)
    files = Parser(add_help=False)
    add_common(files, argparse.SUPPRESS, url=False)
    return Parents(mailboxes, files)


def add_bus_option(parser: argparse.ArgumentParser) -> None:
    """``--bus PATTERN`` of `watch` and `tail` (`hybridcomms.fanout`)."""
    parser.add_argument(
        "--bus",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also show the ephemeral bus events of every process sharing the root whose topic matches "
        "(e.g. 'dreamos.agent.status.*', or '*'); repeatable",
    )


_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)\Z")
_AGE_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_age(text: str) -> float:
    """``90``, ``90s``, ``3m``, ``2h``, ``7d``, ``1w`` -> seconds (argparse type)."""
    m = _AGE_RE.match(text.strip().lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (use e.g. 90s, 3m, 2h, 7d)")
    return float(m.group(1)) * _AGE_UNITS[m.group(2)]


def human_age(seconds: float | None) -> str:
    """``3m``, ``2h``, ``5d``: an age for people (``-`` for none)."""
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


# -- where a command works: root, URL, policy, mailboxes ---------------------------------------------


def resolve_root(arg: str | None, environ: dict[str, str] | None = None) -> Path:
    """``--root``, else ``$HYBRIDCOMMS_ROOT``, else the Dream.OS default under the current directory."""
    return Path(arg or _env.value(_env.ROOT, environ) or DEFAULT_ROOT)


def resolve_policy(arg: str | None, environ: dict[str, str] | None = None, cwd: Path | None = None) -> Policy:
    """The policy the CLI uses: `find_policy`, the one order every part uses, with ``--policy`` as its
    argument."""
    policy = find_policy(arg or None, environ=environ, cwd=cwd)
    return replace(policy, found_by="--policy") if arg else policy


def mailbox_url(arg: str | None, environ: dict[str, str] | None = None) -> str | None:
    """The mailboxes a command opens: ``--url``, else ``$HYBRIDCOMMS_URL``, else the file
    ``$HYBRIDCOMMS_URL_FILE`` names; None for files under the root. A URL no command can open (a
    memory mailbox, an unknown scheme) is bad usage."""
    url = _url_asked(arg, environ)
    if url is not None:
        _check_openable(url)
    return url


def _url_asked(arg: str | None, environ: dict[str, str] | None) -> str | None:
    """``--url``, else the environment's (`url_from_environ`: a URL file that cannot be read ends the
    command)."""
    try:
        return arg or url_from_environ(environ)
    except ValueError as exc:
        raise SystemExit(f"hybridcomms: {exc}") from None


def _check_openable(url: str) -> None:
    """A URL a command cannot open (a memory mailbox, an unknown scheme) is bad usage."""
    if in_one_process(url):
        usage_error("hybridcomms: --url memory://…: a memory mailbox lives in one process, out of reach")
    if not served(url) or "://" not in url:
        usage_error(f"hybridcomms: --url {shown_url(url)}: use redis://, rediss://, unix:// or file://")


def shown_where(url: str | None, root: Path) -> str:
    """Where a command works, as it is printed: the URL without its password, else the root."""
    return shown_url(url) if url else str(root)


def root_shown(root: Path) -> str:
    """A root as an error names it: a relative one with the folder it is relative to (run from
    another folder, the default root is another, empty one)."""
    if root.is_absolute():
        return printable(str(root))
    return f"{printable(str(root))} under the current folder {printable(os.getcwd())}"


def need_root(root: Path, command: str, create: bool) -> None:
    """A command that reads: a missing root is an error (a typo must not "succeed"), unless --create."""
    if not create and not root.is_dir():
        raise SystemExit(
            f"hybridcomms {command}: no mailbox root at {root_shown(root)} "
            "(check --root or $HYBRIDCOMMS_ROOT; a first 'hybridcomms send', "
            "'hybridcomms recv AGENT --create' or 'hybridcomms watch --create' makes it)"
        )


def need_mailbox(root: Path, agent: str, command: str) -> None:
    """An agent named to a command that reads must have a mailbox: its ``new/`` folder (all it takes,
    for one adopted by hand; the other folders are made by the first command that writes)."""
    if not (root / check_agent_id(agent) / "new").is_dir():
        raise SystemExit(
            f"hybridcomms {command}: no mailbox for {agent} under {root} ('hybridcomms send --to {agent} …' "
            f"or 'hybridcomms recv {agent} --create' makes it)"
        )


_FILE_ONLY_OPTIONS = ("fsync", "read_only")


def open_existing(
    root: Path, agent: str, command: str, create: bool, url: str | None = None, **options: Any
) -> Mailbox:
    """The mailbox a command works on: at ``url`` (the file-only options dropped), else under ``root``,
    which must hold it unless ``create``."""
    if url is not None:
        return _open_remote(url, agent, create, options)
    need_root(root, command, create)
    if not create:
        need_mailbox(root, agent, command)
    return FileMailbox(root, agent, create=create, **options)


def _open_remote(url: str, agent: str, create: bool, options: dict[str, Any]) -> Mailbox:
    """The mailbox at ``url``, opened with the options that are not about files."""
    from ..backends import open_mailbox

    remote = {k: v for k, v in options.items() if k not in _FILE_ONLY_OPTIONS}
    return open_mailbox(url, agent, create=create, **remote)


#: The handlers of the signals that stop a command (what `on_stop_signals` returns).
SignalHandlers = dict[int, Any]


def on_stop_signals(handler: Callable[[int, FrameType | None], Any]) -> SignalHandlers:
    """SIGTERM and Ctrl-C (SIGINT) call ``handler``; the handlers they had (for `restore_signals`)."""
    return {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGINT)}


def restore_signals(previous: SignalHandlers) -> None:
    """The signal handlers as they were (a caller in this process has its own)."""
    for s, handler in previous.items():
        signal.signal(s, handler)


def on_mailbox(
    body: Callable[[argparse.Namespace, Mailbox], int], read_only: Callable[[argparse.Namespace], bool]
) -> Callable[[argparse.Namespace, Path], int]:
    """A command that works on one agent's mailbox (``args.agent``), opened for it: read-only when
    ``read_only(args)`` (nothing is created, not even a folder it lacks)."""

    def run(args: argparse.Namespace, root: Path) -> int:
        with open_existing(
            root,
            args.agent,
            args.command,
            False,
            args.url_resolved,
            fsync=args.fsync,
            read_only=read_only(args),
        ) as mb:
            return body(args, mb)

    return run


def agents_of(args: argparse.Namespace, root: Path) -> list[str]:
    """The agents named (checked), else every mailbox under the root or at the URL."""
    if args.agents:
        return [check_agent_id(a) for a in args.agents]
    if args.url_resolved:
        from ..backends.redis.mailbox import redis_agents

        return redis_agents(args.url_resolved)
    return list_agents(root)


# -- output -----------------------------------------------------------------------------------------


def print_json(obj: Any) -> None:
    """One indented JSON document on stdout (text another agent wrote made safe: `json_text`)."""
    sys.stdout.write(json_text(obj, indent=True) + "\n")


def message_json(message: Message, **extra: Any) -> dict[str, Any]:
    """A message as printed by ``recv``: its fields, and ``extra`` (attempt, state, file)."""
    out = message.to_dict()
    out.update(extra)
    return out
