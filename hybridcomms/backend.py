"""The mailbox contract: one typed interface, three backends.

`FileMailbox` (files under a root on one host), `MemoryMailbox` (threads of one process: fast tests,
and a model of the contract) and `RedisMailbox` (Redis Streams: a fleet across hosts) all implement
`Mailbox`, and one contract test suite (``tests/contract/``) runs against each of them. Code that
takes a `Mailbox` runs on any of them; `open_mailbox` picks one from a URL.

The contract
------------

**Putting.** `put` returns once the message is stored as durably as the backend promises (below);
it never waits for a consumer. `put_many` stores all of its messages or none of them. With
``delay=`` (seconds) the message is stored at once but not claimable before that long.
`put` stores what it is given: the same id twice is two messages; `put_once` stores a message
unless its id is already in the mailbox (a resend).

**Claiming.** `claim()` without a timeout never blocks: it returns a `MailboxDelivery` or ``None``.
``claim(timeout)`` waits up to ``timeout`` seconds for a message to arrive or become due, woken by the
backend's notifications (no busy polling); `wake` (with ``cancel`` set) ends a wait early. A claimed
message is held by its claimer, and no other claim returns it, until it is settled (``ack``, ``nack``
or ``dead``) or its lease runs out (`recover`).

**Order.** Highest priority first; within a priority, the earliest due (a nacked message is due after
its backoff, a delayed one after its delay); then the oldest. This is the order of one claimer; several
claimers work in parallel, so their messages finish in any order. A message not due yet is not
delivered.

**Expiry.** A message whose ``expires`` (`Message`) has passed, by the claimer's clock, when a claim
would hand it out goes to the dead letters with the reason ``expired`` instead: claim never returns
it, and a claim with a timeout goes on waiting for the next message.

**Attempts.** ``delivery.attempt`` counts deliveries: 1 the first time a message is claimed, one more
each time it is claimed again (after a nack, or after recovery took it back from a consumer that died
or let its lease run out). When a delivery whose attempt is the last allowed fails (``nack``), or when
recovery takes back such a delivery, the message goes to the dead letters with the reason
(`hybridcomms.retry.attempts_used_up` is the one rule). `requeue` gives a dead message a fresh count.

**The last error.** A ``nack`` with an ``error`` keeps it with the message while it waits for its retry
(the attempt that failed, and when): `get` and `list` give it as ``MessageInfo.last_error``, and its
due time as ``MessageInfo.due``. An ack drops it; a dead-lettering puts it into the reason's
``last_error`` when the settle gives no error of its own.

**At least once.** A message is delivered until a delivery of it is acked. A consumer killed at any
point (kill -9) loses nothing: what it held comes back to be delivered again (`recover`). So a
handler may see a message twice, and must be idempotent or deduplicate on ``message.id``.

**What survives.** Per backend, documented in docs/guarantees.md:

- `FileMailbox`: kill -9 at any point; a power loss too at ``fsync="always"`` (every put and settle
  is committed before it returns; a claim is not: one undone by a power loss leaves the message
  waiting, as if its consumer had died, and only its attempt may go uncounted).
- `RedisMailbox`: kill -9 of any client; a Redis restart loses nothing `put` acknowledged when the
  server runs with ``appendonly yes`` and ``appendfsync always``.
- `MemoryMailbox`: nothing past the process (it is a model, and a test double).

**States.** A message is in one of ``new`` (waiting, due or delayed), ``processing`` (claimed),
``done`` (acked) or ``dead`` (with a reason). `stats`, `list`, `get` look; `requeue` and `purge` repair.

**Retention.** ``done_retention`` (every backend, 10,000 by default) is how many acked messages
``done`` keeps for inspection: about the last N (the oldest beyond are dropped as acks come; exactly
N in memory, Redis's ``MAXLEN ~`` and the file backend's trim every N/4 acks keep a little more);
``0`` keeps none (the ack drops the message), ``None`` keeps every one until `purge`. Only acked
messages are ever dropped by it.
"""

from __future__ import annotations

import builtins
import threading
from collections.abc import Iterable
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from ._urls import URL_ENV, backend_of, shown_url
from .inspection import MailboxStats, MessageInfo
from .message import Message
from .recovery import RecoveryReport
from .states import State

__all__ = ["URL_ENV", "Mailbox", "MailboxDelivery", "open_mailbox", "put_once"]


@runtime_checkable
class MailboxDelivery(Protocol):
    """A claimed message. Settle it exactly once; as a context manager it acks when the block ends
    normally and nacks (with backoff) when the block raises."""

    message: Message
    attempt: int  # 1 on the first delivery
    name: str  # how the backend names this delivery (a file name, a stream entry)

    @property
    def settled(self) -> bool: ...

    def ack(self) -> None:
        """Done: the message is not delivered again. Raises `DeliveryLostError` if recovery took it
        back first (it will be delivered again)."""

    def nack(self, delay: float | None = None, error: str | BaseException | None = None) -> None:
        """Failed: due again after ``delay`` seconds (default: the backoff), or to the dead letters
        with ``error`` if this was the last attempt."""

    def dead(self, reason: str) -> None:
        """To the dead letters now, with ``reason``."""

    def heartbeat(self) -> None:
        """Still working on it: extend the lease. Raises `DeliveryLostError` if it was taken back."""

    def __enter__(self) -> Any: ...

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None: ...


@runtime_checkable
class Mailbox(Protocol):
    """One agent's mailbox on some backend (see the module's docstring for the contract)."""

    agent_id: str
    lease: float
    max_attempts: int
    max_message_size: int
    done_retention: int | None  # acked messages kept in ``done`` (None: every one)

    def put(self, message: Message, *, delay: float | None = None) -> str:
        """Store one message (not claimable for ``delay`` seconds, if given); its name in this backend."""

    def put_many(self, messages: Iterable[Message], *, delay: float | None = None) -> builtins.list[str]:
        """Store all of ``messages`` or none of them."""

    def claim(
        self, timeout: float | None = None, *, cancel: threading.Event | None = None
    ) -> MailboxDelivery | None:
        """The next message (see "Order"), or None; with ``timeout``, wait that long for one."""

    def wake(self) -> None:
        """Make every waiting `claim` look again (and see its ``cancel``)."""

    def recover(self, *, now: float | None = None) -> RecoveryReport:
        """Take back what dead consumers held and what outlived its lease (judged at ``now``):
        back to ``new``, or to the dead letters past ``max_attempts``."""

    def stats(self) -> MailboxStats: ...

    def list(self, state: State | str) -> builtins.list[MessageInfo]: ...

    def get(self, message_id: str) -> MessageInfo | None: ...

    def read(self, info: MessageInfo) -> Message: ...

    def requeue(
        self, message_id: str, *, from_state: State | str = State.DEAD, reset_attempts: bool = True
    ) -> builtins.list[str]:
        """Back to ``new``, due now, from ``dead`` (or ``done``: a replay)."""

    def purge(self, state: State | str, older_than: float = 0.0) -> int:
        """Delete messages in ``done`` or ``dead`` that entered it ``older_than`` seconds ago or more."""

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


def open_mailbox(where: str, agent_id: str, **options: Any) -> Mailbox:
    """The mailbox of ``agent_id`` at ``where``:

    - ``redis://[user:password@]host[:port][/db]`` or ``rediss://…`` (TLS): a `RedisMailbox`
      (needs the ``hybridcomms[redis]`` extra);
    - ``memory://<name>``: a `MemoryMailbox` shared by everything in this process that names it;
    - ``file:///path``, or a plain path: a `FileMailbox` under that root.

    ``options`` are the mailbox options every backend takes (``lease``, ``max_attempts``,
    ``backoff``, ``max_message_size``, ``done_retention``, ``create``) and the backend's own (``fsync``
    for files, …)."""
    kind = backend_of(where)
    if kind == "redis":
        from .redis_mailbox import RedisMailbox

        return RedisMailbox(where, agent_id, **options)
    if kind == "memory":
        from .memory import MemoryMailbox

        return MemoryMailbox.named(where[len("memory://") :], agent_id, **options)
    if kind != "file":
        raise ValueError(f"unknown mailbox URL scheme in {shown_url(where)!r} (redis, rediss, memory, file)")
    from .mailbox import FileMailbox

    root = where[len("file://") :] if where.startswith("file://") else where
    return FileMailbox(root, agent_id, **options)


def put_once(mailbox: Mailbox, message: Message, *, delay: float | None = None) -> MessageInfo | None:
    """`put` ``message`` unless a message with its id is in ``mailbox`` already, in any state (a resend:
    the CLI's ``send --id``, ``Comms.send(..., id=...)``); returns what is there then, None if it was put.

    It looks, then puts: two resends at the same instant can both put (send one after the other
    returned). The look costs a listing of the mailbox (``done`` included)."""
    existing = mailbox.get(message.id)
    if existing is None:
        mailbox.put(message, delay=delay)
    return existing
