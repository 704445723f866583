"""The environment is read in one place (`hybridcomms._env`) and every variable is documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

import hybridcomms
from hybridcomms import _env

PACKAGE = Path(hybridcomms.__file__).parent
NAMES = {getattr(_env, n) for n in _env.__all__ if n.isupper()}


def test_no_other_module_names_a_variable() -> None:
    """A ``"HYBRIDCOMMS_…"`` string (a variable's name) appears in `_env` only: every other module
    takes the name from there (docstrings may mention ``$HYBRIDCOMMS_URL`` in their text)."""
    found = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_env.py" or "_shim" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"HYBRIDCOMMS_[A-Z_]+", node.value)
            ):
                found.append(f"{path.relative_to(PACKAGE)}:{node.lineno}: {node.value}")
    assert found == []


def test_every_variable_is_in_the_operations_guide() -> None:
    text = (PACKAGE.parent / "docs" / "operations.md").read_text()
    section = text.split("## Environment", 1)[1]
    assert set(re.findall(r"^\| `(HYBRIDCOMMS_[A-Z_]+)` \|", section, re.M)) == NAMES


@pytest.mark.parametrize(
    ("raw", "default", "on"),
    [(None, False, False), (None, True, True), ("", True, False), ("0", True, False), ("1", False, True)],
)
def test_a_flag_is_on_unless_empty_or_zero(raw: str | None, default: bool, on: bool) -> None:
    environ = {} if raw is None else {_env.SHARE_BUS: raw}
    assert _env.flag(_env.SHARE_BUS, default=default, environ=environ) is on


def test_an_empty_value_is_no_value() -> None:
    assert _env.value(_env.URL, {_env.URL: ""}) is None
    assert _env.value(_env.URL, {_env.URL: "redis://h/0"}) == "redis://h/0"


def test_comms_and_the_cli_find_the_same_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``$HYBRIDCOMMS_ROOT`` is the root of `Comms` as of the CLI (a newcomer found `Comms` ignoring it)."""
    from hybridcomms import Comms
    from hybridcomms.cli.common import resolve_root

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(_env.ROOT, str(tmp_path / "envroot"))
    monkeypatch.delenv(_env.URL, raising=False)
    with Comms("EnvAgent", fsync="never", share_bus=False) as comms:
        assert comms.root == tmp_path / "envroot" == resolve_root(None)
        comms.send("EnvAgent", "job.x", {}, route="durable")
    assert (tmp_path / "envroot" / "EnvAgent" / "new").is_dir()
    with Comms("Other", root=tmp_path / "given", fsync="never", share_bus=False) as comms:
        assert comms.root == tmp_path / "given"  # an argument still wins
