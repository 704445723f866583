"""How a CLI command ends, in one place (``cli.main`` runs every command through `run_command`).

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

import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import NoReturn

from .._outage import one_line, reason, unreachable
from .._urls import shown_url
from ..errors import BackendUnavailableError, HybridCommsError

__all__ = [
    "DEBUG_ENV",
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_OK",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "LineWriter",
    "output_closed",
    "run_command",
    "usage_error",
]

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
#: The backend cannot be reached (sysexits.h ``EX_UNAVAILABLE``): a script can tell "Redis is down"
#: from "a condition held" (``stats --fail-if``) or "no such mailbox".
EXIT_UNAVAILABLE = 69
EXIT_INTERRUPTED = 130
#: Set to 1 for the traceback after the one-line error.
DEBUG_ENV = "HYBRIDCOMMS_DEBUG"


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
        if isinstance(exc.code, str):
            _flush_quietly()
            raise SystemExit(one_line(exc.code)) from None
        raise
    except _errors_said_in_one_line() as exc:
        _flush_quietly()
        print(describe(command, url, exc), file=sys.stderr)
        if os.environ.get(DEBUG_ENV, "") not in ("", "0"):
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
