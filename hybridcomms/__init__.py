"""hybridcomms: reliable messaging for Python agents.

Critical messages go through durable file mailboxes (`FileMailbox`: at-least-once, retries with
backoff, a dead-letter folder that says why); see docs/ for the guarantees.
"""

from __future__ import annotations

from ._fs import FsyncPolicy
from .errors import (
    DeliveryError,
    DeliveryLostError,
    HybridCommsError,
    InvalidAgentIdError,
    MailboxError,
    MailboxIOError,
    MessageDecodeError,
    MessageError,
    MessageTooLargeError,
    UnsafePathError,
)
from .mailbox import (
    DEFAULT_ROOT,
    Delivery,
    FileMailbox,
    MailboxStats,
    MessageInfo,
    RecoveryReport,
    StateStats,
    check_agent_id,
    list_agents,
)
from .message import Message, Priority
from .retry import Backoff
from .states import TRANSITIONS, State, Transition

__version__ = "0.1.0.dev0"

__all__ = [
    "DEFAULT_ROOT",
    "TRANSITIONS",
    "Backoff",
    "Delivery",
    "DeliveryError",
    "DeliveryLostError",
    "FileMailbox",
    "FsyncPolicy",
    "HybridCommsError",
    "InvalidAgentIdError",
    "MailboxError",
    "MailboxIOError",
    "MailboxStats",
    "Message",
    "MessageDecodeError",
    "MessageError",
    "MessageInfo",
    "MessageTooLargeError",
    "Priority",
    "RecoveryReport",
    "State",
    "StateStats",
    "Transition",
    "UnsafePathError",
    "__version__",
    "check_agent_id",
    "list_agents",
]
