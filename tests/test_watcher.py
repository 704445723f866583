"""The watcher: notifications with real inotify and with polling, rescans, recovery, and the service."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest
import workers
from leaks import open_fds
from waiting import eventually

from hybridcomms import AgentBus, Backoff, Event, FileMailbox, Message
from hybridcomms.watcher import MailboxEvent, MailboxWatcher

FAST = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)
spawn = mp.get_context("spawn")


class Recorder:
    def __init__(self) -> None:
        self.events: list[MailboxEvent] = []
        self.lock = threading.Lock()

    def __call__(self, ev: MailboxEvent) -> None:
        with self.lock:
            self.events.append(ev)

    def kinds(self, agent: str | None = None) -> list[str]:
        with self.lock:
            return [e.kind for e in self.events if agent is None or e.agent == agent]


@pytest.fixture(params=["inotify", "polling"])
def watched(request: pytest.FixtureRequest, root: Path) -> Iterator[tuple[MailboxWatcher, Recorder]]:
    """A started watcher on a root where Agent-1's folders exist: start() returns once every folder
    there is watched, so each move of Agent-1's messages is seen (an agent created later is watched
    moments after its folder appears: see test_an_agent_created_while_watching_is_watched)."""
    FileMailbox(root, "Agent-1", fsync="never").close()
    rec = Recorder()
    w = MailboxWatcher(
        root, on_event=rec, polling=request.param == "polling", poll_interval=0.1, rescan_every=30
    )
    w.start()
    assert w.notifying is (request.param == "inotify")
    yield w, rec
    w.stop()


def test_every_state_change_is_reported_once_with_inotify(root: Path) -> None:
    # (A polling observer sees only the net change per poll: see the polling test below.)
    rec = Recorder()
    with (  # the mailbox first: every folder of it is watched once start() returned
        FileMailbox(root, "Agent-1", fsync="never", backoff=FAST, max_attempts=2) as mb,
        MailboxWatcher(root, on_event=rec, rescan_every=30) as w,
    ):
        assert w.notifying
        m = Message("t")
        mb.put(m)
        eventually(rec.kinds, "the events [delivered]", until=lambda k: k == ["delivered"])
        d = mb.claim()
        assert d is not None
        d.nack()
        d = mb.claim()
        assert d is not None
        d.nack(error="again")  # second of two attempts: dead
        mb.requeue(m.id)
        d = mb.claim()
        assert d is not None
        d.ack()
        expected = ["delivered", "claimed", "nacked", "claimed", "dead", "requeued", "claimed", "acked"]
        eventually(rec.kinds, "every change reported once", until=lambda k: k == expected)
    assert {e.id for e in rec.events} == {m.id}
    assert [e.attempt for e in rec.events] == [0, 1, 1, 2, 2, 0, 1, 1]


@pytest.mark.parametrize("delivered_first", [True, False], ids=["listed-after", "listed-before"])
def test_a_rescan_listing_that_goes_stale_reports_nothing_twice(
    root: Path, monkeypatch: pytest.MonkeyPatch, delivered_first: bool
) -> None:
    """A rescan lists new/ while file events go on: when the message it listed is claimed and nacked
    (back in new/ under its next name) before the rescan looks at what it listed, the rescan reports
    neither name again (it did, under load, from a listing 0.1 s after a new agent appeared)."""
    rec = Recorder()
    with FileMailbox(root, "Agent-1", fsync="never", backoff=FAST, max_attempts=3) as mb:
        w = MailboxWatcher(root, on_event=rec, rescan_every=30)
        listed, go_on = threading.Event(), threading.Event()
        real_listing = w._listing

        def listing_then_wait(agent: str) -> set[str] | None:
            names = real_listing(agent)
            listed.set()
            assert go_on.wait(10)
            return names

        with w:
            assert w.notifying
            m = Message("t")
            mb.put(m)
            if delivered_first:
                eventually(rec.kinds, "the events [delivered]", until=lambda k: k == ["delivered"])
            monkeypatch.setattr(w, "_listing", listing_then_wait)
            rescan = threading.Thread(target=w.rescan)
            rescan.start()
            assert listed.wait(10)  # the rescan has listed [m, attempt 0] and waits
            d = mb.claim()
            assert d is not None
            d.nack()
            expected = ["delivered", "claimed", "nacked"]
            eventually(rec.kinds, "the claim and the nack", until=lambda k: k == expected)
            go_on.set()
            rescan.join(10)
            assert not rescan.is_alive()
            monkeypatch.undo()
            w.rescan()  # a fresh listing: [m, attempt 1] was reported (nacked)
            assert rec.kinds() == expected
    assert {e.id for e in rec.events} == {m.id}


def test_with_polling_every_change_that_lasts_a_poll_is_reported(root: Path) -> None:
    rec = Recorder()
    with (
        FileMailbox(root, "Agent-1", fsync="never", backoff=FAST) as mb,
        MailboxWatcher(root, on_event=rec, polling=True, poll_interval=0.1, rescan_every=30) as w,
    ):
        assert not w.notifying
        mb.put(Message("t"))
        eventually(rec.kinds, "the events [delivered]", until=lambda k: k == ["delivered"])
        d = mb.claim()
        assert d is not None
        eventually(
            rec.kinds, "the events [delivered, claimed]", until=lambda k: k == ["delivered", "claimed"]
        )
        d.ack()
        eventually(
            rec.kinds,
            "the events [delivered, claimed, acked]",
            until=lambda k: k == ["delivered", "claimed", "acked"],
        )


def test_an_agent_created_while_watching_is_watched(
    watched: tuple[MailboxWatcher, Recorder], root: Path
) -> None:
    _, rec = watched  # started: its watches on the root exist once start() returned
    with FileMailbox(root, "Late-Agent", fsync="never") as mb:
        mb.put(Message("t"))
        eventually(
            lambda: rec.kinds("Late-Agent"),
            "the events of Late-Agent [delivered]",
            until=lambda k: k == ["delivered"],
        )


def test_a_file_written_straight_into_new_is_reported(
    watched: tuple[MailboxWatcher, Recorder], root: Path
) -> None:
    _, rec = watched
    FileMailbox(root, "Agent-1", fsync="never").close()
    (root / "Agent-1" / "new" / "by-hand.json").write_bytes(b'{"type": "t"}')
    eventually(
        lambda: [(e.kind, e.name) for e in rec.events],
        "by-hand.json reported as delivered",
        until=lambda got: got == [("delivered", "by-hand.json")],
    )


def test_events_are_published_on_a_bus_when_embedded(root: Path) -> None:
    bus = AgentBus()
    got: list[Event] = []
    bus.subscribe("hybridcomms.mailbox.*", got.append)
    with MailboxWatcher(root, bus=bus), FileMailbox(root, "Agent-1", fsync="never") as mb:
        mb.put(Message("t"))
        eventually(lambda: got, "the event on the bus")
    assert [(e.topic, e.payload["agent"]) for e in got] == [("hybridcomms.mailbox.delivered", "Agent-1")]
    bus.close()


@pytest.mark.slow
def test_lost_notifications_are_made_up_by_the_rescan(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """4,000 messages in bursts to 100 agents while every file event is lost (an overflowing queue)."""
    rec = Recorder()
    w = MailboxWatcher(root, on_event=rec, rescan_every=0.3, recover_every=0)
    monkeypatch.setattr(w, "_on_created", lambda path: None)
    monkeypatch.setattr(w, "_on_moved", lambda src, dest: None)
    w.start()
    expected: set[tuple[str, str]] = set()
    try:
        for _ in range(4):  # bursts
            for a in range(100):
                with FileMailbox(root, f"Agent-{a}", fsync="never") as mb:
                    msgs = [Message("burst", i) for i in range(10)]
                    mb.put_many(msgs)
                    expected |= {(f"Agent-{a}", m.id) for m in msgs}
        eventually(lambda: len(rec.events), "every message reported", 60, until=lambda n: n >= len(expected))
    finally:
        w.stop()
    seen = {(e.agent, e.id) for e in rec.events}
    assert seen == expected and len(rec.events) == 4_000
    assert {e.source for e in rec.events} == {"rescan"}


@pytest.mark.slow
def test_a_sigkilled_consumers_message_is_recovered_by_the_watcher(root: Path) -> None:
    rec = Recorder()
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        m = Message("t")
        mb.put(m)
        p = spawn.Process(target=workers.claim_and_die, args=(str(root), "Agent-1", "sigkill"))
        p.start()
        p.join(60)
        assert os.listdir(mb.path / "processing")
        with MailboxWatcher(root, on_event=rec, recover_every=0.2):
            eventually(rec.kinds, "a recovered event", 20, until=lambda k: "recovered" in k)  # not "nacked"
        d = mb.claim(timeout=5)
        assert d is not None and d.message == m and d.attempt == 2
        d.ack()


def test_an_arrival_is_notified_at_once_while_claims_move_other_files_out_of_new(root: Path) -> None:
    """watchdog holds an unpaired 'moved out of new/' for up to 0.5 s, and every event behind it waits;
    claims make such moves all the time. The waiter claims use must not suffer from it."""
    from hybridcomms.backends.file.wakeup import ArrivalWaiter

    FileMailbox(root, "Agent-1", fsync="never").close()
    new, proc, tmp = (root / "Agent-1" / d for d in ("new", "processing", "tmp"))
    seen: dict[str, float] = {}
    waiter = ArrivalWaiter(str(root / "Agent-1"), lambda name: seen.setdefault(name, time.monotonic()))
    stop = threading.Event()

    def wait_like_a_claim() -> None:  # the waiter hears arrivals while a claim waits on it
        while not stop.is_set():
            waiter.wait(0.2)
            waiter.clear()

    def claims() -> None:
        i = 0
        while not stop.is_set():
            (tmp / f"n{i}").touch()
            os.rename(tmp / f"n{i}", new / f"n{i}")
            os.rename(new / f"n{i}", proc / f"n{i}")
            i += 1
            time.sleep(0.003)

    t = threading.Thread(target=claims)
    t.start()
    listener = threading.Thread(target=wait_like_a_claim)
    listener.start()
    latencies = []
    try:
        for i in range(20):
            time.sleep(0.03)
            (tmp / f"w{i}").touch()
            sent = time.monotonic()
            os.rename(tmp / f"w{i}", new / f"w{i}")
            while f"w{i}" not in seen and time.monotonic() - sent < 3:
                time.sleep(0.0005)
            latencies.append(seen.get(f"w{i}", sent + 3) - sent)
    finally:
        stop.set()
        t.join()
        listener.join()
        waiter.close()
    assert sorted(latencies)[len(latencies) // 2] < 0.25, latencies  # held ones would all be ~0.5 s


def test_arrivals_reach_a_waiting_claimer_or_its_racing_rival_exactly_once(root: Path) -> None:
    waiting = FileMailbox(root, "Agent-1", fsync="never", rescan_interval=30)
    racer = FileMailbox(root, "Agent-1", fsync="never")
    producer = FileMailbox(root, "Agent-1", fsync="never")
    stop = threading.Event()
    taken: list[tuple[str, str]] = []
    lock = threading.Lock()

    def consume(mb: FileMailbox, who: str, noise: bool) -> None:
        while not stop.is_set():
            if noise:
                mb.put(Message("noise", priority="LOW"))
            d = mb.claim(timeout=0.2)
            if d is not None:
                d.ack()
                if d.message.topic == "wanted":
                    with lock:
                        taken.append((who, d.message.id))
            time.sleep(0.002)

    threads = [
        threading.Thread(target=consume, args=(racer, "racer", True)),
        threading.Thread(target=consume, args=(waiting, "waiting", False)),
    ]
    for t in threads:
        t.start()
    try:
        sent = [producer.put(Message("wanted", priority="CRITICAL")) for _ in range(20)]
        eventually(lambda: len(taken), "every wanted message taken", 30, until=lambda n: n >= len(sent))
    finally:
        stop.set()
        for t in threads:
            t.join(10)
        for mb in (waiting, racer, producer):
            mb.close()
    assert sorted(i for _, i in taken) == sorted(sent)


def run_watch(root: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "hybridcomms", "--root", str(root), "watch", "--json", "--create", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_started(proc: subprocess.Popen[str]) -> None:
    assert proc.stderr is not None
    line = proc.stderr.readline()
    assert "watching" in line, line


def test_the_watch_service_stops_cleanly_on_sigterm_mid_burst(root: Path) -> None:
    FileMailbox(root, "Agent-1", fsync="never").close()
    proc = run_watch(root)
    try:
        wait_started(proc)
        assert proc.stdout is not None
        with FileMailbox(root, "Agent-1", fsync="never") as mb:
            mb.put(Message("burst", -1))
            first = orjson.loads(proc.stdout.readline())  # events are flowing
            for i in range(300):
                mb.put(Message("burst", i))
                if i == 150:
                    proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in err
    events = [first] + [orjson.loads(line) for line in out.splitlines()]
    assert all(e["kind"] == "delivered" and e["agent"] == "Agent-1" for e in events)
    assert len({e["id"] for e in events}) == len(events)  # each message once


def test_exec_runs_per_delivered_message_and_a_failing_command_does_not_stop_the_service(
    root: Path, tmp_path: Path
) -> None:
    log = tmp_path / "exec.log"
    cmd = f'echo "$HYBRIDCOMMS_AGENT $HYBRIDCOMMS_TOPIC $HYBRIDCOMMS_ID" >> {log}; '
    cmd += '[ "$HYBRIDCOMMS_TOPIC" != fail ]'
    proc = run_watch(root, "--exec", cmd, "--exec-jobs", "2")
    try:
        wait_started(proc)
        with FileMailbox(root, "Agent-1", fsync="never") as mb:
            ids = [mb.put(Message(topic)) for topic in ("fail", "ok.one", "ok.two")]
        eventually(
            lambda: log.read_text().splitlines(),
            "3 commands run",
            20,
            until=lambda ran: len(ran) >= 3,
            ignoring=(FileNotFoundError,),
        )
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    lines = sorted(log.read_text().splitlines())
    assert lines == sorted(f"Agent-1 {t} {i}" for t, i in zip(("fail", "ok.one", "ok.two"), ids, strict=True))
    assert "--exec exited 1 for Agent-1/" in err
    assert "--exec ran 3, 1 failed" in err


def test_messages_that_land_before_a_new_agents_watches_exist_are_reported_promptly(root: Path) -> None:
    """A new agent's first files can land in new/ before its watches exist; a quick rescan follows."""
    rec = Recorder()
    with MailboxWatcher(root, on_event=rec, rescan_every=300):
        with FileMailbox(root, "Fresh-Agent", fsync="never") as mb:
            ids = {mb.put(Message("first", i)) for i in range(20)}  # at once, racing the new watches
        eventually(
            lambda: {e.id for e in rec.events if e.agent == "Fresh-Agent"},
            "the 20 first messages reported",
            until=lambda got: got >= ids,
        )


def test_events_carry_topic_sender_and_priority(watched: tuple[MailboxWatcher, Recorder], root: Path) -> None:
    _, rec = watched
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        mb.put(Message("dreamos.task.build", {"n": 1}, sender="Agent-2", priority="HIGH"))
        eventually(rec.kinds, "the events [delivered]", until=lambda k: k == ["delivered"])
        d = mb.claim()
        assert d is not None
        eventually(
            rec.kinds, "the events [delivered, claimed]", until=lambda k: k == ["delivered", "claimed"]
        )
        d.ack()
        eventually(
            rec.kinds,
            "the events [delivered, claimed, acked]",
            until=lambda k: k == ["delivered", "claimed", "acked"],
        )
    for ev in rec.events:  # claimed and acked events too (the file was read once)
        assert (ev.topic, ev.sender, ev.priority) == ("dreamos.task.build", "Agent-2", "HIGH"), ev


def _inotify_instances() -> int:
    return sum(1 for what in open_fds().values() if what == "anon_inode:inotify")


def test_a_watcher_stopped_at_once_keeps_no_inotify_instance(root: Path) -> None:
    """`watch | head` with a backlog stops the watcher right after it started: watchdog 7.1's reader,
    stopped before it first read, left its inotify descriptor and wake-up pipe open (14 of 20 times
    here), and a process has 128 instances at most."""
    before = _inotify_instances()
    for _ in range(20):
        w = MailboxWatcher(root, recover_every=0)
        w.start()
        w.stop()
    assert _inotify_instances() == before
