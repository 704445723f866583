"""The bus folder against a co-tenant, fifth round: stale registrations (sockets bound then closed,
well-formed bodies naming a live pid) placed by the thousand and made anew between every two looks
must never keep a new subscriber unread.

A look reads a bounded number of waiting registrations (`fanout.MAX_READS_PER_LOOK`). They used to be
shared per name (half the oldest waiting, half the newest): names made faster than the reads drain
them kept a new process waiting past its place in a queue that never shrank (0 events in 100 s).
Now they are shared per pid named (`_fanout_reads.ReadQueue`): a new process is read within
ceil(P / reads) + 1 looks, P the live pids named. The constants are made small here (the mechanism is
the same)."""

from __future__ import annotations

import itertools
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from bus_helpers import fanout_of, group_root
from waiting import eventually

from hybridcomms.bus import AgentBus
from hybridcomms.bus.fanout import BUS_FOLDER, share_bus
from hybridcomms.bus.fanout import local as fanout
from hybridcomms.bus.fanout.reads import ReadQueue, pid_of


def stale(folder: Path, name: str, pid: int) -> None:
    """A registration of ``pid`` (this host) whose socket was bound and closed (it refuses)."""
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        s.bind(f"/proc/self/fd/{fd}/{name}.sock")
    finally:
        os.close(fd)
        s.close()
    tmp = folder / f".{name}.placing"
    tmp.write_bytes(orjson.dumps({"pid": pid, "host": fanout._HOST, "patterns": ["*"]}))
    tmp.rename(folder / f"{name}.json")


def look(fan: Any) -> None:
    """One look of ``fan`` at the folder, now (as its next publish would)."""
    with fan._look_lock:
        fan._seen_mtime = -1
        fan._look(time.monotonic())


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fanout, "REFRESH_EVERY", 0.0)
    monkeypatch.setattr(fanout, "LOOK_SPACING", 0)


@pytest.fixture
def releases() -> Iterator[list[Callable[[], None]]]:
    out: list[Callable[[], None]] = []
    yield out
    for release in reversed(out):
        release()


def test_a_new_subscriber_is_read_within_a_pass_over_the_pids_while_stale_names_are_made_in_a_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, quick: None, releases: list[Callable[[], None]]
) -> None:
    """Today's failure (v1_stale_sockets, loop): 3,000 stale names of three pids (two live, one dead)
    waiting, 40 more made before every look: reads shared per name reached the new subscriber after
    ~750 looks (the newest half always took newer names). Shared per pid, it is read within
    ceil(3 / 8) + 1 looks, and gets the events published after."""
    monkeypatch.setattr(fanout, "MAX_READS_PER_LOOK", 8)
    root = group_root(tmp_path)
    folder = root / BUS_FOLDER
    pids = (1, os.getppid(), dead_pid())  # live, live (not ours), dead
    serial = itertools.count()

    def flood(n: int) -> None:
        for _ in range(n):
            i = next(serial)
            stale(folder, f"{pids[i % 3]}-{i:x}", pids[i % 3])

    pub = AgentBus()
    releases.append(share_bus(pub, root=root))
    fan = fanout_of(pub, root)
    flood(3000)
    look(fan)
    assert len(fan._pending) == 3000 - 8

    flood(20)  # (made before the subscriber: in any listing order, newer names are seen with it)
    sub = AgentBus()
    got: list[int] = []
    sub.subscribe("fleet.*", lambda e: got.append(e.payload["i"]))
    releases.append(share_bus(sub, root=root))
    name = fanout_of(sub, root).name
    live_pids = 3  # 1, the parent, and this process (the subscriber's)
    bound = -(-live_pids // 8) + 1
    looks = 0
    while name not in fan._index:
        flood(40)  # newer than the subscriber at every look
        look(fan)
        looks += 1
        assert looks <= bound, f"the subscriber was not read in {looks} looks ({len(fan._pending)} waiting)"
    assert len(fan._pending) > 3000 - 8 * looks  # the flood still outpaces the reads
    pub.publish("fleet.status", {"i": 1})
    eventually(lambda: got == [1], "the subscriber to get the event", 20)


def test_reads_are_shared_per_live_pid_in_turns_working_pids_after_new_ones_dead_ones_with_what_is_left() -> (
    None
):
    """Five live pids with 100 names each, one dead pid with 100, two reads per look: every live pid
    gets a turn within ceil(5 / 2) looks, one read each at most per look, the dead pid none while
    turns use the budget; a pid with a working registration waits behind the pids never read; a name that
    says no pid (past `PID_MAX`) takes no turn."""
    queue = ReadQueue()
    live = {11, 12, 13, 14, 15}
    for i in range(100):
        for pid in (*sorted(live), 99):
            queue.add(f"{pid}-{i:x}")
    queue.add("99999999999-0")
    assert pid_of("99999999999-0") == 0
    turns: list[set[int]] = []
    for _ in range(3):
        chosen = queue.choose(2, lambda: {11}, live.__contains__)
        pids = [pid_of(n) for n in chosen]
        assert len(pids) == len(set(pids)) == 2
        turns.append(set(pids))
    assert set().union(*turns) == live
    assert 11 in turns[2]  # the working one after the new ones
    chosen = queue.choose(10, lambda: (), live.__contains__)
    assert len(chosen) == 10
    assert sorted(pid_of(n) for n in chosen[:5]) == sorted(live)  # one turn each, then the rest
