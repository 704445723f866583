"""A private redis-server for tests: on 127.0.0.1, a free port, its data in a folder of its own.

The ``redis_url`` fixture starts one per test process (each pytest-xdist worker has its own) when
``redis-server`` is installed, and skips the Redis tests when it is not; ``HYBRIDCOMMS_TEST_REDIS_URL``
names a server to use instead (a database per worker). With ``HYBRIDCOMMS_REQUIRE_REDIS=1`` (set by
``.ci/run``) a missing server fails instead of skipping.
Tests that restart Redis start their own instance (`RedisServer`), with AOF and ``appendfsync always``.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

from waiting import eventually

REQUIRE_ENV = "HYBRIDCOMMS_REQUIRE_REDIS"
URL_ENV = "HYBRIDCOMMS_TEST_REDIS_URL"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def answers_ping(port: int) -> bool:
    """Whether a server on ``port`` is up: it answers PING (with ``--requirepass``: NOAUTH)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith((b"+PONG", b"-NOAUTH"))
    except OSError:
        return False


def available() -> bool:
    return shutil.which("redis-server") is not None


class RedisServer:
    """``redis-server`` in the foreground of a child process; `restart` keeps the port and the data."""

    def __init__(
        self,
        data_dir: str | os.PathLike[str] | None = None,
        *,
        appendonly: bool = True,
        extra: tuple[str, ...] = (),
    ) -> None:
        """``extra``: more ``redis-server`` arguments (``("--maxmemory", "2mb")``), after the defaults."""
        self.dir = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="hc-redis-"))
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.appendonly = appendonly
        self.extra = tuple(extra)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            "redis-server",
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.dir),
            "--save", "",
            "--appendonly", "yes" if self.appendonly else "no",
            "--appendfsync", "always",
            "--maxmemory-policy", "noeviction",
            "--protected-mode", "no",
            *self.extra,
        ]  # fmt: skip
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 10.0) -> None:
        """Until the server answers PING (a handshake on its socket, not a sleep of a guessed length)."""
        proc = self.proc
        assert proc is not None

        def up() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {proc.returncode}")
            return answers_ping(self.port)

        eventually(up, f"redis-server on port {self.port} to answer PING", timeout)

    def kill(self) -> None:
        """SIGKILL: what is not in the AOF is gone."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self, *, hard: bool = True) -> None:
        self.kill() if hard else self.stop()
        self.start()

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
