"""One routing policy, found the same way by every part (issue 20, section 2).

`Comms` and `hybridcomms policy explain` run side by side in the same folder and environment, for every
pattern of every shipped rule and for a user policy (in ``./hybridcomms.toml``, in ``$HYBRIDCOMMS_POLICY``,
in ``[tool.hybridcomms.policy]`` of ``./pyproject.toml``): where `Comms` really put each message (the
recipient's mailbox on some backend, the bus, or both) is what ``policy explain`` says, route and backend.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from hybridcomms import (
    DEFAULT_ROOT,
    AgentBus,
    Comms,
    Event,
    FileMailbox,
    Message,
    Policy,
    PolicyError,
    State,
    find_policy,
)
from hybridcomms.backends import open_mailbox, registry_for
from hybridcomms.cli import main
from hybridcomms.policy import DEFAULT_RULES, compile_pattern

SENDER = "Agent-S"
FILL = "Agent-7"  # what a '*' segment of a shipped pattern becomes
REPO = Path(__file__).resolve().parent.parent


def topics_for(pattern: str) -> list[str]:
    """Topics a pattern matches: a middle '*' filled in; a last '.*' both as the prefix itself and with
    two more segments below it."""
    segments = [FILL if s == "*" else s for s in pattern.split(".")]
    if pattern.endswith(".*"):
        return [".".join(segments[:-1]), ".".join([*segments[:-1], "x", "y"])]
    return [".".join(segments)]


SHIPPED = [(rule.name, pattern) for rule in DEFAULT_RULES for pattern in rule.patterns]
SHIPPED_TOPICS = sorted({topic for _, pattern in SHIPPED for topic in topics_for(pattern)})


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HYBRIDCOMMS_POLICY", "HYBRIDCOMMS_URL", "HYBRIDCOMMS_ROOT", "HYBRIDCOMMS_LEGACY_INTAKE"):
        monkeypatch.delenv(name, raising=False)


# -- observing both sides ----------------------------------------------------------------------------


class Side:
    """A `Comms` in the current folder with the defaults (its policy found as every part finds it), a
    private bus that records what reaches it, and the backends a durable copy may land on."""

    def __init__(self, recipient: str, backends: list[str]) -> None:
        self.recipient = recipient
        self.root = Path(DEFAULT_ROOT).absolute()
        self.backends = [f"file://{self.root}", *backends]
        FileMailbox(self.root, recipient, fsync="never").close()
        registry = registry_for(self.root, None)
        registry.record(recipient, "*", True)  # a durable subscriber for every publish
        registry.close()
        self.bus = AgentBus()
        self.on_bus: list[str] = []
        self.bus.subscribe("*", self._seen)
        self.comms = Comms(SENDER, bus=self.bus, fsync="never", share_bus=False)

    def _seen(self, event: Event) -> None:
        self.on_bus.append(str(event.id))

    def send(self, topic: str, *, broadcast: bool, priority: str) -> tuple[str, str | None]:
        """(route, backend) of one message, as observed: where its durable copy landed, and whether
        the bus got it."""
        if broadcast:
            sent = self.comms.publish(topic, {"probe": topic}, priority=priority)
        else:
            sent = self.comms.send(self.recipient, topic, {"probe": topic}, priority=priority)
        msg_id = sent.message.id
        landed = [url for url in self.backends if self._holds(url, msg_id)]
        assert len(landed) <= 1, landed
        on_bus = msg_id in self.on_bus
        route = {(True, True): "both", (True, False): "durable", (False, True): "ephemeral"}.get(
            (bool(landed), on_bus), "nowhere"
        )
        return route, landed[0] if landed else None

    def _holds(self, url: str, msg_id: str) -> bool:
        mb = open_mailbox(url, self.recipient)
        try:
            return mb.get(msg_id) is not None
        finally:
            mb.close()

    def close(self) -> None:
        self.comms.close()
        self.bus.close()


def same_backend(explained: str | None, landed: str | None) -> bool:
    if explained is None or landed is None:
        return explained == landed
    if explained.startswith("file://") and landed.startswith("file://"):
        return Path(explained[7:]).resolve() == Path(landed[7:]).resolve()
    return explained == landed


def explain_args(topic: str, broadcast: bool, priority: str) -> list[str]:
    return [
        "policy",
        "explain",
        topic,
        "--priority",
        priority,
        "--json",
        *(["--broadcast"] if broadcast else []),
    ]


def explain_here(capsys: pytest.CaptureFixture[str], topic: str, broadcast: bool, priority: str) -> Any:
    assert main(explain_args(topic, broadcast, priority)) == 0
    return orjson.loads(capsys.readouterr().out)


def explain_subprocess(cwd: Path, topic: str, broadcast: bool, priority: str) -> Any:
    got = subprocess.run(
        [sys.executable, "-m", "hybridcomms", *explain_args(topic, broadcast, priority)],
        cwd=cwd,
        env=dict(os.environ),  # the environment the Comms of this test sees
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    return orjson.loads(got.stdout)


# -- every shipped rule --------------------------------------------------------------------------------


def test_the_generated_topics_cover_every_pattern_of_every_shipped_rule() -> None:
    for name, pattern in SHIPPED:
        topics = topics_for(pattern)
        assert topics and all(compile_pattern(pattern).match(t) for t in topics), (name, pattern)
    assert len(SHIPPED) == sum(len(rule.patterns) for rule in DEFAULT_RULES)


def test_comms_and_policy_explain_agree_on_every_shipped_rule(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    clean_env: None,
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pyproject.toml").write_text('[project]\nname = "not-a-policy"\n')  # passed over
    side = Side("Agent-R", [])
    seen: set[str] = set()
    try:
        assert side.comms.policy.rules == DEFAULT_RULES
        for topic in SHIPPED_TOPICS:
            for broadcast in (False, True):
                for priority in ("MEDIUM", "CRITICAL"):
                    explained = explain_here(capsys, topic, broadcast, priority)
                    route, landed = side.send(topic, broadcast=broadcast, priority=priority)
                    case = (topic, broadcast, priority, explained)
                    assert route == explained["route"], case
                    assert same_backend(explained["backend"], landed), case
                    assert explained["source"] == "built-in defaults", case
                    seen.add(route)
    finally:
        side.close()
    assert seen == {"durable", "ephemeral"}  # the shipped rules have both kinds, and both were seen


# -- a user policy, wherever it is -------------------------------------------------------------------

USER_RULES = """\
[[{table}]]
name = "fleet telemetry is ephemeral"
match = "fleet.telemetry.*"
route = "ephemeral"

[[{table}]]
name = "audit goes to the side store"
match = "audit.*"
route = "durable"
backend = "{backend}"

[[{table}]]
name = "alerts: durable, and seen on the bus"
match = "fleet.alert.*"
route = "both"

[[{table}]]
name = "job broadcasts are ephemeral"
match = "jobs.*"
route = "ephemeral"
addressed = false
"""

#: What a user policy must decide, whoever reads it (topic -> route of a send at MEDIUM).
EXPECTED = {
    "fleet.telemetry.cpu": "ephemeral",  # the topic of the issue: durable by the defaults
    "audit.login": "durable",
    "fleet.alert.disk": "both",
    "jobs.build": "durable",  # the rule is for broadcasts only
    "other.thing": "durable",
    "dreamos.agent.status.changed": "ephemeral",  # the shipped rules still follow
}
IN_SUBPROCESS = ("fleet.telemetry.cpu", "audit.login", "fleet.alert.disk")


@pytest.fixture(params=["working folder", "environment", "pyproject", "working folder, redis"])
def user_policy(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, clean_env: None
) -> Iterator[tuple[Path, str, str]]:
    """(working folder, the policy file, the side backend of its audit rule), set up in this process's
    folder and environment."""
    where: str = request.param
    if where.endswith("redis"):
        backend = request.getfixturevalue("redis_url")
    else:
        backend = f"memory://side-{uuid.uuid4().hex}"
    cwd = tmp_path / "agents"
    cwd.mkdir()
    if where.startswith("working folder"):
        policy_file = cwd / "hybridcomms.toml"
        policy_file.write_text(USER_RULES.format(table="rules", backend=backend))
    elif where == "environment":
        policy_file = tmp_path / "elsewhere" / "fleet-policy.toml"
        policy_file.parent.mkdir()
        policy_file.write_text(USER_RULES.format(table="rules", backend=backend))
        # a decoy in the working folder: the environment comes first
        decoy = f"memory://decoy-{uuid.uuid4().hex}"
        (cwd / "hybridcomms.toml").write_text(
            f'default_addressed = "ephemeral"\n[[rules]]\nmatch = "*"\nroute = "durable"\n'
            f'backend = "{decoy}"\n'
        )
        monkeypatch.setenv("HYBRIDCOMMS_POLICY", str(policy_file))
    else:
        policy_file = cwd / "pyproject.toml"
        policy_file.write_text(
            '[project]\nname = "fleet"\n\n[tool.hybridcomms.policy]\ninclude_defaults = true\n\n'
            + USER_RULES.format(table="tool.hybridcomms.policy.rules", backend=backend)
        )
    monkeypatch.chdir(cwd)
    yield cwd, str(policy_file), backend


def test_comms_and_policy_explain_agree_on_a_user_policy(
    user_policy: tuple[Path, str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    cwd, policy_file, backend = user_policy
    side = Side(f"Rcpt-{uuid.uuid4().hex[:8]}", [backend])
    try:
        assert side.comms.policy.source == policy_file  # found, not passed in
        for topic, expected in EXPECTED.items():
            for broadcast in (False, True):
                for priority in ("MEDIUM", "CRITICAL"):
                    if topic in IN_SUBPROCESS and not broadcast and priority == "MEDIUM":
                        explained = explain_subprocess(cwd, topic, broadcast, priority)
                    else:
                        explained = explain_here(capsys, topic, broadcast, priority)
                    route, landed = side.send(topic, broadcast=broadcast, priority=priority)
                    case = (topic, broadcast, priority, explained)
                    assert route == explained["route"], case
                    assert same_backend(explained["backend"], landed), case
                    assert explained["source"] == policy_file, case
                    if not broadcast and priority == "MEDIUM":
                        assert route == expected, case
                    if topic == "audit.login":
                        assert landed == backend and explained["rule"] == "audit goes to the side store"
    finally:
        side.close()


# -- the one order --------------------------------------------------------------------------------------


def write_policy(path: Path, route: str) -> Path:
    path.write_text(f'[[rules]]\nmatch = "x.*"\nroute = "{route}"\n')
    return path


def test_find_policy_takes_the_first_of_argument_environment_folder_pyproject_defaults(
    tmp_path: Path,
) -> None:
    here = tmp_path / "here"
    here.mkdir()
    arg = write_policy(tmp_path / "arg.toml", "both")
    env_file = write_policy(tmp_path / "env.toml", "ephemeral")
    write_policy(here / "hybridcomms.toml", "durable")
    (here / "pyproject.toml").write_text(
        '[tool.hybridcomms.policy]\ndefault_addressed = "both"\n[[tool.hybridcomms.policy.rules]]\n'
        'match = "x.*"\nroute = "both"\n'
    )
    env = {"HYBRIDCOMMS_POLICY": str(env_file)}

    def found(*a: Any, **kw: Any) -> tuple[str, str, str]:
        p = find_policy(*a, cwd=here, **kw)
        return p.route("x.y", addressed=True).value, p.source, p.found_by

    assert found(arg, environ=env) == ("both", str(arg), "given")
    given = Policy(default_addressed="ephemeral")
    assert find_policy(given, environ=env, cwd=here) is given  # a Policy is used as it is
    assert found(environ=env) == ("ephemeral", str(env_file), "$HYBRIDCOMMS_POLICY")
    assert found(environ={"HYBRIDCOMMS_POLICY": ""}) == (
        "durable",
        str(here / "hybridcomms.toml"),
        "in the working folder",
    )
    (here / "hybridcomms.toml").unlink()
    assert found(environ={}) == ("both", str(here / "pyproject.toml"), "[tool.hybridcomms.policy]")
    (here / "pyproject.toml").write_text('[project]\nname = "x"\n[tool.ruff]\nline-length = 100\n')
    route, source, found_by = found(environ={})
    assert (route, source) == ("durable", "built-in defaults") and str(here) in found_by
    (here / "pyproject.toml").unlink()
    assert found(environ={})[1] == "built-in defaults"


def test_the_repository_pyproject_without_a_policy_table_gives_the_defaults(clean_env: None) -> None:
    policy = find_policy(cwd=REPO)
    assert policy.rules == DEFAULT_RULES and policy.source == "built-in defaults"
    assert policy.file is None


@pytest.mark.parametrize(
    ("where", "text", "needle"),
    [
        (
            "hybridcomms.toml",
            '\n[[rules]]\nmatch = "x.*"\nroute = "sometimes"\n',
            "hybridcomms.toml:4: rule 1",
        ),
        ("hybridcomms.toml", None, "hybridcomms.toml: cannot read the policy file"),  # a folder
        (
            "pyproject.toml",
            '[tool.hybridcomms.policy]\n[[tool.hybridcomms.policy.rules]]\nmatch = "x"\nroute = 3\n',
            "pyproject.toml:4: rule 1: route must be",
        ),
        ("pyproject.toml", "[project\nname = 1\n", "pyproject.toml:1: not valid TOML"),
        ("$HYBRIDCOMMS_POLICY", None, "missing.toml: cannot read the policy file"),
        ("argument", None, "missing.toml: cannot read the policy file"),
    ],
    ids=[
        "bad rule",
        "a folder",
        "bad table",
        "bad pyproject",
        "env names a missing file",
        "missing argument",
    ],
)
def test_a_named_or_found_file_that_cannot_be_used_is_an_error_never_a_fallback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    clean_env: None,
    where: str,
    text: str | None,
    needle: str,
) -> None:
    monkeypatch.chdir(tmp_path)
    arg: str | None = None
    if where == "$HYBRIDCOMMS_POLICY":
        monkeypatch.setenv("HYBRIDCOMMS_POLICY", str(tmp_path / "missing.toml"))
    elif where == "argument":
        arg = str(tmp_path / "missing.toml")
    elif text is None:
        (tmp_path / where).mkdir()
    else:
        (tmp_path / where).write_text(text)
    with pytest.raises(PolicyError) as caught:
        find_policy(arg)
    assert needle in str(caught.value) and str(tmp_path) in str(caught.value)
    with pytest.raises(PolicyError):  # Comms finds it the same way, and refuses it the same way
        Comms(SENDER, policy=arg, root=tmp_path / "root", fsync="never", share_bus=False)


def test_policy_explain_refuses_a_broken_policy_in_the_working_folder_as_comms_does(
    tmp_path: Path, clean_env: None
) -> None:
    (tmp_path / "hybridcomms.toml").write_text('[[rules]]\nmatch = "x.*"\nroute = "fast"\n')
    got = subprocess.run(
        [sys.executable, "-m", "hybridcomms", "policy", "explain", "x.y"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 1 and got.stdout == ""
    assert f"{tmp_path / 'hybridcomms.toml'}:3: rule 1: route must be" in got.stderr


# -- what each part says at start ------------------------------------------------------------------------


def test_comms_logs_the_policy_source_once_when_made_not_per_message(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    clean_env: None,
) -> None:
    monkeypatch.chdir(tmp_path)
    policy_file = write_policy(tmp_path / "hybridcomms.toml", "durable")
    caplog.set_level(logging.INFO, logger="hybridcomms")
    with Comms(SENDER, root=tmp_path / "root", fsync="never", share_bus=False, bus=AgentBus()) as comms:
        for i in range(3):
            comms.send("Agent-R", "x.y", i)
    lines = [r.getMessage() for r in caplog.records if "routing policy" in r.getMessage()]
    assert lines == [f"{SENDER}: routing policy from {policy_file} (in the working folder)"]
    assert all(r.name.startswith("hybridcomms") for r in caplog.records if "routing policy" in r.getMessage())


def test_the_dreamos_agent_bus_uses_and_logs_the_found_policy_and_its_rule_backends(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    clean_env: None,
) -> None:
    from hybridcomms.compat.dreamos import _delivery
    from hybridcomms.compat.dreamos.agent_bus import AgentBus as DreamBus

    store = f"memory://dream-{uuid.uuid4().hex}"
    monkeypatch.chdir(tmp_path)
    policy_file = tmp_path / "hybridcomms.toml"
    policy_file.write_text(
        f'[[rules]]\nname = "orders"\nmatch = "orders.*"\nroute = "durable"\nbackend = "{store}"\n'
    )
    caplog.set_level(logging.INFO, logger="hybridcomms")
    previous = DreamBus._instance
    DreamBus._instance = None
    bus = DreamBus(root=tmp_path / "mailboxes")
    try:
        assert bus.policy.source == str(policy_file)
        assert _delivery.current_policy() is bus.policy  # every Dream.OS send path: the same policy
        logged = [r.getMessage() for r in caplog.records if "routing policy from" in r.getMessage()]
        assert len(logged) == 1 and str(policy_file) in logged[0]
        bus.publish("orders.new", {"recipient_agent_id": "Agent-9", "n": 1})
        mb = open_mailbox(store, "Agent-9")
        try:
            (info,) = mb.list(State.NEW)
            assert mb.read(info).payload["n"] == 1
        finally:
            mb.close()
        assert not (tmp_path / "mailboxes" / "Agent-9").exists()  # not in the files: where the rule says
    finally:
        bus.stop()
        DreamBus._instance = previous
        _delivery.set_policy(None)


# -- the CLI's own routing ----------------------------------------------------------------------------


def test_cli_send_puts_a_message_where_its_rules_backend_says(
    tmp_path: Path, redis_url: str, clean_env: None
) -> None:
    from hybridcomms.backends.redis.mailbox import RedisMailbox

    agent = f"Rcpt-{uuid.uuid4().hex[:8]}"
    (tmp_path / "hybridcomms.toml").write_text(
        f'[[rules]]\nmatch = "audit.*"\nroute = "durable"\nbackend = "{redis_url}"\n'
        '[[rules]]\nmatch = "inproc.*"\nroute = "durable"\nbackend = "memory://x"\n'
    )

    def send(topic: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "hybridcomms", "send", "--to", agent, "--topic", topic, "--payload", "1"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    got = send("audit.login")
    assert got.returncode == 0, got.stderr
    with RedisMailbox(redis_url, agent) as mb:
        assert mb.get(got.stdout.strip()) is not None
    assert not (tmp_path / DEFAULT_ROOT / agent).exists()
    got = send("other.topic")  # no rule backend: files under the root, as before
    assert got.returncode == 0 and (tmp_path / DEFAULT_ROOT / agent / "new").is_dir()
    got = send("inproc.thing")
    assert got.returncode == 1 and len(got.stderr.strip().splitlines()) == 1
    assert "memory://x" in got.stderr and "cannot reach it" in got.stderr


def test_policy_explain_shows_a_rule_backend_without_its_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hybridcomms.toml").write_text(
        '[[rules]]\nname = "audit"\nmatch = "audit.*"\nroute = "durable"\n'
        'backend = "redis://:s3cret@mq.internal:6379/0"\n'
    )
    assert main(["policy", "explain", "audit.x"]) == 0
    text = capsys.readouterr().out
    assert "durable copy to: redis://***@mq.internal:6379/0 (the rule's backend)" in text
    assert f"policy from {tmp_path / 'hybridcomms.toml'} (in the working folder)" in text
    explained = explain_here(capsys, "audit.x", False, "MEDIUM")
    assert explained["backend"] == "redis://***@mq.internal:6379/0"
    assert (explained["rule"], explained["pattern"]) == ("audit", "audit.*")
    assert "s3cret" not in text and "s3cret" not in orjson.dumps(explained).decode()
    assert main(["policy", "explain", "status.x", "--route", "ephemeral"]) == 0
    assert "durable copy: none" in capsys.readouterr().out


def test_recv_takes_in_a_legacy_agent_the_policy_adopts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], clean_env: None
) -> None:
    monkeypatch.chdir(tmp_path)
    root = tmp_path / "mailboxes"
    (root / "Agent-L").mkdir(parents=True)
    (root / "Agent-L" / "inbox.json").write_bytes(
        orjson.dumps([{"message_id": "m-1", "type": "TASK", "sender_agent_id": "Old", "body": 1}])
    )
    assert main(["--root", str(root), "recv", "Agent-L"]) == 1  # legacy, not adopted: refused
    assert "adopt" in capsys.readouterr().err
    (tmp_path / "hybridcomms.toml").write_text('adopt = ["Agent-L"]\n')
    assert main(["--root", str(root), "recv", "Agent-L"]) == 0
    assert orjson.loads(capsys.readouterr().out)["topic"] == "TASK"


# -- watch and work ----------------------------------------------------------------------------------


def test_work_names_its_policy_at_start_and_hands_it_to_the_command(tmp_path: Path, clean_env: None) -> None:
    policy_file = write_policy(tmp_path / "fleet.toml", "both")
    root = tmp_path / "root"
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        mb.put(Message("job", {}))
    seen = tmp_path / "seen"
    code = f"import os; open({str(seen)!r}, 'w').write(os.environ.get('HYBRIDCOMMS_POLICY', '-'))"
    got = subprocess.run(
        [
            sys.executable,
            "-m",
            "hybridcomms",
            "--root",
            str(root),
            "--policy",
            "fleet.toml",
            "work",
            "Agent-1",
            "--max-messages",
            "1",
            "--",
            sys.executable,
            "-c",
            code,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert got.returncode == 0, got.stderr
    assert f"routing policy from {policy_file} (--policy)" in got.stderr.splitlines()[0]
    assert seen.read_text() == str(policy_file)  # absolute: the command may run elsewhere


def test_watch_names_its_policy_at_start_and_takes_legacy_drops_of_the_agents_it_adopts(
    tmp_path: Path, clean_env: None
) -> None:
    (tmp_path / "hybridcomms.toml").write_text('adopt = ["Agent-1"]\n')
    root = tmp_path / "root"
    FileMailbox(root, "Agent-1", fsync="never").close()
    (root / "Agent-1" / "inbox.json").write_bytes(
        orjson.dumps([{"message_id": "m-1", "type": "TASK", "sender_agent_id": "Old", "body": 1}])
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hybridcomms",
            "--root",
            str(root),
            "watch",
            "--json",
            "--rescan-every",
            "0.2",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None and proc.stdout is not None
        banner = proc.stderr.readline()
        assert "watching" in banner
        assert f"routing policy from {tmp_path / 'hybridcomms.toml'} (in the working folder)" in banner
        event = orjson.loads(proc.stdout.readline())  # the legacy drop, taken into new/
        assert (event["kind"], event["agent"]) == ("delivered", "Agent-1")
    finally:
        proc.terminate()
        proc.communicate(timeout=30)
    assert orjson.loads((root / "Agent-1" / "inbox.json").read_bytes()) == []


def test_policy_explain_prints_a_working_folder_whose_name_is_not_utf8(
    tmp_path: Path, clean_env: None
) -> None:
    odd = os.fsdecode(os.fsencode(str(tmp_path)) + b"/agents-\xff")
    os.mkdir(odd)
    write_policy(Path(odd) / "hybridcomms.toml", "both")
    for extra in ([], ["--json"]):
        got = subprocess.run(
            [sys.executable, "-m", "hybridcomms", "policy", "explain", "x.y", *extra],
            cwd=odd,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert got.returncode == 0, got.stderr
        assert "agents-\\xff/hybridcomms.toml" in got.stdout.replace("\\\\", "\\")
    assert orjson.loads(got.stdout)["route"] == "both"
