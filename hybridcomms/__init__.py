"""hybridcomms: reliable messaging for Python agents.

Critical messages go through durable file mailboxes (`FileMailbox`: at-least-once, retries with
backoff, a dead-letter folder that says why); ephemeral broadcasts stay on an in-memory `AgentBus`;
one routing `Policy` decides which is which, and `Comms` is the one object an agent holds.
See docs/ for the guarantees.
"""

from __future__ import annotations

from ._fs import FsyncPolicy
from ._version import __version__
from .backends import Mailbox, MailboxDelivery, open_mailbox
from .backends.base import MailboxStats, MessageInfo, RecoveryReport, StateStats, check_agent_id
from .backends.file import DEFAULT_ROOT, Delivery, FileMailbox, list_agents
from .backends.memory import MemoryMailbox
from .bus import AgentBus, Event, PublishResult, Subscription, default_bus
from .comms import Comms, CommsSubscription, Received, RequestTimeoutError, Sent
from .errors import (
    DeliveryError,
    DeliveryLostError,
    HybridCommsError,
    InvalidAgentIdError,
    LockTimeoutError,
    MailboxError,
    MailboxIOError,
    MessageDecodeError,
    MessageError,
    MessageTooLargeError,
    UnsafePathError,
)
from .message import Message, Priority
from .policy import Decision, Policy, PolicyError, Route, Rule, find_policy
from .retry import Backoff
from .states import TRANSITIONS, State, Transition
from .watcher import MailboxEvent, MailboxWatcher

__all__ = [
    "DEFAULT_ROOT",
    "TRANSITIONS",
    "AgentBus",
    "Backoff",
    "Comms",
    "CommsSubscription",
    "Decision",
    "Delivery",
    "DeliveryError",
    "DeliveryLostError",
    "Event",
    "FileMailbox",
    "FsyncPolicy",
    "HybridCommsError",
    "InvalidAgentIdError",
    "LockTimeoutError",
    "Mailbox",
    "MailboxDelivery",
    "MailboxError",
    "MailboxEvent",
    "MailboxIOError",
    "MailboxStats",
    "MailboxWatcher",
    "MemoryMailbox",
    "Message",
    "MessageDecodeError",
    "MessageError",
    "MessageInfo",
    "MessageTooLargeError",
    "Policy",
    "PolicyError",
    "Priority",
    "PublishResult",
    "Received",
    "RecoveryReport",
    "RequestTimeoutError",
    "Route",
    "Rule",
    "Sent",
    "State",
    "StateStats",
    "Subscription",
    "Transition",
    "UnsafePathError",
    "__version__",
    "check_agent_id",
    "default_bus",
    "find_policy",
    "list_agents",
    "open_mailbox",
]
