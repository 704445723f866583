"""Two "hosts" that share nothing but a Redis: run as separate processes by tests/test_redis_backend.py.

    python redis_hosts.py producer URL LOCAL_ROOT N     puts N tasks to B, waits for N replies
    python redis_hosts.py worker URL LOCAL_ROOT         takes B's tasks, replies to A (until killed)

Each keeps its own files under LOCAL_ROOT (its log), and retries what a Redis restart interrupts: a
put that raised may or may not have been stored, so it is put again (at least once), and a claim or
an ack that raised is left to the lease (the message comes back).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from hybridcomms import Backoff, MailboxIOError, Message
from hybridcomms.backends.redis.mailbox import RedisMailbox

T = TypeVar("T")
QUICK = Backoff(initial=0.05, factor=1.0, maximum=0.05, jitter=0.0)
NAMESPACE = os.environ.get("HC_TEST_NAMESPACE", "hc")


def retry(fn: Callable[[], T], seconds: float = 60.0) -> T:
    deadline = time.monotonic() + seconds
    while True:
        try:
            return fn()
        except MailboxIOError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def producer(url: str, local: Path, n: int) -> None:
    to_b = retry(lambda: RedisMailbox(url, "B", namespace=NAMESPACE))
    mine = retry(lambda: RedisMailbox(url, "A", namespace=NAMESPACE, lease=1.0, backoff=QUICK))
    for i in range(n):
        message = Message("task.work", {"i": i}, id=f"t{i}", sender="A", reply_to="A")
        retry(lambda m=message: to_b.put(m))  # type: ignore[misc]
    got: set[str] = set()
    last_recovery = 0.0
    with open(local / "replies.log", "a", buffering=1) as log:
        while len(got) < n:
            try:
                # A claim whose answer the Redis kill lost (or an ack it refused) stays pending until
                # its lease runs out: the producer gives back its own mailbox's expired leases too.
                if time.monotonic() - last_recovery > 0.3:
                    mine.recover()
                    last_recovery = time.monotonic()
                d = mine.claim(timeout=0.5)
            except MailboxIOError:
                time.sleep(0.05)
                continue
            if d is None:
                continue
            got.add(str(d.message.payload["task"]))
            log.write(f"{d.message.payload['task']}\n")
            try:
                d.ack()
            except MailboxIOError:
                pass  # delivered again after the lease: a duplicate, counted once
    (local / "finished").write_text(str(len(got)))


def worker(url: str, local: Path) -> None:
    tasks = retry(lambda: RedisMailbox(url, "B", namespace=NAMESPACE, lease=1.0, backoff=QUICK))
    replies = retry(lambda: RedisMailbox(url, "A", namespace=NAMESPACE))
    last_recovery = 0.0
    with open(local / "worked.log", "a", buffering=1) as log:
        while True:
            try:
                if time.monotonic() - last_recovery > 0.3:
                    tasks.recover()
                    last_recovery = time.monotonic()
                d = tasks.claim(timeout=0.3)
            except MailboxIOError:
                time.sleep(0.05)
                continue
            if d is None:
                continue
            reply = Message("task.done", {"task": d.message.id}, id=f"r-{d.message.id}", sender="B")
            retry(lambda r=reply: replies.put(r))  # type: ignore[misc]
            log.write(f"{d.message.id}\n")
            try:
                d.ack()
            except MailboxIOError:
                pass


if __name__ == "__main__":
    role, url, local = sys.argv[1], sys.argv[2], Path(sys.argv[3])
    local.mkdir(parents=True, exist_ok=True)
    if role == "producer":
        producer(url, local, int(sys.argv[4]))
    else:
        worker(url, local)
