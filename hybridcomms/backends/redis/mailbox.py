"""`RedisMailbox`: the mailbox contract (`hybridcomms.backends.base`) on Redis Streams, for fleets.

Needs the ``redis`` client (``pip install 'hybridcomms[redis]'``) and Redis >= 6.2.

Keys of agent ``A`` (namespace ``hc``; the braces keep one agent's keys in one cluster slot):

    hc:{A}:s:0C hc:{A}:s:1H hc:{A}:s:2M hc:{A}:s:3L   one stream per priority, consumer group "hc"
    hc:{A}:delayed  hc:{A}:delayed:data              nacked and recovered messages waiting to be due
                                                      (a sorted set of due times, and their entries)
    hc:{A}:done  hc:{A}:dead                          acked (trimmed to ``done_retention``) and dead
                                                      letters (with the reason and the last error)

Stream entry fields: ``m`` the encoded message (what a `FileMailbox` file holds), ``a`` the attempts
used before this entry, ``id`` and ``t`` the message's id and topic, ``k`` its priority rank, ``d``
its due time (ms), ``e`` (a message waiting for a retry) its last error as JSON (``error``,
``attempt``, ``failed_at`` in ms), ``r`` (dead letters only) the reason as JSON.

How each call maps onto Redis (each settle is one Lua script, so it is atomic and one round trip):

- `put` = ``XADD`` to the stream of the message's priority; `put_many` = one ``MULTI``/``EXEC``;
  with a ``delay``, into ``delayed`` instead (due then).
- a message whose ``expires`` passed is dead-lettered by the claim that reads it (reason ``expired``),
  and the claim goes on.
- `claim` = a script that moves due delayed entries back into their streams, then ``XREADGROUP ... >``
  on the streams in priority order; with a timeout, then ``XREADGROUP BLOCK`` on all four, bounded by the
  next delayed due time (no polling loop), ended early by `wake` (``CLIENT UNBLOCK``).
- the attempt = the attempts of earlier entries + this entry's delivery count.
- `ack` = ``XACK`` + ``XDEL`` (the stream does not grow) + ``XADD`` to ``done`` (``MAXLEN ~``).
- `nack` = ``XACK`` + ``XDEL`` + the entry into ``delayed`` due after the backoff, with its error as
  ``e`` (it follows the message back into its stream, and is dropped when it is acked); past
  ``max_attempts`` the dead letters. `dead` = ``XACK`` + ``XDEL`` + ``XADD`` to ``dead`` with the reason
  (its ``last_error``: the settle's error, else the one the entry kept).
- `heartbeat` = ``XCLAIM ... JUSTID`` by its owner (resets the idle time the lease is judged by).
- `recover` = the pending entries idle past the lease (``XPENDING ... IDLE``), taken in one script:
  back to ``delayed`` (due after the backoff) or to ``dead`` past ``max_attempts``. Consumers that hold
  nothing and have been idle for long are removed from the group. `claim` runs it every
  ``reclaim_every`` seconds (a quarter of the lease): no operator is needed for a lease to run out.
- `stats` = one read-only script (lengths, pending summaries, first ids): no message is read;
  `list` pages through each stream once, and `read` fetches the one entry a listing saw.

Any client of the server can write these keys: an entry that is not a deliverable message (no ``m``,
an ``a`` that is not a count, over ``max_message_size``, not decodable; a ``delayed:data`` entry that
is not ours) goes to ``dead`` with the reason ``cannot be read: …`` from the claim or the recovery
that meets it, never only deleted. At ``maxmemory`` (``noeviction``) claims and settles go on: a
script that moves an entry frees before it adds (Redis lets a script that has written finish), and
opening a mailbox whose group exists only reads.

Differences from the file backend (docs/guarantees.md): a killed consumer's messages come back when
its lease runs out (Redis has no lock that dies with a process: keep leases short and heartbeat);
within a priority, messages are delivered in the order they entered their stream (a nacked or
recovered message enters it again when it becomes due).
"""

from __future__ import annotations

import builtins
import errno
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson

from ..._names import RANK_OF, RANKS, compact_time, make_name
from ..._urls import shown_url
from ...errors import (
    BackendUnavailableError,
    DeliveryLostError,
    HybridCommsError,
    MailboxIOError,
    MessageDecodeError,
)
from ...message import DEFAULT_MAX_MESSAGE_SIZE, Message, check_id
from ...retry import Backoff, attempts_used_up
from ...states import State
from ..base import (
    DEFAULT_BACKOFF,
    DEFAULT_DONE_RETENTION,
    LastError,
    MailboxStats,
    MessageInfo,
    RecoveryReport,
    SettledByMailbox,
    StateStats,
    check_agent_id,
    check_delay,
    check_retention,
    common_options,
    expiry_reason,
    nack_wait,
    purged_state,
    requeue_each,
    requeue_source,
    set_common_options,
    text_of,
)
from . import scripts
from .fastpath import Script, pack, roundtrip

try:
    import redis
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("RedisMailbox needs the redis client: pip install 'hybridcomms[redis]'") from exc

__all__ = ["RedisDelivery", "RedisMailbox", "redis_agents"]

GROUP = "hc"
#: A blocking read is at most this long (a `wake` that comes just before it starts is not lost for longer).
_MAX_BLOCK = 2.0
#: A consumer that keeps up still runs the claim script this often (delayed messages become due).
_RESCAN = 0.25
#: Delays (seconds) handed to the recovery script, one per attempt count (the last one repeats).
_RECOVER_DELAYS = 32
#: Bytes an entry may hold beyond its message (our fields are small; the last error is at most 4 KiB).
_MAX_OVERHEAD = 64 * 1024
#: Entries read per round trip when listing.
_PAGE = 100


def _flat(fields: dict[str, Any]) -> builtins.list[Any]:
    return [x for kv in fields.items() for x in kv]


def _s(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _fields(flat: Any) -> dict[str, bytes]:
    """A stream entry's fields, from a flat [k, v, k, v, …] list (a name given twice: the first, as the
    scripts read it) or a dict."""
    if isinstance(flat, dict):
        return {_s(k): v for k, v in flat.items()}
    out: dict[str, bytes] = {}
    for i in range(0, len(flat) - 1, 2):
        out.setdefault(_s(flat[i]), flat[i + 1])
    return out


#: 9999-12-31T23:59:59.999Z in ms: the last time a name can say (an entry id can be any 64-bit number).
_LAST_MS = 253_402_300_799_999


def _ms_of(entry_id: bytes | str) -> int:
    """The time (ms) of an entry id or a delayed token (``<ms>-…``), within what a name can say."""
    head = _s(entry_id).split("-", 1)[0]
    return min(int(head), _LAST_MS) if head.isdigit() and head.isascii() else 0


def _digits(raw: Any, width: int) -> int | None:
    """A count written by this code (``a``, ``d``): 1 to ``width`` ASCII digits; None for anything else."""
    text = raw.decode("ascii", "replace") if isinstance(raw, bytes) else raw
    if isinstance(text, str) and 0 < len(text) <= width and text.isdigit() and text.isascii():
        return int(text)
    return None


def _due_ms(f: dict[str, bytes], entry_id: bytes | str) -> int:
    """An entry's due time (``d``), else the time in its id."""
    d = _digits(f.get("d"), 15)
    return d if d is not None and 0 < d <= _LAST_MS else _ms_of(entry_id)


def _msg_id(raw: Any) -> str | None:
    """A message id field, if it is one (else None: an entry this code did not write)."""
    text = _s(raw) if isinstance(raw, (bytes, str)) else None
    try:
        return check_id(text)
    except HybridCommsError:
        return None


def _io_error(exc: Exception, url: str, what: str) -> MailboxIOError:
    """A client error as the mailbox's error: `BackendUnavailableError` when the server cannot be
    reached (refused, timed out, credentials refused, no such host), else `MailboxIOError`."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        from ..._reasons import reason

        return BackendUnavailableError(shown_url(url), reason(exc), what)
    return MailboxIOError(errno.EIO, f"{what} failed: {exc}")


def _client(url: str) -> Any:
    """A client of the Redis at ``url`` (typed loosely: the stubs do not know RESP replies);
    ValueError if it is not a usable Redis URL."""
    try:
        return redis.Redis.from_url(url)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a usable Redis URL {shown_url(url)}: {exc}") from None


def _agent_of_key(key: bytes | str) -> str | None:
    """The agent a stream key names between its braces (``hc:{<agent>}:s:…``), if it names one."""
    text = _s(key)
    start, end = text.find("{"), text.find("}")
    return text[start + 1 : end] if 0 <= start < end else None


def _agents_of(client: Any, namespace: str) -> builtins.list[str]:
    """The agents with a stream of ``namespace`` on the server of ``client``, sorted."""
    found: set[str] = set()
    for key in client.scan_iter(match=f"{namespace}:{{*}}:s:*", count=1000):
        agent = _agent_of_key(key)
        if agent is not None:
            found.add(agent)
    return sorted(found)


def redis_agents(url: str, namespace: str = "hc") -> builtins.list[str]:
    """The agents that have a mailbox on the Redis at ``url``."""
    client = _client(url)
    try:
        return _agents_of(client, namespace)
    except redis.RedisError as exc:
        raise _io_error(exc, url, f"listing the mailboxes on {shown_url(url)}") from exc
    except TypeError as exc:  # an option in the URL's query that the client does not take
        raise ValueError(f"not a usable Redis URL {shown_url(url)}: {exc}") from None
    finally:
        client.close()


def _check_trimming(maxlen: int | None, max_age: float | None) -> None:
    """``maxlen`` and ``max_age`` are usable (at most one of them: Redis trims one way at a time)."""
    if maxlen is not None:
        _check_maxlen(maxlen, max_age)
    if max_age is not None and max_age <= 0:
        raise ValueError("max_age must be > 0 seconds")


def _check_maxlen(maxlen: int, max_age: float | None) -> None:
    """A ``maxlen`` given is usable: 1 at least, and not beside a ``max_age``."""
    if maxlen < 1:
        raise ValueError("maxlen must be >= 1")
    if max_age is not None:
        raise ValueError("give maxlen or max_age, not both (Redis trims a stream one way at a time)")


def _oversize(f: dict[str, bytes], raw: bytes, limit: int) -> str:
    """Why an entry's message ``raw`` or the entry's fields ``f`` are over ``limit`` (the mailbox's
    max_message_size, and `_MAX_OVERHEAD` for the fields); empty if they are not."""
    if len(raw) > limit:
        return f"its message is {len(raw)} bytes, over max_message_size ({limit})"
    size = sum(len(k) + len(v) for k, v in f.items() if isinstance(v, bytes))
    if size > limit + _MAX_OVERHEAD:
        return f"the entry is {size} bytes, over max_message_size ({limit}) and its fields"
    return ""


def _check_reclaim_every(reclaim_every: float | None) -> None:
    """``reclaim_every`` is usable: None (the default) or a number of seconds, 0 for never."""
    if reclaim_every is not None and reclaim_every < 0:
        raise ValueError("reclaim_every must be >= 0 seconds (0: never)")


def _without_group(groups: Any) -> bool:
    """Whether a stream's XINFO GROUPS reply (an error if there is no stream) lacks the group."""
    return isinstance(groups, Exception) or not any(_s(g["name"]) == GROUP for g in groups)


def _raise_unless_no_stream(found: Any) -> None:
    """Raise the error of a stream's XINFO GROUPS (``found``) unless it says there is no stream yet:
    not a stream (WRONGTYPE), or the server said no."""
    if isinstance(found, redis.ResponseError) and "no such key" not in str(found).lower():
        raise found


def _json_object(packed: Any) -> dict[str, Any]:
    """``packed`` read as a JSON object; empty if it is not one (anyone may have written it)."""
    try:
        e = orjson.loads(packed)
    except (orjson.JSONDecodeError, TypeError):
        return {}
    return e if isinstance(e, dict) else {}


def _int_in(value: Any, low: int, high: int, otherwise: int) -> int:
    """``value`` if it is an int from ``low`` to ``high``, else ``otherwise``."""
    return value if type(value) is int and low <= value <= high else otherwise


class RedisMailbox:
    """One agent's mailbox on Redis Streams (see the module docstring).

    ``RedisMailbox(url, agent_id, *, lease=300, max_attempts=5, backoff=Backoff(), max_message_size=…,
    create=True, namespace="hc", done_retention=10000, maxlen=None, max_age=None, consumer=None)``

        url              ``redis://[user:password@]host[:port][/db]``, ``rediss://…`` (TLS), ``unix://…``
        lease, max_attempts, backoff, max_message_size: as for `FileMailbox`
        create           False: raise `MailboxIOError` if the agent has no mailbox there yet
        namespace        the first part of every key
        done_retention   acked messages kept in ``done`` (the contract's "Retention"): about the last N,
                         10,000 by default (``XADD MAXLEN ~`` keeps a little more); 0 keeps none (the
                         ack drops the message), None keeps every one (until `purge`)
        max_age          drop entries older than this many seconds from each priority's stream as new
                         ones come (``XADD MINID ~``); None (the default) never does (same caveat)
        maxlen           cap each priority's stream at about this many entries (``XADD MAXLEN ~``);
                         None (the default) never trims: trimming drops messages not yet delivered
        consumer         this client's name in the consumer group (default: host, pid and a random part)
        reclaim_every    `claim` takes back leases that ran out (`recover`) this often, in seconds
                         (default: a quarter of the lease; 0 never does): a message whose consumer died,
                         or whose ack failed while Redis was down, comes back within about its lease
                         without anyone running ``recover``
    """

    kind = "redis"
    shared = True
    folder: Path | None = None
    lease: float
    max_attempts: int
    backoff: Backoff
    max_message_size: int

    def __init__(
        self,
        url: str,
        agent_id: str,
        *,
        lease: float = 300.0,
        max_attempts: int = 5,
        backoff: Backoff = DEFAULT_BACKOFF,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        create: bool = True,
        namespace: str = "hc",
        done_retention: int | None = DEFAULT_DONE_RETENTION,
        maxlen: int | None = None,
        max_age: float | None = None,
        consumer: str | None = None,
        reclaim_every: float | None = None,
    ) -> None:
        self.agent_id = check_agent_id(agent_id)
        set_common_options(self, lease, max_attempts, backoff, max_message_size)
        self.done_retention = check_retention(done_retention)
        _check_trimming(maxlen, max_age)
        _check_reclaim_every(reclaim_every)
        self.max_age = max_age
        self.url = url
        self.namespace = namespace
        self.maxlen = maxlen
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._name_keys()
        self._r: Any = _client(url)
        self._closed = False
        self._blockers: dict[int, tuple[Any, int]] = {}  # thread id -> (its blocking client, client id)
        self._blockers_lock = threading.Lock()
        self._found_nothing = False  # the last claim script found nothing, and nothing delayed
        self._scanned = 0.0  # when the claim script last ran (monotonic)
        self._pid = os.getpid()
        self.reclaim_every = max(self.lease / 4, 0.05) if reclaim_every is None else float(reclaim_every)
        self._next_reclaim = time.monotonic() + self.reclaim_every
        self._reclaim_lock = threading.Lock()
        #: Where the entries of the last listing are ({state: {name: (key, entry id or delayed token)}}),
        #: so `read` fetches one entry instead of listing again.
        self._where: dict[State, dict[str, tuple[str, str]]] = {}
        self._open(create)

    def _name_keys(self) -> None:
        """The keys of the mailbox, all in one hash slot (``{agent}``): a stream per priority, the
        delayed set and its data, done and dead."""
        base = f"{self.namespace}:{{{self.agent_id}}}"
        self._streams = [f"{base}:s:{rank}" for rank in RANKS]
        self._delayed, self._delayed_data = f"{base}:delayed", f"{base}:delayed:data"
        self._done, self._dead = f"{base}:done", f"{base}:dead"

    def _open(self, create: bool) -> None:
        """Open the mailbox on the server (`_open_groups`, `_load_scripts`); the client is closed if
        that fails."""
        try:
            self._open_groups(create)
            self._load_scripts()
        except redis.RedisError as exc:
            self._r.close()
            raise self._error(exc, "open") from exc
        except TypeError as exc:  # an option in the URL's query that the client does not take
            self._r.close()
            raise ValueError(f"not a usable Redis URL {shown_url(self.url)}: {exc}") from None
        except BaseException:
            self._r.close()
            raise

    def _load_scripts(self) -> None:
        """The Lua scripts (`scripts`), as redis-py `Script` objects of this client."""
        self._claim_script = Script(self._r, scripts.CLAIM)
        self._ack_script = Script(self._r, scripts.ACK)
        self._nack_script = Script(self._r, scripts.NACK)
        self._dead_script = Script(self._r, scripts.DEAD)
        self._release_script = Script(self._r, scripts.RELEASE)
        self._recover_script = Script(self._r, scripts.RECOVER)
        self._stats_script = Script(self._r, scripts.STATS)

    def _open_groups(self, create: bool) -> None:
        """Make the consumer group on each priority's stream where it is missing. Looks first (reads
        only): a server at ``maxmemory`` refuses writes, and a mailbox that exists must still open."""
        found = self._groups_of_streams()
        if not create:
            self._check_exists(found)
        for stream, groups in zip(self._streams, found, strict=True):
            if _without_group(groups):
                self._make_group(stream, groups)

    def _groups_of_streams(self) -> builtins.list[Any]:
        """The XINFO GROUPS reply of each priority's stream (an error where there is no stream), in
        one round trip."""
        pipe = self._r.pipeline(transaction=False)
        for stream in self._streams:
            pipe.xinfo_groups(stream)
        return pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    def _check_exists(self, found: builtins.list[Any]) -> None:
        """Raise `MailboxIOError` (ENOENT) if no priority's stream exists (``found``: their XINFO
        GROUPS replies, an error where there is no stream)."""
        if all(isinstance(groups, Exception) for groups in found):
            raise MailboxIOError(errno.ENOENT, f"no mailbox {self.agent_id!r} at {shown_url(self.url)}")

    def _make_group(self, stream: str, found: Any) -> None:
        """Make the consumer group of ``stream``, whose XINFO GROUPS gave ``found`` (an error if there
        is no stream yet); one made meanwhile by another process is fine."""
        _raise_unless_no_stream(found)
        try:
            self._r.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def _error(self, exc: Exception, what: str) -> MailboxIOError:
        return _io_error(exc, self.url, f"{what} on {shown_url(self.url)} ({self.agent_id})")

    def __repr__(self) -> str:
        return f"<RedisMailbox {shown_url(self.url)} {self.agent_id}>"

    def __enter__(self) -> RedisMailbox:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.wake()
        with self._blockers_lock:
            blockers, self._blockers = builtins.list(self._blockers.values()), {}
        for client, _ in blockers:
            client.close()
        self._r.close()

    def _check(self) -> None:
        if self._closed:
            raise MailboxIOError(errno.EBADF, f"{self!r} is closed")

    # -- put ------------------------------------------------------------------------------------

    def _fields_of(self, message: Message, delay: float) -> tuple[int, dict[str, Any]]:
        data = message.encode(self.max_message_size)
        rank = RANK_OF[message.priority]
        now = time.time()
        due = now + delay if delay else min(message.created_at.timestamp(), now)
        fields = {"m": data, "a": 0, "id": message.id, "t": message.topic, "k": rank, "d": int(due * 1000)}
        return RANKS.index(rank), fields

    def put(self, message: Message, *, delay: float | None = None) -> str:
        return self.put_many([message], delay=delay)[0]

    def _trim(self) -> builtins.list[Any]:
        """The retention arguments of an XADD (none by default)."""
        if self.maxlen is not None:
            return ["MAXLEN", "~", self.maxlen]
        if self.max_age is not None:
            return ["MINID", "~", int((time.time() - self.max_age) * 1000)]
        return []

    def put_many(self, messages: Iterable[Message], *, delay: float | None = None) -> builtins.list[str]:
        """Store all of ``messages`` or none of them (one ``MULTI``/``EXEC``); their ids, in order."""
        wait = check_delay(delay)
        self._check()
        batch = [(m, *self._fields_of(m, wait)) for m in messages]  # all encoded before any is sent
        if not batch:
            return []
        try:
            self._store(batch, wait)
        except redis.RedisError as exc:
            raise self._error(exc, "put") from exc
        return [m.id for m, _, _ in batch]

    def _store(self, batch: builtins.list[tuple[Message, int, dict[str, Any]]], wait: float) -> None:
        """Store the encoded ``batch`` (message, priority index, fields) all at once: delayed if it
        waits (`_store_delayed`), else one ``XADD`` for one message, one ``MULTI``/``EXEC`` for several."""
        if wait:
            self._store_delayed(batch)
        elif len(batch) == 1:
            _, i, fields = batch[0]
            trim = self._trim()
            roundtrip(self._r, pack(["XADD", self._streams[i], *trim, "*", *_flat(fields)]))
        else:
            self._store_in_streams(batch)

    def _store_delayed(self, batch: builtins.list[tuple[Message, int, dict[str, Any]]]) -> None:
        """Not due yet: into the delayed set, as a nacked message waits (one MULTI/EXEC)."""
        pipe = self._r.pipeline(transaction=True)
        for _, i, fields in batch:
            token = f"{int(time.time() * 1000)}-p{uuid.uuid4().hex}:0"
            pipe.hset(self._delayed_data, token, self._packed(i, fields["m"], 0, fields, None))
            pipe.zadd(self._delayed, {token: fields["d"]})
        pipe.execute()

    def _store_in_streams(self, batch: builtins.list[tuple[Message, int, dict[str, Any]]]) -> None:
        """Several messages due now: each into its priority's stream, trimmed (one MULTI/EXEC)."""
        pipe = self._r.pipeline(transaction=True)
        for _, i, fields in batch:
            if self.max_age is not None:
                pipe.xadd(self._streams[i], fields, minid=self._trim()[2], approximate=True)
            else:
                pipe.xadd(self._streams[i], fields, maxlen=self.maxlen, approximate=True)
        pipe.execute()

    # -- claim ----------------------------------------------------------------------------------

    def claim(
        self, timeout: float | None = None, *, cancel: threading.Event | None = None
    ) -> RedisDelivery | None:
        """The due message with the highest priority, oldest first; None if there is none (after
        waiting up to ``timeout`` seconds; setting ``cancel``, then `wake`, ends the wait)."""
        self._check()
        deadline = time.monotonic() + (timeout or 0.0)
        scan = not self._keeping_up(timeout)
        while cancel is None or not cancel.is_set():
            self._reclaim()
            remaining = deadline - time.monotonic()
            if scan:
                got = self._run_claim()
                if got[0] != 0:
                    delivery = self._delivery(int(got[0]) - 1, got[1], got[2])
                    if delivery is not None:
                        return delivery
                    continue  # a poison entry, dead-lettered: look again, within the same timeout
                wait = self._wait_time(deadline, int(got[1]))
                if wait is None:
                    return None
                remaining = wait
            scan = True
            delivery = self._block(remaining, cancel)
            if delivery is not None:
                return delivery
        return None

    def _keeping_up(self, timeout: float | None) -> bool:
        """Whether a waiting claim may go straight to the blocking read.

        A waiting consumer that keeps up (its last look found at most one waiting message, nothing
        delayed) goes straight to the blocking read, which returns at once when something arrived
        meanwhile: one round trip per message instead of two. The claim script (priority order,
        delayed messages made due) still runs first when the last read met a backlog of several
        priorities, and at least every _RESCAN seconds."""
        return bool(
            timeout and timeout > 0 and self._found_nothing and time.monotonic() - self._scanned < _RESCAN
        )

    def _run_claim(self) -> Any:
        """One run of the claim script: ``[rank + 1, entry id, fields]`` for an entry claimed, else
        ``[0, ms of the next delayed message or -1]``."""
        try:
            got = self._claim_script(
                keys=[*self._streams, self._delayed, self._delayed_data, self._dead],
                args=[GROUP, self.consumer],
            )
        except redis.RedisError as exc:
            raise self._error(exc, "claim") from exc
        self._scanned = time.monotonic()
        self._found_nothing = got[0] == 0 and int(got[1]) < 0
        return got

    def _wait_time(self, deadline: float, next_due_ms: int) -> float | None:
        """How long to block for an arrival: until the deadline or the next delayed message is due;
        None once the deadline passed (or the mailbox closed)."""
        remaining = deadline - time.monotonic()
        if remaining <= 0 or self._closed:
            return None
        if next_due_ms >= 0:
            remaining = min(remaining, max(next_due_ms / 1000 - time.time(), 0.001))
        return remaining

    def _reclaim(self) -> None:
        """Every ``reclaim_every`` seconds, one claim of this client takes back the leases that ran out
        (`recover`): Redis has no lock that dies with a consumer, so its consumers do it themselves."""
        if not self.reclaim_every or time.monotonic() < self._next_reclaim:
            return
        if not self._reclaim_lock.acquire(blocking=False):
            return  # another thread of this client is at it
        try:
            self._next_reclaim = time.monotonic() + self.reclaim_every
            self.recover()
        finally:
            self._reclaim_lock.release()

    def _blocker(self) -> Any:
        tid = threading.get_ident()
        with self._blockers_lock:
            held = self._blockers.get(tid)
            if held is None:
                client: Any = redis.Redis.from_url(self.url, single_connection_client=True)
                held = self._blockers[tid] = (client, int(client.client_id()))
            return held[0]

    def _drop_blocker(self) -> None:
        with self._blockers_lock:
            held = self._blockers.pop(threading.get_ident(), None)
        if held is not None:
            held[0].close()

    def _block(self, seconds: float, cancel: threading.Event | None) -> RedisDelivery | None:
        """Wait for an entry on any stream (``XREADGROUP BLOCK``); the best one read is ours, any
        other one read with it goes back."""
        if cancel is not None and cancel.is_set():
            return None
        got = self._read_blocking(self._blocking_client(), self._xreadgroup(seconds))
        if not got:
            return None
        return self._keep_best(self._entries_read(got))

    def _blocking_client(self) -> Any:
        """This thread's client for blocking reads (`_blocker`); its errors as the mailbox's."""
        try:
            return self._blocker()
        except redis.RedisError as exc:
            raise self._error(exc, "claim") from exc

    def _xreadgroup(self, seconds: float) -> Any:
        """The packed ``XREADGROUP`` of one new entry of any stream, blocking ``seconds`` at most
        (`_MAX_BLOCK` at most, 1 ms at least)."""
        block_ms = max(1, int(min(seconds, _MAX_BLOCK) * 1000))
        head: builtins.list[Any] = [
            "XREADGROUP",
            "GROUP",
            GROUP,
            self.consumer,
            "COUNT",
            1,
            "BLOCK",
            block_ms,
        ]
        return pack([*head, "STREAMS", *self._streams, *(">" for _ in self._streams)])

    def _keep_best(self, entries: builtins.list[tuple[int, Any, Any]]) -> RedisDelivery | None:
        """The delivery of the best of the ``entries`` read (highest priority first); the others go back."""
        if len(entries) > 1:
            self._found_nothing = False  # several priorities wait: the next claim scans, in order
            self._release(entries[1:])
        i, entry_id, fields = entries[0]
        return self._delivery(i, entry_id, fields)

    def _read_blocking(self, client: Any, packed: Any) -> Any:
        """Send the packed XREADGROUP on the blocking client's own connection (the one `wake`
        unblocks by its client id) and read its reply; None if the mailbox closed meanwhile."""
        conn = client.connection
        try:
            conn.send_packed_command([packed])
            return conn.read_response()
        except redis.ResponseError as exc:
            raise self._error(exc, "claim") from exc
        except (redis.RedisError, OSError) as exc:
            conn.disconnect()
            self._drop_blocker()  # its client id is gone with the connection: `wake` needs the next one's
            if self._closed:
                return None
            raise self._error(exc, "claim") from exc

    def _entries_read(self, got: Any) -> builtins.list[tuple[int, Any, Any]]:
        """(priority index, entry id, fields) of each entry an XREADGROUP gave, highest priority first."""
        entries = []
        for stream, items in got.items() if isinstance(got, dict) else got:  # RESP3 map or RESP2 array
            i = self._streams.index(_s(stream))
            for entry_id, fields in items:
                entries.append((i, entry_id, fields))
        entries.sort(key=lambda e: e[0])
        return entries

    def _release(self, entries: builtins.list[tuple[int, Any, Any]]) -> None:
        """Give back entries read but not ours to keep (another one was better)."""
        try:
            for i, entry_id, _ in entries:
                self._release_script(keys=[self._streams[i]], args=[GROUP, entry_id, self.consumer])
        except redis.RedisError as exc:  # what was read stays pending: recovery takes it back
            raise self._error(exc, "claim") from exc

    def _delivery(self, i: int, entry_id: bytes | str, flat: Any) -> RedisDelivery | None:
        """The delivery of an entry just read; None if it cannot be one (it is dead-lettered): an entry
        another client wrote without a message, with a count that is not one, over the size limit or
        that does not decode; or a message whose ``expires`` passed."""
        f = _fields(flat)
        eid = _s(entry_id)
        before = _digits(f.get("a", b"0"), 9)
        attempt = 1 if before is None else before + 1
        message, problem = self._decoded(f, before)
        if message is None:
            why = {"reason": f"cannot be read: {problem}", "attempts": attempt, "id": _msg_id(f.get("id"))}
            self._bury_entry(i, eid, why, attempt)
            return None
        name = make_name(RANKS[i], compact_time(_due_ms(f, eid) / 1000), message.id, attempt)
        kept = _last_error_of(f.get("e"))
        if message.expires is not None and message.expired():  # never handed out: to the dead letters
            self._bury_expired(i, eid, message, name, attempt - 1, kept)
            return None
        return RedisDelivery(self, i, eid, name, message, attempt, f["m"], f.get("e"), kept)

    def _decoded(self, f: dict[str, bytes], before: int | None) -> tuple[Message | None, str]:
        """The message of an entry's fields ``f`` (``before``: its attempt count, None if not a count),
        or None and why it cannot be one."""
        raw = f.get("m")
        limit = self.max_message_size
        if not isinstance(raw, bytes):
            return None, "it has no message (field m)"
        if before is None:
            return None, "its attempt count (field a) is not a count"
        oversize = _oversize(f, raw, limit)
        if oversize:
            return None, oversize
        try:
            return Message.decode(raw), ""
        except MessageDecodeError as exc:
            return None, f"cannot be decoded: {exc.reason}"

    def _bury_expired(
        self, i: int, entry_id: str, message: Message, name: str, attempts: int, kept: LastError | None
    ) -> None:
        """An entry whose message expired, to the dead letters, with the last error it kept."""
        why = expiry_reason(message, attempts, name)
        if kept is not None:
            why.update(last_error=kept.error, last_error_attempt=kept.attempt)
        self._bury_entry(i, entry_id, why, attempts)

    def _bury_entry(self, i: int, entry_id: str, why: dict[str, Any], attempts: int) -> None:
        """An entry this client holds, to the dead letters with ``why`` (claim: it is not deliverable)."""
        try:
            self._dead_script(
                keys=[self._streams[i], self._dead],
                args=[GROUP, entry_id, self.consumer, orjson.dumps(why), attempts, RANKS[i]],
            )
        except redis.RedisError as exc:  # it stays pending: recovery takes it, and buries it again
            raise self._error(exc, "claim") from exc

    def wake(self) -> None:
        """Make every blocked `claim` of this mailbox return now (``CLIENT UNBLOCK``)."""
        with self._blockers_lock:
            ids = [cid for _, cid in self._blockers.values()]
        for cid in ids:
            try:
                self._r.client_unblock(cid)
            except redis.RedisError:
                pass

    # -- settle (called by RedisDelivery) --------------------------------------------------------

    def _settle(
        self, d: RedisDelivery, script: Any, keys: builtins.list[str], extra: builtins.list[Any]
    ) -> None:
        self._check()
        try:
            owned = script(keys=keys, args=[GROUP, d.entry_id, self.consumer, *extra])
        except redis.RedisError as exc:
            raise self._error(exc, f"settle {d.name}") from exc
        if not owned:
            raise DeliveryLostError(f"{d.name}: lease expired and the message was recovered")

    def settle_ack(self, d: RedisDelivery) -> None:
        stream = self._streams[d._rank_index]
        keep = -1 if self.done_retention is None else self.done_retention
        self._settle(d, self._ack_script, [stream, self._done], [keep, d.attempt])

    def settle_nack(self, d: RedisDelivery, delay: float | None, error: str | None) -> State:
        if attempts_used_up(d.attempt, self.max_attempts):
            self.settle_dead(d, f"failed {d.attempt} of {self.max_attempts} attempts", error)
            return State.DEAD
        now = time.time()
        due_ms = int((now + nack_wait(self.backoff, d.attempt, delay)) * 1000)
        # Entry ids are per stream (two priorities may hold the same one): the rank makes it one entry's.
        token = f"{d.entry_id}:{RANKS[d._rank_index]}:{d.attempt}"
        kept = d._kept_raw if error is None else _error_record(error, d.attempt, now)
        fields = {"id": d.message.id, "t": d.message.topic, "d": due_ms}
        packed = self._packed(d._rank_index, d._raw, d.attempt, fields, kept)
        stream = self._streams[d._rank_index]
        self._settle(
            d, self._nack_script, [stream, self._delayed, self._delayed_data], [due_ms, token, packed]
        )
        return State.NEW

    @staticmethod
    def _packed(i: int, raw: bytes, attempts: int, fields: dict[str, Any], kept: bytes | None) -> bytes:
        """An entry of ``delayed:data``: what the claim script puts back into stream ``i`` when due."""
        entry = {
            "k": i + 1,
            "m": raw.decode("utf-8"),
            "a": attempts,
            "id": fields["id"],
            "t": fields["t"],
            "r": RANKS[i],
            "d": fields["d"],
        }
        if kept is not None:
            entry["e"] = kept.decode("utf-8", "replace")
        return orjson.dumps(entry)

    def settle_dead(self, d: RedisDelivery, reason: str, error: str | None) -> None:
        last: dict[str, Any] = {"last_error": error}
        if error is None and d._kept is not None:
            last = {"last_error": d._kept.error, "last_error_attempt": d._kept.attempt}
        why = orjson.dumps(
            {
                "reason": reason,
                **last,
                "message_file": d.name,
                "id": d.message.id,
                "topic": d.message.topic,
                "attempts": d.attempt,
            }
        )
        stream = self._streams[d._rank_index]
        self._settle(d, self._dead_script, [stream, self._dead], [why, d.attempt, RANKS[d._rank_index]])

    def settle_heartbeat(self, d: RedisDelivery) -> None:
        """``XCLAIM`` by the owner, ``JUSTID``: resets the idle time without counting a delivery. An
        entry recovery took is no longer pending: nothing is claimed, and the lease is lost."""
        self._check()
        try:
            got = self._r.xclaim(
                self._streams[d._rank_index], GROUP, self.consumer, 0, [d.entry_id], justid=True
            )
        except redis.RedisError as exc:
            raise self._error(exc, f"heartbeat {d.name}") from exc
        if not got:
            raise DeliveryLostError(f"{d.name}: lease expired and the message was recovered")

    # -- recovery ---------------------------------------------------------------------------------

    def recover(self, *, now: float | None = None) -> RecoveryReport:
        """Take back entries pending longer than the lease (judged at ``now``): back to ``new``, due
        after the backoff, or to the dead letters past ``max_attempts``. Atomic per batch, so two
        recoverers never take the same entry."""
        self._check()
        args = self._recover_args(now)
        report = RecoveryReport()
        try:
            while self._recover_batch(args, report) >= 100:
                pass
            self._forget_idle_consumers()
        except redis.RedisError as exc:
            raise self._error(exc, "recover") from exc
        return report

    def _recover_args(self, now: float | None) -> builtins.list[Any]:
        """The arguments of the recovery script, leases judged at ``now`` (None: now): the idle
        time past which an entry is taken back, the backoff's delays after each attempt, why."""
        real = time.time()
        ahead = 0.0 if now is None else now - real
        min_idle = max(int((self.lease - ahead) * 1000), 0)
        delays = [int(self.backoff.delay(n) * 1000) for n in range(1, _RECOVER_DELAYS + 1)]
        why = f"its lease of {self.lease:g}s expired"
        return [GROUP, min_idle, self.max_attempts, 100, int(real * 1000), why, *delays]

    def _recover_batch(self, args: builtins.list[Any], report: RecoveryReport) -> int:
        """One run of the recovery script (100 entries at most), what it took back added to
        ``report``; how many it took back (fewer than 100: none are left)."""
        got = self._recover_script(
            keys=[*self._streams, self._delayed, self._delayed_data, self._dead], args=args
        )
        ids = [_s(x) for x in got]
        cut = ids.index("|")
        report.expired += ids[:cut]
        report.dead += ids[cut + 1 :]
        return len(ids) - 1

    def _forget_idle_consumers(self) -> None:
        """Remove from the group the consumers that hold nothing and were idle for 10 leases."""
        limit = int(self.lease * 10 * 1000)
        for stream in self._streams:
            for c in self._r.xinfo_consumers(stream, GROUP):
                if self._forgettable(c, limit):
                    self._r.xgroup_delconsumer(stream, GROUP, _s(c["name"]))

    def _forgettable(self, consumer: dict[str, Any], idle_limit: int) -> bool:
        """Whether a consumer of the group (its XINFO CONSUMERS row) is another client's that holds
        nothing and was idle past ``idle_limit`` ms."""
        return (
            consumer["pending"] == 0
            and consumer["idle"] > idle_limit
            and _s(consumer["name"]) != self.consumer
        )

    # -- inspection and repair ----------------------------------------------------------------------

    def _info(
        self, state: State, entry_id: Any, flat: Any, *, rank: str | None = None, pending: int | None = None
    ) -> MessageInfo:
        """What a stream entry says about itself (any client may have written it: nothing here raises).
        ``rank``: the stream's, for an entry of a priority's stream; ``pending``: its delivery count."""
        f = _fields(flat)
        eid = _s(entry_id)
        if rank is None:
            rank = _rank_field(f)
        msg_id = _msg_id(f.get("id"))
        tries = _tries_of(f, pending)
        due = compact_time(_due_ms(f, eid) / 1000)
        return MessageInfo(
            state=state,
            name=make_name(rank, due, msg_id or "?", tries),
            path=None,
            id=msg_id,
            attempt=tries,
            due=due,
            size=len(_message_of(f)),
            changed_at=_ms_of(eid) / 1000,
            reason=_reason_field(f),
            last_error=_last_error_of(f.get("e")),
        )

    def _delayed_info(self, token: Any, packed: Any) -> MessageInfo:
        """A message waiting in ``delayed`` (any client may have written it: nothing here raises)."""
        tok = _s(token)
        changed = _ms_of(tok) / 1000
        e = _json_object(packed)
        rank = _rank_or_default(e.get("r"))
        msg_id = _msg_id(e.get("id"))
        tries = _int_in(e.get("a"), 0, 999_999_999, 0)
        due = compact_time(_int_in(e.get("d"), 1, _LAST_MS, _ms_of(tok)) / 1000)
        m = e.get("m")
        return MessageInfo(
            state=State.NEW,
            name=make_name(rank, due, msg_id or "?", tries),
            path=None,
            id=msg_id,
            attempt=tries,
            due=due,
            size=len(m.encode("utf-8", "replace")) if isinstance(m, str) else len(packed or b""),
            changed_at=changed,
            last_error=_last_error_of(e.get("e")),
        )

    def _pages(self, key: str, start: str = "-") -> Iterator[tuple[Any, Any]]:
        """The entries of stream ``key`` from ``start`` on, `_PAGE` per round trip: each read once."""
        while True:
            page = self._r.xrange(key, start, "+", count=_PAGE)
            yield from page
            if len(page) < _PAGE:
                return
            start = "(" + _s(page[-1][0])

    def _infos(self, state: State) -> Iterator[tuple[MessageInfo, tuple[str, str]]]:
        """(info, where it is) of every message in ``state``, a page at a time."""
        if state in (State.DONE, State.DEAD):
            yield from self._settled_infos(state)
        elif state is State.PROCESSING:
            yield from self._processing_infos()
        elif state is State.NEW:
            yield from self._new_infos()
        # (no tmp/ on Redis)

    def _settled_key(self, state: State) -> str:
        """The stream of the messages in ``state``, done or dead."""
        return self._done if state is State.DONE else self._dead

    def _settled_infos(self, state: State) -> Iterator[tuple[MessageInfo, tuple[str, str]]]:
        """The entries of the done or dead stream, a page at a time."""
        key = self._settled_key(state)
        for entry_id, flat in self._pages(key):
            yield self._info(state, entry_id, flat), (key, _s(entry_id))

    def _processing_infos(self) -> Iterator[tuple[MessageInfo, tuple[str, str]]]:
        """The messages in ``processing``: those delivered and not settled, of each priority's stream."""
        for i, stream in enumerate(self._streams):
            yield from self._pending_infos(i, stream)

    def _new_infos(self) -> Iterator[tuple[MessageInfo, tuple[str, str]]]:
        """The messages in ``new``: those waiting in each priority's stream, then those delayed."""
        for i, stream in enumerate(self._streams):
            yield from self._waiting_infos(i, stream)
        yield from self._delayed_infos()

    def _waiting_infos(self, i: int, stream: str) -> Iterator[tuple[MessageInfo, tuple[str, str]]]:
        """The entries of one priority's stream never delivered: those after the group's last
        delivered one."""
        last = self._last_delivered(stream)
        for entry_id, flat in self._pages(stream, "-" if last == "0-0" else f"({last}"):
            yield self._info(State.NEW, entry_id, flat, rank=RANKS[i]), (stream, _s(entry_id))

    def _last_delivered(self, stream: str) -> str:
        """The id of the last entry of ``stream`` delivered to the group (``0-0``: none yet)."""
        groups = {_s(g["name"]): g for g in self._r.xinfo_groups(stream)}
        return _s(groups[GROUP]["last-delivered-id"]) if GROUP in groups else "0-0"

    def _delayed_infos(self) -> Iterator[tuple[MessageInfo, tuple[str, str]]]:
        """The messages waiting in ``delayed``, a page at a time."""
        cursor = 0
        while True:
            cursor, page = self._r.hscan(self._delayed_data, cursor, count=_PAGE)
            for tok, packed in page.items():
                yield self._delayed_info(tok, packed), (self._delayed_data, _s(tok))
            if not cursor:
                return

    def _pending_infos(self, i: int, stream: str) -> Iterator[tuple[MessageInfo, tuple[str, str]]]:
        """The entries of one priority's stream delivered and not settled, a page at a time."""
        start = "-"
        while True:
            pend = self._r.xpending_range(stream, GROUP, start, "+", _PAGE)
            yield from self._pending_page(i, stream, pend)
            if len(pend) < _PAGE:
                return
            start = "(" + _s(pend[-1]["message_id"])

    def _pending_page(
        self, i: int, stream: str, pend: builtins.list[Any]
    ) -> Iterator[tuple[MessageInfo, tuple[str, str]]]:
        """The entries of one page of XPENDING (``pend``), read in one round trip."""
        for p, found in zip(pend, self._entries_of(stream, pend), strict=True):
            for entry_id, flat in found:
                info = self._info(
                    State.PROCESSING, entry_id, flat, rank=RANKS[i], pending=p["times_delivered"]
                )
                yield info, (stream, _s(entry_id))

    def _entries_of(self, stream: str, pend: builtins.list[Any]) -> builtins.list[Any]:
        """The entries (an XRANGE reply each) that the XPENDING rows ``pend`` name, in one round trip."""
        if not pend:
            return []
        pipe = self._r.pipeline(transaction=False)
        for p in pend:
            pipe.xrange(stream, p["message_id"], p["message_id"])
        return pipe.execute()  # type: ignore[no-any-return]

    def list(self, state: State | str) -> builtins.list[MessageInfo]:
        self._check()
        st = State(state)
        try:
            found = builtins.list(self._infos(st))
        except redis.RedisError as exc:
            raise self._error(exc, "list") from exc
        self._where[st] = {info.name: where for info, where in found}
        return sorted((info for info, _ in found), key=lambda i: i.name)

    def get(self, message_id: str) -> MessageInfo | None:
        """The message ``message_id`` (an id or a name), wherever it is: one pass, that stops there."""
        self._check()
        try:
            for state in (State.NEW, State.PROCESSING, State.DONE, State.DEAD):
                info = self._find_in(state, message_id)
                if info is not None:
                    return info
        except redis.RedisError as exc:
            raise self._error(exc, "get") from exc
        return None

    def _find_in(self, state: State, message_id: str) -> MessageInfo | None:
        """The message ``message_id`` (an id or a name) in ``state``, where it is noted for `read`;
        None if it is not there."""
        for info, where in self._infos(state):
            if message_id in (info.id, info.name):
                self._where.setdefault(state, {})[info.name] = where
                return info
        return None

    def read(self, info: MessageInfo) -> Message:
        """The message ``info`` (from `list` or `get`) names: one entry read, where the listing saw it."""
        self._check()
        try:
            raw = self._read_where_listed(info)
            if raw is None:
                raw = self._read_found_again(info)  # moved since: look again, once
        except redis.RedisError as exc:
            raise self._error(exc, "read") from exc
        if raw is None:
            raise KeyError(f"{info.name} is no longer in {info.state.value}")
        return Message.decode(raw)

    def _read_where_listed(self, info: MessageInfo) -> bytes | None:
        """The encoded message ``info`` names, read where the last listing saw it; None if it is not
        there any more (or was not listed)."""
        where = self._where.get(info.state, {}).get(info.name)
        if where is None:
            return None
        got = self._read_at(info.state, *where)
        return got[1] if got is not None and got[0].name == info.name else None

    def _read_found_again(self, info: MessageInfo) -> bytes | None:
        """The encoded message ``info`` names, found by listing its state again; None if not there."""
        for found, (key, ident) in self._infos(info.state):
            if found.name == info.name:
                got = self._read_at(info.state, key, ident)
                if got is not None:
                    return got[1]
        return None

    def _read_at(self, state: State, key: str, ident: str) -> tuple[MessageInfo, bytes] | None:
        """(info, encoded message) of the entry ``ident`` of ``key`` (a delayed token in delayed:data)."""
        if key == self._delayed_data:
            return self._read_delayed(ident)
        got = self._r.xrange(key, ident, ident)
        if not got:
            return None
        entry_id, flat = got[0]
        if key in self._streams:
            info = self._stream_info(state, key, ident, entry_id, flat)
        else:
            info = self._info(state, entry_id, flat)
        return info, _message_field(flat)

    def _read_delayed(self, token: str) -> tuple[MessageInfo, bytes] | None:
        """(info, encoded message) of the delayed message ``token``; None if it is gone."""
        packed = self._r.hget(self._delayed_data, token)
        if packed is None:
            return None
        info = self._delayed_info(token, packed)
        try:
            m = orjson.loads(packed).get("m")
        except (orjson.JSONDecodeError, AttributeError):
            m = None
        return info, m.encode() if isinstance(m, str) else b""

    def _stream_info(self, state: State, stream: str, ident: str, entry_id: Any, flat: Any) -> MessageInfo:
        """The info of the entry ``ident`` of a priority's stream (read: ``entry_id``, ``flat``); one
        in ``processing`` counts its deliveries."""
        pending = None
        if state is State.PROCESSING:
            p = self._r.xpending_range(stream, GROUP, ident, ident, 1)
            pending = p[0]["times_delivered"] if p else 0
        return self._info(state, entry_id, flat, rank=RANKS[self._streams.index(stream)], pending=pending)

    def requeue_all(
        self,
        from_state: State | str = State.DEAD,
        *,
        reset_attempts: bool = True,
        step: Callable[[int], None] | None = None,
    ) -> builtins.list[str]:
        return requeue_each(self, from_state, reset_attempts, step)

    def sibling(self, agent_id: str, *, create: bool = False) -> RedisMailbox:
        return RedisMailbox(
            self.url, agent_id, namespace=self.namespace, create=create, **common_options(self)
        )

    def requeue(
        self, message_id: str, *, from_state: State | str = State.DEAD, reset_attempts: bool = True
    ) -> builtins.list[str]:
        src = requeue_source(from_state)
        self._check()
        key = self._settled_key(src)
        out: builtins.list[str] = []
        try:
            for entry_id, flat in self._pages(key):
                info = self._info(src, entry_id, flat)
                if message_id in (info.id, info.name):
                    out.append(self._requeue_entry(key, entry_id, flat, info, reset_attempts))
        except redis.RedisError as exc:
            raise self._error(exc, "requeue") from exc
        return out

    def _requeue_entry(
        self, key: str, entry_id: Any, flat: Any, info: MessageInfo, reset_attempts: bool
    ) -> str:
        """Move the entry ``entry_id`` of ``key`` (done or dead) back to its priority's stream, due
        now, in one transaction; its new name."""
        f = _fields(flat)
        f.pop("r", None)
        rank = info.name.split(".", 1)[0]  # the entry's rank, as `_info` read it
        now_ms = int(time.time() * 1000)
        f["d"] = str(now_ms).encode()
        f["k"] = rank.encode()
        f["a"] = b"0" if reset_attempts else str(info.attempt).encode()
        pipe = self._r.pipeline(transaction=True)
        pipe.xadd(self._streams[RANKS.index(rank)], f)
        pipe.xdel(key, entry_id)
        pipe.execute()
        return make_name(rank, compact_time(now_ms / 1000), info.id or "?", int(f["a"]))

    def purge(self, state: State | str, older_than: float = 0.0) -> int:
        st = purged_state(state)
        self._check()
        cutoff_ms = int((time.time() - older_than) * 1000) + 1  # MINID keeps ids >= it
        try:
            return int(self._r.xtrim(self._settled_key(st), minid=cutoff_ms))
        except redis.RedisError as exc:
            raise self._error(exc, "purge") from exc

    def stats(self) -> MailboxStats:
        """Counts and ages from the streams' lengths, the group's pending summary and the first entry
        ids (one script, read only): no message is read or sent, whatever the backlog."""
        self._check()
        now = time.time()
        try:
            got = self._stats_script(
                keys=[*self._streams, self._delayed, self._done, self._dead], args=[GROUP, int(now * 1000)]
            )
        except redis.RedisError as exc:
            raise self._error(exc, "stats") from exc
        new, new_at, busy, busy_at, not_due, done, done_at, dead, dead_at = (int(x) for x in got)

        def row(count: int, oldest_ms: int) -> StateStats:
            age = None if count == 0 or oldest_ms < 0 else max(now - oldest_ms / 1000, 0.0)
            return StateStats(count, age)

        states = {
            State.NEW: row(new, new_at),
            State.PROCESSING: row(busy, busy_at),
            State.DONE: row(done, done_at),
            State.DEAD: row(dead, dead_at),
        }
        return MailboxStats(self.agent_id, states, not_due)


def _last_error_of(raw: Any) -> LastError | None:
    """An entry's ``e`` field (its last error, JSON) as a `LastError`; None if it has none. Any client
    can write entries: one that does not read says so as its error."""
    if raw is None:
        return None
    obj = _json_object(raw)
    if not isinstance(obj.get("error"), str):
        return LastError("(unreadable error record)", 0, 0.0)
    return LastError(
        text_of(obj["error"]),
        _int_in(obj.get("attempt"), 0, 999_999, 0),
        _int_in(obj.get("failed_at"), 0, _LAST_MS, 0) / 1000,
    )


def _error_record(error: str, attempt: int, now: float) -> bytes:
    """The ``e`` field (JSON) of an entry whose ``attempt`` failed with ``error`` at ``now``."""
    return orjson.dumps({"error": text_of(error), "attempt": attempt, "failed_at": int(now * 1000)})


def _message_field(flat: Any) -> bytes:
    """An entry's encoded message (``m``) in its flat fields; empty if it has none."""
    return _message_of(_fields(flat))


def _message_of(f: dict[str, bytes]) -> bytes:
    """An entry's encoded message (``m``); empty if it has none."""
    m = f.get("m", b"")
    return m if isinstance(m, bytes) else b""


def _reason_field(f: dict[str, bytes]) -> dict[str, Any] | None:
    """An entry's reason (``r``, dead or done) as an object (`_reason_of`); None if it has none."""
    return _reason_of(f["r"]) if "r" in f else None


def _rank_field(f: dict[str, bytes]) -> str:
    """The rank an entry's ``k`` field names; ``2M`` if it names none."""
    return _rank_or_default(_s(f.get("k", b"")))


def _rank_or_default(rank: Any) -> str:
    """``rank`` if it is one of the ranks, else ``2M`` (what anyone may have written)."""
    return rank if rank in RANKS else "2M"


def _tries_of(f: dict[str, bytes], pending: int | None) -> int:
    """The attempts an entry has used: its count (``a``, 0 if not one) and its deliveries pending."""
    tries = _digits(f.get("a", b"0"), 9) or 0
    if pending is not None:
        tries += pending
    return tries


def _reason_of(raw: Any) -> dict[str, Any]:
    """An entry's ``r`` field (why it is in dead or done, JSON) as an object whatever it holds: one
    that does not read, or nests too deep to show, says so."""
    try:
        value = _reason_object(orjson.loads(raw))
        return {str(k): "(unreadable: nested too deep)" if _too_deep(v) else v for k, v in value.items()}
    except (orjson.JSONDecodeError, TypeError):
        return {"reason": "(unreadable reason)"}
    except (RecursionError, ValueError):  # never raised on a hostile reason
        return {"reason": "(unreadable reason: too deep)"}


def _reason_object(value: Any) -> dict[Any, Any]:
    """A decoded reason as an object: one that is not stands as its text (unless it nests too deep)."""
    if isinstance(value, dict):
        return value
    return {"reason": "(unreadable reason: too deep)" if _too_deep(value) else str(value)}


def _too_deep(value: Any, limit: int = 64) -> bool:
    """Whether ``value`` nests lists and objects more than ``limit`` deep (iterative: a hostile
    reason nests 1,000 deep)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (list, dict)):
            if level > limit:
                return True
            stack += [(c, level + 1) for c in _children(item)]
    return False


def _children(container: list[Any] | dict[Any, Any]) -> Iterable[Any]:
    """The items of a list, the values of an object."""
    return container.values() if isinstance(container, dict) else container


class RedisDelivery(SettledByMailbox):
    """A message claimed from a `RedisMailbox` (see `hybridcomms.backends.base.MailboxDelivery`)."""

    __slots__ = ("_kept", "_kept_raw", "_rank_index", "_raw", "entry_id")

    def __init__(
        self,
        mailbox: RedisMailbox,
        rank_index: int,
        entry_id: str,
        name: str,
        message: Message,
        attempt: int,
        raw: bytes,
        kept_raw: bytes | None = None,
        kept: LastError | None = None,
    ) -> None:
        super().__init__(mailbox, name, message, attempt)
        self._rank_index = rank_index
        self.entry_id = entry_id
        self._raw = raw
        self._kept_raw = kept_raw  # the entry's last error (``e``), carried by a nack that gives none
        self._kept = kept
