"""Run the ``hybridcomms`` command in this process: what a subprocess would print and exit with, at
a fraction of the cost (no interpreter start, no imports).

Most CLI tests are about what a command prints and returns, and run here. What is about the process
itself stays a real subprocess (``[sys.executable, "-m", "hybridcomms", ...]``): signals, terminals,
pipes closed early, the exit code of an uncaught error, log lines written before ``main`` returns.
"""

from __future__ import annotations

import io
import logging
import os
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence

from hybridcomms import cli

_one_at_a_time = threading.Lock()  # the process's cwd, environment and std streams are shared


def run_cli(
    args: Sequence[str],
    *,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    stdin: str | bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """``hybridcomms ARGS`` with ``cwd`` as the working folder and ``env`` as the whole environment
    (default: this one), ``stdin`` as its input; returns what `subprocess.run(..., text=True)` would."""
    raw_in = stdin.encode() if isinstance(stdin, str) else (stdin or b"")
    out, err = io.BytesIO(), io.BytesIO()
    with _one_at_a_time:
        saved_env, saved_cwd = dict(os.environ), os.getcwd()
        saved_streams = sys.stdin, sys.stdout, sys.stderr
        # Kept in locals: a wrapper closes its buffer when it is collected.
        wrappers = (
            io.TextIOWrapper(io.BytesIO(raw_in), encoding="utf-8"),
            io.TextIOWrapper(out, encoding="utf-8", errors="surrogateescape", write_through=True),
            io.TextIOWrapper(err, encoding="utf-8", errors="backslashreplace", write_through=True),
        )
        sys.stdin, sys.stdout, sys.stderr = wrappers
        try:
            if env is not None:
                os.environ.clear()
                os.environ.update(env)
            if cwd is not None:
                os.chdir(cwd)
            # The log lines a command's process would print on stderr (main configures them only
            # where nothing else has: here pytest has).
            shown = logging.StreamHandler(wrappers[2])
            shown.setLevel(logging.WARNING)
            shown.setFormatter(logging.Formatter("hybridcomms: %(levelname)s: %(message)s"))
            logging.getLogger().addHandler(shown)
            logs_before = _logging_state()
            try:
                code = cli.main(list(args))
            except SystemExit as exc:
                if isinstance(exc.code, str):
                    print(exc.code, file=sys.stderr)
                    code = 1
                else:
                    code = exc.code or 0
            finally:
                logs_after = _logging_state()
                logging.getLogger().removeHandler(shown)
            # A command in a process that goes on (as here) leaves its logging as it found it: a level
            # left at ERROR silenced the warnings later tests wait for.
            fresh = (logging.NOTSET, False, True, 0)  # a logger made meanwhile, as getLogger makes it
            changed = {
                n: (logs_before.get(n, fresh), logs_after.get(n, fresh))
                for n in logs_before.keys() | logs_after.keys()
                if logs_before.get(n, fresh) != logs_after.get(n, fresh)
            }
            assert not changed, f"hybridcomms {' '.join(args)} changed logging: {changed}"
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            sys.stdin, sys.stdout, sys.stderr = saved_streams
            os.chdir(saved_cwd)
            os.environ.clear()
            os.environ.update(saved_env)
    result = subprocess.CompletedProcess(
        ["hybridcomms", *args],
        code,
        out.getvalue().decode("utf-8", "surrogateescape"),
        err.getvalue().decode("utf-8", "backslashreplace"),
    )
    for wrapper in wrappers:
        wrapper.detach()
    return result


def _logging_state() -> dict[str, tuple[int, bool, bool, int]]:
    """Level, disabled, propagate and handler count of the root logger and of every logger."""
    loggers: dict[str, object] = {"": logging.getLogger(), **logging.Logger.manager.loggerDict}
    return {
        name: (lg.level, lg.disabled, lg.propagate, len(lg.handlers))
        for name, lg in loggers.items()
        if isinstance(lg, logging.Logger)
    }


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without any HYBRIDCOMMS_ setting, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    env.update(extra)
    return env


__all__ = ["clean_env", "run_cli"]
