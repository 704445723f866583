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
    "index",
    [
        pytest.param(i, marks=pytest.mark.slow) if "redis-server" in b else i  # (a server's start and stop)
        for i, (k, b) in enumerate(BLOCKS)
        if k == "sh" and not b.strip().startswith(SETUP)
    ],
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
        if command.startswith("redis-server "):  # as written, on a free port and in this test's folder
            run_redis_line(command, tmp_path)
            continue
        out = subprocess.run(
            command, shell=True, cwd=tmp_path, env=env(), capture_output=True, text=True, timeout=120
        )
        assert out.returncode == 0, f"{command}: {out.stderr}"


def run_redis_line(command: str, folder: Path) -> None:
    """The README's line that starts a Redis in the background, run as written but on a free port
    and with its data in ``folder``; the server it started answers, and is then shut down."""
    import redis
    from redis_server import REQUIRE_ENV, available, free_port

    if not available():
        if os.environ.get(REQUIRE_ENV):
            pytest.fail("redis-server is not installed")
        pytest.skip("redis-server is not installed")
    port = free_port()
    argv = shlex.split(command)
    assert argv[argv.index("--port") + 1] == "6379" and "--daemonize" in argv
    argv[argv.index("--port") + 1] = str(port)
    argv[argv.index("--dir") + 1] = str(folder)
    out = subprocess.run(argv, cwd=folder, env=env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    client = redis.Redis(port=port)
    try:
        for _ in range(200):  # the daemon answers once it has loaded
            try:
                if client.ping():
                    break
            except redis.ConnectionError:
                threading_event_wait(0.05)
        config = client.config_get("append*")
        assert config["appendonly"] == "yes" and config["appendfsync"] == "always", config
        assert client.config_get("bind")["bind"] == "127.0.0.1"  # this machine only
    finally:
        try:
            client.shutdown(nosave=True)
        except redis.ConnectionError:
            pass  # (the connection closes as it shuts down)


def threading_event_wait(seconds: float) -> None:
    import threading

    threading.Event().wait(seconds)


REPO = README.parent


def test_readme_links_point_at_files_of_this_repository() -> None:
    """Relative links, each to a file of the repository (a reader of the clone never leaves it; the
    package index shows them relative to the project's home)."""
    links = re.findall(r"\]\(([^)]+)\)", README.read_text())
    assert links
    for link in links:
        if link.startswith(("https://", "http://")):
            assert "hybridcomms/hybridcomms" not in link, f"a file of this repository by URL: {link}"
            continue
        target = (REPO / link.split("#")[0]).resolve()
        assert target.is_relative_to(REPO) and target.exists(), link


def test_no_file_holds_a_merge_conflict_marker() -> None:
    marker = re.compile(r"^(<{7} |={7}$|>{7} )", re.MULTILINE)
    checked = 0
    for folder in ("hybridcomms", "tests", "tools", "docs", ".ci"):
        for path in (REPO / folder).rglob("*"):
            if path.is_file() and path.suffix in {".py", ".md", ".lua", ".toml", ".service", ""}:
                checked += 1
                assert not marker.search(path.read_text(errors="replace")), path
    for path in REPO.glob("*.md"):
        checked += 1
        assert not marker.search(path.read_text()), path
    assert checked > 50


@pytest.mark.parametrize("doc", [*sorted((REPO / "docs").glob("*.md")), REPO / "runtime_layout.md"], ids=str)
def test_docs_link_only_to_files_inside_the_repository(doc: Path) -> None:
    for link in re.findall(r"\]\(([^)]+)\)", doc.read_text()):
        if link.startswith(("https://", "http://", "#")):
            continue
        target = (doc.parent / link.split("#")[0]).resolve()
        assert target.is_relative_to(REPO) and target.exists(), f"{doc.name}: {link}"
