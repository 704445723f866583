"""The dashboard and the watcher against a second round of findings (docs/ui.md, "How it is secured"):

1. the watcher never caches a failed read: a message a consumer moved on is read where it is now;
2. hard-linked big messages and bus events with huge sources cannot blow the graph's memory nor stall
   ``/api/graph`` (names cut when a flow is recorded, flows bounded by bytes, the graph built in a thread);
3. connections that pipeline requests and never read the answers cannot fill the connection cap;
4. a deeply nested dead reason shows (files and Redis), never a 500 or a traceback;
5. senders named like the graph's own nodes (``*``, ``(others)``) cannot fake them;
6. every redirect is a path, whatever the Host header says.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import orjson
from waiting import eventually

from hybridcomms import FileMailbox, Message
from hybridcomms.watcher import FIELD_LIMIT, MailboxEvent, MailboxWatcher, _Describer

# -- 1. the watcher's reads -------------------------------------------------------------------------


def test_a_message_claimed_before_it_is_described_is_read_where_it_went(root: Path) -> None:
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        m = Message("t.one", sender="Agent-2")
        mb.put(m)
        (delivered,) = list((root / "Agent-1" / "new").iterdir())
        describe = _Describer(root=str(root))
        d = mb.claim()  # the consumer is first: the file is in processing/ now, under attempt 1
        assert d is not None
        assert describe(m.id, str(delivered)) == ("t.one", "Agent-2")
        d.ack()
        assert describe(m.id, str(delivered)) == ("t.one", "Agent-2")


def test_a_read_that_found_nothing_is_not_cached(root: Path, tmp_path: Path) -> None:
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        m = Message("t.two", sender="Agent-3")
        mb.put(m)
    (path,) = list((root / "Agent-1" / "new").iterdir())
    aside = tmp_path / "aside"
    path.rename(aside)  # nowhere in the mailbox for a moment
    describe = _Describer(root=str(root))
    assert describe(m.id, str(path)) == (None, None)
    aside.rename(path)
    assert describe(m.id, str(path)) == ("t.two", "Agent-3")


def test_every_event_of_a_mailbox_with_a_fast_consumer_has_its_topic_and_sender(root: Path) -> None:
    events: list[MailboxEvent] = []
    lock = threading.Lock()

    def note(ev: MailboxEvent) -> None:
        with lock:
            events.append(ev)

    count = 60
    with (
        MailboxWatcher(root, on_event=note, rescan_every=30, recover_every=0) as w,
        FileMailbox(root, "Agent-1", fsync="never") as mb,
    ):
        assert w.notifying

        def consume() -> None:
            acked = 0
            while acked < count:
                d = mb.claim()
                if d is not None:
                    d.ack()
                    acked += 1

        consumer = threading.Thread(target=consume)
        consumer.start()
        for i in range(count):
            mb.put(Message(f"t.{i}", sender="Agent-9"))
        consumer.join()
        last = Message("t.last", sender="Agent-9")  # events come in order: after its ack, all came
        mb.put(last)
        d = mb.claim()
        assert d is not None and d.message.id == last.id
        d.ack()

        def last_acked() -> bool:
            with lock:
                return any(e.kind == "acked" and e.id == last.id for e in events)

        eventually(last_acked, "the last message's ack reported")
    with lock:
        seen = [e for e in events if e.kind in ("delivered", "claimed", "acked")]
    assert len(seen) >= 2 * count  # (inotify may merge a few fast moves: not the point here)
    lost = [(e.kind, e.name) for e in seen if e.topic is None or e.sender != "Agent-9"]
    assert not lost, f"{len(lost)} of {len(seen)} events without topic or sender: {lost[:5]}"


def _raw_message(folder: Path, n: int, topic: str, sender: str) -> Path:
    """A message file as a hostile producer writes it (any sizes it likes), under a valid name."""
    wire = Message("t", payload=1).to_dict()
    wire.update(topic=topic, sender=sender)
    path = folder / f"2M.20261204T100000000000Z.{n:032x}.a0.json"
    path.write_bytes(orjson.dumps(wire))
    return path


def test_the_watcher_reads_no_big_linked_file_and_keeps_little(root: Path) -> None:
    FileMailbox(root, "Agent-1", fsync="never").close()
    new = root / "Agent-1" / "new"
    big = _raw_message(new, 1, "t" * 5000, "s" * 300_000)
    small = _raw_message(new, 2, "u" * 5000, "v" * 5000)
    describe = _Describer(root=str(root))
    link = new / f"2M.20261204T100000000000Z.{3:032x}.a0.json"
    os.link(big, link)
    assert describe(f"{3:032x}", str(link)) == (None, None)  # linked and over 64 KiB: not read
    topic, sender = describe(f"{2:032x}", str(small))
    assert topic is not None and sender is not None
    assert len(topic) == len(sender) == FIELD_LIMIT and sender.endswith("…")
