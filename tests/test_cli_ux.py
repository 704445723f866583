"""The CLI people expect: help with a description for every command, ``--json`` on ``recover`` and
``send``, shell completion that really completes in bash, zsh and fish, ``migrate`` progress on a terminal
(and none when piped), and docs that cannot drift from the code (event kinds, metrics, systemd units)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import select
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from importlib.resources import files
from pathlib import Path
from typing import IO, Any

import orjson
import pytest

from hybridcomms import Backoff, FileMailbox, Message, State
from hybridcomms._urls import shown_url
from hybridcomms.cli import SYSTEMD_UNITS, _parser, main
from hybridcomms.cli.progress import human_size
from hybridcomms.compat.dreamos.migrate import migrate, survey
from hybridcomms.watcher import EVENT_KINDS, MailboxEvent

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
HC = [sys.executable, "-m", "hybridcomms"]
NO_WAIT = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HYBRIDCOMMS_", "XDG_", "_ARC"))}
    env.update(extra)
    return env


def hc(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*HC, *args], capture_output=True, text=True, timeout=60, env=clean_env(), cwd=cwd)


# -- help ------------------------------------------------------------------------------------------


def commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = (), one_line: str | None = None
) -> Iterator[tuple[tuple[str, ...], argparse.ArgumentParser, str | None]]:
    """Every (sub)command of the parser, with the one-line help its parent lists it with."""
    yield path, parser, one_line
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            listed = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield from commands(sub, (*path, name), listed.get(name))


COMMANDS = list(commands(_parser()))


def test_the_walk_finds_every_command() -> None:
    names = {" ".join(path) for path, _, _ in COMMANDS}
    assert {"send", "recover", "work", "migrate", "systemd-unit", "completion"} <= names
    assert {"policy explain", "policy show"} <= names


@pytest.mark.parametrize(
    ("path", "parser", "one_line"), COMMANDS, ids=[" ".join(p) or "hybridcomms" for p, _, _ in COMMANDS]
)
def test_every_command_has_a_description_besides_its_one_line_help(
    path: tuple[str, ...],
    parser: argparse.ArgumentParser,
    one_line: str | None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    description = " ".join((parser.description or "").split())
    assert len(description.split()) >= 12, f"{path}: a paragraph, not a label: {description!r}"
    if path:
        assert one_line, f"{path}: no one-line help in the list of commands"
        assert description != one_line
    with pytest.raises(SystemExit) as stop:
        main([*path, "--help"])
    assert stop.value.code == 0
    shown = " ".join(capsys.readouterr().out.split()).replace("- ", "-")  # argparse wraps at hyphens
    assert " ".join(description.split()[:8]) in shown


def test_work_help_shows_the_command_after_a_double_dash() -> None:
    out = hc("work", "--help")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "usage: hybridcomms work AGENT [options] -- CMD [ARGS...]"
    assert "-- CMD" in out.stdout


# -- recover --json ---------------------------------------------------------------------------------


def claim_and_die(root: Path, agent: str) -> None:
    """A consumer that claims one message and is gone without settling it."""
    code = (
        "import os, sys\nfrom hybridcomms import FileMailbox\n"
        "assert FileMailbox(sys.argv[1], sys.argv[2]).claim() is not None\nos._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code, str(root), agent], check=True, timeout=60)


def test_recover_json_says_per_mailbox_what_came_back_what_died_and_what_was_left(root: Path) -> None:
    # This recoverer gives messages back due at once (no backoff), so the next consumer gets it at once.
    with FileMailbox(root, "Agent-1", fsync="never", backoff=NO_WAIT) as mb:
        mb.put(Message("t.used-up", {"n": 1}, id="used-up", priority="HIGH"))  # claimed first
        for _ in range(mb.max_attempts - 1):  # every attempt but the last, each by a consumer that died
            claim_and_die(root, "Agent-1")
            assert mb.recover().returned == ["used-up"]
        claim_and_die(root, "Agent-1")  # the last attempt: recovery dead-letters it
        mb.put(Message("t.back", {"n": 2}, id="comes-back"))
        claim_and_die(root, "Agent-1")
    stale = root / "Agent-1" / "tmp" / "half-written.json"
    stale.write_text("{")
    os.utime(stale, (1, 1))
    odd = root / "Agent-1" / "tmp" / "a-folder"
    odd.mkdir()
    os.utime(odd, (1, 1))

    out = hc("--root", str(root), "recover", "Agent-1", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["root"] == str(root) and doc["failed"] == 0
    [row] = doc["agents"]
    assert row["agent"] == "Agent-1" and row["error"] is None and row["busy"] is False
    assert row["returned"] == ["comes-back"]
    assert row["dead"] == ["used-up"]
    assert row["expired"] == []
    assert row["tmp_removed"] == ["half-written.json"]
    assert [e["entry"] for e in row["left"]] == ["tmp/a-folder"] and row["left"][0]["why"]

    # A mailbox that cannot be opened is reported in the document, and the exit is 1 as without --json.
    FileMailbox(root, "Broken", fsync="never").close()
    (root / "Broken" / "processing").rmdir()
    (root / "Broken" / "processing").write_text("")
    out = hc("--root", str(root), "recover", "--json")
    assert out.returncode == 1
    rows = {r["agent"]: r for r in json.loads(out.stdout)["agents"]}
    assert rows["Broken"]["error"] and rows["Broken"]["returned"] == []
    assert rows["Agent-1"]["error"] is None and rows["Agent-1"]["returned"] == []
    assert json.loads(out.stdout)["failed"] == 1
    assert "Broken" in out.stderr  # the one-line error on stderr, as without --json


# -- send --json ------------------------------------------------------------------------------------


def test_send_json_says_where_the_message_went(root: Path) -> None:
    base = ["--root", str(root), "send", "--to", "Agent-1", "--payload", '{"a": 1}', "--json"]
    out = hc(*base, "--topic", "dreamos.agent.Agent-1.task.command", "--id", "m-1")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["id"] == "m-1" and doc["agent"] == "Agent-1"
    assert doc["route"] == "durable" and doc["reason"]
    assert (doc["backend"], doc["legacy"], doc["sent"], doc["state"], doc["url"]) == (
        "file",
        False,
        True,
        "new",
        None,
    )
    path = Path(doc["path"])
    assert path.is_absolute() and path.parent == (root / "Agent-1" / "new").absolute()
    assert orjson.loads(path.read_bytes())["id"] == "m-1"

    again = hc(*base, "--topic", "dreamos.agent.Agent-1.task.command", "--id", "m-1")
    assert again.returncode == 0
    resent = json.loads(again.stdout)
    assert resent["sent"] is False and resent["path"] == doc["path"]  # nothing written twice
    assert len(os.listdir(root / "Agent-1" / "new")) == 1


def test_send_json_to_an_agent_on_the_legacy_layout_says_so(root: Path) -> None:
    (root / "Agent-L").mkdir(parents=True)
    (root / "Agent-L" / "inbox.json").write_text("[]")
    out = hc("--root", str(root), "send", "--to", "Agent-L", "--topic", "t.x", "--json")
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert doc["legacy"] is True and doc["backend"] == "file" and doc["state"] is None
    assert Path(doc["path"]) == (root / "Agent-L" / "inbox.json").absolute()
    assert doc["id"] in (root / "Agent-L" / "inbox.json").read_text()


@pytest.mark.redis
def test_send_json_on_redis_names_the_backend(redis_url: str, tmp_path: Path) -> None:
    from hybridcomms.backends.redis.mailbox import RedisMailbox

    agent = f"Agent-{uuid.uuid4().hex[:8]}"
    out = hc("--url", redis_url, "send", "--to", agent, "--topic", "t.x", "--json", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    doc = json.loads(out.stdout)
    assert (doc["backend"], doc["path"], doc["state"], doc["sent"]) == ("redis", None, "new", True)
    assert doc["url"] == shown_url(redis_url)
    with RedisMailbox(redis_url, agent, create=False) as mb:
        delivery = mb.claim()
        assert delivery is not None and delivery.message.id == doc["id"]
        delivery.ack()


# -- shell completion ------------------------------------------------------------------------------

SUBCOMMANDS = sorted(path[0] for path, _, _ in COMMANDS if len(path) == 1)


@pytest.fixture
def shell_env(tmp_path: Path) -> dict[str, str]:
    """A home of its own, and a ``hybridcomms`` on the PATH that runs this checkout's package."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    exe = bin_dir / "hybridcomms"
    exe.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m hybridcomms "$@"\n')
    exe.chmod(0o755)
    home = tmp_path / "home"
    home.mkdir()
    return clean_env(PATH=f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}", HOME=str(home), TERM="dumb")


def install_lines() -> dict[str, str]:
    """The install line of each shell, as docs/cli.md gives it."""
    text = (DOCS / "cli.md").read_text()
    block = re.search(r"## Shell completion\n.*?```sh\n(.*?)```", text, re.S)
    assert block is not None
    lines = [line.split("  #")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    return {re.search(r"completion (\w+)", line).group(1): line for line in lines}  # type: ignore[union-attr]


def test_the_docs_give_one_install_line_per_shell() -> None:
    assert sorted(install_lines()) == ["bash", "fish", "zsh"]


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_prints_a_script_for_the_hybridcomms_command(shell: str) -> None:
    out = hc("completion", shell)
    assert out.returncode == 0, out.stderr
    assert "hybridcomms" in out.stdout and len(out.stdout.splitlines()) > 5


def test_completion_of_an_unknown_shell_is_a_usage_error() -> None:
    out = hc("completion", "tcsh")
    assert out.returncode == 2 and "invalid choice" in out.stderr


BASH_COMPLETE = r"""
set -e
eval "$SETUP"
func=$(complete -p hybridcomms | sed -E 's/.* -F ([^ ]+) .*/\1/')
COMP_LINE=$LINE
COMP_POINT=${#COMP_LINE}
read -ra COMP_WORDS <<< "$COMP_LINE"
if [[ $COMP_LINE == *" " ]]; then COMP_WORDS+=(""); fi
COMP_CWORD=$(( ${#COMP_WORDS[@]} - 1 ))
"$func" hybridcomms "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD-1]}"
printf '%s\n' "${COMPREPLY[@]}"
"""


def bash_complete(env: dict[str, str], setup: str, line: str) -> list[str]:
    out = subprocess.run(
        ["bash", "-c", BASH_COMPLETE],
        env={**env, "SETUP": setup, "LINE": line},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    return [w.strip() for w in out.stdout.splitlines() if w.strip()]


def test_bash_completes_commands_subcommands_and_options(shell_env: dict[str, str]) -> None:
    script = shell_env["HOME"] + "/hybridcomms.bash"
    Path(script).write_text(hc("completion", "bash").stdout)
    setup = f"source {shlex.quote(script)}"
    assert bash_complete(shell_env, setup, "hybridcomms st") == ["stats"]
    assert set(SUBCOMMANDS) <= set(bash_complete(shell_env, setup, "hybridcomms "))
    words = bash_complete(shell_env, setup, "hybridcomms policy ")
    assert {w for w in words if not w.startswith("-")} == {"explain", "show"}
    assert bash_complete(shell_env, setup, "hybridcomms migrate --dry") == ["--dry-run"]
    assert bash_complete(shell_env, setup, "hybridcomms completion f") == ["fish"]


BASH_COMPLETION = next(
    (p for p in ("/usr/share/bash-completion/bash_completion", "/etc/bash_completion") if Path(p).exists()),
    None,
)


@pytest.mark.skipif(BASH_COMPLETION is None, reason="the bash-completion package is not installed")
def test_bash_loads_the_completion_from_where_the_docs_install_it(shell_env: dict[str, str]) -> None:
    install = subprocess.run(["bash", "-c", install_lines()["bash"]], env=shell_env, timeout=60)
    assert install.returncode == 0
    # bash-completion loads a command's completion on first use from the user's completions folder.
    setup = f"source {BASH_COMPLETION}; _completion_loader hybridcomms || true"  # 124: loaded, retry
    assert bash_complete(shell_env, setup, "hybridcomms st") == ["stats"]


@pytest.mark.skipif(shutil.which("fish") is None, reason="fish is not installed")
def test_fish_completes_after_the_documented_install(shell_env: dict[str, str]) -> None:
    install = subprocess.run(["bash", "-c", install_lines()["fish"]], env=shell_env, timeout=60)
    assert install.returncode == 0

    def complete(line: str) -> list[str]:
        out = subprocess.run(
            ["fish", "-c", f"complete -C {shlex.quote(line)}"],
            env=shell_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert out.returncode == 0, out.stderr
        return [row.split("\t")[0] for row in out.stdout.splitlines()]

    # The home is the test's own: fish finds the completion where the install line put it.
    assert complete("hybridcomms st") == ["stats"]
    assert set(SUBCOMMANDS) <= set(complete("hybridcomms "))


class Terminal:
    """A program on a pseudo-terminal: what it writes there is collected; waits are on what it writes
    (or on its end), never on time alone."""

    def __init__(self, argv: list[str], env: dict[str, str], stdout: int | IO[bytes] | None = None) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen(
            argv,
            stdin=slave,
            stdout=slave if stdout is None else stdout,
            stderr=slave,
            env=env,
            start_new_session=True,
        )
        os.close(slave)
        self.seen = b""

    def send(self, data: bytes) -> None:
        os.write(self.master, data)

    def wait_for(self, marker: bytes, timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while marker not in self.seen and time.monotonic() < deadline:
            ready, _, _ = select.select([self.master], [], [], 0.2)
            if ready:
                try:
                    self.seen += os.read(self.master, 65536)
                except OSError:  # the other end is closed: the program ended
                    break
        return marker in self.seen

    def until_closed(self, timeout: float = 60.0) -> str:
        """All it writes until it closes the terminal (it ended)."""
        self.wait_for(b"\0never written\0", timeout)
        return self.seen.decode()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(30)
        os.close(self.master)


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_completes_after_the_documented_install(shell_env: dict[str, str]) -> None:
    install = subprocess.run(["bash", "-c", install_lines()["zsh"]], env=shell_env, timeout=60)
    assert install.returncode == 0
    home = Path(shell_env["HOME"])
    # What docs/cli.md says to put in ~/.zshrc, then a prompt and a function to show the edited line.
    (home / ".zshrc").write_text(
        "fpath=(~/.zfunc $fpath)\nautoload -Uz compinit && compinit -u -D\n"
        "bindkey -e\nPS1='> '\ngot() { print -r -- \"GOT<$*>\" }\nprint RE''ADY\n"
    )
    term = Terminal(["zsh", "-i"], {**shell_env, "ZDOTDIR": str(home)})
    try:
        assert term.wait_for(b"READY"), term.seen
        term.send(b"hybridcomms st\t")
        assert term.wait_for(b"stats"), term.seen  # TAB ran the completion and filled the word in
        term.send(b"\x01got \n")  # to the start of the line, make it a call to got, run it
        assert term.wait_for(b"GOT<hybridcomms stats>"), term.seen
        term.send(b"exit\n")
    finally:
        term.close()


# -- migrate progress ------------------------------------------------------------------------------


def legacy_root(root: Path, agents: int = 3, per_agent: int = 40) -> None:
    for a in range(agents):
        agent = f"Agent-{a}"
        (root / agent / "inbox").mkdir(parents=True)
        (root / agent / "archive").mkdir()
        for i in range(per_agent):
            msg = {
                "message_id": f"m-{a}-{i}",
                "sender_agent_id": "Agent-9",
                "recipient_agent_id": agent,
                "timestamp_utc": "2025-05-01T12:00:00+00:00",
                "type": "TASK_COMMAND",
                "body": {"i": i, "pad": "x" * 500},
                "priority": "MEDIUM",
            }
            folder = "archive" if i % 4 == 0 else "inbox"
            (root / agent / folder / f"msg_{i:04d}.json").write_bytes(orjson.dumps(msg))
        (root / agent / "inbox.json").write_bytes(orjson.dumps([{**msg, "message_id": f"j-{a}"}]))


def size_of(root: Path) -> int:
    total = 0
    for folder, _, names in os.walk(root):
        for n in names:
            st = os.lstat(os.path.join(folder, n))
            total += st.st_size if stat.S_ISREG(st.st_mode) else 0
    return total


def test_migrate_on_a_terminal_shows_the_backup_size_and_the_messages_converted(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    legacy_root(root)
    plan = survey(root).totals()
    total = plan["new"] + plan["done"] + plan["dead"]
    size = human_size(size_of(root))
    with tempfile.TemporaryFile() as stdout:
        # stdout to a file, not a pipe: nothing can block while the terminal is read
        term = Terminal([*HC, "--root", str(root), "migrate", "--fsync", "never"], clean_env(), stdout)
        try:
            err = term.until_closed()
            assert term.proc.wait(30) == 0, err
        finally:
            term.close()
        stdout.seek(0)
        out = stdout.read().decode()
    assert f"total: {plan['new']} to new/, {plan['done']} to done/" in out  # the report, on stdout
    assert f"\rbackup: 0 B / {size}" in err
    assert f"\rbackup: {size} / {size}" in err
    assert f"\rmigrate: 0/{total} messages converted" in err
    assert f"\rmigrate: {total}/{total} messages converted" in err
    assert err.index("backup:") < err.index("migrate:")  # one line after the other
    assert not list(root.glob("*/inbox/*.json"))


@pytest.fixture
def small_batches(monkeypatch: pytest.MonkeyPatch) -> int:
    """Chunks of 7 messages (ingestion and the archive/ import take legacy files in chunks, and report
    progress once per chunk), so that a small root takes several of them."""
    import hybridcomms.compat.dreamos.legacy as legacy_mod
    import hybridcomms.compat.dreamos.migrate as migrate_mod

    monkeypatch.setattr(legacy_mod, "CHUNK_ENTRIES", 7)
    monkeypatch.setattr(migrate_mod, "CHUNK_ENTRIES", 7)
    return 7


def test_migrate_reports_progress_batch_by_batch_and_converts_every_message_once(
    tmp_path: Path, small_batches: int
) -> None:
    root = tmp_path / "mailboxes"
    legacy_root(root)
    plan = survey(root).totals()
    total = plan["new"] + plan["done"] + plan["dead"]
    steps: list[tuple[str, int, int]] = []
    done = migrate(root, fsync="never", progress=lambda *step: steps.append(step))
    backup = [s for s in steps if s[0] == "backup"]
    converted = [s for s in steps if s[0] == "messages"]
    assert steps.index(backup[-1]) < steps.index(converted[0])  # the backup first
    assert backup[-1][1] == backup[-1][2] == size_of(done.backup)  # type: ignore[arg-type]
    counts = [n for _, n, _ in converted]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == total
    assert {t for _, _, t in converted} == {total}
    assert len(set(counts)) > total // small_batches  # one step per batch at least
    with FileMailbox(root, "Agent-0", fsync="never") as mb:
        new = [mb.read(i).id for i in mb.list(State.NEW)]
        finished = [mb.read(i).id for i in mb.list(State.DONE)]
    assert sorted(new) == sorted({*new}) and len(new) == 31  # 30 from inbox/, 1 from inbox.json
    assert sorted(finished) == sorted({*finished}) and len(finished) == 10  # archive/


def test_a_migration_killed_between_batches_is_finished_without_duplicates(
    tmp_path: Path, small_batches: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "mailboxes"
    legacy_root(root, agents=1)
    calls = {"n": 0}
    real = FileMailbox.put_many

    def killed_at_the_third_batch(self: FileMailbox, messages: Any) -> list[str]:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed between two batches")
        return real(self, messages)

    monkeypatch.setattr(FileMailbox, "put_many", killed_at_the_third_batch)
    with pytest.raises(KeyboardInterrupt):
        migrate(root, backup=False, fsync="never", progress=lambda *step: None)
    monkeypatch.setattr(FileMailbox, "put_many", real)
    migrate(root, backup=False, fsync="never", progress=lambda *step: None)
    with FileMailbox(root, "Agent-0", fsync="never") as mb:
        new = [mb.read(i).id for i in mb.list(State.NEW)]
    assert sorted(new) == sorted({f"m-0-{i}" for i in range(40) if i % 4} | {"j-0"})


def test_migrate_piped_prints_no_progress(tmp_path: Path) -> None:
    root = tmp_path / "mailboxes"
    legacy_root(root)
    out = hc("--root", str(root), "migrate", "--fsync", "never")
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    assert "\r" not in out.stdout and "messages converted" not in out.stdout
    assert "total: " in out.stdout


# -- docs match the code ---------------------------------------------------------------------------


def operations() -> str:
    return (DOCS / "operations.md").read_text()


def backticked(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


def test_the_watch_docs_list_exactly_the_event_kinds_the_watcher_reports() -> None:
    found = re.search(r"^Kinds: (.*?)\. With `--json`", operations(), re.S | re.M)
    assert found is not None
    kinds = backticked(re.sub(r"\([^()]*\)", "", found.group(1)))  # the kinds, not what they explain
    assert kinds == list(EVENT_KINDS)
    row = re.search(r"^\| `hybridcomms_events_total` \|.*$", operations(), re.M)
    assert row is not None
    assert backticked(row.group(0).split("what the watch service saw:")[1]) == list(EVENT_KINDS)
    watch_row = re.search(r"^\| `watch .*$", (DOCS / "cli.md").read_text(), re.M)
    assert watch_row is not None
    assert all(f"`{kind}`" in watch_row.group(0) for kind in EVENT_KINDS)


def test_the_watch_docs_name_every_field_of_an_event() -> None:
    found = re.search(r"With `--json` each line is an object with\s(.*?)\.\n", operations(), re.S)
    assert found is not None
    listed = set(backticked(found.group(1)))
    assert {f.name for f in dataclasses.fields(MailboxEvent)} <= listed


def exported_metrics(root: Path) -> set[str]:
    """The metric names a scrape shows, from every collector and counter of hybridcomms.metrics."""
    pytest.importorskip("prometheus_client")
    from hybridcomms.metrics import EventCounter, WorkMetrics, registry_for

    registry = registry_for(root, bus=True)
    EventCounter(registry)
    WorkMetrics(registry)
    return {f.name + "_total" if f.type == "counter" else f.name for f in registry.collect()}


def test_the_metrics_table_lists_exactly_the_metrics_exported(tmp_path: Path) -> None:
    FileMailbox(tmp_path, "Agent-1", fsync="never").close()
    exported = exported_metrics(tmp_path)
    assert {"hybridcomms_bus_processes", "hybridcomms_bus_dropped_events"} <= exported
    documented = set(re.findall(r"^\| `(hybridcomms_\w+)` \|", operations(), re.M))
    assert documented == exported


def test_the_dashboard_and_alerts_query_only_metrics_that_exist(tmp_path: Path) -> None:
    exported = exported_metrics(tmp_path)
    series = exported | {f"{m}_{s}" for m in exported for s in ("bucket", "sum", "count")}
    for path in (DOCS / "monitoring").iterdir():
        for name in re.findall(r"\bhybridcomms_\w+", path.read_text()):
            assert name in series, f"{path.name}: {name}"


def doc_texts() -> dict[str, str]:
    paths = [*sorted(DOCS.glob("*.md")), REPO / "README.md", REPO / "runtime_layout.md"]
    return {p.name: p.read_text() for p in paths}


def test_the_docs_say_where_the_systemd_units_are_and_how_to_install_them() -> None:
    shipped = {p.name for p in (REPO / "hybridcomms" / "systemd").glob("*.service")}
    assert shipped == set(SYSTEMD_UNITS.values())
    for name, text in doc_texts().items():
        for ref in re.findall(r"[\w./@-]*\.service\b", text):
            folder, _, unit = ref.rpartition("/")
            assert unit in shipped, f"{name}: {ref} is not a unit the package ships"
            assert folder in ("", "/etc/systemd/system", "hybridcomms/systemd"), f"{name}: {ref}"
        assert not re.search(r"systemd unit[^.]*`tools/`", text), f"{name}: the units are not in tools/"
    ops = operations()
    for service, unit in SYSTEMD_UNITS.items():
        install = f"hybridcomms systemd-unit {service} > /etc/systemd/system/{unit}"
        assert install in ops
        assert f"hybridcomms/systemd/{unit}" in ops
        text = (files("hybridcomms") / "systemd" / unit).read_text()
        assert install in text  # the unit's own comment says the same
        exec_start = re.search(r"^ExecStart=(\S+)", text, re.M)
        assert exec_start is not None and f"`{exec_start.group(1)}`" in ops
