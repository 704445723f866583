"""A policy of thousands of rules loads in linear time and still names the line of a bad rule."""

from __future__ import annotations

import pytest

from hybridcomms import policy as policy_module
from hybridcomms.errors import PolicyError
from hybridcomms.policy import Policy


def rules_text(n: int, bad_at: int | None = None) -> str:
    out = []
    for i in range(n):
        route = "nope" if i == bad_at else "durable"
        out.append(f'# rule {i}\n[[rules]]\nname = "r{i}"\nmatch = ["a{i}.*", "b.{i}"]\n')
        out.append(f'route = "{route}"\n\n')
    return "".join(out)


@pytest.mark.parametrize("bad_at", [0, 1, 1234, 2999])
def test_a_bad_rule_among_thousands_is_named_with_its_line(bad_at: int) -> None:
    with pytest.raises(PolicyError) as err:
        Policy.from_toml(rules_text(3000, bad_at))
    assert err.value.line == 6 * bad_at + 5  # each rule takes 6 lines; its bad route is the 5th
    assert f"rule {bad_at + 1}:" in str(err.value)


def test_the_rule_lines_are_found_in_one_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading n rules scans the text for [[rules]] headers once, not once per rule (which made 4,000
    rules take 22 s)."""
    calls = []
    real = policy_module._table_lines

    def counting(text: str, header: str) -> list[int]:
        calls.append(header)
        return real(text, header)

    monkeypatch.setattr(policy_module, "_table_lines", counting)
    loaded = Policy.from_toml(rules_text(2000))
    assert calls == ["rules"]
    assert len(loaded.rules) == 2000 + len(policy_module.DEFAULT_RULES)
    assert loaded.decide("a1999.x", addressed=False).rule is loaded.rules[1999]
