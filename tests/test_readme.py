"""Every code block of README.md runs as written (in a fresh folder, as a new user would)."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```(\w+)\n(.*?)```", README.read_text(), flags=re.S)
BIN = Path(sys.executable).parent

# The two quickstart commands set up .venv and run this suite: .ci/run runs exactly them.
SETUP = ("python3 -m venv .venv", ".venv/bin/python -m pytest")


def env() -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    e["PATH"] = f"{BIN}{os.pathsep}{e.get('PATH', '')}"
    return e


def test_readme_has_the_blocks_these_tests_run() -> None:
    kinds = [k for k, _ in BLOCKS]
    assert kinds.count("python") >= 3 and kinds.count("sh") >= 3


@pytest.mark.parametrize("index", [i for i, (k, _) in enumerate(BLOCKS) if k == "python"])
def test_each_python_block_runs(index: int, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    code = BLOCKS[index][1]
    e = env()
    if "REDIS_URL" in code:  # the block that runs on Redis: the tests' Redis stands in for yours
        e["REDIS_URL"] = request.getfixturevalue("redis_url")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=e, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize(
    "index", [i for i, (k, b) in enumerate(BLOCKS) if k == "sh" and not b.strip().startswith(SETUP)]
)
def test_each_shell_block_runs(index: int, tmp_path: Path) -> None:
    if (BIN / "hybridcomms").exists():  # the folder of a clone where the quickstart made .venv
        (tmp_path / ".venv").symlink_to(BIN.parent, target_is_directory=True)
    for line in BLOCKS[index][1].strip().splitlines():
        command = line.split("  #")[0].strip()
        if not command:
            continue
        if " watch" in command:  # a service: it runs until SIGTERM, and must then stop cleanly
            proc = subprocess.Popen(
                shlex.split(command),
                cwd=tmp_path,
                env=env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            try:
                assert proc.stderr is not None
                assert "watching" in proc.stderr.readline()  # handshake: it says when it watches
            finally:
                proc.send_signal(signal.SIGTERM)
            assert proc.wait(30) == 0
            continue
        out = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, f"{command}: {out.stderr}"


REPO = README.parent
BASE = "https://github.com/hybridcomms/hybridcomms/blob/main/"


def test_readme_links_are_absolute_and_point_at_files_of_this_repository() -> None:
    links = re.findall(r"\]\(([^)]+)\)", README.read_text())
    assert links
    for link in links:
        assert link.startswith(("https://", "http://")), (
            f"relative link in README (package index readers): {link}"
        )
        if link.startswith(BASE):
            assert (REPO / link[len(BASE) :].split("#")[0]).exists(), link


@pytest.mark.parametrize("doc", [*sorted((REPO / "docs").glob("*.md")), REPO / "runtime_layout.md"], ids=str)
def test_docs_link_only_to_files_inside_the_repository(doc: Path) -> None:
    for link in re.findall(r"\]\(([^)]+)\)", doc.read_text()):
        if link.startswith(("https://", "http://", "#")):
            continue
        target = (doc.parent / link.split("#")[0]).resolve()
        assert target.is_relative_to(REPO) and target.exists(), f"{doc.name}: {link}"
