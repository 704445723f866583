"""Generated poison files: whatever lands in new/ between good messages, every good message is
delivered once, every bad file ends in dead/ with a reason and its bytes, and claim never raises
anything but the documented errors and never hangs."""

from __future__ import annotations

import json
import os
import string
import tempfile
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridcomms import FileMailbox, Message
from hybridcomms.errors import MailboxIOError

NAME_MAX = 255

# A file name: any bytes but "/" and NUL, 1..NAME_MAX long (not "." or ".."), as os.listdir gives it.
name_bytes = st.binary(min_size=1, max_size=NAME_MAX).map(
    lambda b: b.replace(b"/", b"_").replace(b"\0", b"_")
)
names = name_bytes.filter(lambda b: b not in (b".", b"..")).map(os.fsdecode)
long_names = st.integers(min_value=200, max_value=NAME_MAX).map(lambda n: "n" * n)
native_like = st.builds(
    lambda rank, rest, a: f"{rank}.{rest}.a{a}.json",
    st.sampled_from(["0C", "1H", "2M", "3L"]),
    st.text(alphabet=string.ascii_letters + string.digits + ".:", min_size=1, max_size=60),
    st.integers(min_value=0, max_value=999_999),
)
file_names = st.one_of(names, long_names, native_like)

extreme_times = st.sampled_from(
    [
        "9999-12-31T23:59:59-14:00",
        "0001-01-01T00:00:00+14:00",
        "9999-12-31T23:59:59.999999Z",
        "0001-01-01T00:00:00Z",
        "2026-13-40T99:99:99Z",
        "",
        "Z",
    ]
)
extreme_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=300),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
    extreme_times,
)
FIELDS = [
    "version",
    "id",
    "topic",
    "sender",
    "recipient",
    "created_at",
    "priority",
    "correlation_id",
    "reply_to",
    "headers",
    "payload",
    "message_id",
    "type",
    "message_type",
    "timestamp_utc",
    "timestamp",
    "body",
]


def _mutated(base: dict[str, Any], changes: dict[str, Any]) -> bytes:
    obj = {**base, **changes}
    return json.dumps(obj).encode()  # the stdlib writes big integers too, as legacy writers did


native_objects = st.builds(
    _mutated,
    st.just(orjson.loads(Message("t", 1, id="base").encode())),
    st.dictionaries(st.sampled_from(FIELDS), extreme_values, min_size=1, max_size=4),
)
legacy_objects = st.builds(
    _mutated,
    st.just({"message_id": "legacy", "type": "TASK", "body": 1}),
    st.dictionaries(st.sampled_from(FIELDS), extreme_values, min_size=1, max_size=4),
)
contents = st.one_of(
    native_objects,
    legacy_objects,
    st.binary(max_size=2000),
    st.sampled_from([b"", b"{", b"[]", b"null", b'"x"', b"1e999999", b"[" * 5000, b"\xff\xfe"]),
    st.integers(min_value=1, max_value=3).map(lambda k: b" " * (k * 70000)),  # over the size limit
)
bad_files = st.lists(st.tuples(file_names, contents), min_size=1, max_size=12, unique_by=lambda t: t[0])


@pytest.mark.slow
@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bad=bad_files, goods=st.integers(min_value=1, max_value=4))
def test_poison_files_never_stop_the_good_messages(bad: list[tuple[str, bytes]], goods: int) -> None:
    with tempfile.TemporaryDirectory() as root:
        mb = FileMailbox(root, "a", fsync="never", max_message_size=100_000)
        try:
            new = os.path.join(root, "a", "new")
            good_ids = []
            placed: dict[str, bytes] = {}
            for i in range(goods):
                m = Message("good", i)
                mb.put(m)
                good_ids.append(m.id)
                if i < len(bad):
                    name, data = bad[i]
                    if os.path.lexists(os.path.join(new, name)):
                        continue
                    with open(os.path.join(new, name), "xb") as f:
                        f.write(data)
                    placed[name] = data
            for name, data in bad[goods:]:
                if not os.path.lexists(os.path.join(new, name)):
                    with open(os.path.join(new, name), "xb") as f:
                        f.write(data)
                    placed[name] = data
            delivered: list[str] = []
            for _ in range(3 * (goods + len(bad)) + 5):  # bounded: never hangs
                try:
                    d = mb.claim()
                except MailboxIOError:
                    raise
                if d is None:
                    break
                delivered.append(d.message.id)
                d.ack()
            assert mb.claim() is None
            assert os.listdir(new) == []
            for gid in good_ids:
                assert delivered.count(gid) == 1
            dead = os.path.join(root, "a", "dead")
            dead_names = set(os.listdir(dead))
            dead_bytes = {}
            for n in dead_names:
                if not n.endswith(".reason.json"):
                    with open(os.path.join(dead, n), "rb") as f:
                        dead_bytes[n] = f.read()
                    assert n + ".reason.json" in dead_names, n
                    with open(os.path.join(dead, n + ".reason.json"), "rb") as f:
                        reason = orjson.loads(f.read())
                    assert reason["reason"]
            # every placed file was delivered (it was a valid message) or is in dead/ with its bytes
            dead_payloads = list(dead_bytes.values())
            delivered_extra = len(delivered) - len(good_ids)
            undelivered = [d for d in placed.values() if d not in dead_payloads]
            assert len(undelivered) <= delivered_extra
            assert os.listdir(os.path.join(root, "a", "processing")) == []
            assert os.listdir(os.path.join(root, "a", "tmp")) == []
        finally:
            mb.close()
