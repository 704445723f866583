"""`hybridcomms top` in a real terminal (tmux): it draws every mailbox, refreshes in place, quits on q."""

from __future__ import annotations

import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from waiting import eventually

from hybridcomms import FileMailbox, Message

pytestmark = pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux (.ci/run installs it)")


def tmux(*args: str) -> str:
    return subprocess.run(["tmux", *args], capture_output=True, text=True, check=True, timeout=30).stdout


def screen(session: str) -> str:
    return tmux("capture-pane", "-p", "-t", session)


def test_top_draws_the_mailboxes_refreshes_in_place_and_quits_on_q(root: Path, tmp_path: Path) -> None:
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        for i in range(3):
            mb.put(Message("t", i))
    FileMailbox(root, "Agent-2", fsync="never").close()
    session = f"hc-top-{uuid.uuid4().hex[:8]}"
    done = tmp_path / "exited"
    cmd = f"{sys.executable} -m hybridcomms --root {root} top --interval 0.2; echo $? > {done}"
    tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "20", cmd)
    try:
        first = eventually(
            lambda: screen(session), "Agent-2 on the screen", 30, until=lambda t: "Agent-2" in t
        )
        assert "hybridcomms top" in first and "depth" in first
        row = next(line for line in first.splitlines() if line.startswith("Agent-1"))
        assert row.split()[1] == "3"  # three waiting
        with FileMailbox(root, "Agent-1", fsync="never") as mb:
            mb.put(Message("t", 3))
        later = eventually(
            lambda: screen(session),
            "Agent-1 with a depth of 4 on the screen",
            30,
            until=lambda t: any(ln.startswith("Agent-1") and ln.split()[1] == "4" for ln in t.splitlines()),
        )
        assert later.count("Agent-1") == 1  # redrawn in place, not scrolled
        tmux("send-keys", "-t", session, "q")
        eventually(done.exists, "top to quit on q", 30)
        assert done.read_text().strip() == "0"
    finally:
        subprocess.run(["tmux", "kill-session", "-t", session], capture_output=True)
