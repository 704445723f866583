"""What another agent can place in a shared mailbox never blocks the library, never makes it read,
copy or delete anything outside the root, and one bad mailbox never stops the others.

Each odd kind of entry (FIFO, symlink to a file outside, symlink to a folder outside, dangling
symlink, folder, oversized file) is placed at each path the library opens."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from hybridcomms import FileMailbox, Message
from hybridcomms.compat.dreamos.legacy import ingest
from hybridcomms.compat.dreamos.migrate import migrate

KINDS = ["fifo", "link-file", "link-dir", "dangling", "dir"]


def legacy(i: int) -> dict[str, Any]:
    return {"message_id": f"m{i:04d}", "type": "TASK", "sender_agent_id": "x", "body": i}


def place(path: Path, kind: str, outside: Path) -> None:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "link-file":
        path.symlink_to(outside / "secret.json")
    elif kind == "link-dir":
        path.symlink_to(outside)
    elif kind == "dangling":
        path.symlink_to(outside / "missing")
    elif kind == "dir":
        path.mkdir()
    else:  # pragma: no cover
        raise AssertionError(kind)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A folder outside the root with files a confused library might read, copy or delete."""
    out = tmp_path / "outside"
    out.mkdir()
    (out / "secret.json").write_bytes(orjson.dumps([legacy(900)]))
    (out / "other.json").write_bytes(orjson.dumps(legacy(901)))
    return out


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def within(seconds: float, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it has not returned in time."""
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    if t.is_alive():
        # unblock a FIFO reader so the thread can end, then fail
        pytest.fail(f"blocked for more than {seconds}s")
    if "error" in box:
        raise box["error"]
    return box.get("value")


LEGACY_SPOTS = ["inbox.json", "inbox.json.lock", "inbox/msg_1.json", "inbox/.inbox.lock"]


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spot", LEGACY_SPOTS)
def test_legacy_ingestion_never_blocks_or_reads_outside(
    root: Path, outside: Path, make_mailbox: Callable[..., FileMailbox], kind: str, spot: str
) -> None:
    mb = make_mailbox("Agent-1")
    (mb.path / "inbox").mkdir()
    if spot != "inbox/msg_1.json":
        (mb.path / "inbox" / "msg_2.json").write_bytes(orjson.dumps(legacy(2)))
    if spot != "inbox.json":
        (mb.path / "inbox.json").write_bytes(orjson.dumps([legacy(1)]))
    place(mb.path / spot, kind, outside)
    before = snapshot(outside)
    report = within(10, lambda: ingest(mb, lock_timeout=1))
    assert snapshot(outside) == before
    got = []
    while (d := mb.claim()) is not None:
        got.append(d.message.payload)
        d.ack()
    assert 900 not in got and 901 not in got  # nothing from outside came in
    assert report.refused, "the odd entry is listed"
    assert os.path.lexists(mb.path / spot)  # and left where it is


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("spot", ["archive", "processed", "archive/a.json", "inbox", "inbox.json", "x.json"])
def test_migrate_never_follows_links_or_blocks(tmp_path: Path, outside: Path, kind: str, spot: str) -> None:
    root = tmp_path / "agent_mailboxes"
    agent = root / "Agent-1"
    (agent / "archive").mkdir(parents=True)
    (agent / "archive" / "keep.json").write_bytes(orjson.dumps(legacy(5)))
    other = root / "Agent-2"
    other.mkdir()
    (other / "inbox.json").write_bytes(orjson.dumps([legacy(7)]))
    target = agent / spot
    if target.exists():
        target.rename(tmp_path / "moved-away")
    place(target, kind, outside)
    before = snapshot(outside)
    result = within(20, lambda: migrate(root, fsync="never"))
    assert snapshot(outside) == before
    assert os.path.lexists(target)
    # the healthy mailbox beside it was migrated
    with FileMailbox(root, "Agent-2", fsync="never") as mb:
        d = mb.claim()
        assert d is not None and d.message.payload == 7
    lefts = [p for a in result.agents for p, _ in a.left]
    if kind != "dir" or spot not in ("archive", "processed", "inbox"):
        assert any(spot.split("/")[-1] in p for p in lefts), lefts
    mode = (root / "Agent-2" / "new").stat().st_mode & 0o777
    assert mode == 0o700


def test_an_oversized_inbox_json_is_left_in_place_and_reported(
    make_mailbox: Callable[..., FileMailbox],
) -> None:
    mb = make_mailbox("Agent-1")
    data = orjson.dumps([legacy(i) for i in range(200)])
    (mb.path / "inbox.json").write_bytes(data)
    report = ingest(mb, max_inbox_json=len(data) - 1)
    assert report.refused and "over the limit" in report.refused[0][1]
    assert (mb.path / "inbox.json").read_bytes() == data
    assert mb.claim() is None
    assert len(ingest(mb, max_inbox_json=len(data)).ingested) == 200


@pytest.mark.parametrize("kind", ["fifo", "link-file", "dir"])
def test_the_exec_peek_never_blocks(tmp_path: Path, outside: Path, kind: str) -> None:
    from hybridcomms.watcher import describe_file

    path = tmp_path / "2M.x.json"
    place(path, kind, outside)
    assert within(5, lambda: describe_file(str(path))) == (None, None)


def test_the_exec_queue_is_bounded_and_close_stops_within_the_grace(tmp_path: Path) -> None:
    from hybridcomms.cli.watch import ExecRunner
    from hybridcomms.watcher import MailboxEvent

    started = tmp_path / "started"
    runner = ExecRunner(f"touch {started}; sleep 60", jobs=1, queue_size=3, grace=0.5)
    ev = MailboxEvent("delivered", "A", "n", None, 0, "new", str(tmp_path / "n"), time.time())
    for _ in range(4):  # one running, three waiting: the queue is full
        runner.submit(ev)
    blocked = threading.Thread(target=runner.submit, args=(ev,))
    blocked.start()
    blocked.join(0.3)
    assert blocked.is_alive()  # back-pressure: the fifth waits for room
    t0 = time.monotonic()
    runner.close()
    blocked.join(2)
    assert not blocked.is_alive()
    assert time.monotonic() - t0 < 3
    assert started.exists()
    assert runner.not_run == 4  # three queued + the one refused at close: they wait in new/


def test_recover_from_the_command_line_goes_on_past_a_bad_mailbox(root: Path, tmp_path: Path) -> None:
    for agent in ("Agent-1", "Agent-2", "Agent-3"):
        with FileMailbox(root, agent, fsync="never") as mb:
            mb.put(Message("t", agent))
            d = mb.claim()
            assert d is not None
            d._release()  # a dead consumer's claim
    bad = root / "Agent-2" / "processing"
    bad.rename(tmp_path / "gone")
    bad.symlink_to(tmp_path / "gone")
    out = subprocess.run(
        [sys.executable, "-m", "hybridcomms.cli", "--root", str(root), "recover"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 1
    assert "Agent-1: returned 1" in out.stdout and "Agent-3: returned 1" in out.stdout
    assert "Agent-2" in out.stderr


@pytest.mark.parametrize("kind", KINDS)
def test_an_odd_reason_file_never_breaks_a_listing(
    make_mailbox: Callable[..., FileMailbox], outside: Path, kind: str
) -> None:
    from hybridcomms import State

    mb = make_mailbox("Agent-1")
    (mb.path / "dead" / "x.json").write_bytes(b"{}")
    place(mb.path / "dead" / "x.json.reason.json", kind, outside)
    [info] = within(5, lambda: mb.list(State.DEAD))
    assert info.reason is None or "reason" in info.reason
