"""An agent of the May-2025 Dream.OS era (814c67e), shaped like its base_agent and mailbox loops, run
unchanged after hybridcomms' install(era="814c67e"). Prints OK."""

import asyncio
import sys
from pathlib import Path

from hybridcomms.compat import dreamos as compat

compat.install(era="814c67e")

from dreamos.core.comms.mailbox import MailboxHandler  # noqa: E402
from dreamos.core.comms.mailbox_utils import (  # noqa: E402  (base_agent's imports, read_message included)
    create_mailbox_message,
    delete_message,
    list_mailbox_messages,
    read_message,
    validate_mailbox_message_schema,
    write_mailbox_message,
)
from dreamos.core.coordination.agent_bus import AgentBus, BaseEvent, EventType  # noqa: E402
from dreamos.core.coordination.event_types import EventType as CoreEventType  # noqa: E402

ROOT = Path(sys.argv[1]) / "agent_mailboxes"


class BaseAgentLike:
    """base_agent's mailbox loop: list the inbox, read_message each, process, delete."""

    def __init__(self, agent_id):
        self.agent_id = agent_id
        self.processed = []

    async def check_mailbox(self):
        inbox = ROOT / self.agent_id / "inbox"
        for path in await list_mailbox_messages(inbox):
            content = await read_message(path)
            if content and validate_mailbox_message_schema(content):
                self.processed.append(content["body"])
                assert await delete_message(path)


async def main():
    assert EventType is CoreEventType and len(EventType) == 55  # this era's enum at this path
    bus = AgentBus()
    assert bus is AgentBus()  # the singleton of this era
    seen = []
    bus.subscribe(EventType.TASK_COMPLETED, lambda event: seen.append(event.data))
    bus.dispatch_event(BaseEvent(EventType.TASK_COMPLETED, "Agent-1", {"task_id": "t"}))
    assert seen == [{"task_id": "t"}]

    # The L2 inbox of this era, read by the base_agent loop.
    ROOT.mkdir(parents=True, exist_ok=True)
    agent = BaseAgentLike("Agent-3")
    for i in range(3):
        msg = create_mailbox_message("Agent-1", "Agent-3", "work", "TASK_COMMAND", {"n": i})
        await write_mailbox_message(msg, ROOT / "Agent-3" / "inbox")
    await agent.check_mailbox()
    assert sorted(p["n"] for p in agent.processed) == [0, 1, 2]
    assert await list_mailbox_messages(ROOT / "Agent-3" / "inbox") == []

    # MailboxHandler loops that leave a message in the mailbox to retry it later.
    sender, reader = MailboxHandler("Agent-1", ROOT), MailboxHandler("Agent-4", ROOT)
    await sender.send("Agent-4", "TASK_COMMAND", {"n": 1})
    first = await reader.get_messages()
    again = await reader.get_messages()  # not archived: the same message again, at once
    assert [p for p, _ in again] == [p for p, _ in first] and len(first) == 1
    assert again[0][1]["delivery_attempt"] == 1  # no attempt used by the second poll
    assert reader.archive_message(first[0][0])
    assert await reader.get_messages() == []
    sender.close()
    reader.close()


if __name__ == "__main__":
    asyncio.run(main())
    print("OK")
