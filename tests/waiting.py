"""The one way a test waits for a condition: :func:`eventually`.

A condition is polled, first at once and then at a short interval that grows (1 ms doubling up to
20 ms: a condition that holds soon is seen soon, one that takes seconds costs few polls), until it
holds or its time bound runs out; the failure says what was awaited and what was seen last (the last
value, or the last exception of a kind the caller said to ignore).

Waits on a handshake stay what they are: an event (``Event.wait``), a pipe or terminal (``readline``,
``select``), a condition variable. ``eventually`` is for conditions only a poll can see (a file that
appears, a count that grows, a process's state in ``/proc``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol, TypeVar

T = TypeVar("T")

FIRST_INTERVAL = 0.001
MAX_INTERVAL = 0.02
_SHOWN = 2000  # characters of the last value a failure shows at most


def eventually(
    condition: Callable[[], T],
    what: str,
    timeout: float = 10.0,
    *,
    until: Callable[[T], object] = bool,
    ignoring: tuple[type[Exception], ...] = (),
    max_interval: float = MAX_INTERVAL,
) -> T:
    """Poll ``condition()`` until ``until(value)`` is true (by default: the value is truthy) and
    return that value; fail with an ``AssertionError`` naming ``what`` after ``timeout`` seconds.

    An exception of a type in ``ignoring`` counts as "not yet" (a file half written, a server not up
    yet); any other exception, an ``AssertionError`` included, propagates at once: a condition can
    fail fast (``assert proc.poll() is None``) when what it waits for can no longer happen.
    ``max_interval`` caps the interval, for a condition that does work each time it is polled.
    """
    deadline = time.monotonic() + timeout
    interval = min(FIRST_INTERVAL, max_interval)
    last: object = "(never polled)"
    while True:
        try:
            value = condition()
        except ignoring as exc:
            last = exc
        else:
            if until(value):
                return value
            last = value
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            cause = last if isinstance(last, BaseException) else None
            raise AssertionError(
                f"timed out after {timeout:g} s waiting for {what}; last seen: {_shown(last)}"
            ) from cause
        time.sleep(min(interval, remaining))
        interval = min(interval * 2, max_interval)


class _Process(Protocol):
    def poll(self) -> int | None: ...


def while_running(process: _Process, condition: Callable[[], T]) -> Callable[[], T]:
    """``condition`` as a condition that fails at once when ``process`` (a ``Popen``) has exited:
    what a wait on it is for (a ready file it writes) can no longer happen."""

    def checked() -> T:
        code = process.poll()
        assert code is None, f"the process exited with {code} first"
        return condition()

    return checked


def _shown(last: object) -> str:
    text = f"{type(last).__name__}: {last}" if isinstance(last, BaseException) else repr(last)
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"
