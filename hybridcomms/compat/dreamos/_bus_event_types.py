"""The 61-member `EventType` of legacy ``dreamos.coordination.agent_bus``, every member with its exact string.

(The compat ``agent_bus`` module re-exports it; it is kept apart so that the two legacy enums, which
disagree on some strings, never share a module.)
"""

from __future__ import annotations

from enum import Enum

__all__ = ["EventType"]


class EventType(str, Enum):
    SYSTEM_AGENT_REGISTERED = "dreamos.agent.registered"
    SYSTEM_AGENT_UNREGISTERED = "dreamos.agent.unregistered"
    SYSTEM_AGENT_STATUS_CHANGE = "dreamos.agent.status.updated"
    SYSTEM_SHUTDOWN_INITIATED = "dreamos.system.shutdown.initiated"
    SYSTEM_SHUTDOWN_COMPLETED = "dreamos.system.shutdown.completed"
    SYSTEM_PRE_SHUTDOWN_CHECK = "dreamos.system.pre_shutdown.check"
    SYSTEM_ERROR = "dreamos.system.error"
    TASK_RECEIVED = "dreamos.task.received"
    TASK_ACCEPTED = "dreamos.task.accepted"
    TASK_STARTED = "dreamos.task.started"
    TASK_COMPLETED = "dreamos.task.completed"
    TASK_FAILED = "dreamos.task.failed"
    TASK_PROGRESS = "dreamos.task.progress"
    TASK_CANCELLED = "dreamos.task.cancelled"
    TASK_PERMANENTLY_FAILED = "dreamos.task.permanently_failed"
    TASK_TIMEOUT = "dreamos.task.timeout"
    TASK_REQUEST_SENT = "dreamos.task.request.sent"
    TASK_CANCEL_REQUESTED = "dreamos.task.cancel.requested"
    TASK_CANCEL_FAILED = "dreamos.task.cancel.failed"
    TASK_DIRECTIVE = "dreamos.task.directive"
    MEMORY_UPDATE = "dreamos.memory.updated"
    MEMORY_READ = "dreamos.memory.read"
    MEMORY_DELETE = "dreamos.memory.deleted"
    MEMORY_QUERY = "dreamos.memory.queried"
    MEMORY_ERROR = "dreamos.memory.error"
    COORDINATION_DIRECTIVE = "dreamos.coordination.directive.sent"
    COORDINATION_PROPOSAL = "dreamos.coordination.proposal.made"
    COORDINATION_HEARTBEAT = "dreamos.coordination.heartbeat.sent"
    CURSOR_INJECT_REQUEST = "dreamos.cursor.inject.request"
    CURSOR_RETRIEVE_REQUEST = "dreamos.cursor.retrieve.request"
    CURSOR_INJECT_SUCCESS = "dreamos.cursor.inject.success"
    CURSOR_INJECT_FAILURE = "dreamos.cursor.inject.failure"
    CURSOR_RETRIEVE_SUCCESS = "dreamos.cursor.retrieve.success"
    CURSOR_RETRIEVE_FAILURE = "dreamos.cursor.retrieve.failure"
    CURSOR_WINDOW_UNRESPONSIVE = "dreamos.cursor.window.unresponsive"
    CURSOR_HEALTH_CHECK_PASSED = "dreamos.cursor.health.passed"
    CURSOR_HEALTH_CHECK_FAILED = "dreamos.cursor.health.failed"
    TOOL_CALL = "dreamos.tool.call.requested"
    TOOL_RESULT = "dreamos.tool.result.received"
    USER_INPUT = "dreamos.user.input.received"
    AGENT_OUTPUT = "dreamos.agent.output.sent"
    DEBUG_INFO = "dreamos.debug.info"
    POLICY_VIOLATION = "dreamos.governance.policy.violated"
    AUTH_FAILURE = "dreamos.security.auth.failed"
    PERMISSION_DENIED = "dreamos.security.permission.denied"
    AGENT_CONTRACT_QUERY = "dreamos.governance.contract.queried"
    AGENT_CONTRACT_STATUS = "dreamos.governance.contract.status"
    AGENT_PROTOCOL_VIOLATION = "dreamos.governance.protocol.violated"
    QUERY_AGENT_STATUS = "dreamos.query.agent.status"
    QUERY_TASK_DETAILS = "dreamos.query.task.details"
    QUERY_SYSTEM_HEALTH = "dreamos.query.system.health"
    COMMAND_EXECUTION_REQUEST = "dreamos.supervisor.command.requested"
    COMMAND_APPROVAL_REQUEST = "dreamos.supervisor.approval.requested"
    COMMAND_APPROVAL_RESPONSE = "dreamos.supervisor.approval.responded"
    COMMAND_EXECUTION_RESULT = "dreamos.supervisor.command.result"
    DREAMSCAPE_PLAN_REQUESTED = "dreamscape.plan.requested"
    DREAMSCAPE_PLAN_GENERATED = "dreamscape.plan.generated"
    DREAMSCAPE_PLAN_FAILED = "dreamscape.plan.failed"
    DREAMSCAPE_WRITING_REQUESTED = "dreamscape.writing.requested"
    DREAMSCAPE_DRAFT_GENERATED = "dreamscape.draft.generated"
    DREAMSCAPE_DRAFT_FAILED = "dreamscape.draft.failed"

    def __str__(self) -> str:
        return self.value
