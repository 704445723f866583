"""Mistakes and outages read as one line: every command against a backend it cannot reach, ``top``
without a terminal, a reader that stops early (``| head -1``), and hints that name real options.

The exit codes and the one-line stderr are tested as real subprocesses; the many URL variants run
the entry point in-process."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
from redis_server import answers_ping, available, free_port
from waiting import eventually

from hybridcomms import FileMailbox, Message
from hybridcomms.cli import _parser, main

HC = [sys.executable, "-m", "hybridcomms"]
PACKAGE = Path(__file__).resolve().parent.parent / "hybridcomms"
EXIT_UNAVAILABLE = 69


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    env.update(extra)
    return env


# -- an unreachable backend --------------------------------------------------------------------

#: Every command that takes --url, with the arguments it needs (the parser decides which those are:
#: test_every_command_that_takes_url_is_here keeps this list whole).
URL_COMMANDS: dict[str, list[str]] = {
    "send": ["send", "--to", "Agent-1", "--topic", "task.command", "--payload", "{}"],
    "recv": ["recv", "Agent-1"],
    "stats": ["stats"],
    "stats --json": ["stats", "--json"],
    "stats --fail-if": ["stats", "--fail-if", "dead>0"],
    "stats AGENT": ["stats", "Agent-1"],
    "ls": ["ls", "Agent-1"],
    "show": ["show", "some-id"],
    "show --agent": ["show", "some-id", "--agent", "Agent-1"],
    "requeue": ["requeue", "Agent-1", "--all-dead"],
    "purge": ["purge", "Agent-1", "--state", "dead", "--older-than", "1d"],
    "recover": ["recover"],
    "recover AGENTS": ["recover", "Agent-1", "Agent-2"],
    "work": ["work", "Agent-1", "--", sys.executable, "-c", "pass"],
    "ui": ["ui", "--port", "0"],
}
#: Commands that read mailbox files: they refuse --url before reaching for anything.
FILE_ONLY = {"doctor", "tail", "top", "watch", "migrate", "demo"}


def test_every_command_that_takes_url_is_here() -> None:
    _, commands = _options_by_command()
    takes_url = {name for name, options in commands.items() if "--url" in options and "policy" not in name}
    assert takes_url - FILE_ONLY == {argv[0] for argv in URL_COMMANDS.values()}


#: Run as real processes (what a process prints before and after ``main``, its exit status): `work`,
#: which starts a consumer thread, and `stats --fail-if`, what a monitoring script runs. The others run
#: in-process (`run_cli`), with the log lines a process would show.
REAL_PROCESS = {"work", "stats --fail-if"}


def test_every_command_against_a_closed_port_says_one_line_and_exits_69(tmp_path: Path) -> None:
    from cli_runner import run_cli

    url = f"redis://:not-shown-{os.getpid()}@127.0.0.1:{free_port()}/0"  # nothing listens there
    procs = {
        name: subprocess.Popen(
            [*HC, "--url", url, *argv],
            cwd=tmp_path,
            env=_env(),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, argv in URL_COMMANDS.items()
        if name in REAL_PROCESS
    }  # all at once: one wait for all of them
    results = {
        name: run_cli(["--url", url, *argv], cwd=tmp_path, env=_env())
        for name, argv in URL_COMMANDS.items()
        if name not in REAL_PROCESS
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=60)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    assert set(results) == set(URL_COMMANDS)
    for name, done in results.items():
        lines = done.stderr.splitlines()
        assert len(lines) == 1, f"{name}: {done.stderr}"
        command = URL_COMMANDS[name][0]
        assert re.fullmatch(
            rf"hybridcomms {command}: cannot reach redis://\*\*\*@127\.0\.0\.1:\d+/0: Connection refused",
            lines[0],
        ), f"{name}: {lines[0]}"
        assert "not-shown" not in done.stderr and "Traceback" not in done.stderr
        assert done.returncode == EXIT_UNAVAILABLE, f"{name}: exit {done.returncode}"
        assert done.stdout == ""


def test_stats_prometheus_with_a_url_refuses_in_one_line_before_reaching_for_redis(tmp_path: Path) -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    r = subprocess.run(
        [*HC, "--url", url, "stats", "--prometheus", str(tmp_path / "x.prom")],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
        cwd=tmp_path,
    )
    assert r.returncode == 1 and len(r.stderr.splitlines()) == 1 and "--prometheus" in r.stderr
    assert not (tmp_path / "x.prom").exists()


@pytest.fixture
def password_redis(tmp_path: Path) -> Iterator[int]:
    """A redis-server that wants the password "sekret" (the shared test server has none)."""
    if not available():
        pytest.skip("needs redis-server")
    port = free_port()
    proc = subprocess.Popen(
        [
            *("redis-server", "--bind", "127.0.0.1", "--port", str(port), "--requirepass", "sekret"),
            *("--save", "", "--appendonly", "no", "--dir", str(tmp_path)),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    def up() -> bool:  # (NOAUTH is an answer)
        assert proc.poll() is None, "redis-server exited"
        return answers_ping(port)

    eventually(up, "redis-server to answer PING", 10)
    try:
        yield port
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("argv", [["stats"], ["ls", "Agent-1"], ["send", "--to", "A", "--topic", "t"]])
def test_refused_credentials_and_unknown_hosts_are_one_line_in_process(
    password_redis: int, argv: list[str], capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    cases = {
        f"redis://127.0.0.1:{password_redis}/0": "the server wants a password",
        f"redis://:wrong-pw@127.0.0.1:{password_redis}/0": "credentials refused",
        f"redis://someone:wrong-pw@127.0.0.1:{password_redis}/0": "credentials refused",
        "redis://no-such-host.invalid:6379/0": "cannot reach redis://no-such-host.invalid:6379/0",
        f"unix://{tmp_path}/no.sock": "No such file or directory",
    }
    for url, says in cases.items():
        code = main(["--url", url, *argv])
        err = capsys.readouterr().err
        assert code == EXIT_UNAVAILABLE, (url, err)
        assert len(err.splitlines()) == 1 and says in err and "wrong-pw" not in err, (url, err)
        assert err.startswith(f"hybridcomms {argv[0]}: cannot reach ")
    assert main(["--url", f"redis://:sekret@127.0.0.1:{password_redis}/0", "stats"]) == 0  # the right one
    capsys.readouterr()


def test_a_mistyped_scheme_is_bad_usage_in_one_line_without_the_password(tmp_path: Path) -> None:
    for url in ("redsi://:pw-hidden@127.0.0.1:1/0", "redis:/127.0.0.1:1", "memory://x"):
        r = subprocess.run(
            [*HC, "--url", url, "ls", "Agent-1"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
            cwd=tmp_path,
        )
        assert r.returncode == 2 and len(r.stderr.splitlines()) == 1, r.stderr
        assert "pw-hidden" not in r.stderr and "Traceback" not in r.stderr


def test_other_io_errors_are_one_line_and_debug_adds_the_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    (root / "Agent-1" / "new").mkdir(parents=True)
    (root / "Agent-1" / "processing").write_text("a file where a folder must be")
    argv = ["--root", str(root), "ls", "Agent-1"]
    monkeypatch.delenv("HYBRIDCOMMS_DEBUG", raising=False)
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("hybridcomms ls: ") and "Traceback" not in err
    monkeypatch.setenv("HYBRIDCOMMS_DEBUG", "1")
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert err.splitlines()[0].startswith("hybridcomms ls: ") and "Traceback" in err


def test_a_hostile_name_cannot_add_lines_to_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "line\nbreak"
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(root), "ls", "Agent-1"])
    assert isinstance(exc.value.code, str) and "\n" not in exc.value.code and "line\\nbreak" in exc.value.code


# -- top without a terminal ----------------------------------------------------------------------


def test_top_without_a_terminal_says_so_in_one_line_and_exits_2(root: Path) -> None:
    FileMailbox(root, "Agent-1", fsync="never").close()
    r = subprocess.run(
        [*HC, "--root", str(root), "top"],
        stdin=subprocess.PIPE,
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(TERM="xterm"),
    )
    assert r.returncode == 2, r.stderr
    assert len(r.stderr.splitlines()) == 1 and "terminal" in r.stderr and "Traceback" not in r.stderr
    assert "_curses" not in r.stderr and r.stdout == ""


# -- a reader that stops early -------------------------------------------------------------------


def _fill(root: Path, agent: str, n: int, payload: object = None) -> list[str]:
    with FileMailbox(root, agent, fsync="never") as mb:
        return [mb.put(Message("fill.topic", payload if payload is not None else {"i": i})) for i in range(n)]


def test_ls_piped_into_head_exits_quietly_with_0(root: Path, tmp_path: Path) -> None:
    _fill(root, "Agent-1", 2000)  # about 180 kB of lines: far more than a pipe holds
    errors = tmp_path / "stderr.txt"
    script = f'{" ".join(HC)} --root "{root}" ls Agent-1 2>"{errors}" | head -1; echo "${{PIPESTATUS[0]}}"'
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60, env=_env())
    first, status = r.stdout.splitlines()
    assert first.startswith("state") and status == "0"
    assert errors.read_text() == ""


def _reader_closes_after_one_line(argv: list[str], cwd: Path) -> tuple[str, int, str]:
    proc = subprocess.Popen(
        [*HC, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(), cwd=cwd
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    proc.stdout.close()  # the reader is gone; the writer has far more to write than the pipe holds
    err = proc.stderr.read()
    return first, proc.wait(timeout=60), err


@pytest.mark.parametrize(
    "argv",
    [
        ["ls", "Agent-1", "--json"],
        ["stats", "--json"],
        ["stats"],
        ["show", "{big}"],
        ["watch", "--rescan-every", "60", "--recover-every", "0"],
    ],
    ids=["ls --json", "stats --json", "stats", "show", "watch"],
)
def test_output_closed_early_is_no_error(argv: list[str], root: Path) -> None:
    # Each writes far more than a pipe holds (64 kB) after the first line: it meets the closed pipe.
    if argv[0] == "stats":  # a row per mailbox
        for i in range(1200 if "--json" not in argv else 300):
            FileMailbox(root, f"Agent-{i:04d}", fsync="never").close()
    elif argv[0] == "show":
        (big,) = _fill(root, "Agent-2", 1, {"text": "x" * 300_000})
        argv = ["show", big]
    else:
        _fill(root, "Agent-1", 1500)
    first, code, err = _reader_closes_after_one_line(["--root", str(root), *argv], root)
    assert first.strip() and code == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err and "Errno" not in err
    if argv[0] != "watch":  # (watch says on stderr when it starts and stops)
        assert err == ""


def test_recv_follow_gives_back_what_it_could_not_write_and_exits_quietly(root: Path) -> None:
    _fill(root, "Agent-1", 1)
    proc = subprocess.Popen(
        [*HC, "--root", str(root), "recv", "Agent-1", "--follow"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    first = orjson.loads(proc.stdout.readline())
    assert first["topic"] == "fill.topic"
    proc.stdout.close()
    (second,) = _fill(root, "Agent-1", 1)  # recv takes it, and cannot write it
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == ""
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        waiting = mb.list("new")
        assert [i.id for i in waiting] == [second]  # back in new/, not acked
        assert len(mb.list("done")) == 1


def test_tail_stops_quietly_once_its_reader_is_gone(root: Path) -> None:
    FileMailbox(root, "Agent-1", fsync="never").close()
    proc = subprocess.Popen(
        [*HC, "--root", str(root), "tail"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    assert proc.stdout is not None and proc.stderr is not None
    assert "following" in proc.stderr.readline()  # it watches now
    proc.stdout.close()
    _fill(root, "Agent-1", 1)  # an event to write, to nobody
    assert proc.wait(timeout=60) == 0
    assert proc.stderr.read() == ""


def test_work_stops_cleanly_once_its_reader_is_gone(root: Path) -> None:
    _fill(root, "Agent-1", 3000)
    argv = ["--root", str(root), "work", "Agent-1", "--json", "--", sys.executable, "-c", "pass"]
    first, code, err = _reader_closes_after_one_line(argv, root)
    assert orjson.loads(first)["outcome"] == "acked" and code == 0, err
    assert "Broken pipe" not in err and "Traceback" not in err
    assert "stopped" in err.splitlines()[-1]
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        st = mb.stats().to_dict()
    assert st["processing"]["count"] == 0 and st["dead"]["count"] == 0  # every claim settled
    assert st["new"]["count"] + st["done"]["count"] == 3000


# -- hints name options that exist -----------------------------------------------------------------

#: The functions that define the parser: the options they name are the parser's own.
PARSER_BUILDERS = {
    "_parser",
    "add_common",
    "add_bus_option",
    "register",
    "register_ls",
    "register_show",
    "register_tail",
    "register_recover",
    "register_requeue",
    "register_purge",
}
_WORD = re.compile(r"--[a-z][a-z0-9-]*|\{\}:?|[A-Za-z][\w.-]*:?")


def _template(node: ast.AST) -> str | None:
    """The text of a string expression, with ``{}`` for each formatted value."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(
            v.value if isinstance(v, ast.Constant) and isinstance(v.value, str) else "{}" for v in node.values
        )
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):  # a value that is not text: {}
        return (_template(node.left) or "{}") + (_template(node.right) or "{}")
    return None


def _package_texts() -> Iterator[tuple[str, str]]:
    """(where, text) of every string the package can print or say: string expressions in every
    module (joined across ``+``), outside the parser's own definition; and the shipped unit files."""
    for path in sorted(PACKAGE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        skip: set[int] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef) and node.name in PARSER_BUILDERS:
                skip.update(id(n) for n in ast.walk(node))
            if isinstance(node, (ast.BinOp, ast.JoinedStr)):  # their parts are said as the whole
                for part in ast.walk(node):
                    if part is not node:
                        skip.add(id(part))
        for node in ast.walk(tree):
            if id(node) in skip:
                continue
            text = _template(node)
            if text is not None and "--" in text:
                yield f"{path.relative_to(PACKAGE.parent)}:{getattr(node, 'lineno', 0)}", text
    for unit in sorted((PACKAGE / "systemd").glob("*.service")):
        for n, line in enumerate(unit.read_text(encoding="utf-8").splitlines(), 1):
            if "bin/hybridcomms " in line:  # its command lines (not systemctl's)
                yield f"{unit.relative_to(PACKAGE.parent)}:{n}", line


def _options_by_command() -> tuple[set[str], dict[str, set[str]]]:
    top = _parser()
    top_options = {o for a in top._actions for o in a.option_strings}
    commands: dict[str, set[str]] = {}

    def walk(parser: object, prefix: str) -> None:
        for action in parser._actions:  # type: ignore[attr-defined]
            choices = getattr(action, "choices", None)
            for name, sub in choices.items() if isinstance(choices, dict) else ():
                if hasattr(sub, "_actions"):
                    commands[f"{prefix}{name}"] = {o for a in sub._actions for o in a.option_strings}
                    walk(sub, f"{prefix}{name} ")

    walk(top, "")
    return top_options, commands


def mentions(text: str, commands: set[str]) -> Iterator[tuple[str, str]]:
    """(context, --option) for each option ``text`` names. The context is the command of the last
    ``hybridcomms COMMAND`` before it (``*`` for ``hybridcomms {}``: any command; ``hybridcomms`` for
    the options before a command), else ``?``."""
    context, expecting = "?", False
    for word in _WORD.findall(text):
        bare = word.rstrip(":")
        if bare == "hybridcomms":
            context, expecting = "hybridcomms", True
        elif word.startswith("--"):
            yield context, word
        elif expecting and bare == "{}":
            context, expecting = "*", False
        elif expecting and bare in commands:
            context = bare
            expecting = any(c.startswith(bare + " ") for c in commands)  # policy explain|show
        elif expecting and context not in ("hybridcomms", "?") and f"{context} {bare}" in commands:
            context, expecting = f"{context} {bare}", False
        elif expecting and (bare.isupper() or bare in ("R", "FILE")):
            continue  # a metavar of a global option: hybridcomms --root R stats
        elif expecting:
            context, expecting = ("?" if context == "hybridcomms" else context), False


def test_every_option_a_hint_names_is_one_its_command_accepts() -> None:
    top, commands = _options_by_command()
    everywhere = set(commands)
    found: list[tuple[str, str, str]] = []
    wrong: list[str] = []
    for where, text in _package_texts():
        for context, option in mentions(text, everywhere):
            found.append((where, context, option))
            if context in ("hybridcomms", "*"):
                ok = option in top  # before any command, or said by every command
            elif context == "?":
                ok = option in top or any(option in opts for opts in commands.values())
            else:
                ok = option in top or option in commands[context]
            if not ok:
                wrong.append(f"{where}: {option!r} (in {context!r}): {text!r}")
    assert not wrong, "\n".join(wrong)
    pairs = {(c, o) for _, c, o in found}
    # The hints that used to name --create for commands without it now name those that have it.
    assert {("recv", "--create"), ("watch", "--create"), ("send", "--to"), ("doctor", "--fix")} <= pairs
    assert len(found) > 40  # the walk saw the hints, not nothing


def test_the_hint_walk_catches_an_option_its_command_lacks() -> None:
    _, commands = _options_by_command()
    said = list(mentions("hybridcomms {}: no mailbox for X (--create makes it)", set(commands)))
    assert said == [("*", "--create")]  # said by every command: only global options may be named
    said = list(mentions("hybridcomms ls: no mailbox ('hybridcomms recv A --create')", set(commands)))
    assert said == [("recv", "--create")]
    assert "--create" not in commands["ls"]


def test_the_missing_mailbox_hints_of_the_reading_commands_can_be_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    top, commands = _options_by_command()
    root = tmp_path / "root"
    for argv in (
        ["ls", "Nobody"],
        ["stats"],
        ["recover"],
        ["doctor"],
        ["stats", "Nobody"],
        ["recv", "Nobody"],
    ):
        if argv == ["stats", "Nobody"]:
            root.mkdir()
        with pytest.raises(SystemExit) as exc:
            main(["--root", str(root), *argv])
        hint = str(exc.value.code)
        named = list(mentions(hint, set(commands)))
        assert named and all(o in top or o in commands.get(c, set()) for c, o in named), hint
        assert any(o == "--create" for _, o in named), hint


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["recv", "A", "--count", "0"], "--count must be at least 1"),
        (["requeue", "A"], "give message ids or --all-dead"),
        (["send", "--to", "A", "--topic", "t", "--header", "novalue"], "--header wants KEY=VALUE"),
        (["watch", "--exec", "true", "--exec-jobs", "0"], "--exec-jobs and --exec-queue must be at least 1"),
        (["--url", "redis://127.0.0.1:1/0", "doctor"], "not available with --url"),
    ],
)
def test_a_bad_option_value_or_combination_is_bad_usage(tmp_path: Path, args: list[str], needle: str) -> None:
    """Exit 2 and one line, as the exit-code table says for bad usage (a newcomer saw exit 1, the
    code of an error or of a condition that held)."""
    from cli_runner import clean_env, run_cli

    root = tmp_path / "root"
    FileMailbox(root, "A", fsync="never").close()
    out = run_cli(["--root", str(root), *args], cwd=tmp_path, env=clean_env())
    assert out.returncode == 2, out.stderr
    assert needle in out.stderr and len(out.stderr.strip().splitlines()) == 1, out.stderr
