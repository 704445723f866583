"""JSON the way the legacy Dream.OS code wrote and read it: the standard library's ``json``.

orjson (used for native messages) refuses or changes what ``json`` accepts: integers beyond 64 bits
(orjson reads them as floats, and refuses to write them), ``NaN`` and ``Infinity``, dict keys that are
not strings (``json`` writes ``{1: x}`` as ``{"1": x}``). A legacy reader must get back exactly what a
legacy writer stored, so every legacy file is read and written through this module.

A legacy ``inbox.json`` is one array that may hold millions of tiny entries: `iter_array` reads it one
element at a time (what ``json.loads`` would give, element by element), so what is in memory at once is
the text and one element, never the whole list.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any, Final

__all__ = ["TOO_LARGE", "NotAnArray", "array_text", "dumps", "iter_array", "loads", "round_trip"]


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


class NotAnArray(ValueError):
    """The text is not a JSON array (``what``: what it is instead, as a type name or a description)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"not a JSON array but {what}")
        self.what = what


class _TooLarge:
    def __repr__(self) -> str:
        return "TOO_LARGE"


#: The value `iter_array` gives for an element longer than its ``max_item``: not built at all.
TOO_LARGE: Final = _TooLarge()

_DECODER = json.JSONDecoder()  # what json.loads uses: same NaN, big integers, duplicate keys
_WS = re.compile(r"[ \t\n\r]*")  # the whitespace json accepts between tokens


def _skip_ws(text: str, i: int) -> int:
    m = _WS.match(text, i)
    return m.end() if m is not None else i  # the pattern matches everywhere (it may be empty)


#: A string token, or a bracket: enough to find where a container ends without building it.
_SKIP = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[\[\]{}]')
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')


def array_text(raw: bytes) -> str:
    """The text ``json.loads(raw)`` reads: UTF-8, -16 or -32 as it detects them (a UTF-8 BOM is
    skipped). Raises ``ValueError`` (``UnicodeDecodeError``) for bytes that are none of them."""
    return raw.decode(json.detect_encoding(raw), "surrogatepass")


def iter_array(
    text: str, *, at: int | None = None, max_item: int | None = None
) -> Iterator[tuple[int, int, Any]]:
    """The elements of the JSON array ``text``, one at a time, as ``(start, end, value)`` (character
    offsets of the element in ``text``): the values ``json.loads(text)`` would give, without ever
    holding the whole list.

    An element longer than ``max_item`` characters is not built (a hostile entry of millions of tiny
    objects would cost gigabytes): its value is `TOO_LARGE`; its end is found by its brackets and
    strings alone. ``at``: resume at the ``start`` of an element given earlier.

    Raises `NotAnArray` if the text is some other JSON value, and ``ValueError`` if it is no JSON at
    all or where the array stops being valid JSON (after the elements before that point)."""
    n = len(text)
    if at is None:
        i = _skip_ws(text, 0)
        if i >= n or text[i] != "[":
            raise NotAnArray(_what_instead(text, i, max_item))
        i = _skip_ws(text, i + 1)
        if i < n and text[i] == "]":
            _check_end(text, i + 1)
            return
    else:
        i = at
    while True:
        end = _extent(text, i) if max_item is not None and n - i > max_item else None
        if end is not None and max_item is not None and end - i > max_item:
            value: Any = TOO_LARGE
        else:
            try:
                value, end = _DECODER.raw_decode(text, i)
            except RecursionError:
                raise ValueError(f"nested too deeply (element at char {i})") from None
        yield i, end, value
        i = _skip_ws(text, end)
        if i < n and text[i] == ",":
            i = _skip_ws(text, i + 1)
            continue
        if i < n and text[i] == "]":
            _check_end(text, i + 1)
            return
        raise json.JSONDecodeError("Expecting ',' delimiter", text, i)


def _extent(text: str, i: int) -> int | None:
    """Where the string or container starting at ``i`` ends, found without building it (None for
    other values: numbers and literals are short or rejected by the parser anyway)."""
    first = text[i : i + 1]
    if first == '"':
        m = _STRING.match(text, i)
        if m is None:
            raise json.JSONDecodeError("Unterminated string starting at", text, i)
        return m.end()
    if first not in ("[", "{"):
        return None
    depth = 0
    for m in _SKIP.finditer(text, i):
        token = m.group()
        if token in ("[", "{"):
            depth += 1
        elif token in ("]", "}"):
            depth -= 1
            if depth == 0:
                return m.end()
    raise json.JSONDecodeError("Unterminated container starting at", text, i)


def _check_end(text: str, i: int) -> None:
    i = _skip_ws(text, i)
    if i != len(text):
        raise json.JSONDecodeError("Extra data", text, i)


def _what_instead(text: str, i: int, max_item: int | None) -> str:
    """What a text that is not an array holds, as ``type(json.loads(text)).__name__`` says; a large
    one is not parsed (its first character tells). ``ValueError`` if it is no JSON at all."""
    if max_item is not None and len(text) - i > max_item:
        first = text[i : i + 1]
        return "an object" if first == "{" else f"a value starting with {first!r}"
    return type(loads(text)).__name__
