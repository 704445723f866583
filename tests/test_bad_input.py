"""Bad input never crashes a consumer, never loses bytes, and always says what was wrong."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

from hybridcomms import (
    FileMailbox,
    InvalidAgentIdError,
    Message,
    MessageTooLargeError,
    State,
    UnsafePathError,
    check_agent_id,
)

Make = Callable[..., FileMailbox]


@pytest.mark.parametrize(
    "agent_id",
    [
        "..",
        ".",
        "../x",
        "a/b",
        "",
        "x\x00y",
        ".hidden",
        "-flag",
        "a" * 129,
        "a b",
        "tab\t",
        "back\\slash",
        None,
        7,
    ],
)
def test_unsafe_agent_ids_are_refused_with_a_clear_error(root: Path, agent_id: object) -> None:
    with pytest.raises(InvalidAgentIdError, match="agent id"):
        FileMailbox(root, agent_id)  # type: ignore[arg-type]
    assert not root.exists() or os.listdir(root) == []


@pytest.mark.parametrize(
    "agent_id", ["Agent-1", "Captain-THEA", "Agent1", "agent_7", "a" * 128, "x.y@host+1"]
)
def test_ordinary_agent_ids_work(root: Path, agent_id: str) -> None:
    assert check_agent_id(agent_id) == agent_id
    with FileMailbox(root, agent_id, fsync="never") as mb:
        mb.put(Message("t"))
        assert mb.claim() is not None


def test_an_agent_id_that_is_not_a_string_is_also_a_value_error(root: Path) -> None:
    with pytest.raises(ValueError):
        FileMailbox(root, 42)  # type: ignore[arg-type]


def drop(mb: FileMailbox, name: str, data: bytes) -> Path:
    path = mb.path / "new" / name
    path.write_bytes(data)
    return path


def dead_reason(mb: FileMailbox, name: str) -> str:
    (info,) = [i for i in mb.list(State.DEAD) if i.name == name]
    assert info.reason is not None
    return str(info.reason["reason"])


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"{broken json", "invalid JSON"),
        (b"", "empty file"),
        (b'"just a string"', "JSON object"),
        (b'{"payload": 1}', "no topic"),
        (b"\xff\xfe\x00garbage", "invalid JSON"),
    ],
)
def test_an_undecodable_file_goes_to_dead_with_its_bytes_intact_and_delivery_goes_on(
    mailbox: FileMailbox, data: bytes, why: str
) -> None:
    drop(mailbox, "2M.20250101T000000000000Z.bad.a0.json", data)
    mailbox.put(Message("good"))
    d = mailbox.claim()
    assert d is not None and d.message.topic == "good"
    d.ack()
    assert (mailbox.path / "dead" / "2M.20250101T000000000000Z.bad.a0.json").read_bytes() == data
    assert why in dead_reason(mailbox, "2M.20250101T000000000000Z.bad.a0.json")


def test_a_file_over_the_size_limit_goes_to_dead_unread(make_mailbox: Make) -> None:
    mb = make_mailbox(max_message_size=1000)
    big = orjson.dumps({"type": "t", "body": "x" * 5000})
    drop(mb, "huge.json", big)
    assert mb.claim() is None
    assert (mb.path / "dead" / "huge.json").read_bytes() == big
    assert "too large" in dead_reason(mb, "huge.json")


def test_putting_a_message_over_the_limit_raises_before_writing(make_mailbox: Make) -> None:
    mb = make_mailbox(max_message_size=1000)
    with pytest.raises(MessageTooLargeError):
        mb.put(Message("t", "x" * 5000))
    assert os.listdir(mb.path / "new") == [] and os.listdir(mb.path / "tmp") == []


def test_a_symlink_in_new_is_dead_lettered_not_followed(mailbox: FileMailbox, tmp_path: Path) -> None:
    secret = tmp_path / "secret.json"
    secret.write_bytes(orjson.dumps({"type": "t", "body": "do not read"}))
    os.symlink(secret, mailbox.path / "new" / "link.json")
    assert mailbox.claim() is None
    assert os.path.islink(mailbox.path / "dead" / "link.json")
    assert "symlink" in dead_reason(mailbox, "link.json")
    assert secret.read_bytes()  # the target is untouched


def test_a_fifo_in_new_is_dead_lettered_without_blocking(mailbox: FileMailbox) -> None:
    os.mkfifo(mailbox.path / "new" / "pipe.json")
    assert mailbox.claim() is None
    assert "not a regular file" in dead_reason(mailbox, "pipe.json")


def test_a_folder_in_new_is_dead_lettered(mailbox: FileMailbox) -> None:
    (mailbox.path / "new" / "folder.json").mkdir()
    (mailbox.path / "new" / "folder.json" / "inner").write_text("kept")
    assert mailbox.claim() is None
    assert (mailbox.path / "dead" / "folder.json" / "inner").read_text() == "kept"


def test_a_valid_message_dropped_into_new_by_hand_is_delivered(mailbox: FileMailbox) -> None:
    legacy = {
        "message_id": "legacy-1",
        "type": "TASK_COMMAND",
        "body": {"x": 1},
        "sender_agent_id": "Agent-2",
    }
    drop(mailbox, "handmade.json", orjson.dumps(legacy))
    d = mailbox.claim()
    assert d is not None
    assert (d.message.id, d.message.topic, d.message.payload) == ("legacy-1", "TASK_COMMAND", {"x": 1})
    assert d.name.endswith(".legacy-1.a1.json")
    d.ack()
    assert mailbox.get("legacy-1") is not None


def test_two_bad_files_with_the_same_name_are_both_kept_in_dead(mailbox: FileMailbox) -> None:
    drop(mailbox, "oops.json", b"first")
    assert mailbox.claim() is None
    drop(mailbox, "oops.json", b"second")
    assert mailbox.claim() is None
    dead = mailbox.path / "dead"
    assert (dead / "oops.json").read_bytes() == b"first"
    assert (dead / "oops.json.1").read_bytes() == b"second"


def test_a_file_named_like_a_reason_file_cannot_be_mistaken_for_one(mailbox: FileMailbox) -> None:
    drop(mailbox, "x.reason.json", b"not a reason")
    assert mailbox.claim() is None
    assert (mailbox.path / "dead" / "x.reason.json.data").read_bytes() == b"not a reason"


def test_a_symlinked_mailbox_folder_is_refused(root: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    root.mkdir()
    os.symlink(elsewhere, root / "Agent-1")
    with pytest.raises(UnsafePathError, match="symlink"):
        FileMailbox(root, "Agent-1")
    assert os.listdir(elsewhere) == []


def test_a_symlinked_state_folder_is_refused(root: Path, tmp_path: Path) -> None:
    (root / "Agent-1").mkdir(parents=True)
    os.symlink(tmp_path, root / "Agent-1" / "new")
    with pytest.raises(UnsafePathError, match="symlink"):
        FileMailbox(root, "Agent-1")


def test_a_file_where_a_folder_should_be_is_refused(root: Path) -> None:
    (root / "Agent-1").mkdir(parents=True)
    (root / "Agent-1" / "done").write_text("")
    with pytest.raises(UnsafePathError, match="not a folder"):
        FileMailbox(root, "Agent-1")


def test_the_root_itself_may_be_a_symlink(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir()
    os.symlink(real, tmp_path / "link")
    with FileMailbox(tmp_path / "link", "Agent-1", fsync="never") as mb:
        mb.put(Message("t"))
    assert os.listdir(real / "Agent-1" / "new")


def test_opening_a_missing_mailbox_without_create_is_a_clear_error(root: Path) -> None:
    with pytest.raises(OSError, match="cannot open mailbox root"):
        FileMailbox(root, "Nobody", create=False)
    root.mkdir()
    with pytest.raises(OSError, match="no mailbox folder"):
        FileMailbox(root, "Nobody", create=False)
    assert os.listdir(root) == []


def _native(**changes: object) -> dict[str, object]:
    obj = Message("t", {"k": 1}, id="abc123").to_dict()
    obj.update(changes)
    return obj


@pytest.mark.parametrize(
    ("changes", "why"),
    [
        ({"version": 12}, "newer"),
        ({"topic": "bad\x01topic"}, "topic"),
        ({"topic": 7}, "topic"),
        ({"priority": ["HIGH"]}, "priority"),
        ({"priority": "EXTREME"}, "priority"),
        ({"created_at": "yesterday"}, "timestamp"),
        ({"headers": ["x"]}, "headers"),
        ({"sender": 5}, "sender"),
    ],
)
def test_a_native_looking_file_with_a_bad_field_goes_to_dead_with_the_field_named(
    mailbox: FileMailbox, changes: dict[str, object], why: str
) -> None:
    """The claim path decodes our own form without the general constructor; whatever it does not
    accept is decided by the general decoder, which names the problem."""
    name = "2M.20250101T000000000000Z.abc123.a0.json"
    drop(mailbox, name, orjson.dumps(_native(**changes)))
    assert mailbox.claim() is None
    assert why in dead_reason(mailbox, name)


def test_a_file_whose_name_and_content_disagree_on_the_id_is_delivered_under_its_name(
    mailbox: FileMailbox,
) -> None:
    drop(mailbox, "2M.20250101T000000000000Z.other-id.a2.json", orjson.dumps(_native()))
    d = mailbox.claim()
    assert d is not None
    assert d.message.id == "abc123" and d.attempt == 3
    assert d.name == "2M.20250101T000000000000Z.other-id.a3.json"
    d.ack()


def test_a_native_file_with_extra_fields_still_decodes(mailbox: FileMailbox) -> None:
    drop(mailbox, "2M.20250101T000000000000Z.abc123.a0.json", orjson.dumps(_native(extra="kept?")))
    d = mailbox.claim()
    assert d is not None and d.message.id == "abc123" and d.message.payload == {"k": 1}
    assert "extra" not in vars(d.message)
    d.ack()


def test_a_decoded_message_equals_the_one_that_was_put(mailbox: FileMailbox) -> None:
    sent = Message(
        "t",
        {"deep": [1, {"x": None}]},
        sender="a",
        recipient="b",
        correlation_id="c",
        reply_to="r",
        headers={"h": 1},
        priority="HIGH",
    )
    mailbox.put(sent)
    d = mailbox.claim()
    assert d is not None
    assert d.message == sent
    assert vars(d.message).keys() == vars(sent).keys()
    d.ack()


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")], ids=["nan", "inf", "-inf"])
def test_nan_and_infinities_are_refused_not_written_as_null(mailbox: FileMailbox, bad: float) -> None:
    """JSON has no NaN or infinity, and orjson would write them as null: the payload would change
    without a word. A put refuses it, and writes nothing."""
    for payload in (bad, {"x": [1, {"y": bad}]}, [None, bad]):
        with pytest.raises(TypeError, match="NaN or an infinity"):
            mailbox.put(Message("t", payload))
    assert sum(v.count for v in mailbox.stats().states.values()) == 0
    assert os.listdir(mailbox.path / "tmp") == []
    mailbox.put(Message("t", {"x": None, "y": 1e308}))  # null and big finite floats are fine
    assert sum(v.count for v in mailbox.stats().states.values()) == 1
