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
    for name in hybridcomms.__all__:
        assert hasattr(hybridcomms, name)


def test_every_error_has_one_root_and_caller_mistakes_are_value_errors() -> None:
    from hybridcomms import errors

    for name in errors.__all__:
        assert issubclass(getattr(errors, name), hybridcomms.HybridCommsError)
    assert issubclass(hybridcomms.InvalidAgentIdError, ValueError)
    assert issubclass(hybridcomms.MessageTooLargeError, ValueError)
    assert issubclass(hybridcomms.MailboxIOError, OSError)


def test_every_backend_meets_the_exported_contract(tmp_path: object) -> None:
    """`open_mailbox` gives a `Mailbox` on every backend; the protocol is checkable at run time."""
    import uuid
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    store = uuid.uuid4().hex
    for where in (str(tmp_path / "root"), f"memory://{store}"):
        with hybridcomms.open_mailbox(where, "A") as mb:
            assert isinstance(mb, hybridcomms.Mailbox)
            assert mb.kind in ("file", "memory")
    hybridcomms.MemoryMailbox.forget_store(store)
    assert issubclass(hybridcomms.LockTimeoutError, TimeoutError)
