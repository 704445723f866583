"""Results that work whether the legacy caller awaits the call or not.

Dream.OS code calls the same functions both ways (``bus.subscribe(...)`` here, ``await
bus.subscribe(...)`` there; ``await read_mailbox_message(p)`` in one agent, a plain call in another).
The compat functions therefore do their work when called, and return the result in a form that is
also awaitable: ``await`` gives the plain value; a plain call gives a value that behaves like it.

- a `Path`, ``list``, ``dict`` or ``str`` result is returned as a subclass with ``__await__``;
- ``None`` as `NOTHING` (falsy; ``await`` gives ``None``);
- a ``bool`` as `Flag` (an ``int`` that prints as True/False; ``await`` gives the ``bool``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any, TypeVar, overload

__all__ = ["NOTHING", "AwaitableDict", "AwaitableList", "AwaitablePath", "AwaitableStr", "Flag", "dual"]

T = TypeVar("T")


def _give(value: Any) -> Generator[Any, None, Any]:
    return value
    yield  # pragma: no cover  (makes this a generator: an await that never suspends)


class AwaitablePath(type(Path())):  # type: ignore[misc]
    """A `Path` that can also be awaited (``await`` gives a plain `Path`)."""

    def __await__(self) -> Generator[Any, None, Path]:
        return _give(Path(os.fspath(self)))


class AwaitableList(list):  # type: ignore[type-arg]
    def __await__(self) -> Generator[Any, None, list[Any]]:
        return _give(list(self))


class AwaitableDict(dict):  # type: ignore[type-arg]
    def __await__(self) -> Generator[Any, None, dict[Any, Any]]:
        return _give(dict(self))


class AwaitableStr(str):
    __slots__ = ()

    def __await__(self) -> Generator[Any, None, str]:
        return _give(str(self))


class NothingType:
    """``None`` for a call that may or may not be awaited: falsy, and ``await`` gives ``None``."""

    __slots__ = ()

    def __bool__(self) -> bool:
        return False

    def __await__(self) -> Generator[Any, None, None]:
        return _give(None)

    def __eq__(self, other: object) -> bool:
        return other is None or other is self

    def __hash__(self) -> int:
        return hash(None)

    def __repr__(self) -> str:
        return "None"


NOTHING = NothingType()


class Flag(int):
    """A ``bool`` result for a call that may or may not be awaited (``bool`` cannot be subclassed)."""

    __slots__ = ()

    def __new__(cls, value: object) -> Flag:
        return super().__new__(cls, bool(value))

    def __await__(self) -> Generator[Any, None, bool]:
        return _give(bool(self))

    def __repr__(self) -> str:
        return repr(bool(self))

    __str__ = __repr__


@overload
def dual(value: None) -> NothingType: ...
@overload
def dual(value: bool) -> Flag: ...
@overload
def dual(value: Path) -> AwaitablePath: ...
@overload
def dual(value: str) -> AwaitableStr: ...
@overload
def dual(value: list[T]) -> AwaitableList: ...
@overload
def dual(value: dict[Any, Any]) -> AwaitableDict: ...
def dual(value: Any) -> Any:
    """``value`` in a form that also works with ``await`` (see the module docstring)."""
    if value is None:
        return NOTHING
    for kind, form in _FORMS:
        if isinstance(value, kind):
            return form(value)
    raise TypeError(f"no awaitable form for {type(value).__name__}")


#: The awaitable form of each kind of value, in the order they are tried (a bool before anything else).
_FORMS: tuple[tuple[type, Callable[[Any], Any]], ...] = (
    (bool, Flag),
    (Path, AwaitablePath),
    (str, AwaitableStr),
    (list, AwaitableList),
    (dict, AwaitableDict),
)
