"""The short chaos run: producers, consumers, two recoverers and the watch service, SIGKILLed and
frozen at random, lose nothing and duplicate nothing (tools/chaos.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "chaos.py"


@pytest.mark.slow
def test_a_short_chaos_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            sys.executable,
            str(TOOL),
            "--messages",
            "600",
            "--rate",
            "400",
            "--kills",
            "8",
            "--seconds",
            "60",  # at most: the run ends once all was produced and 8 kills happened
            "--watch",
            "--json",
            "--root",
            str(tmp_path / "root"),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    said = json.dumps(result)  # the whole result (with its `trail` when it failed), not a cut dict
    assert result["produced"] >= 600, said
    assert result["kills"] >= 8, said
    assert result["lost"] == 0 and result["duplicates"] == 0 and result["leftovers"] == 0, said
    assert result["ok"] and out.returncode == 0
