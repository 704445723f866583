"""`tools/bench_ui.py` runs against the dashboard as it is (it broke once when the pages moved under the
secret path prefix): a tiny fleet, every page it measures answered."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("starlette")

TOOL = Path(__file__).resolve().parents[1] / "tools" / "bench_ui.py"


def test_the_dashboard_benchmark_runs_on_a_tiny_fleet(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(TOOL), "--agents", "3", "--messages", "20", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "fleet page, counted:" in done.stdout and "mailbox page, topic filter:" in done.stdout
