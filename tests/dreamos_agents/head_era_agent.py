"""An agent of the newest Dream.OS era (e563f46), written the way that era's agents are (agent3,
agent_loop, the mailbox locking test), run unchanged after hybridcomms' install(). Prints OK."""

import asyncio
import json
import math
import multiprocessing
import sys
from pathlib import Path

from hybridcomms.compat import dreamos as compat

compat.install()  # what a deployment does once, before the agents import anything

from dreamos.coordination.agent_bus import AgentBus as CanonicalBus  # noqa: E402
from dreamos.core.comms import mailbox_utils  # noqa: E402
from dreamos.core.comms.mailbox_utils import read_mailbox_messages, write_mailbox_message  # noqa: E402
from dreamos.core.coordination.agent_bus import AgentBus, BaseEvent, EventType  # noqa: E402

ROOT = Path(sys.argv[1])


def _write(args):  # the era's own test: five processes append to one inbox.json at once
    agent_id, msg, root = args
    from dreamos.core.comms import mailbox_utils as mu

    mu.MAILBOX_ROOT = root
    mu.write_mailbox_message(agent_id, {"sender": agent_id, "content": msg})


class Agent3:
    """agent3's shape: events by EventType values, callbacks (event_type, data)."""

    def __init__(self, bus):
        self.agent_bus = bus
        self.seen = []
        self.done = asyncio.Event()

    async def start(self):
        await self.agent_bus.subscribe(EventType.TASK_CREATED.value, self._handle_task_created)
        await self.agent_bus.subscribe(EventType.AGENT_ERROR.value, self._broken_handler)
        await self.agent_bus.subscribe(EventType.AGENT_ERROR.value, self._handle_agent_error)
        await self.agent_bus.publish(EventType.AGENT_STARTED.value, {"agent_id": "agent3"})

    async def _handle_task_created(self, event_type, data):
        self.seen.append((event_type, data))
        await self.agent_bus.publish(EventType.TASK_COMPLETED.value, {"task_id": data["task_id"]})

    async def _broken_handler(self, event_type, data):
        raise RuntimeError("a buggy handler")

    async def _handle_agent_error(self, event_type, data):
        self.seen.append((event_type, data))
        self.done.set()


async def bus_part():
    assert [m.value for m in EventType][:2] == ["agent.started", "agent.stopped"] and len(EventType) == 14
    assert EventType.TASK_COMPLETED.value == "task.completed"
    assert EventType.CURSOR_STUCK.value == "system.cursor.stuck"
    ev = BaseEvent(event_type="task.created", source_id="agent3", data={"x": 1})
    assert ev.data == {"x": 1} and ev.model_dump()["source_id"] == "agent3"

    bus, other = AgentBus(), AgentBus()
    assert bus is not other  # not a singleton in this era
    await bus.start()
    await other.start()
    heard_by_other = []

    async def other_cb(event_type, data):
        heard_by_other.append(data)

    await other.subscribe(EventType.TASK_CREATED.value, other_cb)
    canonical_seen = []
    CanonicalBus().subscribe("task.completed", lambda event: canonical_seen.append(event.data))

    agent = Agent3(bus)
    await agent.start()
    await bus.publish(EventType.TASK_CREATED.value, {"task_id": "t1"})
    await bus.publish(EventType.AGENT_ERROR.value, {"error": "e"})
    await asyncio.wait_for(agent.done.wait(), 10)
    assert agent.seen == [("task.created", {"task_id": "t1"}), ("agent.error", {"error": "e"})]
    await asyncio.sleep(0)  # let the completion published by the handler be routed
    for _ in range(100):
        if canonical_seen:
            break
        await asyncio.sleep(0.01)
    assert {"task_id": "t1"} in canonical_seen  # crossed to the canonical era's subscribers
    assert heard_by_other == []  # another instance is another bus

    heard = asyncio.Event()

    async def from_canonical(event_type, data):
        heard.set()

    await bus.subscribe("task.updated", from_canonical)
    CanonicalBus().publish("task.updated", {"task_id": "t1"})  # crosses the other way
    await asyncio.wait_for(heard.wait(), 10)
    await bus.unsubscribe("task.updated", from_canonical)
    await bus.unsubscribe("never.subscribed", from_canonical)  # no error
    assert bus.is_connected()
    await bus.reconnect()
    await bus.stop()
    await other.stop()


def mailbox_part():
    mailbox_root = ROOT / "runtime" / "agent_comms" / "agent_mailboxes"
    mailbox_utils.MAILBOX_ROOT = mailbox_root
    agent = "Agent-9"
    messages = [f"message {i}" for i in range(5)]
    with multiprocessing.get_context("spawn").Pool(processes=5) as pool:
        pool.map(_write, [(agent, m, mailbox_root) for m in messages])
    inbox = mailbox_root / agent / "inbox.json"
    data = json.loads(inbox.read_text())
    assert sorted(m["content"] for m in data) == messages  # legacy reader, file as it is

    odd = {"sender": "x", "content": "odd", 1: "int key", "big": 2**70, "nan": math.nan}
    write_mailbox_message(agent, odd)
    got = read_mailbox_messages(agent)
    assert json.dumps(got) == json.dumps([*data, json.loads(json.dumps(odd))])  # exactly as json stored it

    # The durable route of this era's topics: the policy sends an addressed task.* event to a mailbox.
    from hybridcomms.policy import Policy, Route, Rule

    CanonicalBus().configure(
        root=mailbox_root, policy=Policy(rules=[Rule(("task.*",), Route.DURABLE, "tasks")])
    )

    async def publish_task():
        b = AgentBus()
        await b.start()
        await b.publish("task.created", {"task_id": "t9", "recipient_agent_id": agent})
        await b.stop()

    asyncio.run(publish_task())
    last = read_mailbox_messages(agent)[-1]  # the recipient reads inbox.json: it landed there
    assert last["type"] == "task.created" and last["body"]["task_id"] == "t9", last


if __name__ == "__main__":
    asyncio.run(bus_part())
    mailbox_part()
    print("OK")
