"""The short chaos run: producers, consumers, two recoverers and the watch service, SIGKILLed and
frozen at random, lose nothing and duplicate nothing (tools/chaos.py)."""

from __future__ import annotations

import json
import os
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


def test_the_drain_waits_for_a_message_given_back_with_a_backoff(tmp_path: Path) -> None:
    """The failed run's state: the watch service's recovery gave a message back due after the
    library's default backoff (~1 s); the drain stopped at its first claim finding nothing due, and
    the message, in new/ all along, counted as lost."""
    sys.path.insert(0, str(TOOL.parent))
    try:
        import chaos
    finally:
        sys.path.remove(str(TOOL.parent))
    from hybridcomms import Message

    root, work = tmp_path / "root", tmp_path / "root.chaos"
    work.mkdir()
    with chaos._mailbox(str(root)) as mb:
        mb.put(Message("chaos", {"i": 0}, id="p0g1-0"), delay=0.5)
    chaos._drain(root, work)
    assert (work / "acked-drain.log").read_text().split() == ["p0g1-0", "1"]
    assert not os.listdir(root / chaos.AGENT / "new")
