"""The claim index: which name a claim tries next, from one listing plus the names pushed since."""

from __future__ import annotations

import os
import random
import threading
import time
from pathlib import Path

import pytest

from hybridcomms import FileMailbox, Message, Priority
from hybridcomms._names import compact_time, make_name
from hybridcomms.backends.file.index import ClaimIndex


def _name(rank: str, ts: float, msg_id: str, attempt: int = 0) -> str:
    return make_name(rank, compact_time(ts), msg_id, attempt)


@pytest.fixture
def folder(tmp_path: Path) -> tuple[Path, int]:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    yield tmp_path, fd
    os.close(fd)


def _touch(path: Path, names: list[str]) -> None:
    for name in names:
        (path / name).write_bytes(b"{}")


def _drain(index: ClaimIndex) -> list[str]:
    out = []
    while (name := index.pop_due(True)) is not None:
        out.append(name)
    return out


def test_one_listing_gives_names_by_rank_then_due_time_then_id(folder: tuple[Path, int]) -> None:
    path, fd = folder
    now = time.time() - 10
    names = [
        _name(rank, now + random.random(), f"id{i:04d}")
        for i, rank in enumerate(random.choices(["0C", "1H", "2M", "3L"], k=400))
    ]
    _touch(path, names)
    index = ClaimIndex(60.0)
    index.rescan(fd)
    assert _drain(index) == sorted(names)


def test_names_pushed_after_the_listing_merge_into_the_order(folder: tuple[Path, int]) -> None:
    path, fd = folder
    now = time.time() - 10
    listed = [_name("2M", now + i, f"l{i}") for i in range(0, 10, 2)]
    _touch(path, listed)
    index = ClaimIndex(60.0)
    index.rescan(fd)
    pushed = [_name("2M", now + i, f"p{i}") for i in range(1, 10, 2)] + [_name("0C", now + 5, "urgent")]
    for name in reversed(pushed):
        index.push(name)
    assert _drain(index) == sorted(listed + pushed)


def test_a_push_into_an_empty_rank_overtakes_the_listed_backlog(folder: tuple[Path, int]) -> None:
    path, fd = folder
    now = time.time() - 10
    _touch(path, [_name("3L", now + i, f"low{i}") for i in range(5)])
    index = ClaimIndex(60.0)
    index.rescan(fd)
    assert index.pop_due(True) == _name("3L", now, "low0")
    index.push(_name("1H", now + 9, "high"))
    assert index.pop_due(True) == _name("1H", now + 9, "high")
    assert index.pop_due(True) == _name("3L", now + 1, "low1")


def test_a_head_not_yet_due_lets_a_lower_rank_go_first(folder: tuple[Path, int]) -> None:
    path, fd = folder
    later = _name("0C", time.time() + 3600, "backoff")
    now = _name("3L", time.time() - 1, "ready")
    _touch(path, [later, now])
    index = ClaimIndex(60.0)
    index.rescan(fd)
    assert index.pop_due(True) == now
    assert index.pop_due(True) is None
    assert index.next_due() == later[3:25]


def test_files_hybridcomms_did_not_name_are_tried_first(folder: tuple[Path, int]) -> None:
    path, fd = folder
    ours = _name("0C", time.time() - 1, "ours")
    foreign = ["msg-1.json", "2M.not-a-time.json", "2M.", "9X.20261126T000000000000Z.x.a0.json", "zzz"]
    _touch(path, [ours, *foreign])
    index = ClaimIndex(60.0)
    index.rescan(fd)
    drained = _drain(index)
    assert sorted(drained[: len(foreign)]) == sorted(foreign)
    assert drained[len(foreign) :] == [ours]


def test_a_name_with_a_garbage_due_time_is_tried_rather_than_waited_for(folder: tuple[Path, int]) -> None:
    path, fd = folder
    odd = "2M.9999garbage-but-22-c.x.a0.json"  # sorts after every real time, is not one
    _touch(path, [odd])
    index = ClaimIndex(60.0)
    index.rescan(fd)
    assert index.next_due() is None  # never offered as a time to wait for
    assert index.pop_due(True) == odd


def test_a_stale_index_asks_for_a_listing(folder: tuple[Path, int]) -> None:
    path, fd = folder
    _touch(path, [_name("2M", time.time() - 1, "a")])
    index = ClaimIndex(60.0)
    assert index.pop_due() is None  # never listed: stale
    index.rescan(fd)
    assert index.pop_due() is not None
    index.mark_stale()
    assert index.pop_due() is None
    assert index.stale()


def test_a_slow_listing_stretches_the_interval_between_listings(
    folder: tuple[Path, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    from hybridcomms.backends.file import index as _index

    _, fd = folder
    clock = iter([100.0, 100.5])  # a listing that takes half a second
    monkeypatch.setattr(_index, "_monotonic", lambda: next(clock))
    index = ClaimIndex(1.0)
    index.rescan(fd)
    assert index.interval == pytest.approx(0.5 * _index._SCAN_SHARE)
    clock = iter([200.0, 200.001])
    index.rescan(fd)
    assert index.interval == 1.0


def test_a_producer_only_index_keeps_nothing() -> None:
    index = ClaimIndex(1.0)
    index.push(_name("2M", time.time(), "x"))
    assert len(index) == 0


def test_threads_popping_together_get_each_name_once(folder: tuple[Path, int]) -> None:
    path, fd = folder
    names = [_name(random.choice(["0C", "2M"]), time.time() - 5 + i / 1000, f"m{i}") for i in range(3000)]
    _touch(path, names)
    index = ClaimIndex(60.0)
    index.rescan(fd)
    got: list[list[str]] = [[] for _ in range(4)]

    def work(out: list[str]) -> None:
        for i in range(10**6):
            if i % 7 == 0:
                index.push(_name("1H", time.time() - 1, f"t{threading.get_ident()}-{i}"))
                continue
            name = index.pop_due(True)
            if name is None:
                return
            out.append(name)

    threads = [threading.Thread(target=work, args=(g,)) for g in got]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    taken = [n for g in got for n in g] + _drain(index)
    assert len(taken) == len(set(taken))
    assert set(names) <= set(taken)


def test_a_mailbox_claims_a_mixed_backlog_in_order_across_listings(tmp_path: Path) -> None:
    """End to end: another writer's messages and our own nacks, with relistings in between."""
    writer = FileMailbox(tmp_path, "A", fsync="never")
    reader = FileMailbox(tmp_path, "A", fsync="never", rescan_interval=0.0)
    sent = [Message("t", i, priority=random.choice(list(Priority))) for i in range(200)]
    writer.put_many(sent)
    seen = []
    while (d := reader.claim()) is not None:
        seen.append(d.message)
        d.ack()
    assert [m.id for m in seen] == [
        m.id for m in sorted(sent, key=lambda m: (-m.priority, m.created_at, m.id))
    ]
    writer.close()
    reader.close()
