"""The package's loggers: every one made by `get`, with a filter that makes what a record carries inert.

Log lines quote what producers wrote (a dead reason, a file name, a topic, an exception's text), and
they reach terminals and journals as they are. The filter (`Inert`) writes each argument of a record
that is not a number as `hybridcomms._text.printable` text (one line, controls escaped) before the
record is formatted; the message templates are the library's own and stay as they are.

A filter on a logger applies to the records made through that logger only, not to its children: so
every module takes its logger from `get`, never from `logging.getLogger` (a test checks).

Some events are logged as warnings because nobody else would say them: a message dead-lettered, a file
refused or left in place. A command that prints its own line for such an event (``work`` for the
messages it dead-letters, ``doctor --fix`` for what it repairs or cannot) runs that step within
`reported_by_caller`, and those records go to DEBUG (`event_level`): each event is shown once.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from typing import Any

from ._text import printable, shows_as_itself

__all__ = ["Inert", "event_level", "get", "reported_by_caller"]


def _inert(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float)):
        return value
    try:
        return printable(str(value))
    except Exception:  # a __str__ that raises: what logging itself would show
        return value


def _inert_message(record: logging.LogRecord) -> None:
    """Make the record's arguments printable, or its message when it was built beforehand."""
    if record.args:
        record.args = _inert_args(record.args)
    elif isinstance(record.msg, str) and not shows_as_itself(record.msg):
        record.msg = printable(record.msg)  # a message built beforehand (an f-string)


def _inert_args(args: tuple[object, ...] | Mapping[str, object]) -> tuple[object, ...] | Mapping[str, object]:
    """A record's arguments (a tuple, or a mapping for ``%(name)s``), each made inert."""
    if isinstance(args, tuple):
        return tuple(_inert(a) for a in args)
    if isinstance(args, Mapping):
        return {k: _inert(v) for k, v in args.items()}
    return args


class Inert(logging.Filter):
    """Makes what a record carries inert before it is formatted (see the module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        _inert_message(record)
        if record.exc_info and not record.exc_text:
            # A traceback quotes the exception's text (a producer's file name, a handler's error),
            # and that text may hold newlines that would start a forged line: the whole traceback is
            # one inert line (its own line breaks written as \n).
            record.exc_text = printable(_FORMATTER.formatException(record.exc_info))
        return True


_FORMATTER = logging.Formatter()


_INERT = Inert()


def get(name: str) -> logging.Logger:
    """``logging.getLogger(name)`` with the `Inert` filter (once)."""
    logger = logging.getLogger(name)
    if _INERT not in logger.filters:
        logger.addFilter(_INERT)
    return logger


_REPORTED_BY_CALLER: ContextVar[bool] = ContextVar("hybridcomms_reported_by_caller", default=False)


@contextlib.contextmanager
def reported_by_caller() -> Iterator[None]:
    """Within it (this thread, or this task), the caller says the events it causes itself: the library
    logs them at DEBUG (`event_level`) rather than as warnings."""
    token = _REPORTED_BY_CALLER.set(True)
    try:
        yield
    finally:
        _REPORTED_BY_CALLER.reset(token)


def event_level(level: int = logging.WARNING) -> int:
    """The level to log an event that a caller may report itself at: ``level``, or DEBUG within
    `reported_by_caller`."""
    return logging.DEBUG if _REPORTED_BY_CALLER.get() else level
