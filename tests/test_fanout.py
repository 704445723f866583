"""Ephemeral events across processes (hybridcomms.bus.fanout): Unix datagram sockets under the root on one
host, Redis pub/sub across hosts. Subscribers are real processes (tests/fanout_agents.py)."""

from __future__ import annotations

import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from waiting import eventually

from hybridcomms import Comms, Message
from hybridcomms.bus import AgentBus, Event
from hybridcomms.bus.fanout import (
    BUS_FOLDER,
    FANOUT_STATS,
    bus_peers,
    decode_event,
    encode_event,
    redis_bus_prefix,
    share_bus,
)
from hybridcomms.bus.fanout import local as fanout

HERE = Path(__file__).parent


def stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGSTOP, and wait until the kernel says it is stopped: a signal takes effect when the process is
    next scheduled, and on a loaded machine it can read a few more events before that."""
    proc.send_signal(signal.SIGSTOP)
    eventually(
        lambda: Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T",
        "the kernel to say it is stopped",
        30,
    )


def spawn(where: str, logdir: Path, name: str, *patterns: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]))
    return subprocess.Popen(
        [sys.executable, str(HERE / "fanout_agents.py"), where, str(logdir), name, *patterns], env=env
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        p.wait()


TOPICS = ["agent.status.busy", "agent.status", "agent.statusx", "fleet.heartbeat", "other.thing"]
EXPECT = {
    "prefix": ["agent.status.busy", "agent.status"],  # agent.status.*
    "exact": ["fleet.heartbeat"],
    "all": TOPICS,
}


def run_three_subscribers(
    where: str,
    logdir: Path,
    procs: list[subprocess.Popen[bytes]],
    pub: AgentBus,
    subscribed: Callable[[], bool] = lambda: True,
    in_order: bool = True,
) -> None:
    """Three subscriber processes (prefix, exact, "*"); ``subscribed`` is the handshake that their
    subscriptions are in place; ``in_order``: each gets its events in publish order."""
    procs.append(spawn(where, logdir, "prefix", "agent.status.*"))
    procs.append(spawn(where, logdir, "exact", "fleet.heartbeat"))
    procs.append(spawn(where, logdir, "all", "*"))
    eventually(lambda: all((logdir / f"{n}.ready").exists() for n in EXPECT), "subscribers ready", 30)
    eventually(subscribed, "the subscriptions in place", 30)
    for topic in TOPICS:
        pub.publish(topic, {"n": topic})
    for name, expected in EXPECT.items():
        eventually(
            lambda n=name, e=expected: len(lines(logdir / f"{n}.log")) >= len(e), f"{name}'s events", 30
        )
    pub.publish("ctl.stop")
    for p in procs:
        assert p.wait(30) == 0
    for name, expected in EXPECT.items():
        got = [
            t for line in lines(logdir / f"{name}.log") if not (t := line.split(" ", 1)[0]).startswith("ctl.")
        ]
        assert (got if in_order else sorted(got)) == (expected if in_order else sorted(expected)), name


def test_three_subscriber_processes_get_what_their_patterns_match(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    pub = AgentBus()
    local: list[str] = []
    pub.subscribe("agent.*", lambda e: local.append(e.topic))  # in-process: synchronous, as always
    release = share_bus(pub, root=root)
    try:
        run_three_subscribers(str(root), tmp_path, procs, pub)
        assert local == ["agent.status.busy", "agent.status", "agent.statusx"]
    finally:
        release()
    assert not list((root / BUS_FOLDER).iterdir())  # every process took its registration with it


def test_the_bus_folder_and_sockets_have_the_mailbox_modes(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    bus = AgentBus()
    bus.subscribe("x.*", lambda e: None)
    release = share_bus(bus, root=root)
    try:
        folder = root / BUS_FOLDER
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        for entry in folder.iterdir():
            assert stat.S_IMODE(entry.lstat().st_mode) == 0o600, entry
        kinds = sorted(stat.S_ISSOCK(e.lstat().st_mode) for e in folder.iterdir())
        assert kinds == [False, True]  # one registration, one socket
        (peer,) = bus_peers(root)
        assert peer["pid"] == os.getpid() and peer["patterns"] == ["x.*"] and peer["alive"]
    finally:
        release()


@pytest.mark.parametrize("max_links", [256, 0], ids=["connected", "by-path"])
def test_a_killed_subscriber_is_pruned_and_its_replacement_gets_events(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch, max_links: int
) -> None:
    """Peers are sent to on connected sockets, and by path past MAX_LINKS: both prune the dead."""
    monkeypatch.setattr(fanout, "MAX_LINKS", max_links)
    root = tmp_path / "root"
    root.mkdir()
    pub = AgentBus()
    release = share_bus(pub, root=root)
    try:
        first = spawn(str(root), tmp_path, "first", "job.*")
        procs.append(first)
        eventually(lambda: (tmp_path / "first.ready").exists(), "the first subscriber ready", 30)
        pub.publish("job.one", 1)
        eventually(lambda: len(lines(tmp_path / "first.log")) == 1, "the first subscriber's event", 30)
        first.send_signal(signal.SIGKILL)
        first.wait()
        pruned = FANOUT_STATS["pruned"]
        time.sleep(0.06)  # past REFRESH_EVERY, so the publisher looks at the folder again (not a wait)
        pub.publish("job.two", 2)  # nobody there: pruned, and the publisher never sees an error
        assert FANOUT_STATS["pruned"] == pruned + 1
        assert [p["pid"] for p in bus_peers(root)] == [os.getpid()]
        second = spawn(str(root), tmp_path, "second", "job.*")
        procs.append(second)
        eventually(lambda: (tmp_path / "second.ready").exists(), "the second subscriber ready", 30)
        eventually(
            lambda: (pub.publish("job.three", 3), len(lines(tmp_path / "second.log")) >= 1)[1],
            "the second subscriber's first event",
            30,
        )
        pub.publish("ctl.stop")
        assert second.wait(30) == 0
        assert lines(tmp_path / "second.log")[0] == "job.three 3"
    finally:
        release()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_peer_that_closes_its_bus_costs_the_publisher_nothing_and_its_socket_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connected socket to a peer that went away (alive, but its bus released) is retired at the
    next look at the folder and closed RETIRE_AFTER later: no error, no descriptor kept."""
    monkeypatch.setattr(fanout, "RETIRE_AFTER", 0.0)
    monkeypatch.setattr(fanout, "REFRESH_EVERY", 0.0)  # the publisher looks at the folder every time
    root = tmp_path / "root"
    root.mkdir()
    pub = AgentBus()
    release_pub = share_bus(pub, root=root)
    fds = _open_fds()
    sub = AgentBus()
    got: list[str] = []
    sub.subscribe("x.*", lambda e: got.append(e.topic))
    release_sub = share_bus(sub, root=root)  # another bus of this process: a peer like any other
    try:
        eventually(lambda: (pub.publish("x.one"), got)[1] != [], "the first event", 30)
        assert _open_fds() > fds  # the peer's socket, its thread's folder, and the link to it
        release_sub()
        pub.publish("x.two")  # never raises: the peer is gone; its link is retired
        pub.publish("x.three")  # and closed at the next look, RETIRE_AFTER (here 0 s) later
        assert _open_fds() == fds
        assert set(got) == {"x.one"}
    finally:
        release_sub()
        release_pub()


def test_a_subscriber_that_stops_reading_never_blocks_the_publisher(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    pub = AgentBus()
    release = share_bus(pub, root=root)
    try:
        stuck = spawn(str(root), tmp_path, "stuck", "load.*")
        procs.append(stuck)
        eventually(lambda: (tmp_path / "stuck.ready").exists(), "the stuck subscriber ready", 30)
        stop(stuck)  # alive, registered, reading nothing
        dropped = FANOUT_STATS["dropped_full"]
        for i in range(20_000):  # far more than a socket buffer holds: a blocking send would hang here
            pub.publish("load.tick", i)
        assert FANOUT_STATS["dropped_full"] > dropped
        report = {p["pid"]: p["dropped"] for p in bus_peers(root)}
        assert report[os.getpid()] > 0  # what this publisher dropped is visible to `hybridcomms stats`
        stuck.send_signal(signal.SIGCONT)
        # at most once: a stop sent while its buffer is still full is dropped too; send until it goes
        eventually(lambda: (pub.publish("ctl.stop"), stuck.poll() is not None)[1], "the stop", 30)
        assert stuck.wait(30) == 0
        assert 0 < len(lines(tmp_path / "stuck.log")) < 20_000  # what fitted in its buffer, then drops
    finally:
        release()


def test_a_stopped_subscriber_never_costs_the_others_their_events(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Big events held for a stopped subscriber are charged to the socket they were sent from: each
    peer has its own (connected) socket, so the stopped one never uses up what the others need.
    (Past MAX_LINKS peers share one socket, and this does not hold: docs/operations.md.)"""
    root = tmp_path / "root"
    root.mkdir()
    pub = AgentBus()
    release = share_bus(pub, root=root)
    try:
        procs.append(spawn(str(root), tmp_path, "stuck", "big.*"))
        procs.append(spawn(str(root), tmp_path, "live", "big.*"))
        eventually(
            lambda: all((tmp_path / f"{n}.ready").exists() for n in ("stuck", "live")),
            "both subscribers ready",
            30,
        )
        stop(procs[0])
        big = "x" * 50_000  # near the largest datagram: the stopped peer's buffer holds a few
        got = tmp_path / "live.log"
        for i in range(40):
            pub.publish(f"big.{i}", big)
            eventually(lambda n=i + 1: len(lines(got)) >= n, f"event {i} at the live peer")
        procs[0].send_signal(signal.SIGCONT)
        eventually(
            lambda: (pub.publish("ctl.stop"), all(p.poll() is not None for p in procs))[1],
            "both subscribers stopped",
            30,
        )
    finally:
        release()


def numbers(path: Path, topic: str) -> list[int]:
    return [int(p) for t, p in (line.split(" ", 1) for line in lines(path)) if t == topic]


def test_a_burst_reaches_a_busy_subscriber_whole_and_in_order(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The kernel holds a few datagrams per socket (net.unix.max_dgram_qlen, often 10); a burst past
    that waits in the publisher's backlog for the peer, instead of being dropped."""
    root = tmp_path / "root"
    root.mkdir()
    pub = AgentBus()
    release = share_bus(pub, root=root)
    try:
        procs.append(spawn(str(root), tmp_path, "busy", "burst.*"))
        eventually(lambda: (tmp_path / "busy.ready").exists(), "the busy subscriber ready", 30)
        dropped, deferred = FANOUT_STATS["dropped_full"], FANOUT_STATS["deferred"]
        for i in range(500):
            pub.publish("burst.n", i)  # far faster than a Python subscriber reads
        eventually(lambda: len(lines(tmp_path / "busy.log")) >= 500, "the whole burst", 30)
        assert numbers(tmp_path / "busy.log", "burst.n") == list(range(500))
        assert FANOUT_STATS["dropped_full"] == dropped
        assert FANOUT_STATS["deferred"] > deferred  # it did go through the backlog
        pub.publish("ctl.stop")
        assert procs[0].wait(30) == 0
    finally:
        release()


def test_threads_publishing_at_once_each_reach_a_busy_subscriber_whole_and_in_order(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    pub = AgentBus()
    release = share_bus(pub, root=root)
    try:
        procs.append(spawn(str(root), tmp_path, "busy", "burst.*"))
        eventually(lambda: (tmp_path / "busy.ready").exists(), "the busy subscriber ready", 30)
        go = threading.Barrier(4)

        def publish(k: int) -> None:
            go.wait()
            for i in range(200):
                pub.publish(f"burst.t{k}", i)

        threads = [threading.Thread(target=publish, args=(k,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        eventually(lambda: len(lines(tmp_path / "busy.log")) >= 800, "every thread's events", 30)
        for k in range(4):
            assert numbers(tmp_path / "busy.log", f"burst.t{k}") == list(range(200)), k
        pub.publish("ctl.stop")
        assert procs[0].wait(30) == 0
    finally:
        release()


def test_a_stopped_subscribers_backlog_is_bounded_and_drops_only_the_newest(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fanout, "BACKLOG_EVENTS", 200)
    root = tmp_path / "root"
    root.mkdir()
    pub = AgentBus()
    release = share_bus(pub, root=root)
    try:
        procs.append(spawn(str(root), tmp_path, "stuck", "n.*"))
        eventually(lambda: (tmp_path / "stuck.ready").exists(), "the stuck subscriber ready", 30)
        stop(procs[0])
        dropped = FANOUT_STATS["dropped_full"]
        for i in range(2000):
            pub.publish("n.i", i)
        assert FANOUT_STATS["dropped_full"] - dropped >= 2000 - 200 - 600  # 600: more than a socket holds
        procs[0].send_signal(signal.SIGCONT)
        eventually(lambda: (pub.publish("ctl.stop"), procs[0].poll() is not None)[1], "the stop", 30)
        got = numbers(tmp_path / "stuck.log", "n.i")
        assert got == list(range(len(got)))  # in order, with no gap: only the newest were dropped
        assert 200 <= len(got) <= 200 + 600
    finally:
        release()


def test_bad_datagrams_are_dropped_and_counted_never_raised(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    bus = AgentBus()
    got: list[Event] = []
    bus.subscribe("*", got.append)
    release = share_bus(bus, root=root)
    try:
        (sock_path,) = [p for p in (root / BUS_FOLDER).iterdir() if p.suffix == ".sock"]
        bad = FANOUT_STATS["dropped_bad"]
        samples = [
            b"",
            b"not json",
            b"[1, 2]",
            b'[1, "t"]',
            b'[1, 5, null, null, null, "x", 1, false, "h:1"]',
            b'{"v": 1, "t": "a", "p": null, "s": null, "c": null, "i": "x", "ts": 1, "d": false, "o": "h:1"}',
            b"[" * 2000 + b"]" * 2000,
            b'[1, "a", {"__message__": {"nonsense": 1}}, null, null, "x", 1, false, "h:1"]',
            b'[2, "a", null, null, null, "x", 1, false, "h:1"]',
        ]
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            os.chdir(sock_path.parent)  # the path may be long: send by its short relative name
            try:
                for data in samples:
                    s.sendto(data, sock_path.name)
                good = encode_event(Event("ok.topic", {"fine": True}), "elsewhere:1")
                assert good is not None
                s.sendto(good, sock_path.name)
            finally:
                os.chdir(HERE)
        eventually(lambda: any(e.topic == "ok.topic" for e in got), "the event of the good topic", 30)
        assert FANOUT_STATS["dropped_bad"] - bad == len(samples)
        (event,) = got
        assert event.origin == "elsewhere:1" and event.payload == {"fine": True}
    finally:
        release()


def test_the_wire_form_round_trips_messages_and_refuses_what_is_not_json() -> None:
    m = Message("agent.status", {"busy": True}, sender="A")
    data = encode_event(Event("agent.status", m, source="A"), "h:1")
    assert data is not None
    back = decode_event(data)
    assert back is not None and back.payload == m and back.origin == "h:1"
    assert encode_event(Event("x", object()), "h:1") is None
    assert encode_event(Event("x", "y" * 100_000), "h:1") is None  # bigger than a datagram may be


def test_comms_in_two_processes_share_ephemeral_events(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """Comms shares its bus by default: a status published by one agent reaches another process."""
    root = tmp_path / "root"
    procs.append(spawn(str(root), tmp_path, "monitor", "dreamos.agent.status.*"))
    eventually(lambda: (tmp_path / "monitor.ready").exists(), "the monitor ready", 30)
    with Comms("Agent-1", root=root, fsync="never", bus=AgentBus()) as agent:
        sent = agent.publish("dreamos.agent.status.updated", {"status": "busy"})
        assert sent.route.ephemeral
        eventually(lambda: len(lines(tmp_path / "monitor.log")) >= 1, "the monitor's first event", 30)
        agent.bus.publish("ctl.stop")
    assert procs[-1].wait(30) == 0
    (line,) = lines(tmp_path / "monitor.log")
    assert line.startswith("dreamos.agent.status.updated ")


def test_the_observer_copy_of_a_both_route_crosses_to_other_buses_and_is_handled_once(tmp_path: Path) -> None:
    """Route "both": the durable copy goes to the mailbox, the observer copy (``durable=True``) to
    every sharing process; a Comms there handles the message once, from its mailbox, never from the bus.
    The two Comms have buses of their own, so the event crosses their sockets as between processes."""
    root = tmp_path / "root"
    observed: list[Event] = []
    handled: list[tuple[object, bool]] = []
    a = Comms("Agent-1", root=root, fsync="never", bus=AgentBus())
    b = Comms("Agent-2", root=root, fsync="never", bus=AgentBus())  # not started: consumed by hand
    try:
        b.bus.subscribe("orders.*", observed.append)
        b.subscribe("orders.*", lambda m: handled.append((m.payload, m.durable)))
        sent = a.send("Agent-2", "orders.new", {"n": 1}, route="both")
        assert sent.durable_to == ("Agent-2",)
        eventually(lambda: observed != [], "the observer copy in the other bus", 30)
        (event,) = observed
        assert event.durable and event.origin is not None and event.payload.payload == {"n": 1}
        assert handled == []  # the bus copy is for observers only
        assert b.process_one()
        assert handled == [({"n": 1}, True)]
        assert not b.process_one(timeout=0)
    finally:
        b.close()
        a.close()


@pytest.mark.redis
def test_three_subscriber_processes_across_hosts_through_redis(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], redis_url: str
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    channel = redis_bus_prefix(redis_url) + "fleet.heartbeat"
    pub = AgentBus()
    release = share_bus(pub, url=redis_url)
    try:
        # handshake with the server: every subscription is in place before the first publish
        def subscribed() -> bool:
            return client.pubsub_numpat() >= 2 and client.pubsub_numsub(channel)[0][1] >= 1

        run_three_subscribers(redis_url, tmp_path, procs, pub, subscribed, in_order=False)
    finally:
        release()
        client.close()


@pytest.mark.parametrize(
    ("command", "pattern", "ready", "topic"),
    [("watch", "fleet.*", "watching", "fleet.status"), ("tail", "*", "following", "agent.heartbeat")],
)
def test_watch_and_tail_show_the_fleets_status_traffic(
    tmp_path: Path, command: str, pattern: str, ready: str, topic: str
) -> None:
    """`hybridcomms watch|tail --bus PATTERN --json`: a person sees other processes' ephemeral events."""
    root = tmp_path / "root"
    root.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    cli = subprocess.Popen(
        [sys.executable, "-m", "hybridcomms", "--root", str(root), command, "--json", "--bus", pattern],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    pub = AgentBus()
    release = share_bus(pub, root=root)
    try:
        assert cli.stderr is not None and ready in cli.stderr.readline()  # registered by now
        pub.publish(topic, {"agent": "A", "status": "busy"}, source="A")
        pub.publish("other.topic", {"not": "shown"})
        assert cli.stdout is not None
        record = json.loads(cli.stdout.readline())
        assert record["kind"] == "bus" and record["topic"] == topic
        assert record["payload"] == {"agent": "A", "status": "busy"} and record["sender"] == "A"
    finally:
        release()
        cli.send_signal(signal.SIGTERM)
        assert cli.wait(30) == 0


def test_a_dreamos_era_bus_in_another_process_sees_the_events(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]]
) -> None:
    """The Dream.OS AgentBus (every era sits on the canonical one) shares the mailbox root's events."""
    root = tmp_path / "root"
    root.mkdir()
    log = tmp_path / "dreamos.log"
    ready = tmp_path / "dreamos.ready"
    code = f"""
import threading
from pathlib import Path
from hybridcomms.compat.dreamos import agent_bus
bus = agent_bus.AgentBus(root={str(root)!r})
done = threading.Event()
def on_status(event):
    with open({str(log)!r}, "a") as f:
        f.write(f"{{event.event_type}} {{event.data}}\\n")
    done.set()
bus.subscribe("dreamos.agent.status.*", on_status)
Path({str(ready)!r}).write_text("ready")
done.wait(60)
bus.stop()
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    procs.append(subprocess.Popen([sys.executable, "-c", code], env=env))  # type: ignore[arg-type]
    pub = AgentBus()
    release = share_bus(pub, root=root)
    try:
        eventually(
            lambda: ready.exists() and any(p["pid"] != os.getpid() for p in bus_peers(root)),
            "the other process registered on the bus",
            30,
        )
        pub.publish("dreamos.agent.status.updated", {"agent_id": "Agent-1", "status": "busy"})
        assert procs[-1].wait(60) == 0
    finally:
        release()
    (line,) = lines(log)
    assert "dreamos.agent.status.updated" in line.lower() or "status" in line
    assert "'status': 'busy'" in line


def test_stats_and_metrics_show_the_shared_bus(tmp_path: Path, procs: list[subprocess.Popen[bytes]]) -> None:
    root = tmp_path / "root"
    root.mkdir()
    procs.append(spawn(str(root), tmp_path, "listener", "x.*"))
    eventually(lambda: (tmp_path / "listener.ready").exists(), "the listener ready", 30)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    out = subprocess.run(
        [sys.executable, "-m", "hybridcomms", "--root", str(root), "stats", "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    import json

    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["bus"] == {"processes": 1, "dead": 0, "dropped": 0}
    from prometheus_client import generate_latest

    from hybridcomms.metrics import registry_for

    text = generate_latest(registry_for(root, bus=True)).decode()
    assert 'hybridcomms_bus_processes{alive="true"} 1.0' in text
    assert 'hybridcomms_bus_fanout_events_total{result="dropped_full"}' in text
    pub = AgentBus()
    release = share_bus(pub, root=root)
    pub.publish("ctl.stop")
    assert procs[-1].wait(30) == 0
    release()


@pytest.mark.redis
def test_through_redis_a_killed_subscriber_is_replaced_and_a_stopped_one_blocks_nobody(
    tmp_path: Path, procs: list[subprocess.Popen[bytes]], redis_url: str
) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    channel = redis_bus_prefix(redis_url) + "job"

    def subscribers() -> int:
        return int(client.pubsub_numsub(channel)[0][1])

    pub = AgentBus()
    release = share_bus(pub, url=redis_url)
    try:
        first = spawn(redis_url, tmp_path, "first", "job.*")
        stuck = spawn(redis_url, tmp_path, "stuck", "job.*")
        procs += [first, stuck]
        eventually(lambda: subscribers() >= 2, "two subscriptions on the server", 30)
        first.send_signal(signal.SIGKILL)
        first.wait()
        eventually(lambda: subscribers() == 1, "the killed one gone from the server", 30)
        stop(stuck)
        for i in range(20_000):  # the publisher hands them to a sender thread: it never waits on a reader
            pub.publish("job.tick", i)
        second = spawn(redis_url, tmp_path, "second", "job.*")
        procs.append(second)
        eventually(lambda: subscribers() >= 2, "the replacement subscribed", 30)
        eventually(
            lambda: (pub.publish("job.after", 1), "job.after 1" in lines(tmp_path / "second.log"))[1],
            "the second subscriber to get job.after",
            30,
        )
        stuck.send_signal(signal.SIGCONT)
        eventually(
            lambda: (pub.publish("ctl.stop"), stuck.poll() is not None and second.poll() is not None)[1],
            "both subscribers stopped",
            30,
        )
        assert second.wait(30) == 0 and stuck.wait(30) == 0
    finally:
        release()
        client.close()


@pytest.mark.redis
def test_through_redis_a_subscriber_whose_connection_is_killed_subscribes_again(redis_url: str) -> None:
    """Redis drops a pub/sub client whose output buffer overflows (or an operator kills it): the
    receiving side reconnects and subscribes again, and events flow once more."""
    import redis

    client = redis.Redis.from_url(redis_url)
    pub, sub = AgentBus(), AgentBus()
    got: list[int] = []
    sub.subscribe("conn.*", lambda e: got.append(e.payload))
    release_pub = share_bus(pub, url=redis_url)
    release_sub = share_bus(sub, url=redis_url)  # another bus of this process: a subscriber like any other
    try:
        eventually(lambda: (pub.publish("conn.n", 1), 1 in got)[1], "the first event", 30)
        assert client.client_kill_filter(_type="pubsub") >= 1
        eventually(lambda: (pub.publish("conn.n", 2), 2 in got)[1], "an event after the kill", 30)
    finally:
        release_sub()
        release_pub()
        client.close()
