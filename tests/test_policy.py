"""The routing policy: pure decisions, shipped defaults, and files that are checked when loaded."""

from __future__ import annotations

from pathlib import Path

import pytest

from hybridcomms.policy import DEFAULT_RULES, Policy, PolicyError, Route, Rule, compile_pattern

DEFAULT = Policy()


@pytest.mark.parametrize(
    ("topic", "addressed", "expected"),
    [
        ("dreamos.agent.Agent-1.task.command", True, Route.DURABLE),
        ("dreamos.agent.Agent-1.task.command", False, Route.DURABLE),
        ("dreamos.task.command", False, Route.DURABLE),
        ("dreamos.task.lifecycle.assigned", False, Route.DURABLE),
        ("dreamos.task.directive", False, Route.DURABLE),
        ("dreamos.coordination.directive.sent", False, Route.DURABLE),
        ("dreamos.query.agent.status", False, Route.DURABLE),
        ("dreamos.supervisor.approval.responded", False, Route.DURABLE),
        ("TASK_COMMAND", True, Route.DURABLE),
        ("AGENT_QUERY", True, Route.DURABLE),
        ("AGENT_RESPONSE", True, Route.DURABLE),
        ("dreamos.agent.status.updated", False, Route.EPHEMERAL),
        ("dreamos.agent.status.heartbeat", True, Route.EPHEMERAL),
        ("dreamos.coordination.heartbeat.sent", False, Route.EPHEMERAL),
        ("HEARTBEAT", True, Route.EPHEMERAL),
        ("dreamos.agent.registered", False, Route.EPHEMERAL),
        ("dreamos.system.capability.registered", False, Route.EPHEMERAL),
        ("dreamos.debug.info", False, Route.EPHEMERAL),
        ("DEBUG_INFO", True, Route.EPHEMERAL),
        ("something.unknown", True, Route.DURABLE),  # default for a message to one agent
        ("something.unknown", False, Route.EPHEMERAL),  # default for a broadcast
    ],
)
def test_the_shipped_defaults_follow_dreamos_practice(topic: str, addressed: bool, expected: Route) -> None:
    assert DEFAULT.route(topic, addressed=addressed) is expected


@pytest.mark.parametrize("topic", ["dreamos.agent.status.updated", "HEARTBEAT", "anything.broadcast"])
def test_critical_priority_is_always_durable(topic: str) -> None:
    d = DEFAULT.decide(topic, priority="CRITICAL")
    assert d.route is Route.DURABLE and "CRITICAL" in d.reason
    assert DEFAULT.decide(topic, priority="CRITICAL", override="ephemeral").route is Route.DURABLE
    assert DEFAULT.decide(topic, priority="CRITICAL", override="both").route is Route.BOTH


def test_an_explicit_override_wins_over_the_rules() -> None:
    d = DEFAULT.decide("dreamos.task.command", override="ephemeral")
    assert d.route is Route.EPHEMERAL and d.reason == "explicit per-message override"
    assert DEFAULT.route("dreamos.debug.info", override=Route.BOTH) is Route.BOTH


def test_a_decision_names_the_rule_and_pattern_that_chose_it() -> None:
    d = DEFAULT.decide("dreamos.agent.Agent-7.task.command")
    assert d.rule is DEFAULT_RULES[0] and d.pattern == "dreamos.agent.*.task.command"
    assert "per-agent task commands" in d.reason


def test_decide_is_pure_the_same_inputs_give_the_same_decision() -> None:
    p = Policy()
    assert (
        p.decide("x.y", addressed=True)
        == p.decide("x.y", addressed=True)
        == Policy().decide("x.y", addressed=True)
    )


@pytest.mark.parametrize(
    ("pattern", "topic", "expected"),
    [
        ("a.b", "a.b", True),
        ("a.b", "a.bc", False),
        ("a.*", "a", True),
        ("a.*", "a.b.c", True),
        ("a.*", "ab", False),
        ("a.*.c", "a.b.c", True),
        ("a.*.c", "a.b.x.c", False),
        ("a.*.c", "a.c", False),
        ("*", "x", True),
        ("*.b", "a.b", True),
        ("a.b+c", "a.b+c", True),
    ],
)
def test_policy_patterns(pattern: str, topic: str, expected: bool) -> None:
    assert bool(compile_pattern(pattern).match(topic)) is expected


def test_rules_can_be_limited_to_addressed_messages_and_to_a_minimum_priority() -> None:
    p = Policy(
        rules=(
            Rule(("orders.*",), Route.BOTH, "urgent orders", min_priority="HIGH"),  # type: ignore[arg-type]
            Rule(("orders.*",), Route.DURABLE, "direct orders", addressed=True),
        ),
    )
    assert p.route("orders.new", priority="HIGH") is Route.BOTH
    assert p.route("orders.new", addressed=True) is Route.DURABLE
    assert p.route("orders.new") is Route.EPHEMERAL


def test_a_policy_file_puts_its_rules_before_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "policy.toml"
    f.write_text(
        'default_broadcast = "both"\n\n'
        '[[rules]]\nname = "billing"\nmatch = ["billing.*"]\nroute = "durable"\n\n'
        '[[rules]]\nmatch = "dreamos.debug.*"\nroute = "both"\n'
    )
    p = Policy.load(f)
    assert p.route("billing.invoice") is Route.DURABLE
    assert p.route("dreamos.debug.info") is Route.BOTH  # before the shipped "debug" rule
    assert p.route("dreamos.agent.status.updated") is Route.EPHEMERAL  # the shipped rules still apply
    assert p.route("unknown.topic") is Route.BOTH
    assert p.source == str(f)


def test_include_defaults_false_drops_the_shipped_rules(tmp_path: Path) -> None:
    f = tmp_path / "p.toml"
    f.write_text("include_defaults = false\n")
    assert Policy.load(f).rules == ()


def test_the_policy_can_live_in_pyproject_toml(tmp_path: Path) -> None:
    f = tmp_path / "pyproject.toml"
    f.write_text(
        '[project]\nname = "x"\n\n[tool.hybridcomms.policy]\ndefault_addressed = "both"\n\n'
        '[[tool.hybridcomms.policy.rules]]\nmatch = ["x.*"]\nroute = "ephemeral"\n'
    )
    p = Policy.load(f)
    assert p.route("x.y", addressed=True) is Route.EPHEMERAL
    assert p.route("y", addressed=True) is Route.BOTH


def test_a_pyproject_without_a_policy_gives_the_defaults(tmp_path: Path) -> None:
    f = tmp_path / "pyproject.toml"
    f.write_text('[project]\nname = "x"\n')
    assert Policy.load(f).rules == DEFAULT_RULES


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (
            '[[rules]]\nmatch = ["a.*"]\nroute = "fast"\n',
            3,
            "rule 1: route must be durable, ephemeral or both, not 'fast'",
        ),
        (
            '[[rules]]\nmatch = ["a.*"]\nroute = "durable"\n\n'
            '[[rules]]\nmatch = ["a*b"]\nroute = "durable"\n',
            6,
            "rule 2: bad pattern",
        ),
        ('[[rules]]\nroute = "durable"\n', 1, "needs both 'match' and 'route'"),
        ('[[rules]]\nmatch = ["a"]\nroute = "durable"\ncolour = "red"\n', 1, "unknown key(s) colour"),
        ('[[rules]]\nmatch = [1, 2]\nroute = "durable"\n', 2, "'match' must be a pattern or a list"),
        ('[[rules]]\nmatch = "a"\nroute = "durable"\nmin_priority = "SOON"\n', 4, "unknown priority"),
        ('[[rules]]\nmatch = "a"\nroute = "sometimes"\n', 3, "route must be durable, ephemeral or both"),
        (
            '[[rules]]\nmatch = "a"\nroute = "durable"\n[[rules]]\nmatch = "b"\n\nroute = "x"\n',
            7,
            "rule 2: route",
        ),
        (
            '[[rules]]\nmatch = "a"\nroute = "durable"\naddressed = "yes"\n',
            4,
            "'addressed' must be true or false",
        ),
        ('\n\ndefault_broadcast = "loud"\n', 3, "default_broadcast: route must be"),
        ("\nverbose = true\n", 2, "unknown setting 'verbose'"),
        ('[[rules]\nmatch = "a"\n', 1, "not valid TOML"),
        ("rules = 5\n", 1, "'rules' must be an array of tables"),
    ],
)
def test_a_bad_policy_file_is_refused_with_the_line_and_the_reason(
    tmp_path: Path, text: str, line: int, reason: str
) -> None:
    f = tmp_path / "policy.toml"
    f.write_text(text)
    with pytest.raises(PolicyError) as info:
        Policy.load(f)
    assert info.value.line == line
    assert reason in str(info.value)
    assert str(info.value).startswith(f"{f}:{line}: ")
    assert isinstance(info.value, ValueError)


def test_a_missing_policy_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match="cannot read the policy file"):
        Policy.load(tmp_path / "nope.toml")


def test_describe_prints_every_rule_in_order() -> None:
    text = DEFAULT.describe()
    assert text.splitlines()[0] == "policy from built-in defaults"
    assert "1. per-agent task commands: route=durable; match=dreamos.agent.*.task.command" in text
    assert "CRITICAL priority is never ephemeral only" in text
