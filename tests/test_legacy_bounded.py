"""Legacy intake against hostile input and kills (#21.5): memory bounded whatever an ``inbox.json``
holds, chunks that survive SIGKILL anywhere, long and undecodable names, ``migrate`` run twice."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import tracemalloc
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import filelock
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hybridcomms.compat.dreamos.legacy as legacy_mod
from hybridcomms import FileMailbox, State, _fs
from hybridcomms.compat.dreamos import _json
from hybridcomms.compat.dreamos._legacy_store import append_to_inbox_json
from hybridcomms.compat.dreamos.legacy import JOURNAL, REPORT_LISTED, ingest, legacy_status, to_legacy_dict
from hybridcomms.compat.dreamos.migrate import migrate

ENV = {k: v for k, v in os.environ.items() if k != "HYBRIDCOMMS_ROOT"}


def bodies(mb: FileMailbox) -> Counter[Any]:
    """How many times each legacy body waits in new/ (what legacy readers would get)."""
    got: Counter[Any] = Counter()
    for info in mb.list(State.NEW):
        value = to_legacy_dict(mb.read(info))
        got[orjson.dumps(value).decode()] += 1
    return got


def leftovers(mb: FileMailbox) -> list[str]:
    """Journals and the file that empties inbox.json: none once an ingestion finished."""
    return sorted(n for n in os.listdir(mb.path) if n.startswith(".hybridcomms") or n.endswith(".tmp"))


# -- memory ---------------------------------------------------------------------------------------

PEAK_RSS = """
import resource, sys
from hybridcomms import FileMailbox
from hybridcomms.compat.dreamos.legacy import ingest
with FileMailbox(sys.argv[1], "Agent-1", fsync="never") as mb:
    report = ingest(mb)
print(report.n_ingested, len(report.ingested), resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on tmpfs where there is one (tens of thousands of small files are written)."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield tmp_path
        return
    import tempfile

    with tempfile.TemporaryDirectory(dir=shm, prefix="hc-legacy-") as d:
        yield Path(d)


def peak_rss_of_ingesting(root: Path, entries: int) -> tuple[int, int, int]:
    mb_path = root / "Agent-1"
    FileMailbox(root, "Agent-1", fsync="never").close()
    (mb_path / "inbox.json").write_bytes(b"[" + b",".join([b"{}"] * entries) + b"]")
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(root)], capture_output=True, text=True, env=ENV, check=True
    )
    n, listed, peak = map(int, out.stdout.split())
    assert orjson.loads((mb_path / "inbox.json").read_bytes()) == []
    return n, listed, peak


def test_memory_of_ingesting_tiny_entries_does_not_grow_with_their_count(fast_dir: Path) -> None:
    # Every entry used to cost ~5 KiB at once (131,072 took 724 MB; the 64 MiB cap allows ~22M):
    # ten times the entries must not take noticeably more memory.
    small, large = 2_000, 20_000
    n_small, listed_small, peak_small = peak_rss_of_ingesting(fast_dir / "small", small)
    n_large, listed_large, peak_large = peak_rss_of_ingesting(fast_dir / "large", large)
    assert (n_small, n_large) == (small, large)
    assert listed_small == listed_large == REPORT_LISTED  # the report lists some ids, counts all
    assert peak_large < 1.5 * peak_small, (peak_small, peak_large)


def test_one_huge_entry_is_buried_as_written_without_being_built(
    make_mailbox: Callable[..., FileMailbox],
) -> None:
    # One entry of 200,000 empty objects: parsed, it would take ~15 MB (gigabytes at the 64 MiB cap).
    mb = make_mailbox("Agent-2", max_message_size=64 << 10)
    huge = "[" + ",".join(["{}"] * 200_000) + "]"
    text = f'[{{"type": "A", "body": 1}}, {huge}, {{"type": "B", "body": 2}}]'
    (mb.path / "inbox.json").write_text(text)
    tracemalloc.start()
    try:
        json.loads(huge)
        _, built = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        report = ingest(mb)
        _, ingesting = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ingesting < built / 3, (ingesting, built)
    assert sorted(m["type"] for m in map(to_legacy_dict, map(mb.read, mb.list(State.NEW)))) == ["A", "B"]
    [dead] = report.buried
    assert dead.source == "Agent-2/inbox.json[1]" and "too large" in dead.reason
    assert (mb.path / "dead" / dead.name).read_text() == huge  # its bytes, exactly as written


def test_legacy_status_counts_entries_without_building_them(root: Path) -> None:
    agent = root / "Agent-3"
    agent.mkdir(parents=True)
    (agent / "inbox.json").write_text('[{"a": [1, {"b": "]"}]}, "x", 2, [[]], {"c": "\\"}"}]')
    assert legacy_status(root, "Agent-3") == {"agent": "Agent-3", "layout": "inbox.json", "waiting": 5}


# -- the array, element by element ----------------------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=12,
)


@given(st.lists(json_values, max_size=8), st.sampled_from([None, 0, 2, 4]), st.integers(0, 40))
def test_iter_array_reads_what_json_loads_reads(values: list[Any], indent: int | None, max_item: int) -> None:
    text = json.dumps(values, indent=indent)
    seen = list(_json.iter_array(text, max_item=max_item))
    assert len(seen) == len(values)
    for (start, end, value), expected in zip(seen, values, strict=True):
        assert json.loads(text[start:end]) == expected  # the extent is exactly the element
        if value is _json.TOO_LARGE:
            assert end - start > max_item
        else:
            assert value == expected
    assert [v for _, _, v in _json.iter_array(text)] == values
    # Resuming at an element gives the rest.
    if seen:
        middle = seen[len(seen) // 2]
        assert [v for _, _, v in _json.iter_array(text, at=middle[0])] == values[len(seen) // 2 :]


@given(st.lists(json_values, min_size=1, max_size=6), st.data())
def test_iter_array_fails_where_json_loads_fails(values: list[Any], data: st.DataObject) -> None:
    text = json.dumps(values, indent=data.draw(st.sampled_from([None, 2])))
    cut = data.draw(st.integers(0, len(text) - 1))
    broken = text[:cut] + data.draw(st.sampled_from(["", ",", "]", "}", '"', "x", "]]"]))
    try:
        expected = json.loads(broken)
    except ValueError:
        expected = ValueError
    try:
        got: Any = [v for _, _, v in _json.iter_array(broken)]
    except ValueError:
        got = ValueError
    if not isinstance(expected, list):
        assert got is ValueError  # not an array, or not JSON: never read as one
    else:
        assert got == expected


# -- killed between (and inside) chunks -----------------------------------------------------------

KILLABLE = """
import os, sys
import hybridcomms.compat.dreamos.legacy as legacy
from hybridcomms import FileMailbox

root, point, at = sys.argv[1], sys.argv[2], int(sys.argv[3])
legacy.CHUNK_ENTRIES = 8
calls = {}

def reached(what):
    calls[what] = calls.get(what, 0) + 1
    if what == point and calls[what] == at:
        print("stopped", flush=True)  # the test kills us now, inbox.json.lock held
        sys.stdin.read()
        os._exit(3)

real_put_many, real_publish, real_rename = FileMailbox.put_many, FileMailbox._publish, os.rename

def put_many(self, messages):
    reached("before-chunk")
    ids = real_put_many(self, messages)
    reached("after-chunk")
    return ids

def publish(self, *args):
    fd = real_publish(self, *args)
    reached("inside-chunk")
    return fd

def rename(src, dst, **kwargs):
    if dst == "inbox.json":
        reached("before-emptying")
    real_rename(src, dst, **kwargs)
    if dst == "inbox.json":
        reached("after-emptying")

FileMailbox.put_many, FileMailbox._publish, os.rename = put_many, publish, rename
with FileMailbox(root, "Agent-1", fsync="never") as mb:
    legacy.ingest(mb)
print("finished", flush=True)
"""


def kill_at(root: Path, point: str, at: int, append: dict[str, Any]) -> None:
    """Run an ingestion in a child, SIGKILL it at ``point`` (the ``at``-th time), while a legacy writer
    waits on the lock to append ``append``: it appends once the child is dead."""
    child = subprocess.Popen(
        [sys.executable, "-c", KILLABLE, str(root), point, str(at)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=ENV,
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "stopped", f"{point} #{at} never reached"
        lock = filelock.FileLock(str(root / "Agent-1" / "inbox.json.lock"))
        with pytest.raises(filelock.Timeout):
            lock.acquire(timeout=0)  # the ingestion holds the legacy writers' lock
        writer = threading.Thread(target=append_to_inbox_json, args=(root, "Agent-1", append), daemon=True)
        writer.start()  # waits on the lock
        child.send_signal(signal.SIGKILL)
        assert child.wait(30) == -signal.SIGKILL
        writer.join(30)
        assert not writer.is_alive()
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


N = 60  # entries: 8 chunks of 8 (the last one short)


def original(i: int) -> dict[str, Any]:
    # no id: the id is derived from the entry's place in the array; every fifth one names its own
    return {"body": i, "message_id": f"own-{i}"} if i % 5 == 1 else {"body": i}


@pytest.mark.parametrize(
    "kills",
    [
        [("before-chunk", 3)],  # journaled, nothing of chunk 3 published
        [("inside-chunk", 20)],  # chunk 3 half published
        [("after-chunk", 3)],  # chunk 3 published, the next not journaled
        [("after-chunk", 8)],  # every chunk published, the array not emptied
        [("before-emptying", 1)],  # the file of [] written and journaled
        [("after-emptying", 1)],  # emptied, the journal not removed yet
        [("after-chunk", 2), ("inside-chunk", 12), ("before-chunk", 4), ("after-emptying", 1)],
    ],
    ids=lambda kills: "+".join(f"{p}-{n}" for p, n in kills),
)
def test_an_ingestion_killed_anywhere_loses_nothing_and_publishes_nothing_twice(
    root: Path, kills: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    mb = FileMailbox(root, "Agent-1", fsync="never")
    (mb.path / "inbox.json").write_bytes(orjson.dumps([original(i) for i in range(N)]))
    expected = Counter(orjson.dumps(original(i)).decode() for i in range(N))
    for n, (point, at) in enumerate(kills):
        # Meanwhile a legacy writer appends (rewriting the array with indent=2), and what it appends is
        # the same as the first entry: where the array was emptied, it has the first entry's place too.
        again = original(0) if n % 2 == 0 else {"body": 1000 + n}
        kill_at(root, point, at, again)
        expected[orjson.dumps(again).decode()] += 1
    monkeypatch.setattr(legacy_mod, "CHUNK_ENTRIES", 8)
    ingest(mb)
    assert bodies(mb) == expected
    assert orjson.loads((mb.path / "inbox.json").read_bytes()) == []
    assert leftovers(mb) == []
    assert not ingest(mb)  # nothing more
    mb.close()


def test_an_array_replaced_after_a_kill_is_taken_whole(
    mailbox: FileMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Legacy writers only append; if something else rewrote the array meanwhile (a legacy reader that
    # still ran), the entries the journal counts as taken are not skipped: nothing is lost.
    monkeypatch.setattr(legacy_mod, "CHUNK_ENTRIES", 4)
    (mailbox.path / "inbox.json").write_bytes(orjson.dumps([{"body": i} for i in range(10)]))
    real = FileMailbox.put_many
    calls = {"n": 0}

    def dies_after_two(self: FileMailbox, messages: Any) -> list[str]:
        ids = real(self, messages)
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt("killed")
        return ids

    monkeypatch.setattr(FileMailbox, "put_many", dies_after_two)
    with pytest.raises(KeyboardInterrupt):
        ingest(mailbox)
    monkeypatch.setattr(FileMailbox, "put_many", real)
    assert (mailbox.path / JOURNAL).exists()
    (mailbox.path / "inbox.json").write_bytes(orjson.dumps([{"body": 100 + i} for i in range(6)]))
    ingest(mailbox)
    want = [{"body": i} for i in range(8)] + [{"body": 100 + i} for i in range(6)]
    assert bodies(mailbox) == Counter(orjson.dumps(w).decode() for w in want)
    assert leftovers(mailbox) == []


def test_an_entry_appended_twice_across_a_chunk_boundary_is_delivered_once(
    mailbox: FileMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(legacy_mod, "CHUNK_ENTRIES", 2)
    entries = [{"message_id": "a"}, {"message_id": "b"}, {"message_id": "b"}, {"message_id": "c"}]
    (mailbox.path / "inbox.json").write_bytes(orjson.dumps(entries))
    report = ingest(mailbox)
    assert report.ingested == ["a", "b", "c"] and report.duplicates == 1


# -- a folder of legacy files, in chunks ----------------------------------------------------------


def folder_file(i: int) -> dict[str, Any]:
    # every third one names its own id; the others get one derived from their file's name
    return {"type": "T", "body": i, "message_id": f"own-{i}"} if i % 3 == 0 else {"type": "T", "body": i}


class Interrupted(BaseException):
    """What the test raises where a kill would stop the ingestion (nothing catches it)."""


@pytest.mark.parametrize(
    "kills",
    [
        [("before-chunk", 2)],  # chunk 2 journaled, nothing of it published
        [("after-chunk", 2)],  # chunk 2 published, its files not removed yet
        [("after-removal", 2)],  # chunk 2 done, the journal still names it
        # a file dropped after each kill sorts into the chunk that was being published, so what that
        # chunk published is met over two chunks of the next run, which is killed again in between
        # (the journal must keep naming what it has not met yet)
        [("after-chunk", 2), ("after-chunk", 1), ("after-chunk", 2), ("after-removal", 1)],
        [("after-chunk", 2), ("after-chunk", 1), ("before-chunk", 2), ("after-removal", 1)],
    ],
    ids=lambda kills: "+".join(f"{p}-{n}" for p, n in kills),
)
def test_a_folder_ingestion_interrupted_anywhere_publishes_every_file_once(
    mailbox: FileMailbox, kills: list[tuple[str, int]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(legacy_mod, "CHUNK_ENTRIES", 4)
    inbox = mailbox.path / "inbox"
    expected: Counter[Any] = Counter()
    for i in range(18):
        drop(inbox, f"msg_{i:02d}.json".encode(), orjson.dumps(folder_file(i)))
        expected[orjson.dumps(folder_file(i)).decode()] += 1
    drop(inbox, b"msg_07_broken.json", b"{not json")
    real_put_many, real_remove = FileMailbox.put_many, legacy_mod.remove_taken
    for n, (point, at) in enumerate(kills):
        calls = Counter[str]()

        def reached(what: str, point: str = point, at: int = at, calls: Counter[str] = calls) -> None:
            calls[what] += 1
            if what == point and calls[what] == at:
                raise Interrupted(what)

        def put_many(self: FileMailbox, messages: Any) -> list[str]:
            reached("before-chunk")
            ids = real_put_many(self, messages)
            reached("after-chunk")
            return ids

        def remove_taken(dir_fd: int, names: list[str]) -> None:
            real_remove(dir_fd, names)
            reached("after-removal")

        monkeypatch.setattr(FileMailbox, "put_many", put_many)
        monkeypatch.setattr(legacy_mod, "remove_taken", remove_taken)
        with pytest.raises(Interrupted):
            ingest(mailbox)
        assert leftovers(mailbox) == [".hybridcomms-ingest-inbox.json"]
        # A legacy writer drops one more, named to sort right after the first file still there.
        first = min(n for n in os.listdir(inbox) if n.startswith("msg_") and "broken" not in n)
        late = {"type": "T", "body": 100 + n}
        drop(inbox, first.replace(".json", f"_late{n}.json").encode(), orjson.dumps(late))
        expected[orjson.dumps(late).decode()] += 1
    monkeypatch.setattr(FileMailbox, "put_many", real_put_many)
    monkeypatch.setattr(legacy_mod, "remove_taken", real_remove)
    ingest(mailbox)
    assert bodies(mailbox) == expected
    assert [i.reason["source"] for i in mailbox.list(State.DEAD) if i.reason] == [
        "Agent-1/inbox/msg_07_broken.json"
    ]
    assert os.listdir(inbox) == [".inbox.lock"]
    assert leftovers(mailbox) == []
    assert not ingest(mailbox)  # nothing more


def test_a_folder_is_taken_chunk_by_chunk_and_each_chunk_is_reported(
    mailbox: FileMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(legacy_mod, "CHUNK_ENTRIES", 4)
    inbox = mailbox.path / "inbox"
    for i in range(10):
        drop(inbox, f"msg_{i:02d}.json".encode(), orjson.dumps(folder_file(i)))
    drop(inbox, b"msg_04_broken.json", b"{not json")
    drop(inbox, b"msg_09_again.json", orjson.dumps(folder_file(0)))  # own-0 of chunk 1, dropped twice
    published: list[int] = []
    real = FileMailbox.put_many

    def put_many(self: FileMailbox, messages: Any) -> list[str]:
        published.append(len(messages))
        return real(self, messages)

    monkeypatch.setattr(FileMailbox, "put_many", put_many)
    told: list[int] = []
    report = ingest(mailbox, on_taken=told.append)
    assert told == [4, 4, 4]  # files taken per chunk: the broken (buried) and repeated ones count
    assert published == [4, 3, 3]
    assert report.n_ingested == 10 and len(report.buried) == 1 and report.duplicates == 1
    assert sorted(to_legacy_dict(mailbox.read(i))["body"] for i in mailbox.list(State.NEW)) == list(range(10))


# -- long and undecodable names -------------------------------------------------------------------

NAME_MAX = 255
name_bytes = st.binary(min_size=1, max_size=NAME_MAX - len(".json")).filter(
    lambda b: (
        b"/" not in b and b"\0" not in b and not b.startswith(b".") and b not in (b"inbox", b"subscriptions")
    )
)
long_names = st.builds(
    lambda head, size, tail: (head * NAME_MAX)[: max(size - len(tail) - 5, 1)] + tail + b".json",
    st.sampled_from([b"a", b"\xff", b"\x1b[2J", b"\xc3\xa9", b"msg_\n"]),
    st.integers(200, NAME_MAX),
    st.binary(min_size=0, max_size=6).filter(lambda b: b"/" not in b and b"\0" not in b),
)
legacy_names = st.lists(
    st.one_of(long_names, name_bytes.map(lambda b: b + b".json")), min_size=1, max_size=6, unique=True
)


def drop(folder: Path, name: bytes, data: bytes) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    path = os.path.join(os.fsencode(folder), name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    os.close(fd)
    old = time.time() - 3600  # settled: not being written any more
    os.utime(path, (old, old))


def check_buried(mb: FileMailbox, names: list[bytes], where: str) -> None:
    """Each undecodable file is in dead/ under a name that fits, with its bytes, and a reason that
    names the original (escaped)."""
    dead = [i for i in mb.list(State.DEAD)]
    assert len(dead) == len(names) and len({i.name for i in dead}) == len(names)
    by_source = {i.reason["source"]: i for i in dead if i.reason}
    for name in names:
        source = f"{mb.agent_id}/{where}{_fs.shown(os.fsdecode(name))}"
        info = by_source[source]
        assert len(os.fsencode(info.name)) + len(".reason.json") <= NAME_MAX
        assert (mb.path / "dead" / info.name).read_bytes() == b"{not json " + name
        assert "not valid JSON" in info.reason["reason"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=legacy_names)
def test_undecodable_files_with_any_names_are_buried_under_names_that_fit(
    tmp_path_factory: pytest.TempPathFactory, names: list[bytes]
) -> None:
    root = tmp_path_factory.mktemp("root")
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        for name in names:
            drop(mb.path / "inbox", name, b"{not json " + name)
        drop(mb.path / "inbox", b"msg_ok.json", orjson.dumps({"type": "OK", "body": 1}))
        report = ingest(mb)  # never raises
        assert report.n_ingested == 1 and len(report.buried) == len(names)
        assert sorted(b.source for b in report.buried) == sorted(
            f"Agent-1/inbox/{_fs.shown(os.fsdecode(n))}" for n in names
        )
        check_buried(mb, names, "inbox/")
        assert os.listdir(mb.path / "inbox") == [".inbox.lock"]
        for name in names:  # dropped again: buried once, not again, and still no error
            drop(mb.path / "inbox", name, b"{not json " + name)
        again = ingest(mb)
        assert again.buried == [] and os.listdir(mb.path / "inbox") == [".inbox.lock"]
        check_buried(mb, names, "inbox/")


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=legacy_names)
def test_migrate_buries_them_and_goes_on_to_the_later_agents(
    tmp_path_factory: pytest.TempPathFactory, names: list[bytes]
) -> None:
    root = tmp_path_factory.mktemp("root") / "agent_mailboxes"
    for name in names:
        drop(root / "Agent-1" / "inbox", name, b"{not json " + name)
        drop(root / "Agent-1", name, b"{not json " + name)  # flat files (L4) too
    (root / "Agent-2").mkdir()
    (root / "Agent-2" / "inbox.json").write_bytes(orjson.dumps([{"type": "T", "body": 7}]))
    result = migrate(root, backup=False, fsync="never")
    assert result.totals()["new"] == 1 and result.totals()["dead"] == 2 * len(names)
    orjson.dumps(result.to_dict())  # printable as JSON
    text = result.describe()
    for name in names:
        assert f"dead: Agent-1/inbox/{_fs.printable(os.fsdecode(name))}: not valid JSON" in text
    with FileMailbox(root, "Agent-2", create=False) as mb:
        assert [to_legacy_dict(mb.read(i))["body"] for i in mb.list(State.NEW)] == [7]
    with FileMailbox(root, "Agent-1", create=False) as mb:
        assert len(mb.list(State.DEAD)) == 2 * len(names)
    assert migrate(root, backup=False, fsync="never").totals() == {"new": 0, "done": 0, "dead": 0, "left": 0}


def run_migrate(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hybridcomms", "--root", str(root), "--fsync", "never", "migrate", *args],
        capture_output=True,
        text=True,
        env=ENV,
        check=False,
    )


def test_migrate_from_the_command_line_with_a_long_undecodable_name(tmp_path: Path) -> None:
    root = tmp_path / "agent_mailboxes"
    name = b"msg_\xff\xfe" + b"x" * 240 + b".json"  # 251 bytes, not UTF-8
    drop(root / "Agent-1" / "inbox", name, b"{{ message | tojson }}")
    (root / "Agent-2").mkdir()
    (root / "Agent-2" / "inbox.json").write_bytes(orjson.dumps([{"type": "T", "body": 7}]))
    out = run_migrate(root, "--no-backup")
    assert out.returncode == 0, out.stderr
    shown = "Agent-1/inbox/msg_\\xff\\xfe" + "x" * 240 + ".json"
    assert f"    dead: {shown}: not valid JSON" in out.stdout
    assert "  Agent-2: moved 1 to new/" in out.stdout
    assert os.listdir(root / "Agent-1" / "inbox") == [".inbox.lock"]


# -- migrate twice ---------------------------------------------------------------------------------


def test_migrate_twice_in_a_row_from_the_command_line(tmp_path: Path) -> None:
    root = tmp_path / "agent_mailboxes"
    inbox = root / "Agent-2" / "inbox"
    inbox.mkdir(parents=True)
    (inbox / "msg_ok.json").write_bytes(orjson.dumps({"type": "T", "body": 1}))
    broken = inbox / "broken.json"
    broken.write_text('{"type": "T", "bo')  # just written: perhaps still being written
    # Changed "less than 5 seconds ago" for as long as this test runs, however slow the machine:
    later = time.time() + 3600
    os.utime(broken, (later, later))
    first = run_migrate(root)
    second = run_migrate(root)
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr  # was: File exists: <root>.backup-<time>
    waiting = "    left: Agent-2/inbox/broken.json: invalid JSON changed seconds ago"
    assert waiting in first.stdout and waiting in second.stdout
    assert "backup:" in first.stdout and "backup:" not in second.stdout  # nothing to change: no backup
    assert "total: 0 to new/, 0 to done/, 0 to dead/" in second.stdout
    assert len(list(tmp_path.glob("agent_mailboxes.backup-*"))) == 1
    dry = run_migrate(root, "--dry-run")
    assert waiting in dry.stdout


def test_a_backup_name_taken_gets_the_next_suffix(tmp_path: Path) -> None:
    # Two runs that both change something within one second: the second backup is <name>-2. The names
    # of the seconds this run may take are taken beforehand, as a run a moment earlier would have.
    root = tmp_path / "agent_mailboxes"
    (root / "Agent-1").mkdir(parents=True)
    (root / "Agent-1" / "inbox.json").write_bytes(orjson.dumps([{"type": "T", "body": 1}]))
    now = datetime.now(timezone.utc)
    taken = {
        tmp_path / f"agent_mailboxes.backup-{(now + timedelta(seconds=s)).strftime('%Y%m%dT%H%M%SZ')}"
        for s in range(-1, 120)
    }
    for path in taken:
        path.mkdir()
    out = run_migrate(root)
    assert out.returncode == 0, out.stderr
    [backup] = set(tmp_path.glob("agent_mailboxes.backup-*")) - taken
    assert backup.name.endswith("-2") and backup.with_name(backup.name[:-2]) in taken
    assert f"backup: {backup}" in out.stdout
    assert orjson.loads((backup / "Agent-1" / "inbox.json").read_bytes()) == [{"type": "T", "body": 1}]
    assert all(not any(p.iterdir()) for p in taken)  # the folders it found are left as they were


def test_a_journal_left_by_an_ingestion_that_took_the_array_whole_is_still_honoured(
    mailbox: FileMailbox,
) -> None:
    # The journal of a version that took inbox.json in one go: only the ids it was publishing.
    entries = [{"body": i} for i in range(5)]
    (mailbox.path / "inbox.json").write_bytes(orjson.dumps(entries))
    messages = [
        legacy_mod.message_from_legacy(
            e, agent_id="Agent-1", origin=f"Agent-1/inbox.json[{i}]", raw=_json.dumps(e)
        )
        for i, e in enumerate(entries)
    ]
    mailbox.put_many(messages[:3])  # killed while publishing
    (mailbox.path / JOURNAL).write_bytes(orjson.dumps({"ids": [m.id for m in messages], "started_at": "x"}))
    report = ingest(mailbox)
    assert report.n_ingested == 2 and report.duplicates == 3
    assert bodies(mailbox) == Counter(orjson.dumps(e).decode() for e in entries)
    assert leftovers(mailbox) == []
