from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from leaks import GRACE, Snapshot, empty_process_wide_caches, left_since, start_process_wide_helpers
from waiting import eventually

from hybridcomms import Backoff, FileMailbox

# Generated tests are deterministic by default: the examples come from each test's name, never from
# what an earlier run stored in .hypothesis/ (a failure found once would otherwise be replayed on every
# later run of that clone, and two clones would run different tests). To hunt for new failures, run
# with HYPOTHESIS_PROFILE=explore: random examples, and the failures found kept in .hypothesis/.
settings.register_profile("deterministic", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "deterministic"))

FAST = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)

# -- where tests write -------------------------------------------------------------------------------
# The tests create hundreds of thousands of small files. On the ext4 disk of a small VM one creation
# costs ~0.5 ms of CPU, on a tmpfs ~0.01 ms: the suite runs on a tmpfs where there is one (/dev/shm),
# in a folder of its own per run, removed at the end. The file semantics the tests rely on (O_EXCL,
# rename, flock, inotify, O_NOFOLLOW, modes) are the same; a power loss is never simulated by a test.
# HYBRIDCOMMS_TEST_TMP=<folder> chooses another place (e.g. a disk: HYBRIDCOMMS_TEST_TMP=/tmp);
# pytest's own --basetemp wins over both.
TEST_TMP_ENV = "HYBRIDCOMMS_TEST_TMP"
_TMPFS = Path("/dev/shm")
_MIN_FREE = 2 << 30  # what the largest tests write at once, with room to spare


def _test_tmp_parent() -> Path | None:
    chosen = os.environ.get(TEST_TMP_ENV)
    if chosen:
        return Path(chosen)
    try:
        st = os.statvfs(_TMPFS)
    except OSError:
        return None
    if not os.access(_TMPFS, os.W_OK | os.X_OK) or st.f_bavail * st.f_frsize < _MIN_FREE:
        return None
    return _TMPFS


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "clock: a contract test about time (delays, expiry): run at one fsync level only"
    )
    if hasattr(config, "workerinput"):
        return  # an xdist worker: the controller chose its folders
    made = []
    parent = _test_tmp_parent()
    if parent is not None and not config.option.basetemp:
        runs = parent / f"hybridcomms-tests-{os.getuid()}"
        runs.mkdir(mode=0o700, parents=True, exist_ok=True)
        for old in runs.glob("run-*"):  # left by a run that was killed
            pid = old.name.split("-")[1]
            if pid.isdigit() and not _alive(int(pid)):
                _remove(old)
        here = runs / f"run-{os.getpid()}"
        config.option.basetemp = str(here)
        made.append(here)
        # What tests make with `tempfile` (generated tests cannot use tmp_path) goes there too, for
        # them, the processes they start and the xdist workers.
        tmp = runs / f"run-{os.getpid()}-tmp"
        tmp.mkdir(mode=0o700)
        os.environ["TMPDIR"] = str(tmp)
        tempfile.tempdir = None  # (computed again from TMPDIR)
        made.append(tmp)
    if sys.dont_write_bytecode and sys.pycache_prefix is None:
        made += _compiled_for_this_run()
        if not hasattr(config, "workerinput"):  # once, in the process that starts the xdist workers
            _rewritten_for_this_run(config)
    config.stash[_MADE] = made


def _compiled_for_this_run() -> list[Path]:
    """Where Python may not write bytecode (PYTHONDONTWRITEBYTECODE, as on some CI machines), every
    process a test starts would compile the package again (~80 ms of each CLI run, hundreds of runs):
    compile it once, where Python looks for it, and remove what was made at the end of the run (a
    source changed meanwhile is compiled again in memory, as usual)."""
    import compileall

    top = Path(__file__).resolve().parents[1]
    folders = [top / folder for folder in ("hybridcomms", "tests", "tools")]
    caches = {p for folder in folders for p in folder.rglob("__pycache__")}
    sources = sorted(p for folder in folders for p in folder.rglob("*.py"))
    _on_two_cores(sources, lambda source: compileall.compile_file(source, quiet=2))
    return [p for folder in folders for p in folder.rglob("__pycache__") if p not in caches]


def _on_two_cores(items: list[Path], work: Callable[[Path], object]) -> None:
    """``work`` on every item, half of them in a forked child (the run's start waits for this: it
    takes half the time on two cores). The child's failures are ignored: what it did not do is
    done later by whoever needs it (an optimization only)."""
    try:
        child = os.fork()
    except OSError:
        child = -1
    if child == 0:
        try:
            for item in items[1::2]:
                work(item)
        finally:
            os._exit(0)
    for item in items[::2] if child > 0 else items:
        work(item)
    if child > 0:
        os.waitpid(child, 0)


def _rewritten_for_this_run(config: pytest.Config) -> None:
    """pytest rewrites the asserts of every test module it imports, in every xdist worker, and where
    bytecode may not be written it caches nothing: each worker rewrote all of them (~2.5 s of CPU a
    worker). Rewrite them once here, into the cached file pytest reads first (in the ``__pycache__``
    folders `_compiled_for_this_run` made, removed at the end). Through pytest's private functions:
    if they are not as expected, nothing is written and the workers rewrite as before."""
    try:
        from _pytest.assertion.rewrite import (
            PYC_TAIL,
            _rewrite_test,
            _write_pyc,
            assertstate_key,
            get_cache_dir,
        )

        state = config.stash[assertstate_key]

        def rewrite(fn: Path) -> None:
            cache = get_cache_dir(fn)
            if cache.is_dir():
                source_hash, code = _rewrite_test(fn, config)
                _write_pyc(state, code, source_hash, cache / (fn.name[:-3] + PYC_TAIL))

        here = sorted(Path(__file__).resolve().parent.rglob("*.py"))
        _on_two_cores([fn for fn in here if fn.name.startswith("test_") or fn.name == "conftest.py"], rewrite)
    except Exception:  # an optimization only
        return


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """The tests marked ``slow`` (seconds of wall time: process fleets, chaos runs, a Redis kill)
    first, dealt out over the xdist workers: each worker's first share (pytest-xdist's worksteal
    gives each an even, contiguous share of the collection, and the others steal from its end)
    begins with its turn of them. A slow test drawn last kept one worker busy for seconds while the
    others had nothing left (a 5 s tail in a 65 s run)."""
    slow = [item for item in items if item.get_closest_marker("slow") is not None]
    if not slow:
        return
    workers = int(getattr(config, "workerinput", {}).get("workercount", 1))
    items[:] = _dealt_out(slow, [item for item in items if item.get_closest_marker("slow") is None], workers)


def _dealt_out(first: list[pytest.Item], rest: list[pytest.Item], workers: int) -> list[pytest.Item]:
    """``first`` dealt round-robin to the heads of the ``workers`` shares xdist cuts the whole list
    into (share i: what is left divided by the workers left), ``rest`` after them in its order."""
    total = len(first) + len(rest)
    order: list[pytest.Item] = []
    taken = 0
    for i in range(workers):
        share = (total - len(order)) // (workers - i)
        mine = first[i::workers]
        fill = max(share - len(mine), 0)
        order += mine + rest[taken : taken + fill]
        taken += fill
    return order + rest[taken:]


def pytest_unconfigure(config: pytest.Config) -> None:
    for made in config.stash.get(_MADE, []):
        _remove(made)


_MADE = pytest.StashKey[list[Path]]()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove(folder: Path) -> None:
    """Remove a test folder whatever the tests left in it (modes 000 included)."""
    import shutil

    for dirpath, dirnames, _ in os.walk(folder):
        for name in dirnames:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                try:
                    os.chmod(path, 0o700)
                except OSError:
                    pass
    shutil.rmtree(folder, ignore_errors=True)


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


@pytest.fixture(scope="session", autouse=True)
def process_wide_helpers() -> None:
    start_process_wide_helpers()


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """Fail a test that leaves a thread, an inotify instance or another descriptor behind (watchdog
    observers included), after a short grace; what the library keeps per process by design is named
    in `leaks.PROCESS_WIDE_THREADS` (see tests/leaks.py)."""
    before = Snapshot.now()
    yield
    empty_process_wide_caches()
    try:
        eventually(lambda: left_since(before), "nothing left behind", GRACE, until=_nothing)
    except AssertionError as exc:
        pytest.fail(str(exc), pytrace=False)


def _nothing(left: list[str]) -> bool:
    return not left


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
