"""JSON the way the legacy Dream.OS code wrote and read it: the standard library's ``json``.

orjson (used for native messages) refuses or changes what ``json`` accepts: integers beyond 64 bits
(orjson reads them as floats, and refuses to write them), ``NaN`` and ``Infinity``, dict keys that are
not strings (``json`` writes ``{1: x}`` as ``{"1": x}``). A legacy reader must get back exactly what a
legacy writer stored, so every legacy file is read and written through this module.

A legacy ``inbox.json`` is one array that may hold millions of tiny entries: it is read one element at a
time (what ``json.loads`` would give, element by element), through a window of the file
(`_json_stream`), never as the whole list or the whole text; `iter_array` does the same for a text.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

from ._json_stream import TOO_LARGE, ArrayReader, NotAnArray

__all__ = ["TOO_LARGE", "NotAnArray", "dumps", "iter_array", "loads", "round_trip"]


def dumps(value: Any, *, indent: int | None = None) -> bytes:
    """``json.dumps`` as the legacy writers called it (``json.dump(x, f)`` / ``indent=2``), as bytes.

    Raises ``ValueError`` for what ``json`` cannot write (a tuple key, a set, an object)."""
    try:
        return json.dumps(value, indent=indent).encode("utf-8")
    except (TypeError, RecursionError) as exc:
        raise ValueError(f"not JSON: {exc}") from None


def loads(raw: bytes | str) -> Any:
    """``json.loads``: ``ValueError`` (``json.JSONDecodeError``) if it is not JSON."""
    try:
        return json.loads(raw)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def round_trip(value: Any) -> Any:
    """What a legacy reader gets back after a legacy writer stored ``value`` (keys become strings)."""
    return loads(dumps(value))


# -- one array, element by element ---------------------------------------------------------------


def iter_array(
    text: str, *, at: int | None = None, max_item: int | None = None, piece: int | None = None
) -> Iterator[tuple[int, int, Any]]:
    """The elements of the JSON array ``text``, one at a time, as ``(start, end, value)`` (character
    offsets of the element in ``text``): the values ``json.loads(text)`` would give, without ever
    holding the whole list. A text in memory read as a file is (`_json_stream.ArrayReader`; ``piece``:
    hand it over that many characters at a time, as a file comes in windows).

    An element longer than ``max_item`` characters is not built (a hostile entry of millions of tiny
    objects would cost gigabytes), nor one nested deeper than the parser goes: its value is
    `TOO_LARGE`; its end is found by its brackets and strings alone. ``at``: resume at the ``start``
    of an element given earlier.

    Raises `NotAnArray` if the text is some other JSON value, and ``ValueError`` if it is no JSON at
    all or where the array stops being valid JSON (after the elements before that point)."""
    begin = 0 if at is None else at
    step = piece or max(len(text) - begin, 1)
    pieces = iter(range(begin, len(text), step))

    def more() -> str:
        for i in pieces:
            return text[i : i + step]
        return ""

    reader = ArrayReader(
        more, max_item=max_item, base=begin, state="start" if at is None else "value", unit="char"
    )
    for element in reader:
        yield element.start, element.end, element.value
