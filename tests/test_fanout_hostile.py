"""The bus folder (`<root>/.bus/`) is shared: whatever another process places there, generated here,
never makes a publisher raise or block, never stops a good peer from getting its events, never breaks
`bus_peers` (``hybridcomms stats``), and never makes the library touch anything outside the root."""

from __future__ import annotations

import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import eventually

from hybridcomms.bus import AgentBus, Event
from hybridcomms.bus.fanout import BUS_FOLDER, bus_peers, share_bus
from hybridcomms.bus.fanout import local as fanout
from hybridcomms.message import has_non_finite

# Names as a folder listing gives them: any bytes but '/' and NUL, decoded as os.listdir decodes
# (undecodable bytes become lone surrogates U+DC80-U+DCFF, which encode back to the same bytes).
# A str that no listing can return (a lone U+D800, say) is not a name another process can place.
NAME_BYTES = st.binary(min_size=1, max_size=60).filter(
    lambda b: b"/" not in b and b"\x00" not in b and b not in (b".", b"..")
)
NAMES = st.one_of(
    st.from_regex(r"[0-9]{1,7}-[0-9a-f]{8}", fullmatch=True),  # shaped like ours
    NAME_BYTES.map(os.fsdecode),
    st.just("x" * 200),  # past a socket address's 108 bytes
)
EXTREME_INTS = st.one_of(
    st.sampled_from([0, -1, 1, 2**31 - 1, 2**31, 2**63 - 1, -(2**63), os.getpid(), 4_194_304]),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
)
JSONISH = st.recursive(
    st.none() | st.booleans() | st.floats() | EXTREME_INTS | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
BODIES = st.one_of(
    st.fixed_dictionaries(
        {
            "pid": st.one_of(EXTREME_INTS, JSONISH),
            "host": st.one_of(st.just(fanout._HOST), st.text(max_size=300), JSONISH),
            "patterns": st.one_of(
                st.lists(st.one_of(st.sampled_from(["*", "good.*", "", "a..b"]), st.text(max_size=300))),
                JSONISH,
            ),
        },
        optional={"dropped_to": st.one_of(st.dictionaries(st.text(max_size=8), EXTREME_INTS), JSONISH)},
    ),
    JSONISH,
)
# Shaped like a registration of this host, with extreme values: these reach the code past the checks.
SHAPED = st.tuples(
    st.from_regex(r"[0-9]{1,7}-[0-9a-f]{8}", fullmatch=True),
    st.sampled_from(["json", "link-sock"]),
    st.fixed_dictionaries(
        {
            "pid": EXTREME_INTS,
            "host": st.just(fanout._HOST),
            "patterns": st.lists(
                st.sampled_from(["*", "good.*", "good.n", "", "x" * 300, "a..b"]), max_size=3
            ),
        },
        optional={"dropped_to": st.dictionaries(st.text(max_size=8), EXTREME_INTS, max_size=3)},
    ),
    st.just(b""),
)
ANYTHING = st.tuples(
    NAMES,
    st.sampled_from(["json", "raw", "fifo", "link-out", "link-sock", "dir", "sock-file", "giant"]),
    BODIES,
    st.binary(max_size=64),
)
ENTRIES = st.lists(st.one_of(SHAPED, ANYTHING), max_size=6)


def place(folder: Path, outside: Path, name: str, kind: str, body: Any, raw: bytes) -> None:
    json_path = folder / f"{name}.json"
    if os.path.lexists(json_path) or os.path.lexists(folder / f"{name}.sock"):
        return  # placed already (opening a FIFO placed before to write it would wait for ever)
    try:
        if kind == "json":
            json_path.write_bytes(orjson.dumps(body))
        elif kind == "raw":
            json_path.write_bytes(raw)
        elif kind == "fifo":
            os.mkfifo(json_path)
        elif kind == "link-out":
            json_path.symlink_to(outside / "secret.json")
            (folder / f"{name}.sock").symlink_to(outside / "secret.json")
        elif kind == "dir":
            json_path.mkdir()
        elif kind == "link-sock":  # a live-looking registration whose socket links to one outside
            json_path.write_bytes(orjson.dumps({"pid": os.getpid(), "host": fanout._HOST, "patterns": ["*"]}))
            (folder / f"{name}.sock").symlink_to(outside / "daemon.sock")
        elif kind == "sock-file":  # a registration whose "socket" is a plain file
            json_path.write_bytes(orjson.dumps({"pid": os.getpid(), "host": fanout._HOST, "patterns": ["*"]}))
            (folder / f"{name}.sock").write_bytes(b"not a socket")
        elif kind == "giant":
            with open(json_path, "wb") as f:
                f.truncate(10 * 1024 * 1024)
    except (FileExistsError, OSError):
        pass  # a name the filesystem refuses, or placed twice: nothing to place


@pytest.fixture(scope="module")
def shared() -> Iterator[dict[str, Any]]:
    """A publisher and a good peer sharing one root (two buses of this process, peers like any)."""
    base = Path(tempfile.mkdtemp(prefix="hc-hostile-bus-"))
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    (outside / "secret.json").write_bytes(b'{"pid": 1, "host": "h", "patterns": ["*"]}')
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # some other program's socket, outside
    daemon.bind(str(outside / "daemon.sock"))
    daemon.setblocking(False)
    refresh = fanout.REFRESH_EVERY
    fanout.REFRESH_EVERY = 0.0  # every publish looks at the folder again
    pub, peer = AgentBus(), AgentBus()
    got: list[Event] = []
    peer.subscribe("good.*", got.append)
    errors: list[logging.LogRecord] = []
    catch = logging.Handler(logging.ERROR)
    catch.emit = errors.append  # type: ignore[method-assign]
    logging.getLogger("hybridcomms").addHandler(catch)
    releases = [share_bus(pub, root=root), share_bus(peer, root=root)]
    # The publisher's connection to the good peer is made here (for the module), not by the first test.
    pub.publish("good.warm", -1)
    eventually(lambda: got, "the good peer's first event")
    got.clear()
    ours = set(os.listdir(root / BUS_FOLDER))
    try:
        yield {
            "root": root,
            "outside": outside,
            "pub": pub,
            "got": got,
            "ours": ours,
            "errors": errors,
            "daemon": daemon,
        }
    finally:
        logging.getLogger("hybridcomms").removeHandler(catch)
        for release in releases:
            release()
        fanout.REFRESH_EVERY = refresh
        daemon.close()
        shutil.rmtree(base)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(entries=ENTRIES, n=st.integers(0, 10_000))
def test_nothing_placed_in_the_bus_folder_stops_a_publisher_or_a_good_peer(
    shared: dict[str, Any], entries: list[tuple[str, str, Any, bytes]], n: int
) -> None:
    folder = shared["root"] / BUS_FOLDER
    outside: Path = shared["outside"]
    secret = (outside / "secret.json").read_bytes()
    for name, kind, body, raw in entries:
        place(folder, outside, name, kind, body, raw)
    try:
        got: list[Event] = shared["got"]
        got.clear()
        shared["errors"].clear()
        t0 = time.monotonic()
        for _ in range(3):
            shared["pub"].publish("good.n", n)  # never raises, never waits on anything placed
        assert time.monotonic() - t0 < 10  # a FIFO opened for reading would hang here for ever
        eventually(lambda: len(got), "the good peer's thread to deliver 3 events", 5, until=lambda n: n >= 3)
        assert [e.payload for e in got] == [n, n, n]
        assert shared["errors"] == []  # nothing was raised into the bus (an outlet's error is logged)
        peers = bus_peers(shared["root"])  # what `hybridcomms stats` reads: never raises
        assert {p["name"] for p in peers} >= {
            e[: -len(".json")] for e in shared["ours"] if e.endswith(".json")
        }
        assert all(p["dropped"] >= 0 for p in peers)
        assert (outside / "secret.json").read_bytes() == secret
        assert sorted(os.listdir(outside)) == ["daemon.sock", "secret.json"]
        with pytest.raises(BlockingIOError):  # nothing was ever sent out of the root
            shared["daemon"].recv(70000)
    finally:
        for entry in os.listdir(folder):
            if entry not in shared["ours"]:
                path = folder / entry
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()


WIRE_ITEMS = st.one_of(JSONISH, st.text(max_size=300), st.just(fanout._HOST + ":1"))


@settings(max_examples=300, deadline=None)
@given(
    data=st.one_of(
        st.binary(max_size=200),
        st.lists(WIRE_ITEMS, max_size=10).map(orjson.dumps),
        st.tuples(st.sampled_from([1, 2, 0, -1, "1"]), st.lists(WIRE_ITEMS, min_size=8, max_size=8)).map(
            lambda t: orjson.dumps([t[0], *t[1]])
        ),
    )
)
def test_any_datagram_decodes_to_an_event_or_to_nothing_never_an_error(data: bytes) -> None:
    event = fanout.decode_event(data)
    if event is not None:  # what passed the checks is a well-typed event
        assert type(event.topic) is str and 0 < len(event.topic) <= 256
        assert type(event.id) is str and type(event.origin) is str and type(event.durable) is bool
        assert type(event.timestamp) is float


@settings(max_examples=200, deadline=None)
@given(payload=JSONISH, topic=st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,3}", fullmatch=True))
def test_every_json_payload_crosses_unchanged_and_nan_or_infinity_is_refused(
    payload: Any, topic: str
) -> None:
    data = fanout.encode_event(Event(topic, payload, source="A"), "h:1")
    if has_non_finite(payload):  # JSON has no NaN or infinity: refused (counted), never changed to null
        assert data is None
        return
    assert data is not None
    back = fanout.decode_event(data)
    assert back is not None and (back.topic, back.payload, back.source) == (topic, payload, "A")
