from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from hybridcomms import Backoff, FileMailbox

# Generated tests are deterministic by default: the examples come from each test's name, never from
# what an earlier run stored in .hypothesis/ (a failure found once would otherwise be replayed on every
# later run of that clone, and two clones would run different tests). To hunt for new failures, run
# with HYPOTHESIS_PROFILE=explore: random examples, and the failures found kept in .hypothesis/.
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

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
def reap_started_processes() -> Iterator[None]:
    """A worker process a test started and left running (the test failed) is killed after it."""
    yield
    import workers

    workers.reap_started()


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
    """A Redis for the tests: the one named by HYBRIDCOMMS_TEST_REDIS_URL, else a private one per test
    process (each pytest-xdist worker starts its own: pub/sub crosses databases, so two workers on one
    server would hear each other's bus events); skipped, or failed with HYBRIDCOMMS_REQUIRE_REDIS=1
    (CI), when there is none."""
    from redis_server import REQUIRE_ENV, URL_ENV, RedisServer, available

    url = os.environ.get(URL_ENV)
    if url:
        yield _worker_db(url)
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


def _worker_db(url: str) -> str:
    """A server shared by pytest-xdist workers: a database of its own for each (gw0 -> /1, gw1 -> /2)."""
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    if not worker.startswith("gw"):
        return url
    base, _, _db = url.rpartition("/")
    return f"{base}/{1 + int(worker[2:]) % 15}"
