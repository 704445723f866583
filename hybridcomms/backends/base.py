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
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

from .._fs import shown
from .._names import parse_compact
from ..errors import DeliveryError, InvalidAgentIdError
from ..message import Message, iso_utc
from ..retry import Backoff
from ..states import State

__all__ = [
    "AGENT_ID_RE",
    "DEFAULT_BACKOFF",
    "DEFAULT_DONE_RETENTION",
    "MAX_DELAY",
    "MAX_ERROR_TEXT",
    "LastError",
    "Mailbox",
    "MailboxDelivery",
    "MailboxStats",
    "MessageInfo",
    "RecoveryReport",
    "SettleHooks",
    "SettledByMailbox",
    "Settling",
    "StateStats",
    "check_agent_id",
    "check_delay",
    "check_retention",
    "common_options",
    "expiry_reason",
    "nack_wait",
    "purged_state",
    "put_once",
    "requeue_each",
    "requeue_source",
    "set_common_options",
    "text_of",
]

#: Acked messages kept by default, on every backend.
DEFAULT_DONE_RETENTION = 10_000
DEFAULT_BACKOFF = Backoff()
#: The longest ``put(delay=...)``, in seconds (ten years): a due time must stay a date with four digits.
MAX_DELAY = 10 * 365 * 86400.0
#: An error text longer than this is cut (a handler's exception can say a lot).
MAX_ERROR_TEXT = 4096
#: A safe agent id: one path component, on every backend.
AGENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+-]{0,127}\Z")


# -- the value types every backend returns ----------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LastError:
    """Why the last failed attempt of a message failed (``nack(error=...)``, a handler's exception, a
    command's exit status): kept with the message while it waits for its retry, on every backend.
    When the message is acked it is dropped; when it is dead-lettered it is the reason's ``last_error``."""

    error: str
    attempt: int  # the attempt that failed (1 = the first delivery)
    failed_at: float  # POSIX time of the nack

    def to_dict(self) -> dict[str, Any]:
        return {
            "error": self.error,
            "attempt": self.attempt,
            "failed_at": iso_utc(datetime.fromtimestamp(self.failed_at, timezone.utc)),
        }


@dataclass(frozen=True, slots=True)
class MessageInfo:
    """What a file in a mailbox folder says about itself, without reading it."""

    state: State
    name: str
    path: Path | None  # the file (None on backends without files)
    id: str | None  # None for a file hybridcomms did not name
    attempt: int
    due: str | None  # compact UTC time, from the name
    size: int
    changed_at: float  # when it entered this folder (ctime)
    reason: dict[str, Any] | None = None  # for dead/: the reason file's content
    last_error: LastError | None = None  # waiting for a retry (new, processing): why it last failed

    @property
    def due_at(self) -> float | None:
        """``due`` as a POSIX time: when the message may be claimed (None if the name has none)."""
        return None if self.due is None else parse_compact(self.due)


@dataclass(frozen=True, slots=True)
class StateStats:
    count: int
    oldest_age: float | None  # seconds since the oldest file entered the folder


@dataclass(frozen=True, slots=True)
class MailboxStats:
    agent_id: str
    states: dict[State, StateStats]
    delayed: int = 0  # in new/ but not due yet (backing off after a nack)

    def to_dict(self) -> dict[str, Any]:
        return {
            "agent": self.agent_id,
            **{s.value: {"count": v.count, "oldest_age": v.oldest_age} for s, v in self.states.items()},
            "delayed": self.delayed,
        }


@dataclass
class RecoveryReport:
    """What one `FileMailbox.recover` pass did (message ids, or file names for foreign files)."""

    returned: list[str] = field(default_factory=list)  # owner died: back to new/
    expired: list[str] = field(default_factory=list)  # lease ran out on a live owner: back to new/
    dead: list[str] = field(default_factory=list)  # attempts exhausted, or not a message file: to dead/
    tmp_removed: list[str] = field(default_factory=list)  # stale half-writes removed from tmp/
    #: last-error records (errors/) whose message was no longer waiting (a crash after its ack or
    #: dead-lettering), removed
    records_removed: list[str] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (entry, what was wrong): left in place
    busy: bool = False  # another recovery pass held the mailbox: this one did nothing

    def __bool__(self) -> bool:
        """Whether the pass did anything (or found something wrong)."""
        return any(
            (self.returned, self.expired, self.dead, self.tmp_removed, self.records_removed, self.errors)
        )


# -- the contract ------------------------------------------------------------------------------------


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

    def nack(self, delay: float | None = None, error: str | BaseException | None = None) -> State:
        """Failed: due again after ``delay`` seconds (default: the backoff), or to the dead letters
        with ``error`` if this was the last attempt. Returns the state reached (``NEW`` or ``DEAD``)."""

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
    kind: str  # the backend: "file", "memory" or "redis" (as `backends.backend_of` names its URL)
    done_retention: int | None  # acked messages kept in ``done`` (see "Retention"; None: every one)
    #: Whether other processes can reach this mailbox (False: it lives inside this process).
    shared: bool

    @property
    def folder(self) -> Path | None:
        """The folder the mailbox lives in (its messages are files there), else None. A put that
        fails on such a mailbox says nothing about the backend beyond that folder."""

    def put(self, message: Message, *, delay: float | None = None) -> str:
        """Store one message (not claimable for ``delay`` seconds, if given); returns its id."""

    def put_many(self, messages: Iterable[Message], *, delay: float | None = None) -> builtins.list[str]:
        """Store all of ``messages`` or none of them (a failed `put_many` takes back what it stored,
        except a message a consumer claimed in the meantime); returns their ids, in order."""

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

    def requeue_all(
        self,
        from_state: State | str = State.DEAD,
        *,
        reset_attempts: bool = True,
        step: Callable[[int], None] | None = None,
    ) -> builtins.list[str]:
        """Every message of ``dead`` (or ``done``) back to ``new``, as `requeue` moves one (the file
        backend with one listing for all); ``step(n)`` is told how many were handled so far. Returns
        the names given to the requeued messages."""

    def sibling(self, agent_id: str, *, create: bool = False) -> Mailbox:
        """The mailbox of ``agent_id`` on the same backend (root, store or server and namespace) with
        this one's options: where a reply goes back, without asking which backend this is."""

    def purge(self, state: State | str, older_than: float = 0.0) -> int:
        """Delete messages in ``done`` or ``dead`` that entered it ``older_than`` seconds ago or more."""

    def close(self) -> None: ...

    def __enter__(self) -> Any: ...

    def __exit__(self, *exc: object) -> None: ...


_D = TypeVar("_D", bound="Settling")


class Settling:
    """What the delivery of every backend shares: one settle only, and the context manager (ack when
    the block ends normally, nack with backoff and the error when it raises; the exception still
    propagates). Subclasses set the slots below and define ``ack``, ``nack``, ``dead``, ``heartbeat``."""

    __slots__ = ("_error", "_settled", "attempt", "message", "name")

    _error: str | None
    _settled: bool
    attempt: int
    message: Message
    name: str

    def _start(self, name: str, message: Message, attempt: int) -> None:
        self.name = name
        self.message = message
        self.attempt = attempt
        self._settled = False
        self._error = None

    @property
    def settled(self) -> bool:
        return self._settled

    def ack(self) -> None:
        raise NotImplementedError

    def nack(self, delay: float | None = None, error: str | BaseException | None = None) -> State:
        raise NotImplementedError

    def __enter__(self: _D) -> _D:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._settled:
            return
        if exc is None:
            self.ack()
        else:
            self._error = f"{type(exc).__name__}: {exc}"
            self.nack(error=self._error)

    def __repr__(self) -> str:
        return (
            f"<{type(self).__name__} {self.message.id} topic={self.message.topic!r} attempt={self.attempt}>"
        )


_Held = TypeVar("_Held", bound="SettledByMailbox", contravariant=True)


class SettleHooks(Protocol[_Held]):
    """What a `SettledByMailbox` delivery calls on its mailbox to settle (the in-memory and Redis
    backends), with itself: once per delivery, after the delivery checked it was not settled yet
    (``settle_heartbeat`` any number of times before)."""

    def settle_ack(self, delivery: _Held) -> None: ...

    def settle_nack(self, delivery: _Held, delay: float | None, error: str | None) -> State:
        """Back to ``new`` (due after ``delay``, default the backoff) or, on the last attempt, to
        ``dead``: the state reached."""

    def settle_dead(self, delivery: _Held, reason: str, error: str | None) -> None: ...

    def settle_heartbeat(self, delivery: _Held) -> None: ...


class SettledByMailbox(Settling):
    """A delivery whose settles are its mailbox's `SettleHooks` (the in-memory and Redis backends)."""

    __slots__ = ("_hooks",)
    _hooks: SettleHooks[Any]

    def __init__(self, hooks: SettleHooks[Any], name: str, message: Message, attempt: int) -> None:
        self._start(name, message, attempt)
        self._hooks = hooks

    def _check(self) -> None:
        if self._settled:
            raise DeliveryError(f"{self.name} is already settled")

    def ack(self) -> None:
        self._check()
        self._settled = True
        self._hooks.settle_ack(self)

    def nack(self, delay: float | None = None, error: str | BaseException | None = None) -> State:
        self._check()
        self._settled = True
        if error is not None:
            self._error = str(error)
        return self._hooks.settle_nack(self, delay, self._error)

    def dead(self, reason: str) -> None:
        self._check()
        self._settled = True
        self._hooks.settle_dead(self, reason, self._error)

    def heartbeat(self) -> None:
        self._check()
        self._hooks.settle_heartbeat(self)


# -- the options and checks every backend shares ----------------------------------------------------


def check_agent_id(agent_id: object) -> str:
    """Return ``agent_id`` if it is a safe single path component, else raise `InvalidAgentIdError`."""
    if not isinstance(agent_id, str):
        raise InvalidAgentIdError(f"agent id must be a string, not {type(agent_id).__name__}")
    if not AGENT_ID_RE.match(agent_id):
        shown = agent_id if len(agent_id) <= 40 else agent_id[:40] + "…"
        raise InvalidAgentIdError(
            f"unsafe agent id {shown!r}: use 1-128 of A-Z a-z 0-9 _ . @ + -, "
            "starting with a letter or digit (no '/', '..', leading dot, spaces or control characters)"
            + _migration_hint(agent_id, shown)
        )
    return agent_id


def _migration_hint(agent_id: str, shown: str) -> str:
    """How to move over a Dream.OS agent whose unsafe id is safe once its spaces are dashes (Dream.OS
    created folders like "Agent 1"); empty for any other id."""
    if " " in agent_id and AGENT_ID_RE.match(agent_id.replace(" ", "-")):
        return (
            f"; to move a Dream.OS agent {shown!r} over, rename its folder to "
            f"{agent_id.replace(' ', '-')!r} (and the id its senders use), then run "
            "'hybridcomms migrate' (docs/compatibility.md, agent ids)"
        )
    return ""


def requeue_source(from_state: State | str) -> State:
    """The state ``requeue`` takes messages from: dead or done (ValueError for any other)."""
    src = State(from_state)
    if src not in (State.DEAD, State.DONE):
        raise ValueError(f"requeue takes messages from dead/ or done/, not {src.value}/")
    return src


def purged_state(state: State | str) -> State:
    """The state ``purge`` empties: done or dead (ValueError for any other)."""
    st = State(state)
    if st not in (State.DONE, State.DEAD):
        raise ValueError(f"purge only empties done/ or dead/, not {st.value}/")
    return st


def common_options(mailbox: Any) -> dict[str, Any]:
    """The options every backend takes, as ``mailbox`` has them (to open another mailbox alike)."""
    return {
        "lease": mailbox.lease,
        "max_attempts": mailbox.max_attempts,
        "backoff": mailbox.backoff,
        "max_message_size": mailbox.max_message_size,
        "done_retention": mailbox.done_retention,
    }


def requeue_each(
    mailbox: Mailbox,
    from_state: State | str = State.DEAD,
    reset_attempts: bool = True,
    step: Callable[[int], None] | None = None,
) -> builtins.list[str]:
    """`Mailbox.requeue_all` through `Mailbox.requeue`: each message listed in ``from_state``, once
    per id (the backends whose `requeue` finds a message by id in one call)."""
    src = State(from_state)
    moved: builtins.list[str] = []
    for n, key in enumerate(_keys_listed(mailbox, src), 1):
        moved += mailbox.requeue(key, from_state=src, reset_attempts=reset_attempts)
        if step is not None:
            step(n)
    return moved


def _keys_listed(mailbox: Mailbox, state: State) -> builtins.list[str]:
    """The messages listed in ``state``, once per id (by name, those without one), in listing order."""
    return builtins.list(dict.fromkeys(i.id or i.name for i in mailbox.list(state)))


def set_common_options(
    mailbox: Any, lease: float, max_attempts: int, backoff: Backoff, max_message_size: int
) -> None:
    """Check and set the options every backend takes (`hybridcomms.backends`), the same way."""
    _check_common_options(lease, max_attempts, max_message_size)
    mailbox.lease = float(lease)
    mailbox.max_attempts = int(max_attempts)
    mailbox.backoff = backoff
    mailbox.max_message_size = int(max_message_size)


def _check_common_options(lease: float, max_attempts: int, max_message_size: int) -> None:
    """Raise ValueError for a lease, attempts or size that no mailbox can work with."""
    if lease <= 0:
        raise ValueError("lease must be > 0 seconds")
    if max_attempts < 1:
        raise ValueError("max_attempts must be >= 1")
    if max_message_size < 1:
        raise ValueError("max_message_size must be >= 1")


def check_delay(delay: float | None) -> float:
    """A ``put(delay=...)``, checked the same way by every backend: seconds, 0 to `MAX_DELAY`."""
    if delay is None:
        return 0.0
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise TypeError(f"delay must be a number of seconds, not {type(delay).__name__}")
    if not 0.0 <= delay <= MAX_DELAY:  # NaN fails this too
        raise ValueError(f"delay must be 0 to {MAX_DELAY:.0f} seconds, not {delay!r}")
    return float(delay)


def nack_wait(backoff: Backoff, attempt: int, delay: float | None) -> float:
    """How long a message nacked after ``attempt`` waits (seconds): ``delay`` if one is given (0 at
    least), else the backoff's (the same on every backend)."""
    return max(backoff.delay(attempt) if delay is None else delay, 0.0)


def expiry_reason(message: Message, attempts: int, name: str) -> dict[str, Any]:
    """The dead-letter reason of a message whose ``expires`` passed before it was claimed (the same on
    every backend)."""
    assert message.expires is not None
    return {
        "reason": "expired",
        "expires": message.to_dict()["expires"],
        "last_error": None,
        "message_file": shown(name),
        "id": message.id,
        "topic": message.topic,
        "attempts": attempts,
    }


def check_retention(done_retention: object) -> int | None:
    """A ``done_retention`` option, checked the same way by every backend: None, or an int >= 0."""
    if done_retention is None:
        return None
    if isinstance(done_retention, bool) or not isinstance(done_retention, int):
        raise TypeError(f"done_retention must be an int or None, not {type(done_retention).__name__}")
    if done_retention < 0:
        raise ValueError("done_retention must be >= 0 (0 keeps none) or None (keeps all)")
    return done_retention


def text_of(error: str | BaseException) -> str:
    """An error as the one line of text that is kept (at most `MAX_ERROR_TEXT` characters)."""
    text = error if isinstance(error, str) else f"{type(error).__name__}: {error}"
    return text if len(text) <= MAX_ERROR_TEXT else text[: MAX_ERROR_TEXT - 1] + "…"


def put_once(mailbox: Mailbox, message: Message, *, delay: float | None = None) -> MessageInfo | None:
    """`put` ``message`` unless a message with its id is in ``mailbox`` already, in any state (a resend:
    the CLI's ``send --id``, ``Comms.send(..., id=...)``); returns what is there then, None if it was put.

    It looks, then puts: two resends at the same instant can both put (send one after the other
    returned). The look costs a listing of the mailbox (``done`` included)."""
    existing = mailbox.get(message.id)
    if existing is None:
        mailbox.put(message, delay=delay)
    return existing
