"""Comms part: requests waiting for their replies, by the request's id (a reply carries it as its
``correlation_id``)."""

from __future__ import annotations

import concurrent.futures
import threading
from typing import Any

__all__ = ["PendingRequests"]


class PendingRequests:
    def __init__(self) -> None:
        self._waiting: dict[str, concurrent.futures.Future[Any]] = {}
        self._lock = threading.Lock()

    def open(self, request_id: str) -> concurrent.futures.Future[Any]:
        future: concurrent.futures.Future[Any] = concurrent.futures.Future()
        with self._lock:
            self._waiting[request_id] = future
        return future

    def close(self, request_id: str) -> None:
        """The request is over (answered, timed out, or failed): a late reply finds no one."""
        with self._lock:
            self._waiting.pop(request_id, None)

    def answer(self, request_id: str, reply: Any) -> bool:
        """Hand ``reply`` to the request waiting for it; False if none waits (too late)."""
        with self._lock:
            future = self._waiting.pop(request_id, None)
        if future is None:
            return False
        if not future.done():
            future.set_result(reply)
        return True

    def __len__(self) -> int:
        with self._lock:
            return len(self._waiting)
