"""What is the file backend's own in FileMailbox: folders, file names and contents, modes, fsync
policies, inotify wake-ups, the claim index. The mailbox contract itself (put, claim, settle, order,
attempts, dead letters, stats, requeue, purge, threads) is tested for every backend in
tests/contract/."""

from __future__ import annotations

import errno
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from hybridcomms import (
    Backoff,
    FileMailbox,
    Message,
    Priority,
    State,
)

Make = Callable[..., FileMailbox]


def names(mb: FileMailbox, state: str) -> list[str]:
    return sorted(os.listdir(mb.path / state))


def test_the_mailbox_folders_follow_the_on_disk_contract(mailbox: FileMailbox, root: Path) -> None:
    assert sorted(os.listdir(root / "Agent-1")) == ["dead", "done", "new", "processing", "tmp"]


def test_a_message_moves_new_then_processing_then_done(mailbox: FileMailbox) -> None:
    mailbox.put(Message("t"))
    assert len(names(mailbox, "new")) == 1
    d = mailbox.claim()
    assert d is not None
    assert names(mailbox, "new") == [] and names(mailbox, "processing") == [d.name]
    d.ack()
    assert names(mailbox, "processing") == [] and names(mailbox, "done") == [d.name]


def test_file_names_say_priority_due_time_id_and_attempt(mailbox: FileMailbox) -> None:
    m = Message("t", priority="CRITICAL")
    mailbox.put(m)
    (name,) = names(mailbox, "new")
    assert name.startswith("0C.") and f".{m.id}.a0.json" in name
    stamp = name[3:25]
    assert stamp == m.created_at.strftime("%Y%m%dT%H%M%S%fZ")
    d = mailbox.claim()
    assert d is not None and d.name.endswith(f".{m.id}.a1.json")


def test_the_file_in_new_is_plain_json_readable_with_cat_and_jq(mailbox: FileMailbox) -> None:
    m = Message("t", {"k": "v"})
    mailbox.put(m)
    (name,) = names(mailbox, "new")
    obj = orjson.loads((mailbox.path / "new" / name).read_bytes())
    assert obj["id"] == m.id and obj["payload"] == {"k": "v"}


def test_claims_go_by_priority_then_oldest_first(mailbox: FileMailbox) -> None:
    t0 = time.time()
    from datetime import datetime, timezone

    def at(offset: float) -> datetime:
        return datetime.fromtimestamp(t0 - 10 + offset, timezone.utc)

    sent = [
        Message("low-old", priority="LOW", created_at=at(0)),
        Message("med-new", priority="MEDIUM", created_at=at(2)),
        Message("med-old", priority="MEDIUM", created_at=at(1)),
        Message("crit", priority="CRITICAL", created_at=at(3)),
        Message("high", priority="HIGH", created_at=at(4)),
    ]
    for m in sent:
        mailbox.put(m)
    order = []
    while (d := mailbox.claim()) is not None:
        order.append(d.message.topic)
        d.ack()
    assert order == ["crit", "high", "med-old", "med-new", "low-old"]


def test_a_message_from_another_writer_is_seen_by_an_existing_claimer(make_mailbox: Make) -> None:
    consumer = make_mailbox()
    assert consumer.claim() is None
    make_mailbox().put(Message("from-elsewhere"))
    d = consumer.claim()
    assert d is not None and d.message.topic == "from-elsewhere"


def test_a_higher_priority_arrival_from_another_writer_overtakes_the_backlog(make_mailbox: Make) -> None:
    consumer = make_mailbox(rescan_interval=0.05)
    for i in range(5):
        consumer.put(Message(f"low{i}", priority="LOW"))
    d = consumer.claim()
    assert d is not None and d.message.topic == "low0"
    d.ack()
    make_mailbox().put(Message("urgent", priority="CRITICAL"))
    time.sleep(0.06)
    d = consumer.claim()
    assert d is not None and d.message.topic == "urgent"


def test_nack_without_a_delay_uses_the_backoff(make_mailbox: Make) -> None:
    mb = make_mailbox(backoff=Backoff(initial=0.25, factor=2, jitter=0))
    mb.put(Message("t"))
    d = mb.claim()
    assert d is not None
    before = time.time()
    d.nack()
    after = time.time()
    (name,) = names(mb, "new")
    from hybridcomms._names import parse_compact

    due = parse_compact(name[3:25])
    assert before + 0.25 - 0.001 <= due <= after + 0.25 + 0.001  # exactly the backoff, whatever the stalls


def test_a_message_that_keeps_failing_goes_to_dead_with_its_reason(make_mailbox: Make) -> None:
    mb = make_mailbox(max_attempts=3)
    m = Message("t", {"x": 1})
    mb.put(m)
    for attempt in (1, 2, 3):
        d = mb.claim()
        assert d is not None and d.attempt == attempt
        d.nack(delay=0, error=RuntimeError(f"boom {attempt}"))
    assert mb.claim() is None
    (info,) = mb.list(State.DEAD)
    assert info.id == m.id and info.attempt == 3
    assert info.reason is not None
    assert info.reason["reason"] == "failed 3 of 3 attempts"
    assert info.reason["last_error"] == "boom 3"
    assert info.reason["topic"] == "t"
    reason_file = info.path.parent / (info.name + ".reason.json")
    assert orjson.loads(reason_file.read_bytes())["id"] == m.id
    assert orjson.loads(info.path.read_bytes())["payload"] == {"x": 1}


def test_put_many_with_one_bad_message_writes_none(make_mailbox: Make) -> None:
    mb = make_mailbox(max_message_size=500)
    batch = [Message("ok"), Message("big", "x" * 1000), Message("ok2")]
    with pytest.raises(Exception, match="over the limit"):
        mb.put_many(batch)
    assert names(mb, "new") == [] and names(mb, "tmp") == []


@pytest.mark.parametrize("policy", ["always", "batch", "never"])
def test_every_fsync_policy_delivers_the_same_way(make_mailbox: Make, policy: str) -> None:
    mb = make_mailbox(fsync=policy, batch_interval=0.0)
    mb.put(Message("t", 1))
    mb.put_many([Message("t", 2)])
    seen = []
    while (d := mb.claim()) is not None:
        seen.append(d.message.payload)
        d.nack(delay=0) if d.attempt == 1 else d.ack()
    assert sorted(seen) == [1, 1, 2, 2]
    mb.flush()


def test_an_unknown_fsync_policy_is_refused(root: Path) -> None:
    with pytest.raises(ValueError):
        FileMailbox(root, "Agent-1", fsync="sometimes")


def test_requeue_gives_a_dead_message_a_fresh_start(make_mailbox: Make) -> None:
    mb = make_mailbox(max_attempts=1)
    m = Message("t")
    mb.put(m)
    d = mb.claim()
    assert d is not None
    d.nack(error="transient outage")
    assert mb.get(m.id) is not None and mb.get(m.id).state is State.DEAD  # type: ignore[union-attr]
    (target,) = mb.requeue(m.id)
    assert target.endswith(".a0.json")
    assert not any(n.endswith(".reason.json") for n in names(mb, "dead"))
    d = mb.claim()
    assert d is not None and d.message == m and d.attempt == 1
    d.ack()


def test_files_are_private_and_folders_too_by_default(mailbox: FileMailbox, root: Path) -> None:
    mailbox.put(Message("t"))
    (name,) = names(mailbox, "new")
    assert stat.S_IMODE(os.stat(mailbox.path / "new" / name).st_mode) == 0o600
    for folder in ("", "new", "processing", "done", "dead", "tmp"):
        assert stat.S_IMODE(os.stat(root / "Agent-1" / folder).st_mode) == 0o700


def test_modes_are_configurable_for_a_shared_group_setup(make_mailbox: Make, root: Path) -> None:
    mb = make_mailbox("Agent-7", file_mode=0o660, dir_mode=0o770)
    mb.put(Message("t"))
    (name,) = names(mb, "new")
    assert stat.S_IMODE(os.stat(mb.path / "new" / name).st_mode) == 0o660
    assert stat.S_IMODE(os.stat(root / "Agent-7" / "new").st_mode) == 0o770


def test_claim_with_a_timeout_wakes_up_when_another_thread_puts(make_mailbox: Make) -> None:
    consumer = make_mailbox(rescan_interval=30)
    producer = make_mailbox()
    timer = threading.Timer(0.2, lambda: producer.put(Message("late")))
    timer.start()
    start = time.monotonic()
    d = consumer.claim(timeout=10)
    elapsed = time.monotonic() - start
    timer.join()
    assert d is not None and d.message.topic == "late"
    assert elapsed < 2.0  # woken by the notification, not by the 30 s rescan


def test_priority_enum_values_order_claims() -> None:
    assert Priority.CRITICAL > Priority.HIGH > Priority.MEDIUM > Priority.LOW


def test_a_producer_only_mailbox_does_not_collect_the_names_it_writes(mailbox: FileMailbox) -> None:
    for _ in range(50):
        mailbox.put(Message("t"))
    assert len(mailbox._index) == 0  # nothing kept until this instance claims
    d = mailbox.claim()
    assert d is not None
    d.ack()
    mailbox.put(Message("after"))
    assert len(mailbox._index) == 50  # a claimer keeps its index current


def test_many_waiting_mailboxes_share_one_observer(make_mailbox: Make) -> None:
    from hybridcomms.backends.file import wakeup as _wakeup

    boxes = [make_mailbox(f"Agent-{i}") for i in range(150)]  # more than the default 128 inotify instances
    for mb in boxes:
        assert mb.claim(timeout=0.001) is None
    assert sum(len(w) for w in _wakeup._hub._waiters.values()) == 150
    assert all(mb._waiter is not None and mb._waiter.notifying for mb in boxes)
    threading.Timer(0.1, lambda: make_mailbox("Agent-149").put(Message("late"))).start()
    d = boxes[149].claim(timeout=10)
    assert d is not None and d.message.topic == "late"


def test_the_observer_path_also_wakes_a_waiting_claim(
    make_mailbox: Make, monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybridcomms.backends.file import wakeup as _wakeup

    monkeypatch.setattr(_wakeup, "_DIRECT", False)  # as on a platform without watchdog's inotify reader
    consumer = make_mailbox(rescan_interval=30)
    threading.Timer(0.2, lambda: make_mailbox().put(Message("late"))).start()
    start = time.monotonic()
    d = consumer.claim(timeout=10)
    assert d is not None and d.message.topic == "late"
    assert consumer._waiter is not None and consumer._waiter.notifying
    assert time.monotonic() - start < 5  # woken, not the 30 s rescan


def test_lost_events_make_the_next_claim_list_new_again(make_mailbox: Make) -> None:
    consumer = make_mailbox(rescan_interval=30)
    assert consumer.claim(timeout=0.01) is None
    make_mailbox().put(Message("unannounced"))
    consumer._index.mark_stale()  # what an inotify queue overflow does
    d = consumer.claim()
    assert d is not None and d.message.topic == "unannounced"


def test_without_inotify_a_waiting_claim_falls_back_to_polling_with_a_warning(
    make_mailbox: Make, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import watchdog.observers.inotify as inotify

    from hybridcomms.backends.file import wakeup as _wakeup

    def unavailable(*args: object, **kwargs: object) -> None:
        raise OSError(24, "inotify instance limit reached")

    monkeypatch.setattr(_wakeup, "_DIRECT", False)
    monkeypatch.setattr(inotify, "InotifyObserver", unavailable)
    consumer = make_mailbox(rescan_interval=30)
    threading.Timer(0.2, lambda: make_mailbox().put(Message("late"))).start()
    d = consumer.claim(timeout=10)
    assert d is not None and d.message.topic == "late"
    assert consumer._waiter is not None and not consumer._waiter.notifying
    assert "polling" in caplog.text


def test_waking_a_waiter_many_times_never_blocks(make_mailbox: Make) -> None:
    mb = make_mailbox()
    assert mb.claim(timeout=0.01) is None  # creates its waiter
    for _ in range(100_000):  # far more than a pipe holds
        mb.wake()
    assert mb.claim(timeout=0.01) is None


def test_a_mailbox_dropped_without_close_gives_its_watch_back(root: Path) -> None:
    import gc

    from hybridcomms.backends.file import wakeup as _wakeup

    before = sum(len(w) for w in _wakeup._hub._waiters.values())
    mb = FileMailbox(root, "Agent-1", fsync="never")
    assert mb.claim(timeout=0.01) is None
    assert sum(len(w) for w in _wakeup._hub._waiters.values()) == before + 1
    del mb
    gc.collect()
    assert sum(len(w) for w in _wakeup._hub._waiters.values()) == before


@pytest.mark.skipif(not hasattr(os, "O_NOATIME"), reason="no O_NOATIME here")
def test_claims_read_without_atime_and_fall_back_when_not_the_owner(
    mailbox: FileMailbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """O_NOATIME is refused (EPERM) on files of another user, as in a shared-group setup: the claim
    must then read normally, not dead-letter the message."""
    real_open = os.open
    seen: list[int] = []

    def open_as_non_owner(path: str, flags: int, *args: object, **kwargs: object) -> int:
        seen.append(flags)
        if flags & os.O_NOATIME:
            raise OSError(errno.EPERM, "Operation not permitted", path)
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    mailbox.put(Message("t", 1))
    mailbox.put(Message("t", 2))
    monkeypatch.setattr(os, "open", open_as_non_owner)
    first = mailbox.claim()
    second = mailbox.claim()
    monkeypatch.undo()
    assert first is not None and second is not None
    assert [first.message.payload, second.message.payload] == [1, 2]
    first.ack()
    second.ack()
    assert os.listdir(mailbox.path / "dead") == []
    assert sum(1 for f in seen if f & os.O_NOATIME) == 1  # asked once, then not again


def test_a_forked_child_using_its_parents_mailbox_still_sees_arrivals(make_mailbox: Make) -> None:
    import multiprocessing as mp

    consumer = make_mailbox()
    assert consumer.claim() is None  # the parent watches new/ now
    ctx = mp.get_context("fork")
    got = ctx.Queue()

    def child() -> None:
        make_mailbox().put(Message("to-the-child"))
        d = consumer.claim()  # the inherited waiter is not the child's: it lists instead
        got.put(None if d is None else d.message.topic)
        if d is not None:
            d.ack()

    p = ctx.Process(target=child)
    p.start()
    p.join(30)
    assert got.get(timeout=10) == "to-the-child"


def test_threads_relisting_one_mailbox_at_once_each_see_every_name(make_mailbox: Make) -> None:
    """os.listdir(fd) reads through a dup sharing the folder offset: threads relisting new/ at once
    each saw a part of it, and claims returned None with messages waiting. A relist on every claim
    (rescan_interval=0) makes the listings overlap."""
    for _ in range(5):
        mb = make_mailbox(rescan_interval=0.0)
        n = 300
        mb.put_many([Message("t", i) for i in range(n)])
        got: list[int] = []
        lock = threading.Lock()

        def work(box: FileMailbox = mb, out: list[int] = got, guard: threading.Lock = lock) -> None:
            while (d := box.claim()) is not None:
                with guard:
                    out.append(d.message.payload)
                d.ack()

        threads = [threading.Thread(target=work) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=30)
        assert sorted(got) == list(range(n))
        mb.close()


def test_listing_a_folder_descriptor_from_threads_at_once_is_whole(tmp_path: Path) -> None:
    from hybridcomms import _fs

    folder = tmp_path / "many"
    folder.mkdir()
    names = {f"f{i:05d}" for i in range(3000)}
    for name in names:
        (folder / name).touch()
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    bad: list[int] = []

    def lister() -> None:
        for _ in range(20):
            seen = _fs.listdir_at(fd)
            if set(seen) != names or len(seen) != len(names):
                bad.append(len(seen))

    try:
        threads = [threading.Thread(target=lister) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    finally:
        os.close(fd)
    assert bad == []
