"""Legacy ``dreamos.core.coordination.event_types``: the 55-member `EventType`.

Every member and its exact string, as Dream.OS agents import them. It disagrees with the 61-member
``EventType`` of ``dreamos.coordination.agent_bus`` for some names (``SYSTEM_AGENT_STATUS_CHANGE`` is
``dreamos.system.agent.status_change`` here and ``dreamos.agent.status.updated`` there), which is why the
two live in separate modules.
"""

from __future__ import annotations

from enum import Enum

__all__ = ["EventType"]


class EventType(str, Enum):
    SYSTEM_ERROR = "dreamos.system.error"
    SYSTEM_AGENT_REGISTERED = "dreamos.system.agent.registered"
    SYSTEM_AGENT_UNREGISTERED = "dreamos.system.agent.unregistered"
    SYSTEM_AGENT_STATUS_CHANGE = "dreamos.system.agent.status_change"
    SYSTEM_SHUTDOWN_REQUEST = "dreamos.system.shutdown.request"
    SYSTEM_SHUTDOWN_READY = "dreamos.system.shutdown.ready"
    SYSTEM_SHUTDOWN_COMPLETE = "dreamos.system.shutdown.complete"
    AGENT_STARTED = "dreamos.agent.lifecycle.started"
    AGENT_STOPPED = "dreamos.agent.lifecycle.stopped"
    AGENT_STATUS_UPDATE = "dreamos.agent.status.updated"
    AGENT_HEARTBEAT = "dreamos.agent.status.heartbeat"
    AGENT_ERROR = "dreamos.agent.error"
    AGENT_BLOCKED = "dreamos.agent.status.blocked"
    AGENT_UNBLOCKED = "dreamos.agent.status.unblocked"
    AGENT_CONTRACT_STATUS = "dreamos.agent.contract.status"
    AGENT_PROMPT_REQUEST = "dreamos.agent.prompt.request"
    AGENT_PROMPT_RESPONSE = "dreamos.agent.prompt.response"
    AGENT_OUTPUT = "dreamos.agent.output.generated"
    TASK_RECEIVED = "dreamos.task.lifecycle.received"
    TASK_COMMAND = "dreamos.task.command"
    TASK_ASSIGNED = "dreamos.task.lifecycle.assigned"
    TASK_ACCEPTED = "dreamos.task.lifecycle.accepted"
    TASK_REJECTED = "dreamos.task.lifecycle.rejected"
    TASK_STARTED = "dreamos.task.lifecycle.started"
    TASK_PROGRESS = "dreamos.task.status.progress"
    TASK_COMPLETED = "dreamos.task.lifecycle.completed"
    TASK_FAILED = "dreamos.task.lifecycle.failed"
    TASK_VALIDATION_FAILED = "dreamos.task.validation.failed"
    TASK_STATUS_UPDATE = "dreamos.task.status.update"
    TOOL_CALL = "dreamos.tool.execution.call"
    TOOL_RESULT = "dreamos.tool.execution.result"
    MEMORY_UPDATE = "dreamos.memory.operation.update"
    MEMORY_READ = "dreamos.memory.operation.read"
    MEMORY_DELETE = "dreamos.memory.operation.delete"
    MEMORY_QUERY = "dreamos.memory.operation.query"
    COORDINATION_DIRECTIVE = "dreamos.coordination.directive"
    COORDINATION_PROPOSAL = "dreamos.coordination.proposal"
    SUPERVISOR_ALERT = "dreamos.coordination.supervisor.alert"
    SUPERVISOR_APPROVAL_REQUESTED = "dreamos.coordination.supervisor.approval.request"
    SUPERVISOR_APPROVAL_RESPONSE = "dreamos.coordination.supervisor.approval.response"
    VOTE_INITIATED = "dreamos.coordination.vote.initiated"
    VOTE_CAST = "dreamos.coordination.vote.cast"
    VOTE_RESULT = "dreamos.coordination.vote.result"
    CURSOR_INJECT_REQUEST = "dreamos.integration.cursor.inject.request"
    CURSOR_RETRIEVE_REQUEST = "dreamos.integration.cursor.retrieve.request"
    CURSOR_OPERATION_RESULT = "dreamos.integration.cursor.operation.result"
    CHATGPT_RESPONSE_SCRAPED = "dreamos.integration.chatgpt.scraped.response"
    DISCORD_MESSAGE_RECEIVED = "dreamos.integration.discord.message.received"
    DISCORD_MESSAGE_SEND = "dreamos.integration.discord.message.send"
    SYSTEM_CAPABILITY_REGISTERED = "dreamos.system.capability.registered"
    SYSTEM_CAPABILITY_UNREGISTERED = "dreamos.system.capability.unregistered"
    COMMAND_EXECUTION_REQUEST = "dreamos.command.execution.request"
    COMMAND_APPROVAL_REQUEST = "dreamos.command.approval.request"
    COMMAND_APPROVAL_RESPONSE = "dreamos.command.approval.response"
    COMMAND_EXECUTION_RESULT = "dreamos.command.execution.result"

    def __str__(self) -> str:
        return self.value
