"""The leak check every test runs under (tests/leaks.py, the ``no_leaks`` fixture) sees threads and
descriptors left behind, and a closed mailbox leaves none."""

from __future__ import annotations

import threading
from pathlib import Path

from leaks import Snapshot, left_since
from waiting import eventually

from hybridcomms import FileMailbox, Message


def test_a_thread_left_running_is_named() -> None:
    before = Snapshot.now()
    release = threading.Event()
    t = threading.Thread(target=release.wait, name="left-behind", daemon=True)
    t.start()
    try:
        assert any("'left-behind'" in what for what in left_since(before))
    finally:
        release.set()
        t.join(10)
    assert left_since(before) == []


def test_a_mailbox_waiting_for_arrivals_holds_an_inotify_instance_until_it_is_closed(tmp_path: Path) -> None:
    before = Snapshot.now()
    mb = FileMailbox(tmp_path / "root", "A", fsync="never")
    assert mb.claim(timeout=0.01) is None  # waits on the process's inotify instance
    assert any(what.endswith("anon_inode:inotify") for what in left_since(before))
    mb.put(Message("t"))
    d = mb.claim(timeout=5)
    assert d is not None
    d.ack()
    mb.close()  # the last mailbox of the process: the instance and its wake-up pipe are closed
    eventually(lambda: left_since(before), "the mailbox's descriptors closed", until=lambda left: left == [])
