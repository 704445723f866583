from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from hybridcomms import Backoff, FileMailbox

FAST = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "mailboxes"


@pytest.fixture
def make_mailbox(root: Path) -> Iterator[Callable[..., FileMailbox]]:
    opened: list[FileMailbox] = []

    def make(agent: str = "Agent-1", **kw: Any) -> FileMailbox:
        kw.setdefault("fsync", "never")
        kw.setdefault("backoff", FAST)
        mb = FileMailbox(root, agent, **kw)
        opened.append(mb)
        return mb

    yield make
    for mb in opened:
        mb.close()


@pytest.fixture
def mailbox(make_mailbox: Callable[..., FileMailbox]) -> FileMailbox:
    return make_mailbox()


@pytest.fixture(autouse=True)
def no_policy_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every part finds the routing policy in ``$HYBRIDCOMMS_POLICY`` first: one set in the shell that
    runs the tests must not change how their agents and commands route."""
    monkeypatch.delenv("HYBRIDCOMMS_POLICY", raising=False)


@pytest.fixture(autouse=True)
def no_thread_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread of its own running (watchdog observers included)."""
    before = set(threading.enumerate())
    yield
    for _ in range(50):
        leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
        if not leaked:
            return
        threading.Event().wait(0.05)
    pytest.fail(f"threads left running: {leaked}")


# -- Redis -------------------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """A Redis for the tests: the one CI started, else a private one; skipped (failed in CI) if none."""
    import os

    from redis_server import REQUIRE_ENV, URL_ENV, RedisServer, available

    url = os.environ.get(URL_ENV)
    if url:
        yield url
        return
    if not available():
        if os.environ.get(REQUIRE_ENV):
            pytest.fail(f"no Redis: {URL_ENV} is not set and redis-server is not installed")
        pytest.skip("no Redis server (install redis-server, or set HYBRIDCOMMS_TEST_REDIS_URL)")
    server = RedisServer().start()
    try:
        yield server.url
    finally:
        server.remove()
