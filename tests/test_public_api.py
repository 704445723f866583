"""The exported names are a contract: changing them must be a decision, not an accident."""

from __future__ import annotations

import hybridcomms


def test_the_package_exports_exactly_these_names() -> None:
    assert hybridcomms.__all__ == [
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
        "MailboxError",
        "MailboxEvent",
        "MailboxIOError",
        "MailboxStats",
        "MailboxWatcher",
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
    ]
    for name in hybridcomms.__all__:
        assert hasattr(hybridcomms, name)


def test_every_error_has_one_root_and_caller_mistakes_are_value_errors() -> None:
    from hybridcomms import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), hybridcomms.HybridCommsError)
    assert issubclass(hybridcomms.InvalidAgentIdError, ValueError)
    assert issubclass(hybridcomms.MessageTooLargeError, ValueError)
    assert issubclass(hybridcomms.MailboxIOError, OSError)
