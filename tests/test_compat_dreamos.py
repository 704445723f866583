"""The Dream.OS API surface (../shared/DREAMOS_API.md §3-4) on hybridcomms: every function, both call
styles, delivery that follows the recipient, the module aliases."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import workers
from waiting import eventually

from hybridcomms import FileMailbox, Policy, State
from hybridcomms.compat import dreamos
from hybridcomms.compat.dreamos import _delivery, agent_bus, mailbox, mailbox_utils
from hybridcomms.compat.dreamos.agent_bus import (
    AgentBus,
    BaseEvent,
    EventType,
    SimpleEventBus,
    callback_handler,
    get_agent_bus,
)
from hybridcomms.compat.dreamos.mailbox import MailboxError, MailboxHandler, send_message

spawn = multiprocessing.get_context("spawn")


@pytest.fixture
def mroot(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "agent_mailboxes"
    root.mkdir()
    monkeypatch.setattr(mailbox_utils, "MAILBOX_ROOT", root)
    return root


@pytest.fixture
def bus(mroot: Path) -> Iterator[AgentBus]:
    AgentBus._instance = None
    b = AgentBus()
    yield b
    b.stop()
    AgentBus._instance = None


def msg(recipient: str = "Agent-2", **extra: Any) -> dict[str, Any]:
    return {
        **dreamos_message(recipient),
        **extra,
    }


def dreamos_message(recipient: str) -> dict[str, Any]:
    return mailbox_utils.create_mailbox_message("Agent-1", recipient, "hello", "TASK_COMMAND", {"x": 1})


def adopt(root: Path, agent: str) -> FileMailbox:
    return FileMailbox(root, agent, fsync="never")


# -- mailbox_utils: writing -----------------------------------------------------------------------


def test_write_by_agent_id_follows_the_recipient(mroot: Path) -> None:
    assert mailbox_utils.write_mailbox_message("Agent-2", msg()) is None
    entries = orjson.loads((mroot / "Agent-2" / "inbox.json").read_bytes())
    assert [e["body"] for e in entries] == [{"x": 1}]
    assert not (mroot / "Agent-2" / "new").exists()  # a legacy reader: legacy format, not adopted
    mb = adopt(mroot, "Agent-3")
    mailbox_utils.write_mailbox_message("Agent-3", msg("Agent-3"))
    d = mb.claim()
    assert d is not None and d.message.topic == "TASK_COMMAND" and d.message.payload == {"x": 1}


async def test_write_to_an_inbox_path_awaited_and_plain(mroot: Path) -> None:
    inbox = mroot / "Agent-2" / "inbox"
    path = await mailbox_utils.write_mailbox_message(msg(), inbox)
    assert type(path) is type(Path()) and path.parent == inbox and path.name.startswith("msg_")
    plain = mailbox_utils.write_mailbox_message(msg(), inbox, filename_prefix="note", lock_timeout=1)
    assert plain.name.startswith("note_") and plain.exists()
    assert orjson.loads(plain.read_bytes())["message_type"] == "TASK_COMMAND"
    adopt(mroot, "Agent-3")
    native = await mailbox_utils.write_mailbox_message(msg("Agent-3"), mroot / "Agent-3" / "inbox")
    assert native.parent == mroot / "Agent-3" / "new" and native.exists()


async def test_write_to_an_inbox_path_rejects_bad_input(mroot: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        await mailbox_utils.write_mailbox_message({"message_id": "x"}, mroot / "Agent-2" / "inbox")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(OSError):
        await mailbox_utils.write_mailbox_message(msg(), blocker / "Agent-2" / "inbox")
    with pytest.raises(ValueError):
        mailbox_utils.write_mailbox_message("Agent-2", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        mailbox_utils.write_mailbox_message("../escape", msg())
    with pytest.raises(TypeError):
        mailbox_utils.write_mailbox_message("Agent-2")


async def test_write_to_a_file_path(mroot: Path) -> None:
    target = mroot / "Agent-2" / "inbox" / "20250501_120000_Agent-1_Agent-2.json"
    path = await mailbox_utils.write_mailbox_message(target, {"type": "DIRECTIVE", "body": "go"})
    assert path == target and orjson.loads(target.read_bytes())["body"] == "go"
    adopt(mroot, "Agent-3")
    path = await mailbox_utils.write_mailbox_message(
        file_path=mroot / "Agent-3" / "inbox" / "x.json", content={"type": "DIRECTIVE", "body": "go"}
    )
    assert path.parent.name == "new"


def test_monkeypatched_root_is_read_at_every_call(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("one", "two"):
        monkeypatch.setattr(mailbox_utils, "MAILBOX_ROOT", tmp_path / name)
        mailbox_utils.write_mailbox_message("Agent-2", msg())
        assert (tmp_path / name / "Agent-2" / "inbox.json").exists()
        assert mailbox_utils.get_agent_mailbox_path("Agent-2") == tmp_path / name / "Agent-2" / "inbox"


# -- mailbox_utils: reading -----------------------------------------------------------------------


async def test_reading_is_non_destructive_and_sees_both_layouts(mroot: Path) -> None:
    mailbox_utils.write_mailbox_message("Agent-2", msg(subject="legacy"))
    assert [m["subject"] for m in mailbox_utils.read_mailbox_messages("Agent-2")] == ["legacy"]
    assert len(mailbox_utils.read_mailbox_messages("Agent-2")) == 1
    adopt(mroot, "Agent-2")
    mailbox_utils.write_mailbox_message("Agent-2", msg(subject="native"))
    got = mailbox_utils.read_mailbox_messages("Agent-2")
    assert sorted(m["subject"] for m in got) == ["legacy", "native"]
    native = next(m for m in got if m["subject"] == "native")
    assert native["type"] == native["message_type"] == "TASK_COMMAND"
    assert mailbox_utils.validate_mailbox_message_schema(native)
    assert mailbox_utils.read_mailbox_messages("../bad") == []


async def test_read_list_delete_on_a_legacy_inbox(mroot: Path) -> None:
    inbox = mroot / "Agent-2" / "inbox"
    p1 = await mailbox_utils.write_mailbox_message(msg(), inbox)
    (inbox / "msg_x.json.1.tmp").write_text("{")
    (inbox / "other.json").write_text("{}")
    listed = await mailbox_utils.list_mailbox_messages(inbox)
    assert listed == [p1]
    assert mailbox_utils.list_mailbox_messages(inbox, pattern="*.json") == [p1, inbox / "other.json"]
    assert await mailbox_utils.list_mailbox_messages(mroot / "nobody" / "inbox") == []
    assert (await mailbox_utils.read_mailbox_message(p1))["subject"] == "hello"
    assert mailbox_utils.read_mailbox_message(p1)["subject"] == "hello"  # plain call works too
    (inbox / "bad.json").write_text("{not json")
    assert await mailbox_utils.read_mailbox_message(inbox / "bad.json") is None
    assert await mailbox_utils.read_mailbox_message(inbox / "missing.json") is None
    assert not mailbox_utils.read_mailbox_message(inbox / "missing.json")
    assert await mailbox_utils.delete_message(p1) is True
    assert mailbox_utils.delete_message(p1)  # plain call; already gone: True
    assert await mailbox_utils.delete_message(p1) is True
    assert not p1.exists() and not Path(f"{p1}.lock").exists()


async def test_list_read_delete_on_an_adopted_agent_claims_and_acks(mroot: Path) -> None:
    mb = adopt(mroot, "Agent-2")
    mailbox_utils.write_mailbox_message("Agent-2", msg())
    workers.legacy_inbox_json_writer(str(mroot), "Agent-2", 1, "dropped")  # a legacy writer still runs
    paths = await mailbox_utils.list_mailbox_messages(mroot / "Agent-2" / "inbox")
    assert len(paths) == 2 and all(p.parent.name == "new" for p in paths)
    for p in paths:
        assert (await mailbox_utils.read_mailbox_message(p))["recipient_agent_id"] == "Agent-2"
        assert await mailbox_utils.delete_message(p) is True
    assert mb.stats().states[State.DONE].count == 2 and mb.stats().states[State.NEW].count == 0


def test_path_helpers(mroot: Path) -> None:
    inbox = mailbox_utils.get_agent_mailbox_path("Agent-2")
    assert inbox == mroot / "Agent-2" / "inbox"
    assert mailbox_utils.validate_agent_mailbox_path(inbox)
    assert not mailbox_utils.validate_agent_mailbox_path(mroot / "Agent-2")
    assert not mailbox_utils.validate_agent_mailbox_path(mroot / ".." / "x" / "inbox")

    class Config:
        def get(self, key: str) -> str:
            return "/elsewhere" if key == "system.paths.mailboxes" else ""

    assert mailbox_utils.get_agent_mailbox_path("A", Config()) == Path("/elsewhere/A/inbox")
    with pytest.raises(ValueError):
        mailbox_utils.get_agent_mailbox_path("../x")


def test_policy_adopt_list_makes_senders_write_native_files(mroot: Path) -> None:
    _delivery.set_policy(Policy(adopt=("Agent-9*",)))
    try:
        mailbox_utils.write_mailbox_message("Agent-90", msg("Agent-90"))
        assert len(os.listdir(mroot / "Agent-90" / "new")) == 1
    finally:
        _delivery.set_policy(None)


# -- mailbox: MailboxHandler ----------------------------------------------------------------------


def test_mailbox_handler_basics(mroot: Path, tmp_path: Path) -> None:
    with pytest.raises(MailboxError):
        MailboxHandler("Agent-1", tmp_path / "missing")
    with pytest.raises(MailboxError):
        MailboxHandler("../x", mroot)
    h = MailboxHandler("Agent-1", mroot)
    assert h.agent_mailbox_dir == mroot / "Agent-1" and h.inbox_path == mroot / "Agent-1" / "inbox"
    assert h.archive_path == mroot / "Agent-1" / "archive"
    assert (mroot / "Agent-1" / "new").is_dir()  # the handler's agent is adopted
    assert mailbox.INBOX_DIR_NAME == "inbox" and mailbox.ARCHIVE_DIR_NAME == "archive"
    assert mailbox.OUTBOX_DIR_NAME == "outbox" and mailbox.FAILED_DIR_NAME == "failed"
    h.close()


async def test_get_messages_claims_so_two_readers_never_share_a_message(mroot: Path) -> None:
    sender = MailboxHandler("Agent-2", mroot)
    a, b = MailboxHandler("Agent-1", mroot), MailboxHandler("Agent-1", mroot)
    ids = [await sender.send("Agent-1", "TASK_COMMAND", {"n": i}) for i in range(4)]
    ids.append(sender.send("Agent-1", "TASK_COMMAND", {"n": 4}))  # plain call
    assert all(isinstance(i, str) for i in ids)
    first = await a.get_messages(max_count=3)
    second = b.get_messages()  # plain call
    assert len(first) == 3 and len(second) == 2
    seen = {m["message_id"] for _, m in first} | {m["message_id"] for _, m in second}
    assert seen == set(ids)
    assert first[0][1]["body"] == {"n": 0} and first[0][1]["delivery_attempt"] == 1
    for path, _ in first:
        assert a.archive_message(path) is True
    assert a.archive_message(first[0][0]) is False  # already archived
    path, _ = second[0]
    assert b.fail_message(path, "try later") is True
    assert b.release_all() == 1
    again = a.get_messages()  # the released one now; the failed one waits for its backoff
    assert len(again) == 1 and again[0][1]["delivery_attempt"] == 2
    assert a.mailbox.stats().delayed == 1
    assert a.mailbox.stats().states[State.DONE].count == 3
    for h in (sender, a, b):
        h.close()


def test_a_message_never_archived_comes_back_after_the_reader_dies(mroot: Path, tmp_path: Path) -> None:
    MailboxHandler("Agent-1", mroot).close()
    send_message(msg("Agent-1"), recipient_agent_id="Agent-1")
    ready = tmp_path / "ready"
    p = spawn.Process(target=workers.handler_claims_and_dies, args=(str(mroot), "Agent-1", str(ready)))
    p.start()
    p.join(60)
    assert ready.read_text() == "1" and p.exitcode == -9
    h = MailboxHandler("Agent-1", mroot, backoff=workers.FAST)
    assert h.get_messages() == []  # still claimed by the dead reader, until recovery
    assert len(h.mailbox.recover().returned) == 1
    [(path, m)] = h.get_messages()
    assert m["delivery_attempt"] == 2 and h.archive_message(path)
    h.close()


def test_archive_of_a_legacy_inbox_file_moves_it_to_archive(mroot: Path) -> None:
    h = MailboxHandler("Agent-1", mroot)
    h.inbox_path.mkdir()
    f = h.inbox_path / "msg_old.json"
    f.write_text("{}")
    assert h.archive_message(f) is True and (h.archive_path / "msg_old.json").exists()
    h.close()


async def test_send_message_plain_and_awaited(mroot: Path) -> None:
    p = send_message(msg("Agent-5"), recipient_agent_id="Agent-5")
    assert p.name == "inbox.json"
    p2 = await send_message(msg("Agent-5"))
    assert p2 == p and len(orjson.loads(p.read_bytes())) == 2
    with pytest.raises(ValueError):
        send_message({"type": "X"})


# -- agent_bus ------------------------------------------------------------------------------------


def test_singleton_reset_and_getters(bus: AgentBus) -> None:
    assert AgentBus() is bus and get_agent_bus() is bus and AgentBus.get_instance() is bus
    AgentBus._instance = None
    fresh = AgentBus()
    assert fresh is not bus and fresh.active_agents == {}
    fresh.stop()
    AgentBus._instance = bus


async def test_every_method_works_plain_and_awaited(bus: AgentBus) -> None:
    got: list[Any] = []

    def h(event: BaseEvent) -> None:
        got.append(event)

    sub_id = bus.subscribe("dreamos.test.*", h)
    assert await bus.subscribe("dreamos.test.*", h) == sub_id  # duplicate: ignored, same id
    other = await bus.register_handler(EventType.TASK_COMPLETED, h)
    bus.publish("dreamos.test.a", {"n": 1})
    await bus.publish("dreamos.test.b", {"n": 2})
    bus.dispatch_event(BaseEvent("dreamos.test", "me", {"n": 3}))
    await bus.dispatch_event(BaseEvent(EventType.TASK_COMPLETED, "me", {"n": 4}))
    assert [e.data["n"] for e in got] == [1, 2, 3, 4]
    assert got[3].event_type is EventType.TASK_COMPLETED
    assert await bus.unsubscribe(other) and bus.unsubscribe("dreamos.test.*", h)
    assert not bus.unsubscribe("dreamos.test.*", h) and not await bus.unsubscribe("no-such-id")
    await bus.publish("dreamos.test.c", {})
    assert len(got) == 4
    await bus.start()
    bus.start()
    await bus.stop()
    bus.stop()
    await bus.close()


def test_pattern_rules_and_one_call_per_event(bus: AgentBus) -> None:
    seen: dict[str, list[str]] = {}

    def make(name: str) -> Any:
        return lambda e: seen.setdefault(name, []).append(e.topic)

    prefix, everything, exact = make("prefix"), make("all"), make("exact")
    bus.subscribe("a.b.*", prefix)
    bus.subscribe("*", everything)
    bus.subscribe("a.b.c", exact)
    bus.subscribe("a.b.c", prefix)  # a second pattern of the same handler
    for topic in ("a.b", "a.b.c", "a.b.c.d", "a.bc", "x"):
        bus.publish(topic)
    assert seen["prefix"] == ["a.b", "a.b.c", "a.b.c.d"]
    assert seen["all"] == ["a.b", "a.b.c", "a.b.c.d", "a.bc", "x"]
    assert seen["exact"] == ["a.b.c"]


async def test_async_handlers_run_on_the_running_loop(bus: AgentBus) -> None:
    got: list[str] = []

    async def h(event: BaseEvent) -> None:
        await asyncio.sleep(0)
        got.append(event.topic)

    bus.subscribe("t.*", h)
    await bus.publish("t.x", {})
    assert got == ["t.x"]


def test_a_failing_handler_never_stops_the_others_and_makes_an_error_event(bus: AgentBus) -> None:
    got: list[str] = []
    errors: list[BaseEvent] = []

    def bad(event: BaseEvent) -> None:
        raise RuntimeError("boom")

    bus.subscribe("t", bad)
    bus.subscribe("t", lambda e: got.append(e.topic))
    bus.subscribe(EventType.SYSTEM_ERROR, errors.append)
    bus.publish("t", {})
    assert got == ["t"]
    [err] = errors
    assert err.event_type is EventType.SYSTEM_ERROR and err.topic == "dreamos.system.error"
    assert "boom" in err.data["error"] and err.data["topic"] == "t"


def test_callback_style_handlers(bus: AgentBus) -> None:
    calls: list[tuple[Any, Any]] = []

    def cb(event_type: Any, data: Any) -> None:
        calls.append((event_type, data))

    bus.subscribe(EventType.TASK_FAILED, cb)
    bus.publish(EventType.TASK_FAILED, {"why": "x"})
    explicit = callback_handler(lambda t, d: calls.append(("explicit", d)))
    bus.subscribe("u", explicit)
    bus.publish("u", {"n": 1})
    assert calls == [(EventType.TASK_FAILED, {"why": "x"}), ("explicit", {"n": 1})]


def test_registry_and_shutdown_sequence(bus: AgentBus) -> None:
    topics: list[str] = []
    bus.subscribe("dreamos.*", lambda e: topics.append(e.topic))

    def on_shutdown(event: BaseEvent) -> None:
        for agent in event.data["agents"]:
            bus.update_agent_status(agent, "SHUTDOWN_READY")

    bus.subscribe(EventType.SYSTEM_SHUTDOWN_INITIATED, on_shutdown)
    bus.register_agent("Agent-1", ["code"])
    bus.register_agent("Agent-2", [])
    bus.register_agent("Agent-1", ["again"])  # already registered: warned, unchanged
    assert bus.get_agent_info("Agent-1")["capabilities"] == ["code"]
    bus.update_agent_status("Agent-2", "BUSY", task_id="t1")
    assert bus.get_agent_info("Agent-2")["current_task"] == "t1"
    bus.unregister_agent("Agent-2")
    assert bus.get_agent_info("Agent-2") is None and set(bus.active_agents) == {"Agent-1"}
    bus.shutdown(timeout=5)
    assert bus.shutdown_in_progress and bus.shutdown_ready == {"Agent-1"}
    assert topics.index("dreamos.system.shutdown.initiated") < topics.index(
        "dreamos.system.shutdown.completed"
    )
    assert "dreamos.agent.registered" in topics and "dreamos.agent.unregistered" in topics
    bus.stop()
    bus.close()


async def test_shutdown_awaited_waits_for_async_agents(bus: AgentBus) -> None:
    done: list[str] = []
    bus.register_agent("Agent-1", [])

    async def slow_ready(event: BaseEvent) -> None:
        await asyncio.sleep(0.05)
        bus.update_agent_status("Agent-1", "SHUTDOWN_READY")

    bus.subscribe(EventType.SYSTEM_SHUTDOWN_INITIATED, slow_ready)
    bus.subscribe(EventType.SYSTEM_SHUTDOWN_COMPLETED, lambda e: done.append(e.data["missing"]))
    await bus.shutdown(timeout=5)
    assert done == [[]]


def test_a_durable_topic_is_delivered_through_the_mailbox_with_retries(bus: AgentBus, mroot: Path) -> None:
    got: list[BaseEvent] = []
    observed: list[str] = []

    def handler(event: BaseEvent) -> None:
        got.append(event)
        if len(got) == 1:
            raise RuntimeError("first attempt fails")

    bus.subscribe("*", lambda e: observed.append(e.topic))
    bus.subscribe("dreamos.agent.Agent-1.task.command", handler)
    assert (mroot / "Agent-1" / "new").is_dir()
    event = BaseEvent("dreamos.agent.Agent-1.task.command", "Agent-0", {"task": "build"})
    bus.dispatch_event(event)
    mb = FileMailbox(mroot, "Agent-1", fsync="never")
    eventually(
        lambda: mb.stats().states[State.DONE].count, "the event handled once", 20, until=lambda n: n >= 1
    )
    assert [e.event_id for e in got] == [event.event_id, event.event_id]
    assert got[1].data == {"task": "build"} and got[1].source_id == "Agent-0"
    assert "dreamos.agent.Agent-1.task.command" in observed  # observers still see it on the bus


def test_a_durable_topic_to_an_agent_not_yet_adopted_lands_in_its_inbox_json(
    bus: AgentBus, mroot: Path
) -> None:
    bus.publish("dreamos.agent.Agent-7.task.command", {"task": "t"})
    [entry] = orjson.loads((mroot / "Agent-7" / "inbox.json").read_bytes())
    assert entry["type"] == "dreamos.agent.Agent-7.task.command" and entry["body"] == {"task": "t"}
    assert not (mroot / "Agent-7" / "new").exists()


def test_simple_event_bus() -> None:
    seen: list[str] = []
    sb = SimpleEventBus()
    h = lambda e: seen.append(e.topic)  # noqa: E731
    sb.subscribe("a.*", h)
    sb.subscribe("a.*", h)
    sb.dispatch_event(BaseEvent("a.b", "me"))
    sb.unsubscribe("a.*", h)
    sb.unsubscribe("a.*", h)
    sb.dispatch_event(BaseEvent("a.c", "me"))
    assert seen == ["a.b"] and not sb.dispatch_event("not an event")  # type: ignore[arg-type]


# -- install() --------------------------------------------------------------------------------------


@pytest.fixture
def installed() -> Iterator[None]:
    dreamos.install()
    yield
    dreamos.uninstall()


def test_install_makes_the_legacy_module_paths_resolve(installed: None) -> None:
    from dreamos.coordination.agent_bus import AgentBus as A1  # type: ignore[import-not-found]
    from dreamos.core.comms import mailbox_utils as mu  # type: ignore[import-not-found]
    from dreamos.core.comms.mailbox import MailboxHandler as MH  # type: ignore[import-not-found]
    from dreamos.core.coordination.agent_bus import AgentBus as A2  # type: ignore[import-not-found]
    from dreamos.core.coordination.event_types import EventType as ET  # type: ignore[import-not-found]
    from dreamos.core.utils.file_locking import acquire_lock  # type: ignore[import-not-found]

    from hybridcomms.compat.dreamos import agent_bus_head

    assert mu is mailbox_utils and MH is MailboxHandler and A1 is agent_bus.AgentBus
    assert A2 is agent_bus_head.AgentBus  # the newest era at the core path, by default
    assert len(ET) == 55 and callable(acquire_lock) and dreamos.installed()


def test_the_may_2025_era_is_served_at_the_core_path_on_request() -> None:
    dreamos.install(era="814c67e")
    try:
        from dreamos.core.coordination.agent_bus import AgentBus, EventType  # type: ignore[import-not-found]

        assert AgentBus is agent_bus.AgentBus and AgentBus() is AgentBus()  # the canonical singleton
        AgentBus().stop()
        AgentBus._instance = None
        assert len(EventType) == 55 and EventType.TASK_COMPLETED.value == "dreamos.task.lifecycle.completed"
        code = "import dreamos.core.coordination.agent_bus as m; print(m.__name__)"
        res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert res.stdout.strip() == "hybridcomms.compat.dreamos.agent_bus_may2025"
    finally:
        dreamos.uninstall()
    with pytest.raises(ValueError, match=r"unknown Dream\.OS era"):
        dreamos.install(era="1999")


def test_install_reaches_spawned_workers_and_subprocesses(installed: None, tmp_path: Path) -> None:
    out = tmp_path / "out"
    p = spawn.Process(
        target=workers.legacy_import_and_write, args=(str(tmp_path / "root"), "Agent-2", str(out))
    )
    p.start()
    p.join(60)
    assert p.exitcode == 0 and out.read_text() == "hybridcomms.compat.dreamos.mailbox_utils"
    assert (tmp_path / "root" / "Agent-2" / "inbox.json").exists()
    code = "import dreamos.core.comms.mailbox_utils as m; print(m.__name__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "hybridcomms.compat.dreamos.mailbox_utils"


async def test_write_to_an_inbox_folder_with_another_name_writes_into_that_folder(tmp_path: Path) -> None:
    elsewhere = tmp_path / "custom_inbox"
    path = await mailbox_utils.write_mailbox_message(msg(), elsewhere)
    assert path.parent == elsewhere and path.name.startswith("msg_")
    assert (elsewhere / ".inbox.lock").exists() and not (elsewhere / "inbox").exists()
