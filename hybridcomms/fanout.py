"""Ephemeral events that reach the other processes of the fleet.

An `AgentBus` delivers in its own process, synchronously, as always. A bus that is *shared*
(`share_bus`) also carries each event it publishes to the other processes whose buses subscribe to a
matching pattern, and delivers theirs to its own subscribers:

- **On one host, no daemon** (`LocalFanout`): every sharing process binds a Unix datagram socket in
  ``<root>/.bus/`` and registers the patterns its bus subscribes to in ``<root>/.bus/<name>.json``.
  A publisher sends one datagram to each process with a matching pattern, without ever waiting: a full
  socket buffer drops the event for that process only, counted. A process that died is pruned (its
  socket and registration removed) the first time a send finds nobody there.
- **Across hosts** (`RedisFanout`, when a Redis URL is configured): Redis pub/sub, a channel per topic
  (``hc:<db>:bus:<topic>``: pub/sub is per server, so the database is in the name); the publishes go
  out from a sender thread through a bounded queue, so the publisher never waits on the network
  either.

Still at most once, and never raised into the publisher: an event that cannot be encoded, is too big,
or finds a full buffer is counted (`FANOUT_STATS`, the Prometheus metrics, ``hybridcomms stats``) and
dropped. What arrives is decoded with the limits of a message file (size, JSON depth, field types); a
bad datagram is dropped and counted, never raised into a subscriber. Events from other processes carry
``event.origin`` (``host:pid``) and are never sent on again.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import os
import queue
import re
import select
import socket
import stat
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import orjson

from . import _fs
from ._urls import backend_of, shown_url
from .bus import AgentBus, Event, pattern_matches
from .message import Message, nulls_hide_non_finite

__all__ = ["BUS_FOLDER", "FANOUT_STATS", "LocalFanout", "RedisFanout", "bus_peers", "share_bus"]

log = logging.getLogger("hybridcomms.fanout")

BUS_FOLDER = ".bus"
#: The largest event that is sent to other processes (encoded); bigger ones stay in-process, counted.
MAX_DATAGRAM = 64 * 1024
#: A publisher looks at the registrations again at most this often (seconds).
REFRESH_EVERY = 0.05
#: At most this many peers get a connected socket (a descriptor each); the others are sent to by path.
MAX_LINKS = 256
#: A socket no longer used is closed this long after (seconds), never under a sending thread.
RETIRE_AFTER = 1.0
#: What waits for one peer whose buffer is full (events, bytes); past either, events are dropped.
BACKLOG_EVENTS = 1024
BACKLOG_BYTES = 1 << 20
#: The errors of a send to a process that is no longer there.
_GONE = frozenset((errno.ECONNREFUSED, errno.ENOENT, errno.ENOTCONN, errno.EDESTADDRREQ))
#: A process writes its counters into its registration at most this often (seconds).
REPORT_EVERY = 1.0
_HOST = socket.gethostname()

#: Counters of this process: sent, received, dropped_full (a subscriber's buffer and its backlog here
#: were full), dropped_bad (a datagram that did not decode), unsendable (not JSON, or too big), pruned
#: (dead peers), dropped_queue (Redis: the send queue was full), deferred (sent late, from a backlog).
FANOUT_STATS: dict[str, int] = dict.fromkeys(
    ("sent", "received", "dropped_full", "dropped_bad", "unsendable", "pruned", "dropped_queue", "deferred"),
    0,
)
_stats_lock = threading.Lock()


def _count(key: str, n: int = 1) -> None:
    with _stats_lock:
        FANOUT_STATS[key] += n


# -- the wire form -------------------------------------------------------------------------------


_dumps, _loads = orjson.dumps, orjson.loads
_PLAIN = (dict, list, str, int, float, bool)


def _plain(payload: Any) -> Any:
    """A payload as JSON can hold it: a `Message` as its native form, an object with ``model_dump``
    (pydantic) or a dataclass as its fields."""
    if isinstance(payload, Message):
        return {"__message__": payload.to_dict()}
    dump = getattr(payload, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    fields = getattr(payload, "__dataclass_fields__", None)
    if fields is not None:
        return {name: getattr(payload, name) for name in fields}
    return payload


def encode_event(event: Event, origin: str) -> bytes | None:
    """The datagram of ``event``; None if it cannot be sent (not JSON, or bigger than MAX_DATAGRAM)."""
    payload = event.payload
    if not (payload is None or type(payload) in _PLAIN):
        payload = _plain(payload)
    try:  # an array, not an object: no keys to write or read (this runs once per event)
        fields = (event.source, event.correlation_id, event.id, event.timestamp, event.durable, origin)
        data = _dumps([1, event.topic, payload, *fields])
    except (TypeError, ValueError):
        return None
    if nulls_hide_non_finite(data, (event.source is None) + (event.correlation_id is None), payload):
        return None  # refused, never sent changed
    return data if len(data) <= MAX_DATAGRAM else None


def _opt_str(value: Any) -> bool:
    return value is None or (type(value) is str and len(value) <= 1024)


def decode_event(data: bytes) -> Event | None:
    """The event in a datagram, or None if it is not one (checked as a message file is)."""
    if len(data) > MAX_DATAGRAM:
        return None
    try:
        obj = _loads(data)  # orjson refuses nesting deeper than 1024
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not list or len(obj) != 9 or obj[0] != 1:
        return None
    _, topic, payload, source, correlation_id, event_id, ts, durable, origin = obj
    if not (
        type(topic) is str
        and 0 < len(topic) <= 256
        and _opt_str(source)
        and _opt_str(correlation_id)
        and type(event_id) is str
        and type(origin) is str
        and type(ts) in (int, float)
        and type(durable) is bool
    ):
        return None
    if type(payload) is dict and len(payload) == 1 and "__message__" in payload:
        try:
            payload = Message.from_dict(payload["__message__"])
        except Exception:
            return None
    return Event(topic, payload, source, correlation_id, event_id, float(cast(float, ts)), durable, origin)


# -- one host: Unix datagram sockets under the root ------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Peer:
    name: str
    pid: int
    host: str
    patterns: tuple[str, ...]

    def wants(self, topic: str) -> bool:
        return any(pattern_matches(p, topic) for p in self.patterns)


def _refused(data: bytes, flags: int) -> int:
    raise ConnectionRefusedError(errno.ECONNREFUSED, "no socket of a peer there")


class _Link:
    """How this process sends to one peer: a datagram socket connected to the peer's (one path lookup,
    at connect); past MAX_LINKS, ``sendto`` by path through the shared socket; where connecting failed,
    nothing (every send is refused, so the send path finds out and prunes).

    A connected link has a backlog: what finds the peer's buffer full waits there (bounded), in order,
    until the peer reads again; the flusher thread sends it then."""

    __slots__ = ("backlog", "backlog_bytes", "name", "pid", "send", "sock")

    def __init__(self, peer: _Peer, send: Callable[[bytes, int], int], sock: socket.socket | None) -> None:
        self.name = peer.name
        self.pid = peer.pid
        self.sock = sock
        self.send = send
        self.backlog: collections.deque[bytes] = collections.deque()
        self.backlog_bytes = 0


def _bus_dir_mode(root: Path) -> tuple[int, int]:
    """(folder mode, file mode): a group root gets group folders and files, as mailboxes do."""
    try:
        group = stat.S_IMODE(os.stat(root).st_mode) & 0o070 == 0o070
    except OSError:
        group = False
    return (0o770, 0o660) if group else (0o700, 0o600)


class LocalFanout:
    """The processes that share ``root`` on this host (see the module docstring)."""

    def __init__(self, bus: AgentBus, root: str | os.PathLike[str]) -> None:
        self.bus = bus
        self.root = Path(root)
        self.dir = self.root / BUS_FOLDER
        self.dir_mode, self.file_mode = _bus_dir_mode(self.root)  # the root must exist: not made here
        with contextlib.suppress(FileExistsError):
            os.mkdir(self.dir, self.dir_mode)
        self._dir_fd = _fs.open_dir(str(self.dir))
        if not stat.S_ISDIR(os.fstat(self._dir_fd).st_mode):
            os.close(self._dir_fd)
            raise NotADirectoryError(f"{self.dir} is not a folder")
        self.name = f"{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.origin = f"{_HOST}:{os.getpid()}"
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._sock.bind(self._addr(self.name))  # short, whatever the root's length: via /proc/self/fd
        os.chmod(self.name + ".sock", self.file_mode, dir_fd=self._dir_fd)
        self._peers: tuple[_Peer, ...] = ()
        self._targets: dict[str, tuple[_Link, ...]] = {}
        self._links: dict[str, _Link] = {}
        self._retired: list[tuple[float, socket.socket]] = []
        self._seen_mtime = -1
        self._next_look = 0.0
        self._dropped_to: dict[str, int] = {}
        self._reported = 0.0
        self._lock = threading.Lock()
        self._look_lock = threading.Lock()
        self._closed = False
        self._backlog_lock = threading.Lock()
        self._backlogged: set[_Link] = set()
        self._flusher: threading.Thread | None = None
        self._bell_r, self._bell_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._register()
        # A first look at the peers now, and another at the first publish (whoever registered in
        # between is seen by it).
        self._refresh()
        self._next_look = 0.0
        bus.add_outlet(self.send)
        bus.add_watcher(self._register)
        self._thread = threading.Thread(target=self._receive, name="hybridcomms-fanout", daemon=True)
        self._thread.start()

    def _addr(self, name: str) -> str:
        return f"/proc/self/fd/{self._dir_fd}/{name}.sock"

    # -- registration ---------------------------------------------------------------------------

    def _register(self) -> None:
        """Write this process's registration: its patterns (and its drop counts)."""
        if self._closed:
            return
        body = {
            "pid": os.getpid(),
            "host": _HOST,
            "patterns": self.bus.patterns(),
            "dropped_to": dict(self._dropped_to),
        }
        with contextlib.suppress(OSError):
            _fs.replace_atomically_at(
                self._dir_fd, self.name + ".json", orjson.dumps(body), self.file_mode, sync=False
            )

    def _refresh(self) -> tuple[_Peer, ...]:
        """The peers, looked at again if REFRESH_EVERY has passed. One thread looks at a time; the
        others wait for its look rather than send to the peers of before it (none, at first)."""
        if time.monotonic() < self._next_look:
            return self._peers
        with self._look_lock:
            now = time.monotonic()
            if now < self._next_look:
                return self._peers  # another thread has just looked
            try:
                self._look(now)
            finally:
                self._next_look = time.monotonic() + REFRESH_EVERY
        return self._peers

    def _look(self, now: float) -> None:
        if self._retired:
            with self._lock:
                self._close_retired(now)
        try:
            mtime = os.fstat(self._dir_fd).st_mtime_ns
        except OSError:
            return
        if mtime == self._seen_mtime:
            return
        # A folder's mtime has the kernel's coarse clock (a tick, 1-4 ms): two registrations in one
        # tick leave one mtime. A change younger than a second is not taken as seen: looked at again.
        self._seen_mtime = mtime if time.time_ns() - mtime > 1_000_000_000 else -1
        peers = []
        for name, body in _registrations(self._dir_fd):
            if name == self.name:
                continue
            pid, host, patterns = body["pid"], body["host"], body["patterns"]
            if host == _HOST and not _alive(pid):
                self._prune(name)
                continue
            if not self._is_socket(name):  # a link (to a socket outside the root, say), a file: not ours
                continue
            peers.append(_Peer(name, pid, host, tuple(patterns)))
        self._peers = tuple(peers)
        with self._lock:
            self._targets = {}
            names = {p.name for p in peers}
            for name in [n for n in self._links if n not in names]:
                self._retire(self._links.pop(name), now)

    def _is_socket(self, name: str) -> bool:
        """Whether ``<name>.sock`` is a socket itself (never followed: a link is refused)."""
        try:
            st = os.stat(name + ".sock", dir_fd=self._dir_fd, follow_symlinks=False)
        except OSError:
            return False
        return stat.S_ISSOCK(st.st_mode)

    def _targets_of(self, topic: str) -> tuple[_Link, ...]:
        """The links to the peers that want ``topic`` (cached per topic until the next change of the
        registrations)."""
        with self._lock:
            found = tuple(self._link(p) for p in self._peers if p.wants(topic))
            if len(self._targets) > 10_000:
                self._targets = {}
            self._targets[topic] = found
        return found

    def peers_for(self, topic: str) -> list[str]:
        """The registration names of the processes an event on ``topic`` goes to, in sending order."""
        self._refresh()
        return [link.name for link in self._targets_of(topic)]

    def _link(self, peer: _Peer) -> _Link:
        link = self._links.get(peer.name)
        if link is not None:
            return link
        if sum(1 for ln in self._links.values() if ln.sock is not None) < MAX_LINKS:
            sock = self._connect(peer.name)
            link = _Link(peer, sock.send if sock else _refused, sock)
        else:
            sendto, addr = self._sock.sendto, self._addr(peer.name)
            link = _Link(peer, lambda data, flags: sendto(data, flags, addr), None)
        self._links[peer.name] = link
        return link

    def _connect(self, name: str) -> socket.socket | None:
        """A socket connected to ``<name>.sock`` if that is a socket itself; None if it is gone, not a
        socket, or a link. Connected through an ``O_PATH`` descriptor of the entry, checked first, so
        that an entry swapped for a link (to a socket outside the root) after the check is not
        followed either."""
        try:
            fd = os.open(name + ".sock", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=self._dir_fd)
        except OSError:
            return None
        sock = None
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                return None
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            sock.connect(f"/proc/self/fd/{fd}")
            return sock
        except OSError:  # gone, or out of descriptors
            if sock is not None:
                sock.close()
            return None
        finally:
            os.close(fd)

    def _retire(self, link: _Link, now: float) -> None:
        """A link no longer used: its socket is closed a while later, not now, so that a publisher
        still sending on it (another thread) never sends on a reused descriptor."""
        self._forget_backlog(link)
        if link.sock is not None:
            self._retired.append((now, link.sock))

    def _close_retired(self, now: float) -> None:
        keep = []
        for since, sock in self._retired:
            if now - since >= RETIRE_AFTER:
                sock.close()
            else:
                keep.append((since, sock))
        self._retired = keep

    def _prune(self, name: str) -> None:
        for suffix in (".sock", ".json"):
            with contextlib.suppress(OSError):
                os.unlink(name + suffix, dir_fd=self._dir_fd)
        _count("pruned")

    # -- sending --------------------------------------------------------------------------------

    def send(self, event: Event) -> None:
        """Called by the bus after its own delivery: one datagram to each peer that wants the topic."""
        if time.monotonic() >= self._next_look:
            self._refresh()
        if not self._peers:
            return
        targets = self._targets.get(event.topic)
        if targets is None:
            targets = self._targets_of(event.topic)
        if not targets:
            return
        data = encode_event(event, self.origin)
        if data is None:
            _count("unsendable")
            return
        sent = 0
        for link in targets:
            if link.backlog:  # events wait for this peer already: after them, in order
                self._defer(link, data)
                continue
            try:
                link.send(data, socket.MSG_DONTWAIT)
                sent += 1
            except BlockingIOError:  # its buffer is full: it is slow, busy, or stopped reading
                self._defer(link, data)
            except OSError as exc:
                if exc.errno == errno.EMSGSIZE:
                    _count("unsendable")
                    return
                if exc.errno in _GONE:  # nobody there any more (or it closed its bus)
                    self._peer_gone(link)
                else:
                    self._dropped(link.name)
        if sent:
            FANOUT_STATS["sent"] += sent  # counters are approximate under threads: a lost increment

    # -- the backlog: what waits for a peer whose buffer is full ---------------------------------

    def _defer(self, link: _Link, data: bytes) -> None:
        """Keep ``data`` for ``link`` until its peer reads again; dropped, counted, past the bounds
        (a stopped peer costs a bounded backlog, then one check per event)."""
        if link.sock is None:  # sent by path: no readiness of its own to wait for
            self._dropped(link.name)
            return
        with self._backlog_lock:
            full = len(link.backlog) >= BACKLOG_EVENTS or link.backlog_bytes + len(data) > BACKLOG_BYTES
            if not full:
                link.backlog.append(data)
                link.backlog_bytes += len(data)
                ring = link not in self._backlogged
                self._backlogged.add(link)
        if full:
            self._dropped(link.name)
            return
        if ring:
            if self._flusher is None:
                self._start_flusher()
            with contextlib.suppress(OSError):  # BlockingIOError: rung already
                os.write(self._bell_w, b"\0")

    def _start_flusher(self) -> None:
        with self._lock:
            if self._flusher is None and not self._closed:
                self._flusher = threading.Thread(
                    target=self._flush, name="hybridcomms-fanout-flush", daemon=True
                )
                self._flusher.start()

    def _forget_backlog(self, link: _Link) -> None:
        """Drop (and count) what waits for ``link``: it is gone, or its socket broke."""
        with self._backlog_lock:
            lost = len(link.backlog)
            link.backlog.clear()
            link.backlog_bytes = 0
            self._backlogged.discard(link)
        if lost:
            _count("dropped_full", lost)

    def _drain(self, link: _Link) -> bool:
        """Send what waits for ``link``, oldest first, until it is empty (True) or the peer's buffer
        is full again (False)."""
        while True:
            with self._backlog_lock:
                if not link.backlog:
                    self._backlogged.discard(link)
                    return True
                data = link.backlog[0]  # taken off only once sent: a publisher seeing it waits behind
            try:
                link.send(data, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return False
            except OSError as exc:
                self._forget_backlog(link)
                if exc.errno in _GONE:  # (EBADF: retired and closed, already forgotten by a look)
                    self._peer_gone(link)
                return True
            with self._backlog_lock:
                if link.backlog and link.backlog[0] is data:
                    link.backlog.popleft()
                    link.backlog_bytes -= len(data)
            FANOUT_STATS["sent"] += 1
            FANOUT_STATS["deferred"] += 1

    def _flush(self) -> None:
        """The flusher thread: waits until a backlogged peer can take more (POLLOUT on its connected
        socket), or the bell (a new backlog, or close), and sends what waits."""
        poller = select.poll()
        poller.register(self._bell_r, select.POLLIN)
        watched: dict[int, _Link] = {}
        while not self._closed:
            waiting = {}
            for link in list(self._backlogged):
                if not self._drain(link) and link.sock is not None:  # (only connected links wait)
                    fd = link.sock.fileno()
                    if fd >= 0:
                        waiting[fd] = link
                    else:
                        self._forget_backlog(link)
            for fd in watched.keys() - waiting.keys():
                poller.unregister(fd)
            for fd in waiting.keys() - watched.keys():
                poller.register(fd, select.POLLOUT)
            watched = waiting
            for fd, events in poller.poll():
                if fd == self._bell_r:
                    with contextlib.suppress(OSError):
                        os.read(self._bell_r, 4096)
                elif events & (select.POLLNVAL | select.POLLERR | select.POLLHUP):
                    broken = watched.get(fd)
                    if broken is not None:  # a socket closed or broken under it: a refresh sorts it out
                        self._forget_backlog(broken)
                        self._next_look = 0.0

    def _peer_gone(self, link: _Link) -> None:
        """A send found nobody at ``link``: pruned if its process died; the folder is looked at again."""
        if not _alive(link.pid):
            self._prune(link.name)
        self._next_look = 0.0

    def _dropped(self, name: str) -> None:
        # The hot path of a stopped reader: no lock (a lost increment under threads is a count).
        FANOUT_STATS["dropped_full"] += 1
        self._dropped_to[name] = self._dropped_to.get(name, 0) + 1
        now = time.monotonic()
        if now - self._reported >= REPORT_EVERY:
            self._reported = now
            self._register()

    # -- receiving ------------------------------------------------------------------------------

    def _receive(self) -> None:
        # Waiting in poll, then reading without blocking, wakes sooner than a blocking recv (measured:
        # a bare receiver's p50 went from 38-49 µs to 19 µs on the test host; docs/performance.md).
        poller = select.poll()
        poller.register(self._sock, select.POLLIN)
        recv = self._sock.recv
        while not self._closed:
            try:
                poller.poll()
                data = recv(MAX_DATAGRAM + 1, socket.MSG_DONTWAIT)
            except BlockingIOError:
                continue
            except OSError:
                if self._closed:
                    return
                continue
            if self._closed:
                return
            event = decode_event(data)
            if event is None:
                _count("dropped_bad")
                continue
            _deliver(self.bus, event)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.bus.remove_outlet(self.send)
        self.bus.remove_watcher(self._register)
        # Wake the receiver. Not with a datagram to itself: its buffer, or the send buffer of the
        # socket, may be full (a stopped peer holds what was sent to it by path).
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RD)
        with contextlib.suppress(OSError):
            os.write(self._bell_w, b"\0")
        self._thread.join(5)
        if self._flusher is not None:
            self._flusher.join(5)
        for suffix in (".json", ".sock"):
            with contextlib.suppress(OSError):
                os.unlink(self.name + suffix, dir_fd=self._dir_fd)
        with self._lock:
            for link in self._links.values():
                if link.sock is not None:
                    link.sock.close()
            self._links = {}
            self._targets = {}
            for _, sock in self._retired:
                sock.close()
            self._retired = []
        self._sock.close()
        os.close(self._dir_fd)
        os.close(self._bell_r)
        os.close(self._bell_w)


def _deliver(bus: AgentBus, event: Event) -> None:
    """Hand an event from another process to this process's subscribers (on a receiving thread)."""
    FANOUT_STATS["received"] += 1  # one receiving thread per fanout: no lock on this path
    try:
        bus.publish(event)  # handler failures are the bus's to isolate
    except Exception:
        log.exception("fanout: delivering %s failed", event.topic)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


#: What a registration's name looks like: ``<pid>-<random hex>`` (anything else is not ours).
_NAME = re.compile(r"[0-9]{1,10}-[0-9a-f]{1,32}")
#: Linux pids are below 2**22; anything outside a C int would make os.kill raise.
_PID_MAX = 1 << 30


def _registrations(dir_fd: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, body) of every well-formed registration in the folder; anything else is skipped. The
    folder is shared: a FIFO, a link, a giant file or a body of the wrong shape is passed over."""
    for entry in _fs.listdir_at(dir_fd):
        if not entry.endswith(".json") or not _NAME.fullmatch(entry[: -len(".json")]):
            continue
        try:
            body = orjson.loads(_fs.read_regular(entry, 64 * 1024, dir_fd=dir_fd))
        except (OSError, orjson.JSONDecodeError):
            continue
        if (
            type(body) is dict
            and type(body.get("pid")) is int
            and 0 < body["pid"] < _PID_MAX
            and type(body.get("host")) is str
            and len(body["host"]) <= 255
            and type(body.get("patterns")) is list
            and all(type(p) is str and 0 < len(p) <= 256 for p in body["patterns"])
        ):
            yield entry[: -len(".json")], body


def bus_peers(root: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The processes registered under ``root`` (for ``hybridcomms stats``): pid, host, patterns,
    whether alive, and the events dropped for each peer they reported."""
    folder = Path(root) / BUS_FOLDER
    try:
        dir_fd = _fs.open_dir(str(folder))
    except OSError:
        return []
    try:
        out = []
        for name, body in _registrations(dir_fd):
            dropped = body.get("dropped_to")
            out.append(
                {
                    "name": name,
                    "pid": body["pid"],
                    "host": body["host"],
                    "patterns": body["patterns"],
                    "alive": body["host"] != _HOST or _alive(body["pid"]),
                    "dropped": sum(v for v in dropped.values() if type(v) is int and v > 0)
                    if type(dropped) is dict
                    else 0,
                }
            )
        return out
    finally:
        os.close(dir_fd)


# -- across hosts: Redis pub/sub ------------------------------------------------------------------


def _channel_patterns(prefix: str, patterns: list[str]) -> tuple[set[str], set[str]]:
    """(channels, glob patterns) that carry the bus patterns ``patterns``, none of them covered by
    another: Redis sends a message once per matching subscription of a connection, so a topic that
    several overlapping patterns match (``a.*``, ``*``, ``a.b``) still arrives once."""

    def escape(text: str) -> str:
        return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)

    wanted = set(patterns)
    if "*" in wanted:
        return set(), {escape(prefix) + "*"}
    heads = {p[:-1] for p in wanted if p.endswith(".*")}  # "a." for "a.*": it takes every "a.<...>"

    def covered(topic: str, own: str | None = None) -> bool:
        return any(topic.startswith(h) for h in heads if h != own)

    channels: set[str] = set()
    globs: set[str] = set()
    for p in wanted:
        if p.endswith(".*"):
            base = p[:-2]
            if not covered(base):
                channels.add(prefix + base)  # "a.*" matches "a" itself too
            if not covered(p[:-1], own=p[:-1]):
                globs.add(escape(prefix + base) + ".*")
        elif not covered(p):
            channels.add(prefix + p)
    return channels, globs


def redis_bus_prefix(url: str, namespace: str = "hc") -> str:
    """The start of the pub/sub channel names of the bus events of the Redis database ``url`` names
    (``hc:<db>:bus:``). Pub/sub is one per server, not per database: the database in the name keeps
    the fleets of two databases of one server apart."""
    import redis

    client: Any = redis.Redis.from_url(url)  # no connection is made
    try:
        db = int(client.connection_pool.connection_kwargs.get("db") or 0)
    finally:
        client.close()
    return f"{namespace}:{db}:bus:"


class RedisFanout:
    """The processes that share a Redis, on any host (see the module docstring)."""

    QUEUE = 10_000

    def __init__(self, bus: AgentBus, url: str, namespace: str = "hc") -> None:
        import redis

        self.bus = bus
        self.url = url
        self.namespace = namespace
        self.origin = f"{_HOST}:{os.getpid()}:{uuid.uuid4().hex[:6]}"
        self.prefix = redis_bus_prefix(url, namespace)
        self._client: Any = redis.Redis.from_url(url)
        make_pubsub: Any = self._client.pubsub
        self._pubsub: Any = make_pubsub(ignore_subscribe_messages=True)
        self._queue: queue.Queue[tuple[str, bytes] | None] = queue.Queue(self.QUEUE)
        self._subscribed: tuple[set[str], set[str]] = (set(), set())
        self._sub_lock = threading.Lock()
        self._closed = False
        self._control = f"{namespace}:control:{self.origin}"  # a channel to be woken on
        self._pubsub.subscribe(self._control)
        self._register()
        bus.add_outlet(self.send)
        bus.add_watcher(self._register)
        self._sender = threading.Thread(target=self._send_loop, name="hybridcomms-fanout-out", daemon=True)
        self._receiver = threading.Thread(target=self._receive, name="hybridcomms-fanout-in", daemon=True)
        self._sender.start()
        self._receiver.start()

    def _register(self) -> None:
        """Subscribe to the channels of the bus's patterns (and drop those no longer wanted)."""
        if self._closed:
            return
        channels, globs = _channel_patterns(self.prefix, self.bus.patterns())
        with self._sub_lock:
            old_c, old_g = self._subscribed
            try:  # the new ones first: a change loses nothing, and `_receive` drops the copies
                if channels - old_c:
                    self._pubsub.subscribe(*(channels - old_c))
                if globs - old_g:
                    self._pubsub.psubscribe(*(globs - old_g))
                if old_c - channels:
                    self._pubsub.unsubscribe(*(old_c - channels))
                if old_g - globs:
                    self._pubsub.punsubscribe(*(old_g - globs))
            except Exception as exc:
                log.warning("fanout: subscribing on %s failed: %s", shown_url(self.url), exc)
                return
            self._subscribed = (channels, globs)

    def send(self, event: Event) -> None:
        data = encode_event(event, self.origin)
        if data is None:
            _count("unsendable")
            return
        try:
            self._queue.put_nowait((self.prefix + event.topic, data))
        except queue.Full:
            _count("dropped_queue")

    def _send_loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._client.publish(*item)
                _count("sent")
            except Exception:
                _count("dropped_full")

    def _receive(self) -> None:
        # Redis writes the copies of one publish (one per matching subscription: only while the
        # subscriptions change) one after the other: a copy of the one just seen is dropped.
        last: tuple[Any, Any] = (None, None)
        while not self._closed:
            try:
                msg = self._pubsub.get_message(timeout=1.0)
            except Exception:
                if self._closed:
                    return
                time.sleep(0.1)
                continue
            if msg is None or msg.get("type") not in ("message", "pmessage"):
                continue
            data = msg.get("data")
            seen, last = last, (msg.get("channel"), data)
            if seen == last:
                continue
            event = decode_event(data) if isinstance(data, bytes) else None
            if event is None:
                if not (isinstance(data, bytes) and data == b"wake"):
                    _count("dropped_bad")
                continue
            if event.origin == self.origin:
                continue  # our own publish, back from Redis
            _deliver(self.bus, event)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self.bus.remove_outlet(self.send)
        self.bus.remove_watcher(self._register)
        self._queue.put(None)
        self._sender.join(5)
        with contextlib.suppress(Exception):
            self._client.publish(self._control, b"wake")
        self._receiver.join(5)
        with contextlib.suppress(Exception):
            self._pubsub.close()
        self._client.close()


# -- sharing a bus ------------------------------------------------------------------------------

_shared: dict[tuple[int, str], tuple[Any, int]] = {}
_shared_lock = threading.Lock()


def share_bus(
    bus: AgentBus, *, root: str | os.PathLike[str] | None = None, url: str | None = None
) -> Callable[[], None]:
    """Carry ``bus``'s events to the processes that share ``root`` (this host) or ``url`` (a Redis).
    Idempotent per (bus, place): the fanout is made once and kept while anyone holds it. Returns the
    release (call it once when done: the last release stops the fanout)."""
    redis_url = url if backend_of(url) == "redis" else None
    if redis_url is None and root is None:
        return lambda: None
    place = redis_url or os.path.abspath(os.fspath(root))  # type: ignore[arg-type]
    key = (id(bus), place)
    with _shared_lock:
        held = _shared.get(key)
        if held is None:
            fanout = RedisFanout(bus, redis_url) if redis_url else LocalFanout(bus, place)
            held = (fanout, 0)
        _shared[key] = (held[0], held[1] + 1)
    released = threading.Event()

    def release() -> None:
        if released.is_set():
            return
        released.set()
        with _shared_lock:
            fanout, count = _shared[key]
            if count > 1:
                _shared[key] = (fanout, count - 1)
                return
            del _shared[key]
        fanout.close()

    return release
