"""`RedisMailbox`: the mailbox contract (`hybridcomms.backend`) on Redis Streams, for fleets.

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
  nothing and have been idle for long are removed from the group.

Differences from the file backend (docs/guarantees.md): a killed consumer's messages come back when
its lease runs out (Redis has no lock that dies with a process: keep leases short and heartbeat);
within a priority, messages are delivered in the order they entered their stream (a nacked or
recovered message enters it again when it becomes due).
"""

from __future__ import annotations

import builtins
import errno
import hashlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterable
from typing import Any

import orjson

from ._last_errors import text_of
from ._names import RANK_OF, RANKS, compact_time, make_name
from ._urls import shown_url
from .delivery import SettledByMailbox
from .errors import BackendUnavailableError, DeliveryLostError, MailboxIOError
from .inspection import LastError, MailboxStats, MessageInfo, StateStats
from .mailbox import DEFAULT_BACKOFF, check_agent_id, check_delay, expiry_reason, set_common_options
from .message import DEFAULT_MAX_MESSAGE_SIZE, Message
from .recovery import RecoveryReport
from .retry import Backoff, attempts_used_up
from .states import State

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

# KEYS: the four streams (priority order), delayed, delayed:data. ARGV: group, consumer.
# Returns {rank index, entry id, fields} or {0, next delayed due in ms or -1}.
_CLAIM = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', now, 'LIMIT', 0, 100)
for _, tok in ipairs(due) do
  local packed = redis.call('HGET', KEYS[6], tok)
  if packed then
    local e = cjson.decode(packed)
    if type(e.e) == 'string' then
      redis.call('XADD', KEYS[e.k], '*', 'm', e.m, 'a', tostring(e.a), 'id', e.id, 't', e.t, 'k', e.r,
        'd', tostring(e.d), 'e', e.e)
    else
      redis.call('XADD', KEYS[e.k], '*', 'm', e.m, 'a', tostring(e.a), 'id', e.id, 't', e.t, 'k', e.r,
        'd', tostring(e.d))
    end
    redis.call('HDEL', KEYS[6], tok)
  end
  redis.call('ZREM', KEYS[5], tok)
end
for i = 1, 4 do
  local r = redis.call('XREADGROUP', 'GROUP', ARGV[1], ARGV[2], 'COUNT', 1, 'STREAMS', KEYS[i], '>')
  if r then
    local entry = r[1][2][1]
    return {i, entry[1], entry[2]}
  end
end
local nxt = redis.call('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
if #nxt > 0 then return {0, nxt[2]} end
return {0, '-1'}
"""

# The owner check every settle starts with: the XACK itself. An entry is pending only for the consumer
# that read it (recovery takes entries by acking them, and nothing else moves an entry between
# consumers), so "still pending" is "still ours". KEYS[1]: the stream; ARGV[1..2]: group, entry id.
_OWNED = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
"""

# KEYS: stream, done. ARGV: group, entry id, consumer, done maxlen, attempts.
_ACK = (
    _OWNED
    + """
if tonumber(ARGV[4]) == 0 then
  redis.call('XDEL', KEYS[1], ARGV[2])
  return 1
end
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if #e > 0 then
  local f = e[1][2]
  local args = {'XADD', KEYS[2], 'MAXLEN', '~', ARGV[4], '*'}
  for i = 1, #f, 2 do
    if f[i] == 'a' then
      table.insert(args, 'a'); table.insert(args, ARGV[5])
    elseif f[i] ~= 'e' then
      table.insert(args, f[i]); table.insert(args, f[i + 1])
    end
  end
  redis.call(unpack(args))
end
return 1
"""
)

# KEYS: stream, delayed, delayed:data. ARGV: group, entry id, consumer, due ms, token, packed entry.
_NACK = (
    _OWNED
    + """
redis.call('XDEL', KEYS[1], ARGV[2])
redis.call('HSET', KEYS[3], ARGV[5], ARGV[6])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[5])
return 1
"""
)

# KEYS: stream, dead. ARGV: group, entry id, consumer, reason json, attempts.
_DEAD = (
    _OWNED
    + """
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if #e > 0 then
  local f = e[1][2]
  local args = {'XADD', KEYS[2], '*'}
  for i = 1, #f, 2 do
    if f[i] ~= 'a' and f[i] ~= 'e' then table.insert(args, f[i]); table.insert(args, f[i + 1]) end
  end
  table.insert(args, 'a'); table.insert(args, ARGV[5])
  table.insert(args, 'r'); table.insert(args, ARGV[4])
  redis.call(unpack(args))
end
return 1
"""
)


# Puts an entry of a blocking read that came with a better one back into its stream.
# KEYS: stream. ARGV: group, entry id, consumer.
_RELEASE = (
    _OWNED
    + """
local e = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
if #e > 0 then
  local args = {'XADD', KEYS[1], '*'}
  for _, v in ipairs(e[1][2]) do table.insert(args, v) end
  redis.call(unpack(args))
end
return 1
"""
)

# KEYS: the four streams, delayed, delayed:data, dead.
# ARGV: group, min idle ms, max attempts, batch, now ms (for due times), reason prefix, delays (ms)...
# Returns {returned ids..., '|', dead ids...}.
_RECOVER = """
local returned, dead = {}, {}
local maxa = tonumber(ARGV[3])
local now = tonumber(ARGV[5])
for i = 1, 4 do
  local pend = redis.call('XPENDING', KEYS[i], ARGV[1], 'IDLE', ARGV[2], '-', '+', ARGV[4])
  for _, p in ipairs(pend) do
    local id, times = p[1], tonumber(p[4])
    local e = redis.call('XRANGE', KEYS[i], id, id)
    redis.call('XACK', KEYS[i], ARGV[1], id)
    redis.call('XDEL', KEYS[i], id)
    if #e > 0 then
      local f = {}
      local flat = e[1][2]
      for j = 1, #flat, 2 do f[flat[j]] = flat[j + 1] end
      local used = tonumber(f.a or '0') + times
      if used >= maxa then
        local last = cjson.null
        if f.e then
          local ok, kept = pcall(cjson.decode, f.e)
          if ok and type(kept) == 'table' and type(kept.error) == 'string' then last = kept.error end
        end
        local reason = cjson.encode({reason = ARGV[6] .. ' during attempt ' .. used .. ' of ' .. maxa,
          last_error = last, id = f.id, topic = f.t, attempts = used})
        redis.call('XADD', KEYS[7], '*', 'm', f.m, 'a', tostring(used), 'id', f.id, 't', f.t, 'k', f.k,
          'd', f.d, 'r', reason)
        table.insert(dead, f.id)
      else
        local delay = tonumber(ARGV[6 + math.min(used, #ARGV - 6)])
        local due = now + delay
        local tok = id .. ':' .. used
        redis.call('HSET', KEYS[6], tok, cjson.encode({k = i, m = f.m, a = used, id = f.id, t = f.t,
          r = f.k, d = due, e = f.e}))
        redis.call('ZADD', KEYS[5], tostring(due), tok)
        table.insert(returned, f.id)
      end
    end
  end
end
table.insert(returned, '|')
for _, v in ipairs(dead) do table.insert(returned, v) end
return returned
"""


def _resp(parts: Iterable[bytes | str | int]) -> bytes:
    """One command in the Redis protocol (RESP): what redis-py's packer makes, for the scripts run
    once per message, with a fraction of its cost (docs/performance.md)."""
    out = []
    n = 0
    for p in parts:
        raw = p if isinstance(p, bytes) else str(p).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(raw), raw))
        n += 1
    return b"*%d\r\n" % n + b"".join(out)


def _roundtrip(client: Any, packed: bytes) -> Any:
    """Send one packed command on a connection of ``client``'s pool and read its reply."""
    pool = client.connection_pool
    conn = pool.get_connection()
    try:
        conn.send_packed_command([packed])
        return conn.read_response()
    except redis.ResponseError:
        raise  # an error reply: the connection is fine
    except BaseException:
        conn.disconnect()  # the connection's state is unknown: do not reuse it
        raise
    finally:
        pool.release(conn)


class _Script:
    """A Lua script run by ``EVALSHA`` on a connection of the client's pool (loaded on ``NOSCRIPT``,
    after a Redis restart for one)."""

    def __init__(self, client: Any, text: str) -> None:
        self._client = client
        self.text = text
        self.sha = hashlib.sha1(text.encode()).hexdigest()

    def __call__(self, *, keys: builtins.list[str], args: builtins.list[Any]) -> Any:
        packed = _resp(["EVALSHA", self.sha, len(keys), *keys, *args])
        for _ in range(2):
            try:
                return _roundtrip(self._client, packed)
            except redis.exceptions.NoScriptError:
                self._client.script_load(self.text)
        raise redis.ResponseError(f"script {self.sha} could not be loaded")


def _flat(fields: dict[str, Any]) -> builtins.list[Any]:
    return [x for kv in fields.items() for x in kv]


def _s(value: bytes | str) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _fields(flat: Any) -> dict[str, bytes]:
    """A stream entry's fields, from a flat [k, v, k, v, …] list or a dict."""
    if isinstance(flat, dict):
        return {_s(k): v for k, v in flat.items()}
    return {_s(flat[i]): flat[i + 1] for i in range(0, len(flat), 2)}


def _ms_of(entry_id: bytes | str) -> int:
    return int(_s(entry_id).split("-", 1)[0])


def _io_error(exc: Exception, url: str, what: str) -> MailboxIOError:
    """A client error as the mailbox's error: `BackendUnavailableError` when the server cannot be
    reached (refused, timed out, credentials refused, no such host), else `MailboxIOError`."""
    if isinstance(exc, (redis.ConnectionError, redis.TimeoutError)):
        from ._outage import reason

        return BackendUnavailableError(shown_url(url), reason(exc), what)
    return MailboxIOError(errno.EIO, f"{what} failed: {exc}")


def redis_agents(url: str, namespace: str = "hc") -> builtins.list[str]:
    """The agents that have a mailbox on the Redis at ``url``."""
    try:
        client: Any = redis.Redis.from_url(url)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"not a usable Redis URL {shown_url(url)}: {exc}") from None
    try:
        found = set()
        for key in client.scan_iter(match=f"{namespace}:{{*}}:s:*", count=1000):
            text = _s(key)
            start, end = text.find("{"), text.find("}")
            if 0 <= start < end:
                found.add(text[start + 1 : end])
        return sorted(found)
    except redis.RedisError as exc:
        raise _io_error(exc, url, f"listing the mailboxes on {shown_url(url)}") from exc
    except TypeError as exc:  # an option in the URL's query that the client does not take
        raise ValueError(f"not a usable Redis URL {shown_url(url)}: {exc}") from None
    finally:
        client.close()


class RedisMailbox:
    """One agent's mailbox on Redis Streams (see the module docstring).

    ``RedisMailbox(url, agent_id, *, lease=300, max_attempts=5, backoff=Backoff(), max_message_size=…,
    create=True, namespace="hc", done_retention=10000, maxlen=None, max_age=None, consumer=None)``

        url              ``redis://[user:password@]host[:port][/db]``, ``rediss://…`` (TLS), ``unix://…``
        lease, max_attempts, backoff, max_message_size: as for `FileMailbox`
        create           False: raise `MailboxIOError` if the agent has no mailbox there yet
        namespace        the first part of every key
        done_retention   acked messages kept in ``done`` (about; 0 keeps none)
        max_age          drop entries older than this many seconds from each priority's stream as new
                         ones come (``XADD MINID ~``); None (the default) never does (same caveat)
        maxlen           cap each priority's stream at about this many entries (``XADD MAXLEN ~``);
                         None (the default) never trims: trimming drops messages not yet delivered
        consumer         this client's name in the consumer group (default: host, pid and a random part)
    """

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
        done_retention: int = 10_000,
        maxlen: int | None = None,
        max_age: float | None = None,
        consumer: str | None = None,
    ) -> None:
        self.agent_id = check_agent_id(agent_id)
        set_common_options(self, lease, max_attempts, backoff, max_message_size)
        if done_retention < 0 or (maxlen is not None and maxlen < 1):
            raise ValueError("done_retention must be >= 0 and maxlen >= 1")
        if maxlen is not None and max_age is not None:
            raise ValueError("give maxlen or max_age, not both (Redis trims a stream one way at a time)")
        if max_age is not None and max_age <= 0:
            raise ValueError("max_age must be > 0 seconds")
        self.max_age = max_age
        self.url = url
        self.done_retention = int(done_retention)
        self.maxlen = maxlen
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        base = f"{namespace}:{{{self.agent_id}}}"
        self._streams = [f"{base}:s:{rank}" for rank in RANKS]
        self._delayed, self._delayed_data = f"{base}:delayed", f"{base}:delayed:data"
        self._done, self._dead = f"{base}:done", f"{base}:dead"
        try:  # typed loosely: the stubs do not know RESP replies
            self._r: Any = redis.Redis.from_url(url)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"not a usable Redis URL {shown_url(self.url)}: {exc}") from None
        self._closed = False
        self._blockers: dict[int, tuple[Any, int]] = {}  # thread id -> (its blocking client, client id)
        self._blockers_lock = threading.Lock()
        self._found_nothing = False  # the last claim script found nothing, and nothing delayed
        self._scanned = 0.0  # when the claim script last ran (monotonic)
        self._pid = os.getpid()
        try:
            if not create and not self._r.exists(*self._streams):
                raise MailboxIOError(errno.ENOENT, f"no mailbox {self.agent_id!r} at {shown_url(self.url)}")
            for stream in self._streams:
                try:
                    self._r.xgroup_create(stream, GROUP, id="0", mkstream=True)
                except redis.ResponseError as exc:
                    if "BUSYGROUP" not in str(exc):
                        raise
            self._claim_script = _Script(self._r, _CLAIM)
            self._ack_script = _Script(self._r, _ACK)
            self._nack_script = _Script(self._r, _NACK)
            self._dead_script = _Script(self._r, _DEAD)
            self._release_script = _Script(self._r, _RELEASE)
            self._recover_script = _Script(self._r, _RECOVER)
        except redis.RedisError as exc:
            self._r.close()
            raise self._error(exc, "open") from exc
        except TypeError as exc:  # an option in the URL's query that the client does not take
            self._r.close()
            raise ValueError(f"not a usable Redis URL {shown_url(self.url)}: {exc}") from None
        except BaseException:
            self._r.close()
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
        wait = check_delay(delay)
        self._check()
        batch = [(m, *self._fields_of(m, wait)) for m in messages]  # all encoded before any is sent
        if not batch:
            return []
        try:
            if wait:  # not due yet: into the delayed set, as a nacked message waits (one MULTI/EXEC)
                pipe = self._r.pipeline(transaction=True)
                for _, i, fields in batch:
                    token = f"{int(time.time() * 1000)}-p{uuid.uuid4().hex}:0"
                    pipe.hset(self._delayed_data, token, self._packed(i, fields["m"], 0, fields, None))
                    pipe.zadd(self._delayed, {token: fields["d"]})
                pipe.execute()
            elif len(batch) == 1:
                _, i, fields = batch[0]
                trim = self._trim()
                _roundtrip(self._r, _resp(["XADD", self._streams[i], *trim, "*", *_flat(fields)]))
            else:
                pipe = self._r.pipeline(transaction=True)
                for _, i, fields in batch:
                    if self.max_age is not None:
                        pipe.xadd(self._streams[i], fields, minid=self._trim()[2], approximate=True)
                    else:
                        pipe.xadd(self._streams[i], fields, maxlen=self.maxlen, approximate=True)
                pipe.execute()
        except redis.RedisError as exc:
            raise self._error(exc, "put") from exc
        return [make_name(RANKS[i], compact_time(f["d"] / 1000), m.id, 0) for m, i, f in batch]

    # -- claim ----------------------------------------------------------------------------------

    def claim(
        self, timeout: float | None = None, *, cancel: threading.Event | None = None
    ) -> RedisDelivery | None:
        self._check()
        deadline = time.monotonic() + (timeout or 0.0)
        # A waiting consumer that keeps up (its last look found at most one waiting message, nothing
        # delayed) goes straight to the blocking read, which returns at once when something arrived
        # meanwhile: one round trip per message instead of two. The claim script (priority order,
        # delayed messages made due) still runs first when the last read met a backlog of several
        # priorities, and at least every _RESCAN seconds.
        scan = not (
            timeout and timeout > 0 and self._found_nothing and time.monotonic() - self._scanned < _RESCAN
        )
        while True:
            if cancel is not None and cancel.is_set():
                return None
            remaining = deadline - time.monotonic()
            if scan:
                try:
                    got = self._claim_script(
                        keys=[*self._streams, self._delayed, self._delayed_data], args=[GROUP, self.consumer]
                    )
                except redis.RedisError as exc:
                    raise self._error(exc, "claim") from exc
                self._scanned = time.monotonic()
                if got[0] != 0:
                    self._found_nothing = False
                    delivery = self._delivery(int(got[0]) - 1, got[1], got[2])
                    if delivery is not None:
                        return delivery
                    continue  # a poison entry, dead-lettered: look again, within the same timeout
                next_due_ms = int(got[1])
                self._found_nothing = next_due_ms < 0
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    return None
                if next_due_ms >= 0:
                    remaining = min(remaining, max(next_due_ms / 1000 - time.time(), 0.001))
            scan = True
            delivery = self._block(remaining, cancel)
            if delivery is not None:
                return delivery

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
        try:
            client = self._blocker()
        except redis.RedisError as exc:
            raise self._error(exc, "claim") from exc
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
        packed = _resp([*head, "STREAMS", *self._streams, *(">" for _ in self._streams)])
        conn = client.connection  # its own connection: the one `wake` unblocks by its client id
        try:
            conn.send_packed_command([packed])
            got = conn.read_response()
        except redis.ResponseError as exc:
            raise self._error(exc, "claim") from exc
        except (redis.RedisError, OSError) as exc:
            conn.disconnect()
            self._drop_blocker()  # its client id is gone with the connection: `wake` needs the next one's
            if self._closed:
                return None
            raise self._error(exc, "claim") from exc
        if not got:
            return None
        entries = []
        for stream, items in got.items() if isinstance(got, dict) else got:  # RESP3 map or RESP2 array
            i = self._streams.index(_s(stream))
            for entry_id, fields in items:
                entries.append((i, entry_id, fields))
        entries.sort(key=lambda e: e[0])
        if len(entries) > 1:
            self._found_nothing = False  # several priorities wait: the next claim scans, in order
        try:
            for i, entry_id, _ in entries[1:]:
                self._release_script(keys=[self._streams[i]], args=[GROUP, entry_id, self.consumer])
        except redis.RedisError as exc:
            raise self._error(exc, "claim") from exc
        i, entry_id, fields = entries[0]
        return self._delivery(i, entry_id, fields)

    def _delivery(self, i: int, entry_id: bytes | str, flat: Any) -> RedisDelivery | None:
        """The delivery of an entry just read; None if it does not decode or has expired (it is
        dead-lettered)."""
        f = _fields(flat)
        attempt = int(f.get("a", b"0")) + 1
        try:
            message = Message.decode(f["m"])
        except Exception as exc:  # a poison entry: to the dead letters
            self._dead_on_read(
                i,
                entry_id,
                orjson.dumps({"reason": f"cannot be decoded: {exc}", "attempts": attempt}),
                attempt,
            )
            return None
        due = int(f.get("d", b"0") or 0) / 1000
        name = make_name(RANKS[i], compact_time(due or _ms_of(entry_id) / 1000), message.id, attempt)
        kept = _last_error_of(f.get("e"))
        if message.expires is not None and message.expired():  # never handed out: to the dead letters
            why = expiry_reason(message, attempt - 1, name)
            if kept is not None:
                why.update(last_error=kept.error, last_error_attempt=kept.attempt)
            self._dead_on_read(i, entry_id, orjson.dumps(why), attempt - 1)
            return None
        return RedisDelivery(self, i, _s(entry_id), name, message, attempt, f["m"], f.get("e"), kept)

    def _dead_on_read(self, i: int, entry_id: bytes | str, why: bytes, attempts: int) -> None:
        """An entry a claim read but cannot hand out (undecodable, expired), to the dead letters."""
        try:
            self._dead_script(
                keys=[self._streams[i], self._dead], args=[GROUP, entry_id, self.consumer, why, attempts]
            )
        except redis.RedisError as exc:
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

    def _ack(self, d: RedisDelivery) -> None:
        stream = self._streams[d._rank_index]
        self._settle(d, self._ack_script, [stream, self._done], [self.done_retention, d.attempt])

    def _nack(self, d: RedisDelivery, delay: float | None, error: str | None) -> None:
        if attempts_used_up(d.attempt, self.max_attempts):
            self._bury(d, f"failed {d.attempt} of {self.max_attempts} attempts", error)
            return
        wait = self.backoff.delay(d.attempt) if delay is None else max(delay, 0.0)
        now = time.time()
        due_ms = int((now + wait) * 1000)
        token = f"{d.entry_id}:{d.attempt}"
        kept = d._kept_raw
        if error is not None:
            kept = orjson.dumps({"error": text_of(error), "attempt": d.attempt, "failed_at": int(now * 1000)})
        fields = {"id": d.message.id, "t": d.message.topic, "d": due_ms}
        packed = self._packed(d._rank_index, d._raw, d.attempt, fields, kept)
        stream = self._streams[d._rank_index]
        self._settle(
            d, self._nack_script, [stream, self._delayed, self._delayed_data], [due_ms, token, packed]
        )

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

    def _bury(self, d: RedisDelivery, reason: str, error: str | None) -> None:
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
        self._settle(d, self._dead_script, [self._streams[d._rank_index], self._dead], [why, d.attempt])

    def _heartbeat(self, d: RedisDelivery) -> None:
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
        real = time.time()
        ahead = 0.0 if now is None else now - real
        min_idle = max(int((self.lease - ahead) * 1000), 0)
        delays = [int(self.backoff.delay(n) * 1000) for n in range(1, _RECOVER_DELAYS + 1)]
        report = RecoveryReport()
        why = f"its lease of {self.lease:g}s expired"
        try:
            while True:
                got = self._recover_script(
                    keys=[*self._streams, self._delayed, self._delayed_data, self._dead],
                    args=[GROUP, min_idle, self.max_attempts, 100, int(real * 1000), why, *delays],
                )
                ids = [_s(x) for x in got]
                cut = ids.index("|")
                report.expired += ids[:cut]
                report.dead += ids[cut + 1 :]
                if len(ids) - 1 < 100:
                    break
            self._forget_idle_consumers()
        except redis.RedisError as exc:
            raise self._error(exc, "recover") from exc
        return report

    def _forget_idle_consumers(self) -> None:
        """Remove from the group the consumers that hold nothing and were idle for 10 leases."""
        limit = int(self.lease * 10 * 1000)
        for stream in self._streams:
            for c in self._r.xinfo_consumers(stream, GROUP):
                name = _s(c["name"])
                if c["pending"] == 0 and c["idle"] > limit and name != self.consumer:
                    self._r.xgroup_delconsumer(stream, GROUP, name)

    # -- inspection and repair ----------------------------------------------------------------------

    def _info(self, state: State, entry_id: Any, flat: Any, *, attempt: int | None = None) -> MessageInfo:
        f = _fields(flat)
        rank = _s(f.get("k", b"2M"))
        due = int(f.get("d", b"0") or 0) / 1000 or _ms_of(entry_id) / 1000
        msg_id = _s(f.get("id", b"?"))
        tries = int(f.get("a", b"0")) if attempt is None else attempt
        reason = None
        if "r" in f:
            try:
                value = orjson.loads(f["r"])
                reason = value if isinstance(value, dict) else {"reason": str(value)}
            except orjson.JSONDecodeError:
                reason = {"reason": "(unreadable reason)"}
        return MessageInfo(
            state=state,
            name=make_name(rank, compact_time(due), msg_id, tries),
            path=None,
            id=msg_id,
            attempt=tries,
            due=compact_time(due),
            size=len(f.get("m", b"")),
            changed_at=_ms_of(entry_id) / 1000,
            reason=reason,
            last_error=_last_error_of(f.get("e")),
        )

    def _entries(self, state: State) -> builtins.list[tuple[MessageInfo, bytes]]:
        """(info, encoded message) of every message in ``state``."""
        r = self._r
        out: builtins.list[tuple[MessageInfo, bytes]] = []
        if state in (State.DONE, State.DEAD):
            for entry_id, flat in r.xrange(self._done if state is State.DONE else self._dead):
                out.append((self._info(state, entry_id, flat), _fields(flat).get("m", b"")))
            return out
        for stream in self._streams:
            pending = {
                _s(p["message_id"]): p["times_delivered"]
                for p in r.xpending_range(stream, GROUP, "-", "+", 1 << 30)
            }
            groups = {_s(g["name"]): g for g in r.xinfo_groups(stream)}
            last = _s(groups[GROUP]["last-delivered-id"]) if GROUP in groups else "0-0"
            if state is State.PROCESSING:
                for entry_id, times in pending.items():
                    for eid, flat in r.xrange(stream, entry_id, entry_id):
                        tries = int(_fields(flat).get("a", b"0")) + int(times)
                        out.append((self._info(state, eid, flat, attempt=tries), _fields(flat).get("m", b"")))
            else:
                for entry_id, flat in r.xrange(stream, f"({last}" if last != "0-0" else "-", "+"):
                    if _s(entry_id) not in pending:
                        out.append((self._info(state, entry_id, flat), _fields(flat).get("m", b"")))
        if state is State.NEW:
            for tok, packed in r.hgetall(self._delayed_data).items():
                e = orjson.loads(packed)
                info = MessageInfo(
                    state=State.NEW,
                    name=make_name(e["r"], compact_time(e["d"] / 1000), e["id"], e["a"]),
                    path=None,
                    id=e["id"],
                    attempt=e["a"],
                    due=compact_time(e["d"] / 1000),
                    size=len(e["m"].encode()),
                    changed_at=_ms_of(_s(tok).split(":", 1)[0]) / 1000,
                    last_error=_last_error_of(e.get("e")),
                )
                out.append((info, e["m"].encode()))
        return out

    def list(self, state: State | str) -> builtins.list[MessageInfo]:
        self._check()
        try:
            return sorted((info for info, _ in self._entries(State(state))), key=lambda i: i.name)
        except redis.RedisError as exc:
            raise self._error(exc, "list") from exc

    def get(self, message_id: str) -> MessageInfo | None:
        self._check()
        for state in (State.NEW, State.PROCESSING, State.DONE, State.DEAD):
            for info in self.list(state):
                if message_id in (info.id, info.name):
                    return info
        return None

    def read(self, info: MessageInfo) -> Message:
        self._check()
        try:
            entries = self._entries(info.state)
        except redis.RedisError as exc:
            raise self._error(exc, "read") from exc
        for found, data in entries:
            if found.name == info.name:
                return Message.decode(data)
        raise KeyError(f"{info.name} is no longer in {info.state.value}")

    def requeue(
        self, message_id: str, *, from_state: State | str = State.DEAD, reset_attempts: bool = True
    ) -> builtins.list[str]:
        src = State(from_state)
        if src not in (State.DEAD, State.DONE):
            raise ValueError(f"requeue takes messages from dead/ or done/, not {src.value}/")
        self._check()
        key = self._dead if src is State.DEAD else self._done
        out: builtins.list[str] = []
        try:
            for entry_id, flat in self._r.xrange(key):
                info = self._info(src, entry_id, flat)
                if message_id not in (info.id, info.name):
                    continue
                f = _fields(flat)
                f.pop("r", None)
                rank = _s(f.get("k", b"2M"))
                now_ms = int(time.time() * 1000)
                f["d"] = str(now_ms).encode()
                if reset_attempts:
                    f["a"] = b"0"
                pipe = self._r.pipeline(transaction=True)
                pipe.xadd(self._streams[RANKS.index(rank)], f)
                pipe.xdel(key, entry_id)
                pipe.execute()
                out.append(make_name(rank, compact_time(now_ms / 1000), info.id or "?", int(f["a"])))
        except redis.RedisError as exc:
            raise self._error(exc, "requeue") from exc
        return out

    def purge(self, state: State | str, older_than: float = 0.0) -> int:
        st = State(state)
        if st not in (State.DONE, State.DEAD):
            raise ValueError(f"purge only empties done/ or dead/, not {st.value}/")
        self._check()
        cutoff_ms = int((time.time() - older_than) * 1000) + 1  # MINID keeps ids >= it
        try:
            return int(self._r.xtrim(self._done if st is State.DONE else self._dead, minid=cutoff_ms))
        except redis.RedisError as exc:
            raise self._error(exc, "purge") from exc

    def stats(self) -> MailboxStats:
        self._check()
        now = time.time()
        try:
            lists = {st: self._entries(st) for st in (State.NEW, State.PROCESSING, State.DONE, State.DEAD)}
        except redis.RedisError as exc:
            raise self._error(exc, "stats") from exc
        states = {}
        for st, entries in lists.items():
            oldest = min((info.changed_at for info, _ in entries), default=None)
            states[st] = StateStats(len(entries), None if oldest is None else max(now - oldest, 0.0))
        delayed = sum(
            1 for info, _ in lists[State.NEW] if info.due is not None and info.due > compact_time(now)
        )
        return MailboxStats(self.agent_id, states, delayed)


def _last_error_of(raw: Any) -> LastError | None:
    """An entry's ``e`` field (its last error, JSON) as a `LastError`; None if it has none. Any client
    can write entries: one that does not read says so as its error."""
    if raw is None:
        return None
    try:
        obj = orjson.loads(raw)
    except (orjson.JSONDecodeError, TypeError):
        obj = None
    if not isinstance(obj, dict) or not isinstance(obj.get("error"), str):
        return LastError("(unreadable error record)", 0, 0.0)
    attempt, at = obj.get("attempt"), obj.get("failed_at")
    return LastError(
        text_of(obj["error"]),
        attempt if type(attempt) is int and 0 <= attempt <= 999_999 else 0,
        at / 1000 if type(at) is int and 0 <= at < 253_402_300_800_000 else 0.0,
    )


class RedisDelivery(SettledByMailbox):
    """A message claimed from a `RedisMailbox` (see `hybridcomms.backend.MailboxDelivery`)."""

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
        self._start(mailbox, name, message, attempt)
        self._rank_index = rank_index
        self.entry_id = entry_id
        self._raw = raw
        self._kept_raw = kept_raw  # the entry's last error (``e``), carried by a nack that gives none
        self._kept = kept
