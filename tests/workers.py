"""Functions run in child processes by the multi-process and crash tests (spawn-safe)."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from pathlib import Path

from hybridcomms import Backoff, FileMailbox, Message

#: Processes a test started that must not outlive it (a failed test leaves them running otherwise):
#: conftest kills what is still running after each test.
STARTED: list[subprocess.Popen[str]] = []


def reap_started() -> None:
    while STARTED:
        p = STARTED.pop()
        if p.poll() is None:
            p.kill()
            p.communicate()


FAST = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)


def claim_and_die(root: str, agent: str, how: str) -> None:
    """Claim one message and die without settling it."""
    mb = FileMailbox(root, agent, fsync="never")
    d = mb.claim()
    assert d is not None
    if how == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    os._exit(0)


def claim_and_hold(root: str, agent: str, ready: str) -> None:
    """Claim one message, say so, and hang (until killed)."""
    mb = FileMailbox(root, agent, fsync="never")
    d = mb.claim()
    assert d is not None
    Path(ready).write_text(d.message.id)
    time.sleep(600)


def produce(root: str, agent: str, producer: int, count: int, fsync: str) -> None:
    with FileMailbox(root, agent, fsync=fsync) as mb:
        for i in range(count):
            mb.put(Message("load", {"p": producer, "i": i}, id=f"p{producer}-{i}"))


def consume(root: str, agent: str, log_path: str, expected_total: int, deadline: float) -> None:
    """Claim and ack until every expected message is done; log each acked id."""
    with FileMailbox(root, agent, fsync="never", backoff=FAST) as mb, open(log_path, "a") as log:
        while time.time() < deadline:
            d = mb.claim(timeout=0.2)
            if d is None:
                if len(os.listdir(mb.path / "done")) >= expected_total:
                    return
                continue
            d.ack()
            log.write(d.message.id + "\n")
            log.flush()


def crashy_consume(root: str, agent: str, log_path: str, seed: int) -> None:
    """Claim, log the claim, work a random while, ack, log the ack. Killed from outside at random."""
    rng = random.Random(seed)
    with (
        FileMailbox(root, agent, fsync="never", backoff=FAST, max_attempts=1000) as mb,
        open(log_path, "a", buffering=1) as log,
    ):
        while True:
            d = mb.claim(timeout=0.5)
            if d is None:
                continue
            log.write(f"claim {d.message.id} {d.attempt}\n")
            if rng.random() < 0.5:
                time.sleep(rng.random() * 0.002)
            d.ack()
            log.write(f"ack {d.message.id} {d.attempt}\n")


def put_big_forever(root: str, agent: str, size: int) -> None:
    """Put large messages until killed."""
    mb = FileMailbox(root, agent, fsync="never", max_message_size=size * 2)
    i = 0
    while True:
        payload = {"i": i, "blob": "z" * size, "check": size}
        mb.put(Message("big", payload))
        i += 1


def reply_server(root: str, agent: str, ready: str, count: int) -> None:
    """A Comms agent that answers `count` queries, then exits."""
    import threading

    from hybridcomms import AgentBus, Comms

    answered = threading.Semaphore(0)
    with Comms(agent, root=root, bus=AgentBus(), fsync="never") as comms:

        def answer(m: object) -> None:
            comms.reply(m, {"pid": os.getpid(), "echo": m.payload})  # type: ignore[arg-type, attr-defined]
            answered.release()

        comms.subscribe("dreamos.query.*", answer)
        Path(ready).write_text("ready")
        for _ in range(count):
            assert answered.acquire(timeout=60)
    # leaving the block stops the consumer, which first acks the message in hand


def hold_filelock(path: str, ready: str, seconds: float) -> None:
    """Hold a lock with the `filelock` library (as a Dream.OS writer does), then let go."""
    import filelock

    with filelock.FileLock(path + ".lock"):
        Path(ready).write_text("held")
        time.sleep(seconds)


def increment_locked(path: str, times: int) -> None:
    """Read-modify-write a JSON counter under the compat lock, `times` times."""
    import orjson

    from hybridcomms.compat.dreamos.file_locking import acquire_lock, replace_atomically

    for _ in range(times):
        with acquire_lock(path, timeout=30):
            p = Path(path)
            value = orjson.loads(p.read_bytes()) if p.exists() else {"n": 0}
            value["n"] += 1
            replace_atomically(p, orjson.dumps(value))


def append_legacy(root: str, agent: str, sender: int, start: str) -> None:
    """One of several processes appending to a legacy inbox.json at once."""
    from hybridcomms.compat.dreamos import mailbox_utils

    mailbox_utils.MAILBOX_ROOT = Path(root)
    message = mailbox_utils.create_mailbox_message(f"Agent-{sender}", agent, "hi", "CUSTOM", {"n": sender})
    Path(f"{start}.ready-{sender}").touch()  # at the starting line
    while not Path(start).exists():  # all begin together
        time.sleep(0.001)
    mailbox_utils.write_mailbox_message(agent, message)  # the recipient is on the legacy layout


def legacy_inbox_json_writer(root: str, agent: str, count: int, prefix: str) -> None:
    """Append ``count`` messages to ``<root>/<agent>/inbox.json`` exactly as the Dream.OS L1 writer
    does: the `filelock` library on ``inbox.json.lock``, read the array, append, temp + fsync + replace."""
    import json
    import tempfile

    import filelock

    path = Path(root) / agent / "inbox.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        with filelock.FileLock(str(path) + ".lock", timeout=30):
            try:
                entries = json.loads(path.read_text() or "[]")
            except FileNotFoundError:
                entries = []
            entries.append(
                {
                    "message_id": f"{prefix}-{i:05d}",
                    "sender_agent_id": "Legacy-Writer",
                    "recipient_agent_id": agent,
                    "timestamp_utc": "2025-05-01T12:00:00Z",
                    "subject": "work",
                    "type": "TASK_COMMAND",
                    "body": {"i": i},
                    "priority": "MEDIUM",
                }
            )
            fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
            with os.fdopen(fd, "w") as f:
                json.dump(entries, f, indent=2)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        if i % 7 == 0:
            time.sleep(0.001)


def legacy_inbox_dir_writer(root: str, agent: str, count: int, prefix: str) -> None:
    """Drop ``count`` msg_*.json files into ``<root>/<agent>/inbox/`` as the Dream.OS L2 writer does:
    `filelock` on ``inbox/.inbox.lock``, write ``<final>.<pid>.tmp``, replace."""
    import json

    import filelock

    inbox = Path(root) / agent / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        msg = {
            "message_id": f"{prefix}-{i:05d}",
            "sender_agent_id": "Legacy-Writer",
            "recipient_agent_id": agent,
            "timestamp_utc": "2025-05-01T12:00:00+00:00",
            "subject": "work",
            "message_type": "TASK_COMMAND",
            "content": {"i": i},
            "priority": "HIGH",
        }
        final = inbox / f"msg_20250501_120000_{i:06d}_{msg['message_id'][:8]}_{i}.json"
        with filelock.FileLock(str(inbox / ".inbox.lock"), timeout=30):
            tmp = Path(f"{final}.{os.getpid()}.tmp")
            tmp.write_text(json.dumps(msg, indent=2))
            os.replace(tmp, final)


def legacy_import_and_write(root: str, agent: str, out: str) -> None:
    """In a spawned child of a process that called install(): the legacy import path works, and so
    does setting MAILBOX_ROOT here."""
    from dreamos.core.comms import mailbox_utils  # type: ignore[import-not-found]

    mailbox_utils.MAILBOX_ROOT = Path(root)
    mailbox_utils.write_mailbox_message(agent, {"type": "TASK_COMMAND", "body": {"from": "child"}})
    Path(out).write_text(mailbox_utils.__name__)


def handler_claims_and_dies(root: str, agent: str, ready: str) -> None:
    """A Dream.OS MailboxHandler that takes its messages and dies before archiving them."""
    from hybridcomms.compat.dreamos.mailbox import MailboxHandler

    handler = MailboxHandler(agent, root)
    got = handler.get_messages()
    Path(ready).write_text(str(len(got)))
    os.kill(os.getpid(), signal.SIGKILL)


def recover_and_die_at(root: str, agent: str, point: str) -> None:
    """Run one recovery pass and SIGKILL this process at ``point`` of the steal of a hung owner's
    message (the crash windows of a recoverer)."""
    import hybridcomms.backends.file.recovery as rec

    def die(*_: object, **__: object) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    real_finish, real_return = rec._finish_steal, rec._return_or_bury
    real_replace, real_write = os.replace, FileMailbox._write_tmp

    if point == "after_detach":
        rec._finish_steal = die  # type: ignore[assignment]
    elif point == "after_copy":
        os.replace = die  # type: ignore[assignment]
    elif point == "after_replace":
        rec._return_or_bury = die  # type: ignore[assignment]
    elif point == "after_return":

        def return_then_die(*args: object, **kw: object) -> None:
            real_return(*args, **kw)  # type: ignore[arg-type]
            die()

        rec._return_or_bury = return_then_die  # type: ignore[assignment]
    with FileMailbox(root, agent, fsync="always", backoff=FAST, lease=0.001) as mb:
        mb.recover()
    _ = (real_finish, real_replace, real_write)
    os._exit(3)  # the kill point was not reached
