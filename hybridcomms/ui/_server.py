"""The dashboard's HTTP connections, bounded against a slow client (slowloris).

uvicorn has no timeout on receiving a request: ``timeout_keep_alive`` only runs between two requests
of a connection, and is reset by every byte received; ``limit_concurrency`` answers 503 only once a
request has been received. So a local user opening thousands of connections that send half a header
and stop would hold as many descriptors as the process may open, and the operator's pages would time
out. `GuardedH11` is uvicorn's h11 protocol with two bounds added:

- **a deadline for each request** (`HEADER_TIMEOUT`): a connection that has not sent a complete request
  (headers and body) within it, from its opening or from the end of its previous response, is closed;
  a request being answered (a page, the live stream) is never cut;
- **a deadline for taking a reply** (the same `HEADER_TIMEOUT`): a connection whose client stops reading
  its replies (it pipelines complete requests and never reads: the server's writes pause) is closed if
  its writes stay paused that long;
- **a cap on the connections** (`MAX_CONNECTIONS`): past it, the oldest connection that is still
  waiting for its request, or not taking its replies, is closed to make room (a browser sends its
  request at once and reads what comes; a slow client is the one waiting), or the new one if none is.

Used with ``h11_max_incomplete_event_size`` (a bounded header size), ``backlog`` and the loop's own
accept (an ``EMFILE`` pauses accepting, it does not crash).
"""

from __future__ import annotations

import asyncio
import weakref
from collections import OrderedDict
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

#: Seconds a connection has to send a complete request.
HEADER_TIMEOUT = 5.0
#: Open connections at most (the process's descriptor limit is usually 1,024 or more).
MAX_CONNECTIONS = 512
#: The largest request head accepted (request line and headers; a cookie is a hundred bytes).
MAX_HEAD = 16 * 1024

#: Per server (its shared state): the connections still waiting for their request, oldest first.
_waiting: weakref.WeakKeyDictionary[Any, OrderedDict[int, GuardedH11]] = weakref.WeakKeyDictionary()


def protocol(
    header_timeout: float = HEADER_TIMEOUT, max_connections: int = MAX_CONNECTIONS
) -> type[H11Protocol]:
    """A `GuardedH11` class with these bounds (what ``uvicorn.Config(http=...)`` takes)."""
    return type(
        "GuardedH11",
        (GuardedH11,),
        {"header_timeout": header_timeout, "max_connections": max_connections},
    )


class GuardedH11(H11Protocol):
    header_timeout = HEADER_TIMEOUT
    max_connections = MAX_CONNECTIONS
    _deadline: asyncio.TimerHandle | None = None
    _write_deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if len(self.connections) > self.max_connections:
            waiting = self._queue()
            victim = next(iter(waiting.values()), None)
            if victim is None:
                self._close()
                return
            victim._close()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if not self._waiting_for_request():
            self._disarm()

    def pause_writing(self) -> None:
        """The client does not take its replies (the transport's buffer is full): it has until the
        deadline to read, and is one to close first when the connections are too many."""
        super().pause_writing()
        if self._write_deadline is None:
            self._write_deadline = self.loop.call_later(self.header_timeout, self._close)
        self._queue()[id(self)] = self

    def resume_writing(self) -> None:
        super().resume_writing()
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        if self._deadline is None:
            self._queue().pop(id(self), None)

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and self._waiting_for_request():
            self._arm()  # a kept-alive connection: the next request has the same deadline

    # -- the deadline -------------------------------------------------------------------------------

    def _queue(self) -> OrderedDict[int, GuardedH11]:
        return _waiting.setdefault(self.server_state, OrderedDict())

    def _waiting_for_request(self) -> bool:
        return self.conn.their_state in (h11.IDLE, h11.SEND_BODY)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.header_timeout, self._expired)
        self._queue()[id(self)] = self

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None
        if self._write_deadline is None:  # still evictable while it does not take its replies
            self._queue().pop(id(self), None)

    def _expired(self) -> None:
        self._deadline = None
        if self._waiting_for_request():
            self._close()
        else:
            self._queue().pop(id(self), None)

    def _close(self) -> None:
        if self._write_deadline is not None:
            self._write_deadline.cancel()
            self._write_deadline = None
        self._disarm()
        self.connections.discard(self)
        if not self.transport.is_closing():
            self.transport.abort()  # no lingering: the descriptor is freed now
