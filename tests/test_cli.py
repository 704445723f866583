"""The hybridcomms command: in this process (`cli_runner.run_cli`), and as a real subprocess where the
test is about the process (exit codes of errors, stderr, waiting)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from cli_runner import run_cli
from waiting import eventually


def run(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 60, real: bool = False
) -> subprocess.CompletedProcess[str]:
    """``hybridcomms ARGS`` in ``cwd``, in this process (`run_cli`), or as a real subprocess (``real``:
    for what is about the process: exit codes of errors, what reaches stderr)."""
    full_env = {k: v for k, v in os.environ.items() if k != "HYBRIDCOMMS_ROOT"}
    full_env.update(env or {})
    if not real:
        return run_cli(args, cwd=cwd, env=full_env)
    return subprocess.run(
        [sys.executable, "-m", "hybridcomms", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def test_send_then_recv_round_trips_under_the_default_dreamos_root(tmp_path: Path) -> None:
    sent = run(
        "send",
        "--to",
        "Agent-1",
        "--topic",
        "task.command",
        "--payload",
        '{"do": "build"}',
        "--priority",
        "HIGH",
        "--from",
        "Captain-THEA",
        cwd=tmp_path,
    )
    assert sent.returncode == 0, sent.stderr
    msg_id = sent.stdout.strip()
    assert len(os.listdir(tmp_path / "runtime/agent_comms/agent_mailboxes/Agent-1/new")) == 1

    got = run("recv", "Agent-1", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    obj = orjson.loads(got.stdout)
    assert (obj["id"], obj["topic"], obj["payload"], obj["priority"], obj["sender"], obj["attempt"]) == (
        msg_id,
        "task.command",
        {"do": "build"},
        "HIGH",
        "Captain-THEA",
        1,
    )
    assert len(os.listdir(tmp_path / "runtime/agent_comms/agent_mailboxes/Agent-1/done")) == 1


def test_recv_on_an_empty_mailbox_exits_3_after_its_timeout(tmp_path: Path) -> None:
    got = run("recv", "Agent-1", "--timeout", "0.3", "--create", cwd=tmp_path)
    assert got.returncode == 3
    assert "no message" in got.stderr and got.stdout == ""


@pytest.mark.parametrize("command", [["recv", "Agent-1"], ["stats"], ["recover"], ["stats", "Agent-1"]])
def test_a_missing_root_or_agent_is_an_error_for_commands_that_read(
    tmp_path: Path, command: list[str]
) -> None:
    missing = run("--root", str(tmp_path / "typo"), *command, cwd=tmp_path, real=True)
    assert missing.returncode == 1 and "no mailbox root" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1 and not (tmp_path / "typo").exists()
    (tmp_path / "root").mkdir()
    if len(command) > 1:
        unknown = run("--root", str(tmp_path / "root"), *command, cwd=tmp_path)
        assert unknown.returncode == 1 and "no mailbox for Agent-1" in unknown.stderr
        assert not (tmp_path / "root" / "Agent-1").exists()


HC = [sys.executable, "-m", "hybridcomms"]


def test_recv_with_a_timeout_receives_a_message_sent_while_it_waits(tmp_path: Path) -> None:
    waiting = subprocess.Popen(
        [*HC, "--root", str(tmp_path), "recv", "Agent-1", "--timeout", "30", "--create"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Handshake: recv is waiting once it holds an inotify descriptor (its wait for new/).
        def watching() -> bool:
            try:
                fds = os.listdir(f"/proc/{waiting.pid}/fd")
                return any("inotify" in os.readlink(f"/proc/{waiting.pid}/fd/{fd}") for fd in fds)
            except OSError:
                return False

        eventually(watching, "recv to hold an inotify descriptor", 30)
        assert (
            run(
                "--root", str(tmp_path), "send", "--to", "Agent-1", "--topic", "late", cwd=tmp_path
            ).returncode
            == 0
        )
        out, err = waiting.communicate(timeout=30)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert orjson.loads(out)["topic"] == "late"


def test_the_root_comes_from_the_flag_then_the_environment(tmp_path: Path) -> None:
    env_root = tmp_path / "from-env"
    flag_root = tmp_path / "from-flag"
    assert (
        run(
            "send", "--to", "A1", "--topic", "t", cwd=tmp_path, env={"HYBRIDCOMMS_ROOT": str(env_root)}
        ).returncode
        == 0
    )
    assert (env_root / "A1" / "new").is_dir()
    assert (
        run(
            "--root",
            str(flag_root),
            "send",
            "--to",
            "A2",
            "--topic",
            "t",
            cwd=tmp_path,
            env={"HYBRIDCOMMS_ROOT": str(env_root)},
        ).returncode
        == 0
    )
    assert (flag_root / "A2" / "new").is_dir() and not (env_root / "A2").exists()


def test_stats_lists_every_mailbox_as_a_table_and_as_json(tmp_path: Path) -> None:
    for agent in ("Agent-1", "Agent-2", "Agent-2"):
        assert (
            run("--root", str(tmp_path), "send", "--to", agent, "--topic", "t", cwd=tmp_path).returncode == 0
        )
    table = run("--root", str(tmp_path), "stats", cwd=tmp_path)
    assert table.returncode == 0
    lines = table.stdout.splitlines()
    assert lines[0].split()[:5] == ["agent", "new", "processing", "done", "dead"]
    assert lines[1].split()[:2] == ["Agent-1", "1"] and lines[2].split()[:2] == ["Agent-2", "2"]
    js = orjson.loads(run("--root", str(tmp_path), "stats", "--json", cwd=tmp_path).stdout)
    assert {a["agent"]: a["new"]["count"] for a in js["agents"]} == {"Agent-1": 1, "Agent-2": 2}


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("send", "--to", "../escape", "--topic", "t"), "unsafe agent id"),
        (("send", "--to", "Agent-1", "--topic", "t", "--payload", "{nope"), "not valid JSON"),
        (("send", "--to", "Agent-1", "--topic", "t", "--priority", "SOON"), "unknown priority"),
        (("recv", "a/b"), "unsafe agent id"),
        (("stats", "Nobody"), "no mailbox for Nobody"),
    ],
)
def test_bad_input_gets_a_clear_error_and_a_nonzero_exit(
    tmp_path: Path, args: tuple[str, ...], needle: str
) -> None:
    (tmp_path / "root").mkdir()
    got = run("--root", str(tmp_path / "root"), *args, cwd=tmp_path, real=True)
    assert got.returncode != 0
    assert needle in got.stderr
    assert "Traceback" not in got.stderr
    assert not (tmp_path / "escape").exists()


def test_recover_returns_what_a_dead_consumer_held(tmp_path: Path) -> None:
    from hybridcomms import FileMailbox, Message

    with FileMailbox(tmp_path, "Agent-1", fsync="never") as mb:
        mb.put(Message("t"))
        src = next((mb.path / "new").iterdir())
        os.rename(src, mb.path / "processing" / src.name.replace(".a0.", ".a1."))
    got = run("--root", str(tmp_path), "recover", cwd=tmp_path)
    assert got.returncode == 0 and "Agent-1: returned 1" in got.stdout


def test_demo_runs_on_the_embedded_default_and_shows_a_dead_letter(tmp_path: Path) -> None:
    for _ in range(2):  # a second run shows the same, not the sum of both
        got = run("demo", cwd=tmp_path, real=True)
        assert got.returncode == 0 and got.stderr == "", got.stderr  # no log lines in the middle
        assert "dead/ (no attempts left)" in got.stdout and "reason:" in got.stdout
        assert "done/: 2   dead/: 1" in got.stdout
        agent = tmp_path / "runtime/agent_comms/agent_mailboxes/Demo-Agent"
        assert len(os.listdir(agent / "done")) == 2
        assert len([n for n in os.listdir(agent / "dead") if not n.endswith(".reason.json")]) == 1


def test_policy_explain_prints_the_route_and_the_rule_that_chose_it(tmp_path: Path) -> None:
    got = run("policy", "explain", "dreamos.agent.Agent-1.task.command", cwd=tmp_path)
    assert got.returncode == 0, got.stderr
    lines = got.stdout.splitlines()
    assert lines[0] == "durable"
    assert "per-agent task commands" in got.stdout and "dreamos.agent.*.task.command" in got.stdout
    got = run("policy", "explain", "dreamos.agent.status.updated", "--broadcast", cwd=tmp_path)
    assert got.stdout.splitlines()[0] == "ephemeral"


def test_policy_comes_from_the_flag_the_environment_or_hybridcomms_toml(tmp_path: Path) -> None:
    (tmp_path / "hybridcomms.toml").write_text('[[rules]]\nname = "local"\nmatch = "x.*"\nroute = "both"\n')
    assert run("policy", "explain", "x.y", cwd=tmp_path).stdout.splitlines()[0] == "both"
    other = tmp_path / "other.toml"
    other.write_text('[[rules]]\nmatch = "x.*"\nroute = "ephemeral"\n')
    got = run("policy", "explain", "x.y", cwd=tmp_path, env={"HYBRIDCOMMS_POLICY": str(other)})
    assert got.stdout.splitlines()[0] == "ephemeral"
    got = run(
        "--policy",
        str(tmp_path / "hybridcomms.toml"),
        "policy",
        "explain",
        "x.y",
        cwd=tmp_path,
        env={"HYBRIDCOMMS_POLICY": str(other)},
    )
    assert got.stdout.splitlines()[0] == "both"


def test_a_bad_policy_file_is_refused_with_its_line(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('\n[[rules]]\nmatch = "x.*"\nroute = "sometimes"\n')
    got = run("--policy", str(bad), "policy", "show", cwd=tmp_path)
    assert got.returncode == 1
    assert f"{bad}:4: rule 1: route must be durable, ephemeral or both" in got.stderr


def test_policy_show_lists_every_rule(tmp_path: Path) -> None:
    got = run("policy", "show", cwd=tmp_path)
    assert got.returncode == 0
    assert got.stdout.startswith("policy from built-in defaults")
    assert "CRITICAL priority is never ephemeral only" in got.stdout


def test_root_and_fsync_may_come_after_the_command_too(tmp_path: Path) -> None:
    root = tmp_path / "after"
    sent = run(
        "send", "--to", "Agent-1", "--topic", "t", "--root", str(root), "--fsync", "never", cwd=tmp_path
    )
    assert sent.returncode == 0, sent.stderr
    assert (root / "Agent-1" / "new").is_dir()
    got = run("recv", "Agent-1", "--root", str(root), cwd=tmp_path)
    assert got.returncode == 0 and orjson.loads(got.stdout)["topic"] == "t"
    js = orjson.loads(run("stats", "--json", "--root", str(root), cwd=tmp_path).stdout)
    assert js["root"] == str(root)
