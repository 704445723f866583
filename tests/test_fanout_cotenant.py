"""The bus folder against a co-tenant (issue #21): agents of one group, each able to write every other
agent's folders under a 0770 root, ``.bus/`` included. A co-tenant can swap names under the fanout,
make ``.bus/`` first, fill it with registrations and sockets that never read, rename them in a loop,
flood a process with valid datagrams and forge any event. None of it makes the fanout change a file
outside ``.bus/``, slow a publisher to a crawl, starve a peer that reads, exhaust descriptors or
memory, or hand a forged event to a handler as a mailbox delivery."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import eventually

from hybridcomms import Comms, Message, UnsafePathError
from hybridcomms.bus import AgentBus, Event
from hybridcomms.bus import core as bus
from hybridcomms.bus.fanout import BUS_FOLDER, FANOUT_STATS, _shared, bus_peers, encode_event, share_bus
from hybridcomms.bus.fanout import local as fanout
from hybridcomms.message import Priority
from hybridcomms.policy import Policy

#: What a publisher reads of a registration at most (`fanout.MAX_REGISTRATION`, docs/operations.md).
READ_CAP = 64 * 1024
ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a folder to another user")


def fanout_of(b: AgentBus, root: Path) -> Any:
    return _shared[(id(b), os.path.abspath(root))][0]


def group_root(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    os.chmod(root, 0o770)  # a group root: every agent of the group writes here, .bus/ included
    return root


def register(folder: Path, name: str, body: Any, sock: str | None = "socket") -> socket.socket | None:
    """Place a registration ``name`` in the bus folder as a co-tenant would: its body, and at its
    ``.sock`` a bound socket that never reads ("socket"), a regular file ("file"), or nothing (None)."""
    bound = None
    if sock == "socket":
        bound = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            bound.bind(f"/proc/self/fd/{fd}/{name}.sock")
        finally:
            os.close(fd)
    elif sock == "file":
        (folder / f"{name}.sock").write_bytes(b"not a socket")
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    tmp = folder / f".{name}.placing"
    tmp.write_bytes(data)
    tmp.rename(folder / f"{name}.json")
    return bound


def live(patterns: list[str], pad: int = 0) -> dict[str, Any]:
    """A registration body of a live process of this host (this one), padded to ``pad`` bytes."""
    body: dict[str, Any] = {"pid": os.getpid(), "host": fanout._HOST, "patterns": patterns}
    if pad:
        body["padding"] = "x" * max(pad - len(orjson.dumps(body)) - 14, 0)
    return body


@pytest.fixture
def sockets() -> Iterator[list[socket.socket]]:
    held: list[socket.socket] = []
    yield held
    for s in held:
        s.close()


# -- 1. nothing is chmodded, chowned or removed through a name a co-tenant can swap ---------------


class _CoTenant:
    """The fanout's ``os`` module, with a co-tenant acting before each of its calls: every socket that
    appears in the bus folder is moved aside and a link to ``victim`` is renamed over its name (the
    worst interleaving: the co-tenant wins every race)."""

    def __init__(self, folder: Path, aside: Path, victim: Path) -> None:
        self.folder, self.aside, self.victim = folder, aside, victim
        self.swapped = 0
        self._lock = threading.Lock()

    def act(self) -> None:
        with self._lock, contextlib.suppress(FileNotFoundError):
            for entry in os.listdir(self.folder):
                path = self.folder / entry
                with contextlib.suppress(FileNotFoundError):
                    if entry.endswith(".sock") and stat.S_ISSOCK(os.lstat(path).st_mode):
                        os.rename(path, self.aside / entry)
                        link = self.folder / f".{entry}.link"
                        os.symlink(self.victim, link)
                        os.rename(link, path)
                        self.swapped += 1

    def __getattr__(self, name: str) -> Any:
        attr = getattr(os, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def acting(*args: Any, **kwargs: Any) -> Any:
            self.act()
            return attr(*args, **kwargs)

        return acting


def test_a_link_renamed_over_the_fresh_socket_never_makes_the_fanout_change_the_file_it_names(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today's failure: bind, then chmod by name: the co-tenant's link was followed and another
    agent's 0600 secret became 0660 (group-readable)."""
    root = group_root(tmp_path)
    (root / BUS_FOLDER).mkdir()
    os.chmod(root / BUS_FOLDER, 0o770)
    aside = tmp_path / "aside"
    aside.mkdir()
    victim = tmp_path / "secret"
    victim.write_bytes(b"another agent's secret")
    os.chmod(victim, 0o600)
    tenant = _CoTenant(root / BUS_FOLDER, aside, victim)
    monkeypatch.setattr(fanout, "os", tenant)
    b = AgentBus()
    b.subscribe("x.*", lambda e: None)
    release = share_bus(b, root=root)
    try:
        b.publish("x.one")
        b.subscribe("x.two.*", lambda e: None)  # the registration is written again
    finally:
        release()
    assert tenant.swapped >= 1  # the co-tenant did get to swap the fanout's socket
    assert stat.S_IMODE(victim.stat().st_mode) == 0o600
    assert victim.read_bytes() == b"another agent's secret"
    assert not victim.is_symlink()


@ROOT_ONLY
def test_a_bus_folder_of_another_user_is_refused_unless_allowed_as_a_mailbox_folder_is(
    tmp_path: Path,
) -> None:
    """Today's failure: another user who makes ``.bus/`` first receives everyone's events."""
    root = group_root(tmp_path)
    (root / BUS_FOLDER).mkdir(mode=0o770)
    os.chown(root / BUS_FOLDER, 12345, 12345)
    b = AgentBus()
    with pytest.raises(UnsafePathError, match="another user"):
        share_bus(b, root=root)
    assert os.listdir(root / BUS_FOLDER) == []  # nothing registered there
    share_bus(b, root=root, allow_other_owner=True)()  # a group setup of several users: allowed
    os.chmod(root / BUS_FOLDER, 0o777)  # but not one that anyone may write into
    with pytest.raises(UnsafePathError, match="grants more"):
        share_bus(b, root=root, allow_other_owner=True)


@pytest.mark.parametrize("setgid", [False, True], ids=["group-root", "setgid-group-root"])
def test_the_bus_folder_has_the_roots_group_modes_whatever_the_umask_and_keeps_setgid(
    tmp_path: Path, setgid: bool
) -> None:
    """Today's failure: under umask 022 a group root's ``.bus/`` was 0750, so the group's other agents
    could not register in it."""
    root = group_root(tmp_path)
    if setgid:
        os.chmod(root, 0o2770)
    old = os.umask(0o022)
    try:
        b = AgentBus()
        b.subscribe("x.*", lambda e: None)
        release = share_bus(b, root=root)
    finally:
        os.umask(old)
    try:
        folder = root / BUS_FOLDER
        assert stat.S_IMODE(folder.stat().st_mode) == (0o2770 if setgid else 0o770)
        entries = list(folder.iterdir())
        assert sorted(e.suffix for e in entries) == [".json", ".sock"]
        for entry in entries:
            st_ = entry.lstat()
            assert stat.S_IMODE(st_.st_mode) == 0o660, entry
            assert st_.st_gid == root.stat().st_gid, entry
    finally:
        release()
    os.chmod(root / BUS_FOLDER, 0o755)  # an old one of ours, made under another umask: put right
    share_bus(AgentBus(), root=root)()
    assert stat.S_IMODE((root / BUS_FOLDER).stat().st_mode) & 0o777 == 0o770


# -- 2. a hostile .bus/ cannot slow, starve or exhaust a publisher ----------------------------------


class _Reads:
    """Counts the registrations of others the fanout reads (each read opens one file). Its reading
    of its own, every `fanout.SWEEP_EVERY` on its receiving thread (a co-tenant may have removed
    it), is not counted: that is not a look at the folder."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.n = 0
        self.own: set[str] = set()  # the registrations of the fanouts under test (their names + .json)
        real = fanout._fs.read_regular

        def counting(name: Any, limit: int, **kwargs: Any) -> bytes:
            if str(name).endswith(".json") and str(name) not in self.own:
                self.n += 1
            return real(name, limit, **kwargs)

        monkeypatch.setattr(fanout._fs, "read_regular", counting)

    def during(self, action: Callable[[], Any]) -> int:
        before = self.n
        action()
        return self.n - before


def hostile_folder(folder: Path, n: int, sockets: list[socket.socket]) -> tuple[str, str]:
    """``n`` large registrations (~60 KiB), half garbage, half valid-looking with a file where their
    socket should be; plus a registration of a live process whose socket never reads (``stuck``) and
    one whose socket is stale (bound once, closed: every connect is refused). Returns their names."""
    folder.mkdir(exist_ok=True)
    for i in range(n):
        if i % 2:
            register(folder, f"{i + 1}-{i:08x}", os.urandom(60_000), sock=None)
        else:
            register(folder, f"{i + 1}-{i:08x}", live(["*", "big.*"], pad=60_000), sock="file")
    stuck, stale = "999990-00000001", "999991-00000002"
    bound = register(folder, stuck, live(["*"]))
    assert bound is not None
    sockets.append(bound)
    gone = register(folder, stale, live(["*"]))
    assert gone is not None
    gone.close()
    return stuck, stale


def test_a_look_costs_what_changed_not_what_the_folder_holds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sockets: list[socket.socket]
) -> None:
    """Today's failure: 1,000 large registrations and one socket that never reads (its drops rewrite
    the publisher's registration every second) and every publish re-read all 1,000, on the caller's
    thread. Now each registration is read once, and again only when it changes."""
    monkeypatch.setattr(fanout, "REFRESH_EVERY", 0.0)  # the publisher looks at every publish
    monkeypatch.setattr(fanout, "LOOK_SPACING", 0, raising=False)
    monkeypatch.setattr(fanout, "REPORT_EVERY", 0.0)  # its drops change the folder at every publish
    reads = _Reads(monkeypatch)
    root = group_root(tmp_path)
    stuck, stale = hostile_folder(root / BUS_FOLDER, 1000, sockets)
    pub = AgentBus()
    release = share_bus(pub, root=root)
    reads.own.add(fanout_of(pub, root).name + ".json")
    try:
        first = reads.during(lambda: [pub.publish("big.n", i) for i in range(200)])
        assert first <= 1002 + 2  # each once (its own, read back by nobody here, is not among them)
        dropped = FANOUT_STATS["dropped_full"]
        assert reads.during(lambda: [pub.publish("big.n", i) for i in range(1200)]) == 0
        assert FANOUT_STATS["dropped_full"] > dropped  # the stuck socket dropped (and the folder changed)
        # one registration changes (its socket stays): that one is read again, and only it
        register(root / BUS_FOLDER, stuck, live(["*", "other.*"], pad=60_000), sock=None)
        assert reads.during(lambda: [pub.publish("big.n", i) for i in range(50)]) == 1
        peers = {p["name"] for p in bus_peers(root)}
        assert stale not in peers  # a socket nobody has bound (refused) never will be again: pruned
        assert stuck in peers
    finally:
        release()


def test_a_registration_without_a_socket_is_pruned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "REFRESH_EVERY", 0.0)
    root = group_root(tmp_path)
    folder = root / BUS_FOLDER
    folder.mkdir()
    for i in range(5):
        register(folder, f"{os.getpid()}-{i:08x}", live(["*"]), sock=None)  # a live pid, no socket
    pub = AgentBus()
    release = share_bus(pub, root=root)
    try:
        pub.publish("any.thing")
        assert sorted(p.suffix for p in folder.iterdir()) == [".json", ".sock"]  # only its own pair
    finally:
        release()


def test_peers_that_never_read_past_max_links_do_not_starve_a_peer_that_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sockets: list[socket.socket]
) -> None:
    """Today's failure: more registrations than MAX_LINKS with sockets that never read, and a real
    subscriber (sent to by path through one shared socket whose buffer they filled) got 0 of 3,000
    events. Now the peers that read get the connected sockets, and those that do not are evicted."""
    monkeypatch.setattr(fanout, "MAX_LINKS", 2)
    monkeypatch.setattr(fanout, "REFRESH_EVERY", 0.0)  # the publisher looks at every publish
    monkeypatch.setattr(fanout, "LOOK_SPACING", 0, raising=False)
    monkeypatch.setattr(fanout, "RETIRE_AFTER", 0.0)
    monkeypatch.setattr(fanout, "EVICT_AFTER", 0.0, raising=False)
    root = group_root(tmp_path)
    folder = root / BUS_FOLDER
    folder.mkdir()
    for i in range(40):
        bound = register(folder, f"{os.getpid()}-{i:08x}", live(["*"]))
        assert bound is not None
        sockets.append(bound)  # bound, alive, and never read
    pub, reader = AgentBus(), AgentBus()
    got: list[int] = []
    reader.subscribe("load.*", lambda e: got.append(e.payload["n"]))
    releases = [share_bus(pub, root=root), share_bus(reader, root=root)]
    pad = "x" * 2048
    try:
        for i in range(50):  # paced: long enough for the publisher to see who reads
            pub.publish("load.warm", {"n": -1, "pad": pad})
            eventually(lambda i=i: len(got) > i, f"warm-up event {i}")
        got.clear()
        for batch in range(30):
            for i in range(batch * 100, batch * 100 + 100):
                pub.publish("load.n", {"n": i, "pad": pad})
            eventually(lambda b=batch: len(got) >= b * 100 + 100, f"batch {batch}")
        assert got == list(range(3000))
    finally:
        for release in releases:
            release()


def test_registrations_renamed_in_a_loop_never_exhaust_the_publishers_descriptors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sockets: list[socket.socket]
) -> None:
    """Today's failure: every new name got a connected socket and the old ones waited a second to be
    closed: a rename loop made the victim hold thousands of descriptors (EMFILE broke its put and
    claim). Now sockets to peers, retired ones included, never pass MAX_LINKS."""
    monkeypatch.setattr(fanout, "MAX_LINKS", 8)
    monkeypatch.setattr(fanout, "REFRESH_EVERY", 0.0)
    monkeypatch.setattr(fanout, "RETIRE_AFTER", 60.0)  # nothing retired is closed during the test
    root = group_root(tmp_path)
    folder = root / BUS_FOLDER
    folder.mkdir()
    names = [f"{os.getpid()}-{i:08x}" for i in range(20)]
    for name in names:
        bound = register(folder, name, live(["*"]))
        assert bound is not None
        sockets.append(bound)
    pub = AgentBus()
    release = share_bus(pub, root=root)
    try:
        pub.publish("churn.n", 0)
        fds = len(os.listdir("/proc/self/fd"))
        for round_ in range(1, 100):
            for k, name in enumerate(names):  # every registration renamed: new names, same sockets
                new = f"{os.getpid()}-{round_ * 100 + k:08x}"
                os.rename(folder / f"{name}.sock", folder / f"{new}.sock")
                os.rename(folder / f"{name}.json", folder / f"{new}.json")
                names[k] = new
            pub.publish("churn.n", round_)
        assert len(os.listdir("/proc/self/fd")) <= fds + 8
    finally:
        release()


def test_a_process_that_subscribes_to_many_or_long_patterns_still_receives(tmp_path: Path) -> None:
    """Today's failure: a registration past the 64 KiB others read (many patterns), or with one pattern
    longer than a topic may be, was skipped by every publisher: the process silently got nothing."""
    root = group_root(tmp_path)
    pub, many, long_ = AgentBus(), AgentBus(), AgentBus()
    got: dict[str, list[str]] = {"many": [], "long": []}
    for i in range(300):
        many.subscribe(f"p{i}." + "s" * 240 + ".*", lambda e: None)
    many.subscribe("x.*", lambda e: got["many"].append(e.topic))
    long_.subscribe("y" * 300, lambda e: None)
    long_.subscribe("x.*", lambda e: got["long"].append(e.topic))
    releases = [share_bus(b, root=root) for b in (pub, many, long_)]
    try:
        eventually(lambda: (pub.publish("x.1"), got["many"] and got["long"])[1], "both receivers")
        for path in (root / BUS_FOLDER).glob("*.json"):
            assert path.stat().st_size <= READ_CAP
        assert set(got["many"]) == set(got["long"]) == {"x.1"}  # their buses keep what they subscribe
        pub.publish("p1.other")
        pub.publish("x.2")
        eventually(lambda: "x.2" in got["many"] and "x.2" in got["long"], "x.2")
        assert "p1.other" not in got["many"]
    finally:
        for release in releases:
            release()


def test_a_registration_stays_readable_whatever_it_records_as_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sockets: list[socket.socket]
) -> None:
    """Today's failure: ``dropped_to`` named every peer ever dropped for; past 64 KiB nobody could
    read the registration and the process silently stopped receiving."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4000 and hard >= 4000:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4000, hard))
    elif soft < 4000:
        pytest.skip("needs 4,000 descriptors")
    monkeypatch.setattr(fanout, "MAX_LINKS", 0)  # one datagram at a time: drops come fast
    monkeypatch.setattr(fanout, "REFRESH_EVERY", 0.0)
    monkeypatch.setattr(fanout, "LOOK_SPACING", 0, raising=False)  # (1,400 peers are seen sooner)
    monkeypatch.setattr(fanout, "SENDS_PER_OWNER", 10_000)  # every peer tried at every publish
    root = group_root(tmp_path)
    folder = root / BUS_FOLDER
    folder.mkdir()
    for i in range(1400):  # the longest names a registration may have: 43 characters
        bound = register(folder, f"9999999999-{i:032x}", live(["drop.*"]))
        assert bound is not None
        sockets.append(bound)
    pub, other = AgentBus(), AgentBus()
    back: list[str] = []
    pub.subscribe("back.*", lambda e: back.append(e.topic))
    releases = [share_bus(pub, root=root)]
    try:
        fan = fanout_of(pub, root)
        eventually(lambda: len(fan.peers_for("drop.n")) >= 1400, "the publisher to see them all", 60)
        dropped = FANOUT_STATS["dropped_full"]
        for i in range(40):  # every peer's buffer fills, then each event is dropped for each
            pub.publish("drop.n", i)
        assert FANOUT_STATS["dropped_full"] - dropped >= 1400 * 29
        monkeypatch.setattr(fanout, "REPORT_EVERY", 0.0)
        pub.publish("drop.n", 41)  # and reported in its registration
        (own,) = [p for p in folder.glob(f"{os.getpid()}-*.json")]
        assert own.stat().st_size <= READ_CAP
        body = orjson.loads(own.read_bytes())
        assert sum(body["dropped_to"].values()) >= 1400 * 29  # every drop still counted
        releases.append(share_bus(other, root=root))
        eventually(lambda: (other.publish("back.1"), back)[1], "the publisher still receiving")
    finally:
        for release in releases:
            release()


def test_a_flood_at_async_handlers_is_bounded_dropped_and_counted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Today's failure: a flood of valid datagrams at a process whose handler is async started a task
    for each (19,485 pending, +140 MiB in 3 s). Now at most MAX_RECEIVED_RUNS are unfinished, and one
    sending process starts half of them at most; past it an event starts no async handler, and that
    is counted."""
    monkeypatch.setattr(bus, "MAX_RECEIVED_RUNS", 50, raising=False)
    root = group_root(tmp_path)
    b = AgentBus()
    gate = asyncio.Event()
    started = [0]
    done = threading.Event()

    async def slow(event: Event) -> None:
        started[0] += 1
        await gate.wait()

    b.subscribe("flood.*", slow)
    b.subscribe("flood.end", lambda e: done.set())
    release = share_bus(b, root=root)
    busy = FANOUT_STATS.get("dropped_busy", 0)
    try:
        name = fanout_of(b, root).name
        fd = os.open(root / BUS_FOLDER, os.O_RDONLY | os.O_DIRECTORY)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:  # blocking: waits for the reader
            s.connect(f"/proc/self/fd/{fd}/{name}.sock")
            for i in range(2000):
                data = encode_event(Event("flood.x", {"i": i}), "elsewhere:1")
                assert data is not None
                s.send(data)
            end = encode_event(Event("flood.end"), "elsewhere:1")
            assert end is not None
            s.send(end)
        os.close(fd)
        assert done.wait(30)
        time.sleep(0)  # (the runs already started are on the bus's loop)
        eventually(lambda: started[0] >= 25, "the first runs")
        assert started[0] <= 26  # (flood.end starts one too, if there is room: there is none)
        assert FANOUT_STATS.get("dropped_busy", 0) - busy >= 2000 - 25
    finally:
        loop = b._loop
        if loop is not None:
            loop.call_soon_threadsafe(gate.set)
        release()
        b.close()


# -- forged events on durable topics ----------------------------------------------------------------


@pytest.fixture(scope="module")
def forged() -> Iterator[dict[str, Any]]:
    """A Comms agent sharing its bus, a bus observer in it, and a forger's socket to it."""
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="hc-forged-"))
    root = base / "root"
    agent = Comms("Agent-2", root=root, fsync="never", bus=AgentBus())
    handled: list[tuple[str, bool, object]] = []
    observed: list[Event] = []
    for pattern in ("dreamos.*", "orders.*"):
        agent.subscribe(pattern, lambda m: handled.append((m.topic, m.durable, m.payload)))
    agent.bus.subscribe("*", observed.append)
    name = fanout_of(agent.bus, root).name
    fd = os.open(root / BUS_FOLDER, os.O_RDONLY | os.O_DIRECTORY)
    forger = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    forger.connect(f"/proc/self/fd/{fd}/{name}.sock")
    try:
        yield {"agent": agent, "handled": handled, "observed": observed, "forger": forger}
    finally:
        forger.close()
        os.close(fd)
        agent.close()
        shutil.rmtree(base)


def forge(ctx: dict[str, Any], event: Event) -> None:
    ctx["handled"].clear()
    ctx["observed"].clear()
    data = encode_event(event, "evil:1")
    assert data is not None
    ctx["forger"].send(data)
    eventually(lambda: any(e.id == event.id for e in ctx["observed"]), "the observer's copy")


def test_a_forged_task_command_is_not_handed_to_the_handler_as_if_it_came_through_a_mailbox(
    forged: dict[str, Any],
) -> None:
    """Today's failure: any co-tenant could send the agent a task command (a topic the policy routes
    durable) on the bus, and its handler ran it."""
    refused = FANOUT_STATS.get("refused_durable", 0)
    order = Message("dreamos.task.command", {"do": "rm -rf /"}, sender="Agent-1", recipient="Agent-2")
    forge(forged, Event("dreamos.task.command", order, source="Agent-1"))
    forge(forged, Event("dreamos.task.command", {"do": "rm -rf /"}, source="Agent-1"))  # not a Message
    forge(forged, Event("orders.new", order))  # a Message of a durable topic under an ephemeral one
    assert forged["handled"] == []
    assert FANOUT_STATS.get("refused_durable", 0) - refused == 3
    # An ephemeral topic crosses: the bus carries no authentication (docs/guarantees.md).
    forge(forged, Event("dreamos.agent.status.updated", {"status": "busy"}, source="Agent-1"))
    assert forged["handled"] == [("dreamos.agent.status.updated", False, {"status": "busy"})]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    topic=st.sampled_from(
        ["dreamos.task.command", "dreamos.agent.status.updated", "orders.new", "dreamos.agent.A.task.command"]
    ),
    priority=st.sampled_from(list(Priority)),
    recipient=st.sampled_from([None, "Agent-2"]),
)
def test_a_forged_event_reaches_a_comms_handler_only_where_the_policy_routes_it_ephemeral(
    forged: dict[str, Any], topic: str, priority: Priority, recipient: str | None
) -> None:
    message = Message(topic, {"n": 1}, sender="Agent-1", recipient=recipient, priority=priority)
    forge(forged, Event(topic, message, source="Agent-1"))
    route = Policy().decide(topic, priority=priority, addressed=recipient is not None).route
    assert [h[0] for h in forged["handled"]] == ([] if route.durable else [topic])
    assert all(not durable for _, durable, _ in forged["handled"])


# -- the chaos run's fanout phase -------------------------------------------------------------------


@pytest.mark.slow
def test_the_chaos_fanout_phase_accounts_for_every_drop(tmp_path: Path) -> None:
    import json
    import subprocess

    tool = Path(__file__).resolve().parents[1] / "tools" / "chaos.py"
    out = subprocess.run(
        [sys.executable, str(tool), "--messages", "0", "--fanout", "--fanout-seconds", "1.2", "--json",
         "--root", str(tmp_path / "root"), "--seed", "5"],
        capture_output=True,
        text=True,
        timeout=240,
    )  # fmt: skip
    lines = out.stdout.strip().splitlines()
    assert lines, f"chaos.py printed no result (exit {out.returncode}); stderr:\n{out.stderr[-4000:]}"
    result = json.loads(lines[-1])["fanout"]
    assert result["kills"] >= 1 and result["stops"] >= 1, result
    assert result["pairs"] == 2 * 3 and result["dropped"] > 0, result  # drops happened, and were counted
    assert result["mismatches"] == [] and result["duplicates"] == 0 and result["leftovers"] == 0, result
    assert result["ok"] and out.returncode == 0, out.stderr
