"""Dream.OS compatibility: the legacy module names, signatures and behaviours (../shared/DREAMOS_API.md).

Present so far:

- `hybridcomms.compat.dreamos.event_types`: the 55-member ``EventType`` of
  ``dreamos.core.coordination.event_types``;
- `hybridcomms.compat.dreamos.file_locking`: ``acquire_lock``, ``read_json_locked``,
  ``write_json_locked`` of ``dreamos.core.utils.file_locking``, interoperable with the ``filelock``
  library Dream.OS writers use;
- for the ``agent_bus`` module: its 61-member ``EventType`` (``_bus_event_types``), and ``BaseEvent``, the
  specific events and the bus errors (``_bus_events``);
- for the ``mailbox_utils`` module: ``create_mailbox_message`` (which works: the legacy one always raised)
  and ``validate_mailbox_message_schema`` (``_messages``); writing for recipients still on a legacy
  layout: appends to ``inbox.json`` under its lock, ``inbox/msg_*.json`` files (``_legacy_store``).

Not yet here (issue #5): ``agent_bus``, ``mailbox_utils``, ``mailbox`` and ``install()``.
"""
