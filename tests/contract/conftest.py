"""The backends the contract suite runs on, and the ``make`` fixture that opens a mailbox of each
(for every module of this folder: test_mailbox_contract.py, test_contract_returns.py)."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from hybridcomms import Backoff, FileMailbox
from hybridcomms.backends import Mailbox
from hybridcomms.backends.memory import MemoryMailbox

FAST = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)
#: The backends under test. The file backend runs at both ends of its durability: fsync "never" (no
#: fsync at all) and "always" (every put and settle committed, settles sharing a commit: other code
#: paths in `_fs` and `Folders`). The Redis fixture's server runs with AOF and ``appendfsync always``.
BACKENDS = ["file-never", "file-always", "memory", pytest.param("redis", marks=pytest.mark.redis)]
#: A test marked ``clock`` is about time (a delay, a backoff, an expiry, a claim's timeout) and spends
#: most of its run waiting for it (0.3-1.5 s); the fsync level does not change when a message is due,
#: and the settles such a test makes are tested at "always" by the other tests: it runs at "never" only.
ON_THE_CLOCK = [b for b in BACKENDS if b != "file-always"]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "make" in metafunc.fixturenames:
        on_the_clock = metafunc.definition.get_closest_marker("clock") is not None
        metafunc.parametrize("make", ON_THE_CLOCK if on_the_clock else BACKENDS, indirect=True)


@pytest.fixture
def make(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Callable[..., Mailbox]]:
    """``make(agent="A", **options)``: a mailbox of the backend under test (options every backend takes)."""
    kind = request.param
    opened: list[Any] = []
    cleanup: list[Callable[[], None]] = []
    if kind.startswith("file-"):
        fsync = kind.removeprefix("file-")

        def make(agent: str = "A", **kw: Any) -> Mailbox:
            kw.setdefault("backoff", FAST)
            mb = FileMailbox(tmp_path / "root", agent, fsync=fsync, **kw)
            opened.append(mb)
            return mb

    elif kind == "memory":
        store = uuid.uuid4().hex
        cleanup.append(lambda: MemoryMailbox.forget_store(store))

        def make(agent: str = "A", **kw: Any) -> Mailbox:
            kw.setdefault("backoff", FAST)
            mb = MemoryMailbox(agent, store=store, **kw)
            opened.append(mb)
            return mb

    else:
        import redis

        from hybridcomms.backends.redis.mailbox import RedisMailbox

        url = request.getfixturevalue("redis_url")
        namespace = f"hct-{uuid.uuid4().hex[:12]}"

        def drop_keys() -> None:
            client = redis.Redis.from_url(url)
            keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
            if keys:
                client.delete(*keys)
            client.close()

        cleanup.append(drop_keys)

        def make(agent: str = "A", **kw: Any) -> Mailbox:
            kw.setdefault("backoff", FAST)
            mb = RedisMailbox(url, agent, namespace=namespace, **kw)
            opened.append(mb)
            return mb

    yield make
    for mb in opened:
        mb.close()
    for fn in cleanup:
        fn()
