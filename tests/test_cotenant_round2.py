"""Found by a co-tenant attacking the finished surfaces (second round), each fixed and tested."""

from __future__ import annotations

import logging
import os
import stat
import sys
from pathlib import Path
from typing import Any

import pytest

from hybridcomms import AgentBus, Comms, FileMailbox, Message, State, _fs
from hybridcomms.bus.fanout import wire as fanout
from hybridcomms.message import reply_topic, valid_topic


def test_replace_atomically_sets_the_mode_through_its_descriptor(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A chmod by name in a shared folder follows a link a co-tenant renames over the temp file."""

    def no_chmod_by_path(*args: Any, **kw: Any) -> None:
        raise AssertionError(f"chmod by path: {args}")

    monkeypatch.setattr(os, "chmod", no_chmod_by_path)
    target = tmp_path / "journal.json"
    _fs.replace_atomically(target, b"{}", 0o600)
    assert target.read_bytes() == b"{}" and stat.S_IMODE(target.stat().st_mode) == 0o600


def test_one_subscribers_broken_mailbox_never_stops_the_others_copies(tmp_path: Path) -> None:
    root = tmp_path / "root"
    subscribers = [
        Comms(a, root=root, bus=AgentBus(), fsync="never", share_bus=False) for a in ("A", "M", "Z")
    ]
    try:
        for c in subscribers:
            c.subscribe("audit.event", lambda m: None)  # records a durable subscription
        tmp = root / "M" / "tmp"
        os.rename(tmp, root / "M" / "tmp.gone")
        os.mkfifo(tmp)  # a co-tenant's FIFO where M's tmp/ was
        with Comms("P", root=root, bus=AgentBus(), fsync="never", share_bus=False) as pub:
            sent = pub.publish("audit.event", {"n": 1}, route="durable")
        assert set(sent.durable_to) == {"A", "Z"}
        assert [agent for agent, _ in sent.failed] == ["M"]
        for agent in ("A", "Z"):
            with FileMailbox(root, agent, fsync="never") as mb:
                assert mb.stats().states[State.NEW].count == 1
    finally:
        for c in subscribers:
            c.close()


def test_a_reply_to_a_request_with_a_long_topic_can_always_be_made() -> None:
    for n in (1, 200, 250, 256):
        topic = "t" * n
        assert valid_topic(reply_topic(topic)) and reply_topic(topic).endswith(".reply")
    assert reply_topic("a.b") == "a.b.reply"
    assert reply_topic("x" * 256) != reply_topic("x" * 255 + "y")  # distinct requests, distinct replies


def test_work_acks_a_request_whose_reply_topic_would_be_too_long_and_runs_it_once(tmp_path: Path) -> None:
    import subprocess

    root = tmp_path / "root"
    runs = tmp_path / "runs"
    FileMailbox(root, "B", fsync="never").close()  # the requester's mailbox, for the reply
    with FileMailbox(root, "W", fsync="never") as mb:
        req = Message("jobs." + "x" * 248, {}, id="req1", sender="B", reply_to="B")
        mb.put(req)
    script = f"import sys; open({str(runs)!r}, 'a').write('run\\n'); print('{{}}')"
    got = subprocess.run(
        [
            *(sys.executable, "-m", "hybridcomms", "--root", str(root), "work", "W", "--max-messages", "1"),
            *("--", sys.executable, "-c", script),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert got.returncode == 0, got.stderr
    assert runs.read_text().count("run") == 1
    with FileMailbox(root, "W", fsync="never") as mb:
        info = mb.get("req1")
        assert info is not None and info.state is State.DONE
    with FileMailbox(root, "B", fsync="never") as mb:
        [reply] = mb.list(State.NEW)
        assert valid_topic(mb.read(reply).topic)


def test_a_traceback_in_a_log_line_is_inert(caplog: pytest.LogCaptureFixture) -> None:
    from hybridcomms import _log

    log = _log.get("hybridcomms.test")
    try:
        raise RuntimeError("\x1b[2J\x1b[Hall good\nINFO hybridcomms: forged line")
    except RuntimeError:
        with caplog.at_level("ERROR"):
            log.exception("handler failed")
    text = logging.Formatter().format(caplog.records[0])
    assert "\x1b" not in text and "forged line" in text
    assert not any(line.startswith("INFO hybridcomms: forged") for line in text.splitlines())


@pytest.mark.parametrize("ts", [1e300, -1.0, 2**63, float("nan")])
def test_a_bus_event_with_a_time_no_date_can_show_is_dropped(ts: float) -> None:
    data = fanout._dumps([1, "a.b", None, None, None, "i", ts, False, "h:1"]) if ts == ts else b""
    assert fanout.decode_event(data) is None


def test_a_link_for_subscriptions_json_is_not_followed(tmp_path: Path) -> None:
    from hybridcomms.backends import registry_for
    from hybridcomms.backends.file.subscriptions import SUBSCRIPTIONS_FILE

    root = tmp_path / "root"
    secret = tmp_path / "secret.json"
    secret.write_text('{"agent": "Evil", "patterns": ["audit.*"]}')
    with FileMailbox(root, "Evil", fsync="never") as mb:
        os.symlink(secret, mb.path / SUBSCRIPTIONS_FILE)
    registry = registry_for(root, None, 0o600)
    try:
        assert "Evil" not in registry.subscribers("audit.event")
    finally:
        registry.close()


@pytest.mark.parametrize("where", ["new", "agent"])
def test_the_watcher_never_reads_through_a_link_for_a_mailbox_folder(tmp_path: Path, where: str) -> None:
    from hybridcomms import MailboxWatcher
    from hybridcomms.backends.file import list_agents
    from hybridcomms.watcher import MailboxEvent

    root, outside = tmp_path / "root", tmp_path / "outside"
    (outside / "new").mkdir(parents=True)
    secret = Message("secret.topic.from.outside", "s")
    (outside / "new" / "1M.20260101T000000000000Z.x.a0.json").write_bytes(secret.encode())
    with FileMailbox(root, "Good", fsync="never") as good:
        good.put(Message("good.topic"))
    if where == "new":
        (root / "Evil").mkdir()
        os.symlink(outside / "new", root / "Evil" / "new")
    else:
        os.symlink(outside, root / "Evil")
    assert list_agents(root) == ["Good"]
    seen: list[MailboxEvent] = []
    watcher = MailboxWatcher(root, on_event=seen.append, recover_every=0, polling=True)
    watcher.start()
    watcher.stop()
    assert {e.agent for e in seen} == {"Good"}
    assert all(e.topic != "secret.topic.from.outside" for e in seen)


def test_the_legacy_probe_never_lists_through_a_link_for_inbox(tmp_path: Path) -> None:
    from hybridcomms.compat.dreamos.legacy import has_legacy_drops

    root, outside = tmp_path / "root", tmp_path / "outside"
    outside.mkdir()
    (outside / "private.json").write_text("{}")  # what a followed link would reveal
    with FileMailbox(root, "Evil", fsync="never") as mb:
        os.symlink(outside, mb.path / "inbox")
        os.symlink(outside / "private.json", mb.path / "inbox.json")
    assert has_legacy_drops(root, "Evil") is False
    (root / "Evil" / "inbox").unlink()
    (root / "Evil" / "inbox").mkdir()
    (root / "Evil" / "inbox" / "m.json").write_text("{}")
    assert has_legacy_drops(root, "Evil") is True
