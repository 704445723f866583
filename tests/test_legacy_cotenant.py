"""The legacy intake and `migrate` against a co-tenant (issue #21): agents of one group, each able to
write anything under the 0770 root. A co-tenant can hold a legacy lock forever, drop an ``inbox.json``
of many megabytes, forge bus events on durable topics for the Dream.OS ``AgentBus``, and put links in
the root or swap them in while ``migrate`` copies it. None of it slows the mailbox's deliveries to a
crawl, stalls a consumer, costs memory in proportion to the file, hands a legacy handler a forged
durable event, or copies anything from outside the root into a backup others can read."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import eventually

import hybridcomms.compat.dreamos._backup as backup_mod
import hybridcomms.compat.dreamos._held_locks as held_mod
import hybridcomms.compat.dreamos._json_stream as stream_mod
import hybridcomms.compat.dreamos.legacy as legacy_mod
from hybridcomms import Comms, FileMailbox, Message, State
from hybridcomms.bus import Event
from hybridcomms.bus.fanout import BUS_FOLDER, FANOUT_STATS, _shared, encode_event
from hybridcomms.compat.dreamos._legacy_store import append_to_inbox_json
from hybridcomms.compat.dreamos.legacy import ingest, to_legacy_dict
from hybridcomms.compat.dreamos.migrate import migrate
from hybridcomms.watcher import MailboxEvent, MailboxWatcher

ENV = {k: v for k, v in os.environ.items() if k != "HYBRIDCOMMS_ROOT"}
#: tmpfs where there is one: the journal is fsynced at every chunk, which costs a disk's latency.
SHM = "/dev/shm" if os.path.isdir("/dev/shm") and os.access("/dev/shm", os.W_OK) else None


@pytest.fixture
def fast_dir(tmp_path: Path) -> Iterator[Path]:
    """A folder on tmpfs where there is one (megabytes are written, journals fsynced)."""
    if SHM is None:
        yield tmp_path
        return
    with tempfile.TemporaryDirectory(dir=SHM, prefix="hc-cotenant-") as d:
        yield Path(d)


def legacy_entry(i: int, topic: str = "legacy.work") -> dict[str, Any]:
    return {"message_id": f"legacy-{i:04d}", "type": topic, "body": {"i": i}}


# -- 1. a legacy lock held forever ------------------------------------------------------------------

HOLDER = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o660)
fcntl.flock(fd, fcntl.LOCK_EX)  # what `flock inbox.json.lock sleep infinity` does
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def hold_lock() -> Iterator[Callable[[Path], Callable[[], None]]]:
    """Hold a lock file from another process (as a co-tenant would, forever); returns a release."""
    holders: list[subprocess.Popen[str]] = []

    def hold(path: Path) -> Callable[[], None]:
        child = subprocess.Popen(
            [sys.executable, "-c", HOLDER, str(path)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        holders.append(child)
        assert child.stdout is not None and child.stdout.readline().strip() == "held"

        def release() -> None:
            assert child.stdin is not None
            child.stdin.close()
            assert child.wait(10) == 0

        return release

    yield hold
    for child in holders:
        if child.poll() is None:
            child.kill()
        child.wait()
        for pipe in (child.stdin, child.stdout):
            if pipe is not None:
                pipe.close()


@pytest.fixture
def quick_backoff(monkeypatch: pytest.MonkeyPatch) -> held_mod.HeldLocks:
    """A table of held locks of the test's own, with a backoff of milliseconds (the mechanism is the
    same; the test need not wait seconds for the lock to be tried again)."""
    table = held_mod.HeldLocks()
    monkeypatch.setattr(legacy_mod, "HELD", table)
    monkeypatch.setattr(held_mod, "FIRST_WAIT", 0.01)
    monkeypatch.setattr(held_mod, "LONGEST_WAIT", 0.05)
    return table


def test_a_consumer_delivers_at_full_speed_while_a_co_tenant_holds_the_inbox_json_lock(
    root: Path,
    hold_lock: Callable[[Path], Callable[[], None]],
    quick_backoff: held_mod.HeldLocks,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Today's failure: each look at the legacy drops waited 10 s for the lock: 1 message per 10 s."""
    caplog.set_level(logging.INFO, logger="hybridcomms.compat.dreamos.legacy")
    n = 30
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        (mb.path / "inbox.json").write_bytes(orjson.dumps([legacy_entry(i) for i in range(3)]))
        release = hold_lock(mb.path / "inbox.json.lock")
        mb.put_many([Message("work.item", {"n": i}) for i in range(n)])
    durable: list[int] = []
    legacy: list[Any] = []
    comms = Comms("Agent-1", root=root, fsync="never", legacy_intake=True, share_bus=False)
    try:
        comms.subscribe("work.*", lambda m: durable.append(m.payload["n"]))
        comms.subscribe("legacy.*", lambda m: legacy.append(m.payload))
        comms.start()
        eventually(lambda: len(durable) == n, f"{n} deliveries with the lock held", 8)  # not 300 s
        assert sorted(durable) == list(range(n)) and legacy == []  # nothing taken without the lock
        assert len(orjson.loads((root / "Agent-1" / "inbox.json").read_bytes())) == 3
        eventually(
            lambda: quick_backoff.retry_in(str(root / "Agent-1" / "inbox.json.lock")) is not None,
            "the intake to back off from the held lock",
            5,
        )
        release()
        eventually(lambda: len(legacy) == 3, "the legacy entries once the lock is free")
    finally:
        comms.close()
    assert sorted(p["i"] for p in legacy) == [0, 1, 2]
    said = [r for r in caplog.records if "inbox.json.lock is held" in r.getMessage()]
    assert len(said) == 1 and said[0].levelname == "WARNING"  # once, however many tries found it held
    assert any("is free again" in r.getMessage() for r in caplog.records)


def test_watch_legacy_goes_on_watching_while_a_co_tenant_holds_a_legacy_lock(
    root: Path, hold_lock: Callable[[Path], Callable[[], None]], quick_backoff: held_mod.HeldLocks
) -> None:
    """Today's failure: the watcher's start-up rescan waited 10 s on Agent-1's lock (and every rescan
    after it) before it looked at anyone else."""
    with FileMailbox(root, "Agent-1", fsync="never") as a1, FileMailbox(root, "Agent-2", fsync="never") as a2:
        inbox = a1.path / "inbox"
        inbox.mkdir()
        (inbox / "msg_1.json").write_bytes(orjson.dumps(legacy_entry(1)))
        (a1.path / "inbox.json").write_bytes(orjson.dumps([legacy_entry(2)]))
        releases = [hold_lock(a1.path / "inbox.json.lock"), hold_lock(inbox / ".inbox.lock")]
        a2.put_many([Message("work.item", {"n": i}) for i in range(10)])
    events: list[MailboxEvent] = []
    watcher = MailboxWatcher(
        root, on_event=events.append, recover_every=0, rescan_every=60, ingest_legacy=True
    )
    starting = threading.Thread(target=watcher.start)
    starting.start()
    try:
        eventually(lambda: sum(e.agent == "Agent-2" for e in events) == 10, "Agent-2's messages reported", 8)
        starting.join(8)
        assert not starting.is_alive()
        assert [e for e in events if e.agent == "Agent-1"] == []
        for release in releases:
            release()
        eventually(lambda: sum(e.agent == "Agent-1" for e in events) == 2, "Agent-1's legacy drops, taken")
    finally:
        starting.join(10)
        watcher.stop()
    assert os.listdir(inbox) == [".inbox.lock"]


# -- 2. a large inbox.json, taken a chunk per turn --------------------------------------------------


def test_a_large_inbox_json_is_taken_a_chunk_per_turn_between_deliveries(
    fast_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today's failure: the consumer took the whole array (34 s for 5 MiB) before its next delivery."""
    monkeypatch.setattr(legacy_mod, "CHUNK_ENTRIES", 8)
    entries = 200
    with FileMailbox(fast_dir, "Agent-1", fsync="never") as mb:
        mb.put_many([Message("work.item", {"n": i}) for i in range(5)])  # older: claimed first
        (mb.path / "inbox.json").write_bytes(orjson.dumps([legacy_entry(i) for i in range(entries)]))
    folders = [fast_dir / "Agent-1" / s.folder for s in (State.NEW, State.PROCESSING, State.DONE)]
    seen_at_first: list[int] = []
    legacy: list[int] = []

    def first_delivery(m: Any) -> None:
        if not seen_at_first:  # every message that exists: the 5 durable ones and what was ingested
            seen_at_first.append(sum(len(os.listdir(f)) for f in folders) - 5)

    comms = Comms("Agent-1", root=fast_dir, fsync="never", legacy_intake=True, share_bus=False)
    try:
        comms.subscribe("work.*", first_delivery)
        comms.subscribe("legacy.*", lambda m: legacy.append(m.payload["i"]))
        comms.start()
        eventually(lambda: len(legacy) == entries, "every legacy entry", 30)
    finally:
        comms.close()
    assert seen_at_first[0] <= 2 * 8, seen_at_first  # a chunk (or two), not the whole array
    assert sorted(legacy) == list(range(entries))
    assert orjson.loads((fast_dir / "Agent-1" / "inbox.json").read_bytes()) == []


class Interrupted(BaseException):
    """Raised where a kill would stop the ingestion (nothing catches it)."""


def leftovers(mb: FileMailbox) -> list[str]:
    return sorted(n for n in os.listdir(mb.path) if n.startswith(".hybridcomms") or n.endswith(".tmp"))


def bodies(mb: FileMailbox) -> Counter[str]:
    got: Counter[str] = Counter()
    for info in mb.list(State.NEW):
        got[orjson.dumps(to_legacy_dict(mb.read(info))).decode()] += 1
    return got


#: Between two steps: nothing, a legacy writer's append (it rewrites the array, indent=2), or a kill
#: of the step before or after it published its chunk.
step_actions = st.lists(st.sampled_from(["step", "append", "kill-before", "kill-after"]), max_size=14)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(actions=step_actions)
def test_an_ingestion_taken_in_steps_and_killed_between_them_loses_nothing_and_doubles_nothing(
    monkeypatch: pytest.MonkeyPatch, actions: list[str]
) -> None:
    monkeypatch.setattr(legacy_mod, "CHUNK_ENTRIES", 8)
    with (
        tempfile.TemporaryDirectory(dir=SHM, prefix="hc-steps-") as tmp,
        FileMailbox(tmp, "Agent-1", fsync="never") as mb,
    ):
        first = [{"body": i} if i % 4 else legacy_entry(i) for i in range(40)]
        (mb.path / "inbox.json").write_bytes(orjson.dumps(first))
        expected = Counter(orjson.dumps(e).decode() for e in first)
        real_put_many, real_find = FileMailbox.put_many, legacy_mod._find_start
        calls = Counter[str]()
        plan: dict[str, str] = {}

        def put_many(self: FileMailbox, messages: Any) -> list[str]:
            calls["put_many"] += 1
            if plan.pop("kill", None) == "kill-before":
                raise Interrupted("before")
            ids = real_put_many(self, messages)
            if plan.pop("kill-after", None):
                raise Interrupted("after")
            return ids

        def find_start(fd: int, *args: Any) -> Any:
            if os.fstat(fd).st_size > 2:  # (not the "[]" left once all is taken)
                calls["whole"] += 1
            return real_find(fd, *args)

        monkeypatch.setattr(FileMailbox, "put_many", put_many)
        monkeypatch.setattr(legacy_mod, "_find_start", find_start)
        changes = 1  # the file is read whole once per change to it, never again for a step or a kill
        for n, action in enumerate(actions):
            if action == "append":
                append_to_inbox_json(tmp, "Agent-1", {"body": 1000 + n})
                expected[orjson.dumps({"body": 1000 + n}).decode()] += 1
                changes += 1
                continue
            if action == "kill-before":
                plan["kill"] = "kill-before"
            elif action == "kill-after":
                plan["kill-after"] = "yes"
            before = calls["put_many"]
            try:
                ingest(mb, max_chunks=1)
            except Interrupted:
                pass
            plan.clear()
            assert calls["put_many"] - before <= 1  # one chunk a step
        monkeypatch.setattr(FileMailbox, "put_many", real_put_many)
        steps = 0
        while ingest(mb, max_chunks=1).more:
            steps += 1
            assert steps < 100
        assert bodies(mb) == expected
        assert orjson.loads((mb.path / "inbox.json").read_bytes()) == []
        assert leftovers(mb) == []
        # Read whole again only when the file changed (a step goes on from where the last stopped).
        assert calls["whole"] <= changes, (calls, actions)


@pytest.mark.parametrize("tamper", ["offset", "digest", "garbage"])
def test_a_journal_a_co_tenant_rewrote_between_two_steps_breaks_nothing(
    mailbox: FileMailbox, monkeypatch: pytest.MonkeyPatch, tamper: str
) -> None:
    """The journal lives in the agent's folder, which every co-tenant can write: whatever it says, a
    step never raises (a consumer would log a traceback at every turn) and nothing is lost; a journal
    that still reads is checked against the file (nothing doubled). (One that does not read at all is
    no journal: the array is taken again from its start, as a co-tenant could also append it again.)"""
    monkeypatch.setattr(legacy_mod, "CHUNK_ENTRIES", 4)
    entries = [legacy_entry(i) for i in range(12)]
    (mailbox.path / "inbox.json").write_bytes(orjson.dumps(entries))
    assert ingest(mailbox, max_chunks=1).more
    path = mailbox.path / legacy_mod.JOURNAL
    journal = orjson.loads(path.read_bytes())
    if tamper == "offset":
        journal["resume"]["offset"] += 3  # the middle of an entry, of the very file it names
    elif tamper == "digest":
        journal["digest"] = "not a digest"
    path.write_bytes(b"\x00{not json" if tamper == "garbage" else orjson.dumps(journal))
    for _ in range(10):
        if not ingest(mailbox, max_chunks=1).more and not leftovers(mailbox):
            break
    expected = Counter(orjson.dumps(e).decode() for e in entries)
    got = bodies(mailbox)
    assert set(got) == set(expected)
    assert got == expected or tamper == "garbage"
    assert orjson.loads((mailbox.path / "inbox.json").read_bytes()) == []


# -- 3. memory bounded by the window and the chunk, not the file -------------------------------------

PEAK_RSS = """
import os, resource, sys
from hybridcomms import FileMailbox
from hybridcomms.compat.dreamos import legacy

legacy.CHUNK_CHARS = 256 << 10  # smaller chunks, the same mechanism: what a chunk costs is small here

def peak(reset=False):
    # The peak of this process's own memory (KiB): VmHWM, which can be reset (clear_refs 5) and, unlike
    # ru_maxrss, does not start at the size of the process that forked us (pytest, tens of MiB).
    try:
        if reset:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        with open("/proc/self/status") as f:
            return int(next(line for line in f if line.startswith("VmHWM:")).split()[1])
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

out = []
for agent in sys.argv[2:]:
    with FileMailbox(sys.argv[1], agent, fsync="never", max_message_size=256 << 10) as mb:
        before = peak(reset=True)
        report = legacy.ingest(mb)
        out.append(f"{agent} {report.n_ingested} {len(report.buried)} {before} {peak()}")
print("\\n".join(out))
"""


def test_ingesting_a_large_inbox_json_costs_memory_bounded_by_the_chunk_not_the_file(fast_dir: Path) -> None:
    """Today's failure: the file's bytes and its text were held at once, then an oversized entry or a
    corrupt file once more to be buried: 1.5 to 3 times the file (64 MiB: 96 to 192 MiB;
    docs/performance.md)."""
    mib = 1 << 20
    e_acute = "é".encode()  # 2 bytes in UTF-8, 1 in memory (and what the parser builds of it)
    entry = b'{"type": "T", "body": "' + e_acute * (8 << 10) + b'"}'  # 16 KiB
    plain = b'{"type": "T", "body": "' + b"y" * (16 << 10) + b'"}'
    files = {
        "Agent-1": b"[" + b",".join([entry] * (8 * mib // len(entry))) + b"]",  # 8 MiB of entries
        "Agent-2": b'[{"type": "A"}, "' + e_acute * (16 * mib) + b'", {"type": "B"}]',  # one of 32 MiB
        "Agent-3": b"[" + b",".join([plain] * (32 * mib // len(plain))) + b",",  # 32 MiB, cut short
    }
    for agent, data in files.items():
        FileMailbox(fast_dir, agent, fsync="never").close()
        (fast_dir / agent / "inbox.json").write_bytes(data)
    del data, files
    out = subprocess.run(
        [sys.executable, "-c", PEAK_RSS, str(fast_dir), "Agent-1", "Agent-2", "Agent-3"],
        capture_output=True,
        text=True,
        env=ENV,
        check=True,
    )
    rows = {r.split()[0]: list(map(int, r.split()[1:])) for r in out.stdout.splitlines()}
    assert rows["Agent-1"][:2] == [8 * mib // len(entry), 0]
    assert rows["Agent-2"][:2] == [2, 1] and rows["Agent-3"][:2] == [0, 1]
    grown = {agent: peak - before for agent, (_, _, before, peak) in rows.items()}  # KiB
    # Each under 16 MiB (about 5 here), for files of 8 to 32 MiB; it was 29, 80 and 96 MiB.
    assert max(grown.values()) < 16 * 1024, grown
    [buried] = FileMailbox(fast_dir, "Agent-2", fsync="never").list(State.DEAD)
    kept = (fast_dir / "Agent-2" / "dead" / buried.name).read_bytes()
    assert kept == b'"' + e_acute * (16 * mib) + b'"'  # the entry's bytes, exactly as written


# The stream reader that replaced the whole-file read: what json.loads reads, from bytes in any of the
# encodings json.loads detects, through windows of a few bytes, and from after any element.

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(10**30), 10**30)
    | st.floats(allow_nan=False)
    | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=10,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    values=st.lists(json_values, max_size=6),
    indent=st.sampled_from([None, 2]),
    ascii_only=st.booleans(),
    encoding=st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "utf-16-be", "utf-32-le"]),
    window=st.integers(1, 9),
)
def test_the_stream_reader_reads_what_json_loads_reads_through_any_window(
    monkeypatch: pytest.MonkeyPatch,
    values: list[Any],
    indent: int | None,
    ascii_only: bool,
    encoding: str,
    window: int,
) -> None:
    monkeypatch.setattr(stream_mod, "WINDOW", window)
    data = json.dumps(values, indent=indent, ensure_ascii=ascii_only).encode(encoding)
    assert json.loads(data) == values
    fd, path = tempfile.mkstemp()
    try:
        os.write(fd, data)
        elements = list(stream_mod.open_array(fd, max_item=1 << 20))
        assert [e.value for e in elements] == values
        codec = stream_mod._codec_of(data[:4])[0]
        for e in elements:  # the offsets are bytes of the file, exactly the element
            assert json.loads(data[e.start : e.end].decode(codec, "surrogatepass")) == e.value
        for k, e in enumerate(elements):  # and a reader goes on after any of them
            assert [x.value for x in stream_mod.open_array(fd, max_item=1 << 20, after=e.end)] == values[
                k + 1 :
            ]
    finally:
        os.close(fd)
        os.unlink(path)


# -- 4. a forged event for a legacy AgentBus handler ------------------------------------------------


@pytest.fixture
def legacy_bus(tmp_path: Path) -> Iterator[Any]:
    from hybridcomms.compat.dreamos import agent_bus

    root = tmp_path / "root"
    root.mkdir()
    agent_bus.AgentBus._instance = None
    bus = agent_bus.AgentBus(root=root)
    try:
        yield bus
    finally:
        bus.stop()
        agent_bus.AgentBus._instance = None


def test_a_forged_durable_event_is_not_handed_to_a_legacy_handler(legacy_bus: Any) -> None:
    """Today's failure: any co-tenant could send a Dream.OS agent a task command (a topic the policy
    routes durably) through `.bus/`, and its `AgentBus` handler ran it as if it were genuine."""
    seen: list[tuple[str, Any]] = []
    legacy_bus.subscribe("dreamos.*", lambda event: seen.append((event.topic, event.data)))
    observed: list[Event] = []
    legacy_bus._bus.subscribe("*", observed.append)  # a plain observer of the core bus still sees all
    root = legacy_bus.root
    name = _shared[(id(legacy_bus._bus), os.path.abspath(root))][0].name
    fd = os.open(root / BUS_FOLDER, os.O_RDONLY | os.O_DIRECTORY)
    forger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        forger.connect(f"/proc/self/fd/{fd}/{name}.sock")

        def forge(event: Event) -> None:
            seen.clear()
            data = encode_event(event, "evil:1")
            assert data is not None
            forger.send(data)
            eventually(lambda: any(e.id == event.id for e in observed), "the observer's copy")

        refused = FANOUT_STATS.get("refused_durable", 0)
        command = {"command": "rm -rf /", "recipient_agent_id": "Agent-2"}
        forge(Event("dreamos.agent.Agent-2.task.command", command, source="Agent-1"))  # addressed by topic
        forge(Event("dreamos.task.command", command, source="Agent-1"))  # addressed by its data
        order = Message("dreamos.task.command", command, sender="Agent-1", recipient="Agent-2")
        forge(Event("dreamos.agent.status", order))  # a durable Message under an ephemeral topic
        assert seen == []
        assert FANOUT_STATS.get("refused_durable", 0) - refused == 3
        # An ephemeral topic crosses, as it always did: the bus carries no authentication.
        forge(Event("dreamos.agent.status.updated", {"status": "busy"}, source="Agent-1"))
        assert seen == [("dreamos.agent.status.updated", {"status": "busy"})]
        # In the process itself, a durable event still reaches its observers (the recipient's handler
        # takes the mailbox copy).
        legacy_bus.publish("dreamos.agent.Agent-3.task.command", {"x": 1})
        assert ("dreamos.agent.Agent-3.task.command", {"x": 1}) in seen
    finally:
        forger.close()
        os.close(fd)


# -- 5. migrate's backup, through descriptors --------------------------------------------------------

SECRET = b"SECRET-OUTSIDE-THE-ROOT"


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """Secrets beside the root: a file and a folder that a link in the root could point at."""
    out = tmp_path / "outside"
    (out / "dir").mkdir(parents=True)
    (out / "secret").write_bytes(SECRET)
    (out / "dir" / "secret.txt").write_bytes(SECRET)
    (out / "moved").mkdir()
    return out


def group_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(root, 0o770)  # a group root: every agent of the group writes here
    return root


def check_backup(
    backup: Path, expected: dict[str, bytes], skipped: set[str], reported: list[tuple[str, str]]
) -> None:
    """0700, nothing but folders and regular files, no secret, every file expected with its bytes,
    and every entry left out reported."""
    assert stat.S_IMODE(os.lstat(backup).st_mode) == 0o700
    found: dict[str, bytes] = {}
    for folder, dirs, names in os.walk(backup):
        for n in dirs + names:
            path = os.path.join(folder, n)
            mode = os.lstat(path).st_mode
            assert stat.S_ISDIR(mode) or stat.S_ISREG(mode), path
            if stat.S_ISREG(mode):
                data = Path(path).read_bytes()
                assert SECRET not in data, path
                found[os.path.relpath(path, backup)] = data
    for rel, data in expected.items():
        assert found.get(rel) == data, rel
    assert {p for p, _ in reported} == skipped


def test_migrate_backs_up_without_links_fifos_or_big_files_into_a_0700_folder(
    tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today's failure: the backup copied links as links (one pointing at a secret outside, readable
    through the backup) and took the root's 0770 mode."""
    monkeypatch.setattr(backup_mod, "MAX_FILE", 4096)
    root = group_root(tmp_path)
    agent = root / "Agent-1"
    (agent / "inbox").mkdir(parents=True)
    (agent / "inbox.json").write_bytes(orjson.dumps([legacy_entry(1)]))
    (agent / "notes.md").write_bytes(b"notes")
    (agent / "inbox" / "msg_2.json").write_bytes(orjson.dumps(legacy_entry(2)))
    os.symlink(outside / "secret", agent / "stolen.json")
    os.symlink(outside / "dir", agent / "archive")
    os.symlink(outside / "secret", agent / "inbox" / "msg_3.json")
    os.mkfifo(agent / "pipe.json")
    (agent / "huge.log").write_bytes(b"y" * 5000)
    expected = {
        "Agent-1/inbox.json": (agent / "inbox.json").read_bytes(),
        "Agent-1/notes.md": b"notes",
        "Agent-1/inbox/msg_2.json": (agent / "inbox" / "msg_2.json").read_bytes(),
    }
    result = migrate(root, fsync="never")
    assert result.backup is not None
    skipped = {
        "Agent-1/stolen.json",
        "Agent-1/archive",
        "Agent-1/inbox/msg_3.json",
        "Agent-1/pipe.json",
        "Agent-1/huge.log",
    }
    check_backup(result.backup, expected, skipped, result.backup_skipped)
    assert "not in the backup: Agent-1/stolen.json: a symlink" in result.describe()
    assert result.to_dict()["backup_skipped"]
    assert (outside / "secret").read_bytes() == SECRET  # and the secret itself untouched


#: One entry of the root or of Agent-1: what it is when the root is built, and whether a co-tenant
#: swaps it for a link to a secret right after the backup listed its folder.
entry_kinds = st.sampled_from(["file", "dir", "link-file", "link-dir", "fifo", "big"])
hostile_entries = st.dictionaries(
    st.tuples(st.sampled_from(["", "Agent-1/"]), st.sampled_from(["a.json", "b", "inbox.json", "c.txt"])),
    st.tuples(entry_kinds, st.booleans()),
    max_size=8,
)


class _Listing:
    """What `os.scandir` gave, already read, with a context: the entries keep what the listing saw."""

    def __init__(self, entries: list[os.DirEntry[Any]]) -> None:
        self.entries = entries

    def __enter__(self) -> _Listing:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def __iter__(self) -> Iterator[os.DirEntry[Any]]:
        return iter(self.entries)

    def close(self) -> None:
        pass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=hostile_entries)
def test_links_swapped_in_while_the_backup_copies_are_never_followed(
    monkeypatch: pytest.MonkeyPatch, entries: dict[tuple[str, str], tuple[str, bool]]
) -> None:
    """Today's failure: `shutil.copytree` listed a folder, then copied each file by its path: a file
    swapped for a link meanwhile was followed, and the secret it points at copied into the backup."""
    monkeypatch.setattr(backup_mod, "MAX_FILE", 4096)
    with tempfile.TemporaryDirectory(dir=SHM, prefix="hc-backup-") as tmp:
        base = Path(tmp)
        root = group_root(base)
        out = base / "outside"
        (out / "dir").mkdir(parents=True)
        (out / "secret").write_bytes(SECRET)
        (out / "dir" / "secret.txt").write_bytes(SECRET)
        (out / "moved").mkdir()
        (root / "Agent-1").mkdir()
        expected: dict[str, bytes] = {}
        skipped: set[str] = set()
        swaps: dict[str, dict[str, bool]] = {}  # folder -> name -> a folder (else a file)
        for (folder, name), (kind, swap) in sorted(entries.items()):
            path, rel = root / folder / name, folder + name
            if kind == "file":
                path.write_bytes(rel.encode())
            elif kind == "dir":
                path.mkdir()
                (path / "inner.json").write_bytes(rel.encode())
            elif kind == "link-file":
                os.symlink(out / "secret", path)
            elif kind == "link-dir":
                os.symlink(out / "dir", path)
            elif kind == "fifo":
                os.mkfifo(path)
            else:
                path.write_bytes(b"z" * 5000)
            if swap and kind in ("file", "dir"):
                swaps.setdefault(os.path.realpath(root / folder), {})[name] = kind == "dir"
                skipped.add(rel)
            elif kind == "file":
                expected[rel] = rel.encode()
            elif kind == "dir":
                expected[f"{rel}/inner.json"] = rel.encode()
            else:
                skipped.add(rel)
        real_scandir = os.scandir
        done: list[tuple[str, list[str]]] = []

        def scandir(where: Any = ".") -> Any:
            folder = os.readlink(f"/proc/self/fd/{where}") if isinstance(where, int) else os.fspath(where)
            with real_scandir(where) as listing:
                seen = list(listing)
            planned = swaps.pop(os.path.realpath(folder), {})
            done.append((folder, list(planned)))
            for name, is_dir in planned.items():
                # the co-tenant's move, between the listing and the copy of what it listed
                os.rename(os.path.join(folder, name), out / "moved" / f"{len(os.listdir(out / 'moved'))}")
                os.symlink(out / ("dir" if is_dir else "secret"), os.path.join(folder, name))
            return _Listing(seen)

        monkeypatch.setattr(os, "scandir", scandir)
        try:
            backup, reported = backup_mod.backup_root(root)
        finally:
            monkeypatch.setattr(os, "scandir", real_scandir)
        check_backup(backup, expected, skipped, [(s.path, s.why) for s in reported])
        swapped = {f"{os.path.relpath(f, root)}/{n}".removeprefix("./") for f, names in done for n in names}
        assert all("symlink" in s.why for s in reported if s.path in swapped)
        assert (out / "secret").read_bytes() == SECRET
