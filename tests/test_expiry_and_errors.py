"""What a message carries across backends (issue 20, sections 4 and 5): the last error of a failed
attempt, kept while the message waits for its retry; ``expires`` / ``ttl``; ``put(delay=...)``;
``Comms.send(..., id=...)``; and the CLI's ``send --delay/--ttl`` and ``show``.

The contract part (every backend) is in tests/contract/; here: the file backend's on-disk form and
its crash and hostile-file cases, generated ``expires`` values, Comms on every backend, and the CLI."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from waiting import eventually

from hybridcomms import Backoff, Comms, FileMailbox, Message, MessageError, Received, State
from hybridcomms._names import make_name, parse_compact, parse_name
from hybridcomms.backends.file.last_errors import SWEEP_AFTER
from hybridcomms.backends.memory import MemoryMailbox
from hybridcomms.cli import main

FAST = Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0)
HC = [sys.executable, "-m", "hybridcomms"]


def _errors(root: Path, agent: str = "A") -> Path:
    return root / agent / "errors"


def _one(folder: Path) -> str:
    names = [n for n in os.listdir(folder) if not n.endswith(".reason.json")]
    assert len(names) == 1, names
    return names[0]


# -- the Message: expires and ttl -----------------------------------------------------------------------


def test_expires_and_ttl_make_one_utc_expiry_that_survives_encoding() -> None:
    created = datetime(2030, 1, 2, 3, 4, 5, 123456, tzinfo=timezone.utc)
    by_ttl = Message("t", 1, created_at=created, ttl=600)
    by_delta = Message("t", 1, created_at=created, ttl=timedelta(minutes=10))
    at = datetime(2030, 1, 2, 5, 14, 5, 123456, tzinfo=timezone(timedelta(hours=2)))
    by_time = Message("t", 1, created_at=created, expires=at)
    assert by_ttl.expires == by_delta.expires == by_time.expires == created + timedelta(minutes=10)
    assert by_time.expires is not None and by_time.expires.tzinfo is timezone.utc
    assert by_ttl.to_dict()["expires"] == "2030-01-02T03:14:05.123456Z"
    assert Message.decode(by_ttl.encode()) == by_ttl
    assert Message.from_dict(by_ttl.to_dict()) == by_ttl
    assert Message("t", 1).expires is None and Message("t", 1).to_dict()["expires"] is None
    assert by_ttl != Message("t", 1, created_at=created, id=by_ttl.id)  # expires is part of equality


def test_expired_is_judged_at_a_given_time() -> None:
    m = Message("t", created_at=datetime(2030, 1, 1, tzinfo=timezone.utc), ttl=60)
    at = datetime(2030, 1, 1, 0, 1, tzinfo=timezone.utc).timestamp()
    assert not m.expired(at - 0.001) and m.expired(at) and m.expired(at + 1)
    assert not Message("t").expired()


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"ttl": 1, "expires": datetime(2030, 1, 1, tzinfo=timezone.utc)}, "not both"),
        ({"ttl": -1}, "ttl"),
        ({"ttl": float("nan")}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"ttl": "10m"}, "ttl"),
        ({"ttl": 1e300}, "9999"),
        ({"expires": datetime(2030, 1, 1)}, "timezone-aware"),
        ({"expires": 1893456000}, "datetime"),
    ],
)
def test_a_bad_expiry_is_refused_as_a_message_error(kw: dict[str, Any], match: str) -> None:
    with pytest.raises(MessageError, match=match):
        Message("t", 1, **kw)


def test_a_file_written_before_expires_existed_reads_as_never_expiring(tmp_path: Path) -> None:
    obj = Message("t", {"n": 1}, id="old").to_dict()
    del obj["expires"]
    mb = FileMailbox(tmp_path, "A", fsync="never")
    try:
        name = make_name("2M", "20260101T000000000000Z", "old", 0)
        (tmp_path / "A" / "new" / name).write_bytes(json.dumps(obj).encode())
        d = mb.claim()
        assert d is not None and d.message.id == "old" and d.message.expires is None
        d.ack()
    finally:
        mb.close()


# -- generated expires values in files someone else wrote -------------------------------------------------


def _expected(value: Any, now: float) -> str:
    """What the documented rules say about a file whose ``expires`` is ``value`` (judged at ``now``):
    null never expires; an ISO-8601 string (naive = UTC) or POSIX seconds is a time; anything else,
    or a time a UTC datetime cannot hold, makes the file a poison file."""
    if value is None:
        return "deliver"
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return "poison"
    if isinstance(value, int) and not -(2**63) <= value < 2**64:
        return "poison"  # JSON that orjson does not read
    if isinstance(value, (int, float)):
        try:
            datetime.fromtimestamp(value, timezone.utc)
        except (OverflowError, OSError, ValueError):
            return "poison"
        return "expired" if value <= now else "deliver"
    try:
        at = datetime.fromisoformat(value)
    except ValueError:
        text = value.strip()
        text = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        try:
            at = datetime.fromisoformat(text)
        except ValueError:
            return "poison"
    if at.tzinfo is None:
        at = at.replace(tzinfo=timezone.utc)
    try:
        ts = at.astimezone(timezone.utc).timestamp()
    except (OverflowError, ValueError):
        return "poison"
    return "expired" if ts <= now else "deliver"


_zones = st.sampled_from([timezone.utc, timezone(timedelta(hours=14)), timezone(timedelta(hours=-14)), None])
expires_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(min_value=-1e10, max_value=1e11),
    st.text(max_size=40),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
    st.datetimes(timezones=_zones).map(lambda d: d.isoformat()),
    st.datetimes(timezones=_zones).map(lambda d: d.isoformat().replace("+00:00", "Z")),
    st.sampled_from(
        [
            "9999-12-31T23:59:59.999999Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59-14:00",
            "0001-01-01T00:00:00+14:00",
            "2026-13-40T99:99:99Z",
            "",
            "Z",
            "2999-01-01",
        ]
    ),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(value=expires_values, native_name=st.booleans())
def test_a_hostile_expires_never_breaks_a_claim(value: Any, native_name: bool) -> None:
    with tempfile.TemporaryDirectory() as root:
        mb = FileMailbox(root, "a", fsync="never")
        try:
            good = Message("good", 1)
            mb.put(good)
            obj = Message("placed", {"k": 1}, id="placed").to_dict()
            obj["expires"] = value
            data = json.dumps(obj).encode()  # the stdlib: big integers too, as any writer may
            name = make_name("1H", "20260101T000000000000Z", "placed", 0) if native_name else "hand.json"
            new = Path(root, "a", "new")
            (new / name).write_bytes(data)
            before = time.time()
            delivered: dict[str, Message] = {}
            for _ in range(5):  # bounded: a claim never loops on one file
                d = mb.claim()
                if d is None:
                    break
                delivered[d.message.id] = d.message
                d.ack()
            after = time.time()
            assert mb.claim() is None and os.listdir(new) == []
            assert "good" in {m.topic for m in delivered.values()}
            outcomes = {_expected(value, before), _expected(value, after)}  # a value at the edge of now
            dead = Path(root, "a", "dead")
            if "placed" in delivered:
                assert "deliver" in outcomes
                assert not delivered["placed"].expired(before)
                assert os.listdir(dead) == []
                return
            dead_name = _one(dead)
            assert (dead / dead_name).read_bytes() == data  # its bytes as they were
            reason = json.loads((dead / (dead_name + ".reason.json")).read_text())
            if reason["reason"] == "expired":
                assert "expired" in outcomes
                assert reason["id"] == "placed" and reason["attempts"] == 0
            else:
                assert outcomes == {"poison"}, reason
        finally:
            mb.close()


# -- the last error on disk ------------------------------------------------------------------------------


def test_the_last_error_is_one_json_file_a_person_can_read(root: Path) -> None:
    mb = FileMailbox(root, "A", fsync="always", backoff=FAST)
    try:
        mb.put(Message("t", 1, id="m1"))
        d = mb.claim()
        assert d is not None
        claimed = d.name
        d.nack(delay=30, error="ValueError: bad\nsecond line")
        assert os.listdir(_errors(root)) == ["m1.json"]
        rec = json.loads((_errors(root) / "m1.json").read_text())
        assert rec["id"] == "m1" and rec["error"] == "ValueError: bad\nsecond line"
        assert rec["attempt"] == 1 and rec["message_file"] == claimed and rec["agent"] == "A"
        info = parse_name(_one(root / "A" / "new"))
        assert info is not None
        due = datetime.fromisoformat(rec["due"].replace("Z", "+00:00")).timestamp()
        assert due == pytest.approx(parse_compact(info.due), abs=1e-6)  # the due time of its name
        assert os.listdir(root / "A" / "tmp") == []
    finally:
        mb.close()


def test_an_ack_or_a_dead_letter_takes_the_record_away(root: Path) -> None:
    mb = FileMailbox(root, "A", fsync="never", backoff=FAST)
    try:
        mb.put_many([Message("t", 1, id="acked"), Message("t", 1, id="buried")])
        first, second = mb.claim(), mb.claim()
        assert first is not None and second is not None
        for d in (first, second):
            d.nack(delay=0, error=f"{d.message.id} failed once")
        assert sorted(os.listdir(_errors(root))) == ["acked.json", "buried.json"]
        for _ in range(2):
            d = mb.claim()
            assert d is not None
            if d.message.id == "acked":
                d.ack()
            else:
                d.dead("enough")
        assert os.listdir(_errors(root)) == []
        dead = root / "A" / "dead"
        reason = json.loads((dead / (_one(dead) + ".reason.json")).read_text())
        assert reason["last_error"] == "buried failed once" and reason["last_error_attempt"] == 1
    finally:
        mb.close()


def test_a_mailbox_without_an_errors_folder_is_read_as_one_with_no_errors(root: Path) -> None:
    FileMailbox(root, "A", fsync="never").close()
    assert not _errors(root).exists()  # made at the first nack that has an error
    mb = FileMailbox(root, "A", fsync="never", create=False)
    try:
        mb.put(Message("t", 1, id="m"))
        assert mb.get("m") is not None and mb.get("m").last_error is None  # type: ignore[union-attr]
        d = mb.claim()
        assert d is not None
        d.nack(delay=60, error="boom")  # create=False still keeps it: the mailbox exists
        info = mb.get("m")
        assert info is not None and info.last_error is not None and info.last_error.error == "boom"
    finally:
        mb.close()


# Children that die at a chosen step (SIGKILL, as a crash does): the step is replaced by a kill.
_CHILD = r"""
import os, signal, sys
import hybridcomms.backends.file.last_errors as le
from hybridcomms import Backoff, FileMailbox
root, step = sys.argv[1], sys.argv[2]
mb = FileMailbox(root, "A", fsync="always", backoff=Backoff(initial=0.0, factor=1.0, maximum=0.0, jitter=0.0))
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
d = mb.claim()
if step == "between-record-and-requeue":
    mb.folders.place = die  # the NACK move: the record is written, the message not moved yet
    d.nack(delay=0, error="ValueError: died in the nack")
elif step == "between-ack-and-removal":
    d.nack(delay=0, error="ValueError: failed once")
    d = mb.claim()
    le.drop = die  # the ack moved the message to done/, the record is not removed yet
    d.ack()
sys.exit(3)  # never reached
"""


def _die_at(root: Path, step: str) -> None:
    p = subprocess.run(
        [sys.executable, "-c", _CHILD, str(root), step], capture_output=True, text=True, timeout=60
    )
    assert p.returncode == -signal.SIGKILL, p.stderr


def test_a_crash_between_the_record_and_the_requeue_leaves_a_true_record(root: Path) -> None:
    mb = FileMailbox(root, "A", fsync="never", backoff=FAST)
    try:
        mb.put(Message("t", 1, id="m"))
        _die_at(root, "between-record-and-requeue")
        held = mb.get("m")
        assert held is not None and held.state is State.PROCESSING
        assert held.last_error is not None and held.last_error.error == "ValueError: died in the nack"
        report = mb.recover()
        assert report.returned == ["m"] and report.records_removed == []
        back = mb.get("m")
        assert back is not None and back.state is State.NEW
        assert back.last_error is not None and back.last_error.attempt == 1
        d = mb.claim()
        assert d is not None and d.attempt == 2
        d.ack()
        assert os.listdir(_errors(root)) == []
    finally:
        mb.close()


def test_a_record_left_by_a_crash_after_the_ack_is_found_and_removed(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mb = FileMailbox(root, "A", fsync="never", backoff=FAST)
    try:
        mb.put(Message("t", 1, id="m"))
        _die_at(root, "between-ack-and-removal")
        done = mb.get("m")
        assert done is not None and done.state is State.DONE and done.last_error is None
        assert os.listdir(_errors(root)) == ["m.json"]  # left over
        assert mb.recover().records_removed == []  # too young: a message may be moving right now
    finally:
        mb.close()
    old = time.time() - SWEEP_AFTER - 5
    os.utime(_errors(root) / "m.json", (old, old))
    assert main(["--root", str(root), "doctor", "A", "--json"]) == 1
    findings = json.loads(capsys.readouterr().out)["findings"]
    assert [(f["kind"], f["where"]) for f in findings] == [("stale-error-record", "errors/m.json")]
    assert main(["--root", str(root), "doctor", "A", "--fix", "--json"]) == 0
    fixed = json.loads(capsys.readouterr().out)
    assert fixed["healthy"] and [f["fixed"] for f in fixed["findings"]] == [True]
    assert os.listdir(_errors(root)) == []


def test_recovery_keeps_the_record_of_a_waiting_message_however_old(root: Path) -> None:
    mb = FileMailbox(root, "A", fsync="never", backoff=FAST)
    try:
        mb.put(Message("t", 1, id="m"))
        d = mb.claim()
        assert d is not None
        d.nack(delay=3600, error="try again in an hour")
        old = time.time() - 10 * SWEEP_AFTER
        os.utime(_errors(root) / "m.json", (old, old))
        report = mb.recover(now=time.time() + 10 * SWEEP_AFTER)
        assert report.records_removed == [] and not report.errors
        info = mb.get("m")
        assert info is not None and info.last_error is not None
        assert info.last_error.error == "try again in an hour"
    finally:
        mb.close()


def test_recovery_clears_what_others_placed_in_errors_but_never_a_folder(root: Path) -> None:
    mb = FileMailbox(root, "A", fsync="never")
    try:
        mb.put(Message("t", 1, id="m"))
        d = mb.claim()
        assert d is not None
        d.nack(delay=3600, error="kept")
        errors = _errors(root)
        (errors / "junk\x1b[31m.txt").write_text("x")  # a name with a terminal escape
        (errors / "gone-message.json").write_text('{"error": "old"}')
        os.symlink("/etc/passwd", errors / "link.json")
        (errors / "a-folder").mkdir()
        old = time.time() - SWEEP_AFTER - 5
        for name in os.listdir(errors):
            os.utime(errors / name, (old, old), follow_symlinks=False)
        report = mb.recover()
        assert sorted(os.listdir(errors)) == ["a-folder", "m.json"]
        assert len(report.records_removed) == 3
        assert [w for w, _ in report.errors] == ["errors/a-folder"]
        assert os.path.exists("/etc/passwd")
    finally:
        mb.close()


# -- hostile errors/ entries -------------------------------------------------------------------------------


def test_a_record_that_does_not_read_is_shown_as_such_and_never_blocks(root: Path) -> None:
    mb = FileMailbox(root, "A", fsync="never")
    try:
        for mid in ("fifo", "garbage", "typed", "huge"):
            mb.put(Message("t", 1, id=mid))
        errors = _errors(root)
        errors.mkdir()
        os.mkfifo(errors / "fifo.json")  # a reader that opened it would wait forever
        (errors / "garbage.json").write_bytes(b"\xff{not json")
        (errors / "typed.json").write_text('{"error": 42, "attempt": "x"}')
        (errors / "huge.json").write_bytes(b"[" * (1 << 20))
        for mid in ("fifo", "garbage", "typed", "huge"):
            info = mb.get(mid)
            assert info is not None and info.last_error is not None, mid
            assert info.last_error.error.startswith("(unreadable error record"), mid
            assert info.last_error.attempt == 0
    finally:
        mb.close()


def test_a_nack_goes_on_when_its_record_cannot_be_written(
    root: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    mb = FileMailbox(root, "A", fsync="never")
    try:
        mb.put(Message("t", 1, id="m"))
        (_errors(root) / "m.json").mkdir(parents=True)  # a folder where the record goes
        d = mb.claim()
        assert d is not None
        with caplog.at_level(logging.WARNING, logger="hybridcomms.mailbox"):
            d.nack(delay=0, error="boom")
        assert "not kept" in caplog.text
        assert mb.get("m") is not None and mb.get("m").state is State.NEW  # type: ignore[union-attr]
        assert os.listdir(root / "A" / "tmp") == []
    finally:
        mb.close()
    # errors/ itself a link to a folder elsewhere: never written through
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    mb = FileMailbox(root, "B", fsync="never")
    try:
        os.symlink(elsewhere, _errors(root, "B"))
        mb.put(Message("t", 1, id="m"))
        d = mb.claim()
        assert d is not None
        d.nack(delay=0, error="boom")
        assert os.listdir(elsewhere) == []
        info = mb.get("m")
        assert info is not None and info.state is State.NEW and info.last_error is None
        d = mb.claim()
        assert d is not None
        d.ack()
    finally:
        mb.close()


def test_a_long_error_is_kept_cut(root: Path) -> None:
    mb = FileMailbox(root, "A", fsync="never")
    try:
        mb.put(Message("t", 1, id="m"))
        d = mb.claim()
        assert d is not None
        d.nack(delay=60, error="x" * 100_000)
        info = mb.get("m")
        assert info is not None and info.last_error is not None
        assert len(info.last_error.error) == 4096 and info.last_error.error.endswith("…")
    finally:
        mb.close()


# -- Comms on every backend: id, delay, ttl, and the handler's error ------------------------------------


@pytest.fixture(params=["file", "memory", pytest.param("redis", marks=pytest.mark.redis)])
def comms(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Callable[[str], Comms]]:
    url: str | None = None
    cleanup: list[Callable[[], None]] = []
    if request.param == "memory":
        store = uuid.uuid4().hex
        url = f"memory://{store}"
        cleanup.append(lambda: MemoryMailbox.forget_store(store))
    elif request.param == "redis":
        import redis

        url = request.getfixturevalue("redis_url")
        client = redis.Redis.from_url(url)
        client.flushdb()  # Comms uses the default namespace
        cleanup += [client.flushdb, client.close]
    opened: list[Comms] = []

    def make(agent: str) -> Comms:
        c = Comms(agent, root=tmp_path / "root", url=url, fsync="never", backoff=FAST, share_bus=False)
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()
    for fn in cleanup:
        fn()


def test_comms_send_with_an_id_delivers_it_once(comms: Callable[[str], Comms]) -> None:
    a, b = comms("Sender"), comms("Receiver")
    first = a.send("Receiver", "task.build", {"n": 1}, id="order-42", route="durable")
    again = a.send("Receiver", "task.build", {"n": 2}, id="order-42", route="durable")
    assert first.message.id == again.message.id == "order-42"
    assert first.durable_to == again.durable_to == ("Receiver",)
    seen: list[Any] = []
    b.subscribe("task.*", lambda m: seen.append(m.payload))
    assert b.process_one() and not b.process_one()
    assert seen == [{"n": 1}]
    a.send("Receiver", "task.build", {"n": 3}, id="order-42", route="durable")  # acked: still once
    assert not b.process_one()
    b.subscribe("audit.*", lambda m: seen.append(m.payload))
    a.publish("audit.login", "x", id="audit-1", route="durable")
    a.publish("audit.login", "y", id="audit-1", route="durable")
    assert b.process_one() and not b.process_one()
    assert seen == [{"n": 1}, "x"]


def test_comms_send_with_a_delay_holds_the_message_back(comms: Callable[[str], Comms]) -> None:
    a, b = comms("Sender"), comms("Receiver")
    seen: list[Received] = []
    b.subscribe("task.*", seen.append)
    t0 = time.monotonic()
    a.send("Receiver", "task.later", 1, delay=0.5, route="durable")
    assert not b.process_one()  # not due yet
    assert b.mailbox.stats().delayed == 1

    def handled() -> list[Received]:
        b.process_one(timeout=1)
        return seen

    eventually(handled, "the delayed message handled once due", 15)
    assert time.monotonic() - t0 >= 0.45 and seen[0].payload == 1
    with pytest.raises(ValueError, match="cannot be delayed"):
        a.send("Receiver", "task.later", 2, delay=5, route="ephemeral")


def test_comms_never_hands_an_expired_message_to_a_handler(comms: Callable[[str], Comms]) -> None:
    a, b = comms("Sender"), comms("Receiver")
    seen: list[Received] = []
    b.subscribe("task.*", seen.append)
    sent = a.send("Receiver", "task.stale", 1, ttl=0, route="durable")
    a.send("Receiver", "task.fresh", 2, expires=datetime.now(timezone.utc) + timedelta(hours=1))
    assert b.process_one() and not b.process_one()
    assert [m.topic for m in seen] == ["task.fresh"]
    assert seen[0].expires is not None
    dead = b.mailbox.get(sent.message.id)
    assert dead is not None and dead.state is State.DEAD and dead.reason is not None
    assert dead.reason["reason"] == "expired"


def test_comms_keeps_the_handlers_error_for_show(comms: Callable[[str], Comms]) -> None:
    a, b = comms("Sender"), comms("Receiver")

    def fail(m: Received) -> None:
        raise RuntimeError(f"cannot build {m.payload}")

    b.subscribe("task.*", fail)
    sent = a.send("Receiver", "task.build", "x", route="durable")
    assert b.process_one()
    info = b.mailbox.get(sent.message.id)
    assert info is not None and info.state is State.NEW and info.last_error is not None
    assert info.last_error.error == "RuntimeError: cannot build x" and info.last_error.attempt == 1


def test_a_request_expires_when_its_wait_ends(comms: Callable[[str], Comms]) -> None:
    a, b = comms("Asker"), comms("Replier")
    before = datetime.now(timezone.utc)
    with pytest.raises(Exception, match="no reply"):
        a.request("Replier", "query.slow", timeout=0.2)
    (waiting,) = b.mailbox.list(State.NEW) or b.mailbox.list(State.DEAD)
    m = b.mailbox.read(waiting)
    assert m.expires is not None and before < m.expires <= before + timedelta(seconds=5)
    assert "hybridcomms.expires_at" not in m.headers  # one expiry, in the envelope
    b.subscribe("query.*", lambda r: b.reply(r, "late"))
    assert not b.process_one()


# -- work: a failing command's error is kept ---------------------------------------------------------------


def test_work_keeps_a_failing_commands_error_with_the_message(root: Path) -> None:
    mb = FileMailbox(root, "A", fsync="never")
    try:
        mb.put(Message("job", 1, id="job-1"))
        p = subprocess.run(
            [
                *HC,
                "--root",
                str(root),
                "work",
                "A",
                "--max-messages",
                "1",
                "--retry-delay",
                "600",
                "--",
                sys.executable,
                "-c",
                "import sys; sys.stderr.write('the disk is on fire'); sys.exit(4)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert p.returncode == 0, p.stderr
        info = mb.get("job-1")
        assert info is not None and info.state is State.NEW and info.last_error is not None
        assert "exit status 4" in info.last_error.error and "disk is on fire" in info.last_error.error
        assert info.due_at is not None and info.due_at > time.time() + 500
    finally:
        mb.close()


# -- the CLI ---------------------------------------------------------------------------------------------


def hc(
    root: Path | None, *args: str, url: str | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}
    head = ["--url", url] if url is not None else ["--root", str(root)]
    return subprocess.run([*HC, *head, *args], capture_output=True, text=True, timeout=60, env=env, cwd=cwd)


def _cli(
    root: Path | None, url: str | None, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[int, str]:
    """The same command in this process (the entry point itself): exit code and stdout."""
    head = ["--url", url] if url is not None else ["--root", str(root)]
    capsys.readouterr()
    code = main([*head, *args])
    return code, capsys.readouterr().out


def _send_delay_ttl_show(root: Path | None, url: str | None, capsys: pytest.CaptureFixture[str]) -> None:
    """send --delay / --ttl and show (text and --json) as real subprocesses; the rest of the story
    (recv, a failed attempt, ls) through the entry point in this process. Files or Redis."""
    sent_at = time.monotonic()  # the bounds below allow for however long the commands take (a loaded machine)
    later = hc(root, "send", "--to", "W", "--topic", "task.later", "--delay", "10m", "--ttl", "2h", url=url)
    assert later.returncode == 0, later.stderr
    later_id = later.stdout.strip()
    shown = hc(root, "show", later_id, url=url)
    assert shown.returncode == 0, shown.stderr
    assert "due: " in shown.stdout and "(in 10m)" in shown.stdout
    assert "expires: " in shown.stdout and "(in 2h)" in shown.stdout
    as_json = hc(root, "show", later_id, "--json", url=url)
    assert as_json.returncode == 0, as_json.stderr
    data = json.loads(as_json.stdout)
    took = time.monotonic() - sent_at + 1  # seconds since the send, rounding included
    assert data["state"] == "new" and 600 - took <= data["due_in"] <= 600
    assert 7200 - took <= data["expires_in"] <= 7200 and data["message"]["expires"].endswith("Z")
    assert _cli(root, url, capsys, "recv", "W")[0] == 3  # not due for ten minutes

    code, out = _cli(root, url, capsys, "send", "--to", "W", "--topic", "task.stale", "--ttl", "0s")
    assert code == 0
    stale_id = out.strip()
    assert _cli(root, url, capsys, "recv", "W")[0] == 3  # expired at claim: never handed out
    dead = json.loads(_cli(root, url, capsys, "show", stale_id, "--json")[1])
    assert dead["state"] == "dead" and dead["dead_reason"] == "expired"

    # a failed attempt: recv --no-ack gives it back with an error, show says why and when
    code, out = _cli(root, url, capsys, "send", "--to", "W", "--topic", "task.now")
    now_id = out.strip()
    failed_at = time.monotonic()
    code, out = _cli(root, url, capsys, "recv", "W", "--no-ack", "--lease", "240")
    assert code == 0 and json.loads(out)["id"] == now_id
    text = _cli(root, url, capsys, "show", now_id)[1]
    assert "last error: attempt 1 failed" in text and "recv --no-ack" in text
    assert "(in 4m)" in text
    retry = json.loads(_cli(root, url, capsys, "show", now_id, "--json")[1])
    assert retry["last_error"] == "recv --no-ack: printed, not acknowledged"
    assert retry["failed_attempt"] == 1 and retry["failed_at"].endswith("Z")
    took = time.monotonic() - failed_at + 1
    assert 240 - took <= retry["due_in"] <= 240 and retry["due"].endswith("Z")
    ls = json.loads(_cli(root, url, capsys, "ls", "W", "--json")[1])
    errors = {r["id"]: r.get("last_error") for r in ls}
    assert errors[now_id] == "recv --no-ack: printed, not acknowledged"
    assert errors[later_id] is None


def test_send_delay_ttl_and_show_on_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _send_delay_ttl_show(tmp_path / "root", None, capsys)


@pytest.mark.redis
def test_send_delay_ttl_and_show_on_redis(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    client.flushdb()
    try:
        _send_delay_ttl_show(None, redis_url, capsys)
    finally:
        client.flushdb()
        client.close()


def test_bad_delays_and_ttls_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "root"
    usage = hc(root, "send", "--to", "W", "--topic", "t", "--delay", "soon")
    assert usage.returncode == 2 and "not an age" in usage.stderr
    too_far = hc(root, "send", "--to", "W", "--topic", "t", "--delay", "99999w")
    assert too_far.returncode == 1 and len(too_far.stderr.strip().splitlines()) == 1
    assert "delay" in too_far.stderr
    assert main(["--root", str(root), "send", "--to", "W", "--topic", "t", "--ttl", "9999999w"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "ttl" in err
    assert not (root / "W" / "new").exists() or os.listdir(root / "W" / "new") == []


def test_send_refuses_a_delay_for_an_agent_on_the_legacy_layout(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "Old").mkdir(parents=True)
    (root / "Old" / "inbox.json").write_text("[]")
    with pytest.raises(SystemExit) as exc:
        main(["--root", str(root), "send", "--to", "Old", "--topic", "t", "--delay", "1m"])
    assert "legacy" in str(exc.value.code) and "--adopt" in str(exc.value.code)
    assert json.loads((root / "Old" / "inbox.json").read_text()) == []


def test_send_with_the_same_id_and_a_delay_is_one_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = str(tmp_path / "root")
    args = ["--root", root, "send", "--to", "W", "--topic", "t", "--id", "once", "--delay", "1h"]
    assert main(args) == 0 and main(args) == 0
    assert "already in W's mailbox (new/)" in capsys.readouterr().err
    assert len(os.listdir(tmp_path / "root" / "W" / "new")) == 1


def test_show_prints_another_agents_error_text_as_one_harmless_line(
    root: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    mb = FileMailbox(root, "A", fsync="never")
    try:
        mb.put(Message("t", 1, id="m"))
        d = mb.claim()
        assert d is not None
        d.nack(delay=60, error="bad\x1b[2J\nrm -rf /\u202e")
    finally:
        mb.close()
    assert main(["--root", str(root), "show", "m"]) == 0
    out = capsys.readouterr().out
    (line,) = [ln for ln in out.splitlines() if ln.startswith("last error")]
    assert "\x1b" not in out and "\u202e" not in out
    assert line.endswith("bad\\x1b[2J\\nrm -rf /\\u202e")  # as Python writes them (hybridcomms._text)
    assert main(["--root", str(root), "show", "m", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["last_error"] == "bad\x1b[2J\nrm -rf /\u202e"
