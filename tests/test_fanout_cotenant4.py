"""The bus folder against a co-tenant, third round: files named like registrations placed by the
thousand (empty ones, FIFOs or plain files as their sockets, sockets bound and closed with a live pid)
must never hide a real peer from a publisher or from `hybridcomms stats`, and are removed in bounded
batches; past the cap of peers held, those known to work keep their place.

Readers used to keep the first `MAX_REGISTRATIONS` names of the listing, junk included and never
pruned: 20,000 empty ``1-<hex>.json`` made every publisher see no peer, for good. The constants are
made small here (the mechanism is the same), and where the old code cut the listing at a count, that
count is set to put the real peer just past it (the listing order is the filesystem's)."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from bus_helpers import bind, fanout_of, group_root, place, registration
from waiting import eventually

from hybridcomms.bus import AgentBus
from hybridcomms.bus.fanout import BUS_FOLDER, bus_peers, share_bus
from hybridcomms.bus.fanout import folder as _bus_folder
from hybridcomms.bus.fanout import local as fanout


def stale(folder: Path, name: str, pid: int = 1, host: str | None = None) -> None:
    """A registration of a live-looking process whose socket was bound and closed (refused)."""
    bind(folder, name).close()
    place(folder, name, registration(["*"], pid=pid, host=host))


def position(folder: Path, name: str, skip: set[str]) -> int:
    """How many names like registrations (``.json``, not in ``skip``) the listing gives before ``name``:
    the count that the old readers' cut (`MAX_REGISTRATIONS`, in listing order) must be set to for
    ``name`` to be just past it."""
    before = 0
    for entry in os.listdir(folder):
        stem, _, ext = entry.rpartition(".")
        if ext != "json" or not _bus_folder.NAME.fullmatch(stem) or stem in skip:
            continue
        if stem == name:
            return before
        before += 1
    raise AssertionError(f"{name} is not listed")


def look(fan: Any) -> None:
    """One look of ``fan`` at the folder, now (as its next publish would)."""
    with fan._look_lock:
        fan._seen_mtime = -1
        fan._look(time.monotonic())


@pytest.fixture
def held() -> Iterator[list[socket.socket]]:
    sockets: list[socket.socket] = []
    yield sockets
    for s in sockets:
        s.close()


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "REFRESH_EVERY", 0.0)
    monkeypatch.setattr(fanout, "LOOK_SPACING", 0)


def subscriber_past_the_cut(root: Path, junk: Callable[[], None], pub_name: str) -> tuple[Any, Any, int]:
    """A subscribing process (its bus and what it got, its release), then ``junk`` placed, such that
    the listing gives the process's registration after two junk names at least, and how many come
    before it (made again, under a new name, while fewer do). The folder is padded with names that
    are not registrations first: it is then listed in hash order, not in the order of its slots."""
    folder = root / BUS_FOLDER
    for i in range(300):
        (folder / f"pad{i}").touch()
    for _ in range(20):
        sub = AgentBus()
        got: list[int] = []
        sub.subscribe("fleet.*", lambda e, got=got: got.append(1))
        release = share_bus(sub, root=root)
        junk()
        before = position(folder, fanout_of(sub, root).name, {pub_name})
        if before >= 2:
            return (sub, got), release, before
        release()
    raise AssertionError("the listing put every new registration first")


def test_empty_files_named_like_registrations_never_hide_a_peer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick: None
) -> None:
    """Today's failure (f1_registration_cutoff): empty ``1-<hex>.json`` files ahead of a peer in the
    listing took every place of `MAX_REGISTRATIONS`: the publisher saw no peer, ``stats`` listed none,
    and the files stayed for good. Now only a ``.json`` with a socket beside it is a candidate: the
    peer is seen at the next look, and the junk is removed."""
    root = group_root(tmp_path)
    folder = root / BUS_FOLDER
    pub = AgentBus()
    release_pub = share_bus(pub, root=root)
    pub_name = fanout_of(pub, root).name

    def junk() -> None:
        for i in range(400):
            (folder / f"1-{i:x}.json").touch()

    (sub, got), release_sub, before = subscriber_past_the_cut(root, junk, pub_name)
    monkeypatch.setattr(fanout, "MAX_REGISTRATIONS", before)  # the old cut: the peer just past it
    monkeypatch.setattr(_bus_folder, "MAX_REGISTRATIONS", before)
    try:
        sub_name = fanout_of(sub, root).name
        assert sub_name in {p["name"] for p in bus_peers(root)}  # stats lists it
        eventually(lambda: [pub.publish("fleet.status")] and got, "the peer to get an event", 20)
        eventually(
            lambda: [pub.publish("fleet.status")] and not list(folder.glob("1-*.json")),
            "the junk to be removed",
            20,
        )
        assert {p["name"] for p in bus_peers(root)} == {pub_name, sub_name}
    finally:
        release_sub()
        release_pub()


def test_junk_is_removed_in_bounded_batches_and_what_may_be_anothers_is_left(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick: None, held: list[socket.socket]
) -> None:
    """Today's failure: junk was kept as unusable registrations, never removed. Now a look removes
    `PRUNES_PER_LOOK` orphans at most (a ``.json`` with nothing, a file or a link as its ``.sock``),
    and what it reads and can never be a registration (a FIFO as its socket, a socket nobody has
    bound, a body that is not one); a registration of another host is left, and a live socket too."""
    monkeypatch.setattr(fanout, "PRUNES_PER_LOOK", 40, raising=False)
    root = group_root(tmp_path)
    folder = root / BUS_FOLDER
    pub = AgentBus()
    release = share_bus(pub, root=root)
    fan = fanout_of(pub, root)
    try:
        for i in range(100):
            (folder / f"1-a{i:x}.json").touch()
        for i in range(10):
            (folder / f"1-b{i:x}.sock").write_bytes(b"a file")
            place(folder, f"1-b{i:x}", registration(["*"]))
            os.mkfifo(folder / f"1-c{i:x}.sock")
            place(folder, f"1-c{i:x}", registration(["*"]))
            stale(folder, f"1-d{i:x}")
        held.append(bind(folder, "1-e0"))
        place(folder, "1-e0", b"not json")
        stale(folder, "1-f0", host="elsewhere")  # another host's: its socket is not ours to judge
        held.append(bind(folder, "1-90"))  # a live socket, no registration yet (a process starting)
        live = bind(folder, f"{os.getpid()}-0d")
        held.append(live)
        place(folder, f"{os.getpid()}-0d", registration(["fleet.*"]))

        def count() -> int:
            return len(os.listdir(folder))

        start = count()
        look(fan)
        first = start - count()
        # the 40 first orphans, and the others read (64 at most): ten FIFOs, ten refused, one bad body
        assert 40 <= first <= 40 + 10 + 2 * 10 + 2 * 10 + 1
        eventually(lambda: look(fan) or count() == 8, "the junk to be removed", 20)
        names = set(os.listdir(folder))
        assert {"1-f0.json", "1-f0.sock", "1-90.sock", "1-e0.sock", f"{os.getpid()}-0d.json"} <= names
        assert not any(n.startswith(("1-a", "1-b", "1-c", "1-d")) for n in names)
        assert fan.peers_for("fleet.status") == [f"{os.getpid()}-0d"]
    finally:
        release()


def test_a_new_peer_is_seen_at_the_next_look_past_stale_sockets_placed_once_and_within_a_pass_in_a_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick: None, held: list[socket.socket]
) -> None:
    """Today's failure: registrations read oldest first only, so 160 stale sockets with a live pid
    (1) placed just before a peer kept it unseen for 152/8 looks (and were never removed). Now half
    of a look's reads go to the newest: placed once, they delay it by one look; placed in a loop
    (newer than the peer at every look), the other half still reaches it within one pass over those
    queued before it."""
    monkeypatch.setattr(fanout, "MAX_READS_PER_LOOK", 8)
    root = group_root(tmp_path)
    folder = root / BUS_FOLDER
    pub = AgentBus()
    release = share_bus(pub, root=root)
    fan = fanout_of(pub, root)
    try:
        for i in range(160):
            stale(folder, f"1-{i:x}")
        look(fan)  # 8 of them read (and removed: nobody has their sockets bound), 152 waiting
        assert len(fan._pending) == 152
        peer = f"{os.getpid()}-a0"
        held.append(bind(folder, peer))
        place(folder, peer, registration(["fleet.*"]))
        look(fan)
        assert peer in fan._index  # the newest, read first

        # In a loop: 8 more stale ones before each look (always newer than the peer).
        serial = iter(range(10_000))
        for i in range(160):
            stale(folder, f"2-{i:x}")
        look(fan)
        peer2 = f"{os.getpid()}-b0"
        held.append(bind(folder, peer2))
        place(folder, peer2, registration(["fleet.*"]))
        queued = len(fan._pending) + 1
        looks = 0
        while peer2 not in fan._index:
            for _ in range(8):
                stale(folder, f"3-{next(serial):x}")
            look(fan)
            looks += 1
            assert looks <= -(-queued // 4) + 1, "the peer waited past one pass over those before it"
    finally:
        release()


def test_past_the_cap_peers_that_work_keep_their_place_and_a_new_one_takes_an_idle_ones(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick: None, held: list[socket.socket]
) -> None:
    """Today's failure: past `MAX_REGISTRATIONS`, the names first in the listing were kept, whoever
    they were. Now the peers known to work (they read) are never set aside for others; one that
    does not (bound, never reading) is, for a new registration."""
    root = group_root(tmp_path)
    folder = root / BUS_FOLDER
    pub = AgentBus()
    release_pub = share_bus(pub, root=root)
    fan = fanout_of(pub, root)
    idle: list[str] = []

    def junk() -> None:
        if idle:
            return
        for i in range(6):
            name = f"{os.getpid()}-1d{i:x}"
            held.append(bind(folder, name))
            place(folder, name, registration(["fleet.*"]))
            idle.append(name)

    (sub, got), release_sub, before = subscriber_past_the_cut(root, junk, fan.name)
    monkeypatch.setattr(fanout, "MAX_REGISTRATIONS", before)
    try:
        sub_name = fanout_of(sub, root).name
        eventually(lambda: [pub.publish("fleet.status")] and got, "the peer to get an event", 20)
        # Its link works (it reads): newcomers take the places of idle ones, never its own.
        for i in range(6):
            name = f"{os.getpid()}-2e{i:x}"
            held.append(bind(folder, name))
            place(folder, name, registration(["fleet.*"]))
        newcomers = {f"{os.getpid()}-2e{i:x}" for i in range(6)}

        def replaced() -> bool:  # (the idle ones fall asleep once their buffer and backlog are full)
            for _ in range(50):
                pub.publish("fleet.status")
            look(fan)
            assert sub_name in fan._index  # never set aside
            assert fan._peer_count <= before
            return bool(newcomers & fan._index.names.keys())

        eventually(replaced, "a newcomer to take the place of an idle peer", 20)
        n = len(got)
        eventually(lambda: [pub.publish("fleet.status")] and len(got) > n, "more events", 20)
    finally:
        release_sub()
        release_pub()
