"""A JSON array read as a stream: one element at a time, through a window of bounded size.

A legacy ``inbox.json`` may be 64 MiB; holding its bytes and its text at once cost ~130 MiB, and more for
text outside Latin-1. `ArrayReader` reads it from a descriptor (`open_array`) a window at a time
(`WINDOW` characters more whenever it runs out), gives each element as ``json.loads`` would give it,
with where it is in the file (byte offsets), and forgets what it has passed. What it holds at once is
the window and the element being parsed: never more than ``max_item`` characters of one element are
handed to the parser, so an element of millions of tiny objects is never built (`TOO_LARGE`: its end
is found by its brackets and strings alone); so is an element nested deeper than the parser goes
(thousands of ``[``): given as `TOO_LARGE` too, however short, so the elements after it are still read
(its inside is then checked for its brackets and strings only, not as JSON). Memory is bounded by
`WINDOW` and ``max_item``, whatever the size of the file or the number of its entries.

A reader can start after any element it gave earlier (``after``: that element's end offset), which is
how an ingestion taken in steps goes on where the last step stopped without reading the file again.
"""

from __future__ import annotations

import codecs
import json
import os
import re
from collections.abc import Callable, Iterator
from typing import Any, Final, NamedTuple

__all__ = ["TOO_LARGE", "WINDOW", "ArrayReader", "Element", "NotAnArray", "is_blank", "open_array"]

#: How many bytes (so at most as many characters) are read into the window at a time.
WINDOW = 1 << 20


class NotAnArray(ValueError):
    """The text is not a JSON array (``what``: what it is instead, as a type name or a description)."""

    def __init__(self, what: str) -> None:
        super().__init__(f"not a JSON array but {what}")
        self.what = what


class _TooLarge:
    def __repr__(self) -> str:
        return "TOO_LARGE"


#: The value given for an element longer than ``max_item`` characters, or nested deeper than the parser
#: goes (a shorter one: its length tells the two apart): not built at all.
TOO_LARGE: Final = _TooLarge()


class Element(NamedTuple):
    """One element: where it starts and ends (bytes of the file, or characters of a text) and its value."""

    start: int
    end: int
    value: Any


_DECODER = json.JSONDecoder()  # what json.loads uses: same NaN, big integers, duplicate keys
_WS = re.compile(r"[ \t\n\r]*")  # the whitespace json accepts between tokens
_BLANK = frozenset(b" \t\n\r\x0b\x0c")  # what bytes.strip() removes: a file of only these holds nothing


def _possessive(pattern: str, fallback: str) -> re.Pattern[str]:
    """``pattern`` where the ``re`` module knows possessive repeats (3.11): a repeated group without
    them keeps backtracking state per repetition (120 MB for 400,000 ``{}``); else ``fallback``."""
    try:
        return re.compile(pattern, re.S)
    except re.error:  # pragma: no cover - Python 3.10
        return re.compile(fallback, re.S)


#: Inside a string: up to its closing quote, or a backslash (escapes are stepped over by the caller).
_STRING_BODY = _possessive(r'(?:[^"\\]++|\\.)*+', r'[^"\\]*')
#: Outside strings, inside a container: runs that cannot end it (other characters, empty containers).
_FLAT = _possessive(r'(?:[^"\[\]{}]++|\{\}|\[\])*+', r'[^"\[\]{}]*')
_TOKEN = re.compile(r'["\[\]{}]')
_NUMBER_TAIL = re.compile(r"[-+.0-9eE]*\Z")  # the window ends inside what may be one number
_NUMBER_CHARS = re.compile(r"[-+.0-9eE]*")


class _Cut(Exception):
    """A parse that may have stopped only because the text given to the parser stopped."""


def _maybe_cut(exc: ValueError, length: int) -> bool:
    """Could this parser error come from the text ending (``length`` characters) rather than from
    the JSON being wrong? (A string cut short names where it started; every other cut is at the end.)"""
    if not isinstance(exc, json.JSONDecodeError):
        return False  # e.g. an integer of more digits than Python converts: wrong however long
    return exc.msg.startswith("Unterminated string") or exc.pos >= length - 8


class ArrayReader:
    """The elements of one JSON array, read through a window (see the module docstring).

    ``more()`` gives the next piece of text ('' at the end); ``measure(s)`` how many units (bytes of the
    file) the text ``s`` took; ``base`` is the unit offset of the first character ``more`` gives.
    ``state``: ``"start"`` (the text begins with the array), ``"value"`` (it begins with an element),
    or ``"after"`` (it begins right after an element: a separator, or the end of the array).

    Iterating gives `Element`\\ s and raises `NotAnArray` if the text is some other JSON value, and
    ``ValueError`` if it is no JSON at all or where the array stops being valid JSON (after the elements
    before that point). ``max_item`` None reads elements of any length (for a text already in memory)."""

    def __init__(
        self,
        more: Callable[[], str],
        measure: Callable[[str], int] = len,
        *,
        max_item: int | None,
        base: int = 0,
        state: str = "start",
        unit: str = "byte",
    ) -> None:
        self._more = more
        self._measure = measure
        self._max_item = max_item
        self._cap = None if max_item is None else max_item + 1  # characters handed to the parser at most
        self._text = ""
        self._eof = False
        self._units = base  # the offset of self._text[self._mark]
        self._mark = 0
        self._state = state
        self._unit = unit
        self._guess = 256  # characters to try an element with first (grows with what is seen)

    # -- the window ---------------------------------------------------------------------------

    def _at(self, i: int) -> int:
        """The unit offset of window position ``i`` (positions are asked for in increasing order)."""
        if i > self._mark:
            self._units += self._measure(self._text[self._mark : i])
            self._mark = i
        return self._units

    def _fill(self, keep: int) -> int:
        """Forget the window before ``keep`` and read more; returns by how much positions moved."""
        self._at(keep)
        piece = self._more()
        if not piece:
            self._eof = True
        self._text = self._text[keep:] + piece
        self._mark = 0
        return keep

    def _char(self, i: int) -> tuple[int, str]:
        """``(i, the character there)`` (``i`` moved if the window moved), ``""`` at the end."""
        while i >= len(self._text):
            if self._eof:
                return i, ""
            i -= self._fill(i)
        return i, self._text[i]

    def _ws(self, i: int) -> int:
        while True:
            m = _WS.match(self._text, i)
            i = m.end() if m is not None else i
            if i < len(self._text) or self._eof:
                return i
            i -= self._fill(i)

    def _error(self, message: str, i: int) -> ValueError:
        return ValueError(f"{message} at {self._unit} {self._at(i)}")

    # -- the array ----------------------------------------------------------------------------

    def __iter__(self) -> Iterator[Element]:
        i, done = self._first()
        while not done:
            start = self._at(i)
            i, end, value = self._element(i)
            yield Element(start, self._at(end), value)
            i, done = self._separator(end)

    def _first(self) -> tuple[int, bool]:
        """Where the first element starts: ``(i, False)``; ``(_, True)`` if there is none (an empty
        array, or none after the element the text begins after)."""
        if self._state == "start":
            return self._opening()
        if self._state == "after":
            return self._separator(0)
        return 0, False

    def _opening(self) -> tuple[int, bool]:
        """Past the array's ``[`` (`NotAnArray` if the text holds another value), as `_first` says."""
        i, c = self._char(self._ws(0))
        if c != "[":
            raise NotAnArray(self._what_instead(i))
        i, c = self._char(self._ws(i + 1))
        if c == "]":
            self._check_end(i + 1)
            return i, True
        return i, False

    def _separator(self, i: int) -> tuple[int, bool]:
        """After an element: ``(where the next one starts, False)``, or ``(_, True)`` at the end."""
        i, c = self._char(self._ws(i))
        if c == ",":
            return self._ws(i + 1), False
        if c == "]":
            self._check_end(i + 1)
            return i, True
        raise self._error("Expecting ',' delimiter", i)

    def _check_end(self, i: int) -> None:
        i, c = self._char(self._ws(i))
        if c:
            raise self._error("Extra data", i)

    def _element(self, i: int) -> tuple[int, int, Any]:
        """The element at ``i``: ``(i, end, value)`` (positions in the window as it is now)."""
        i, c = self._char(i)
        if not c:
            raise self._error("Expecting value", i)
        if c in '[{"':
            return self._container(i)
        return self._scalar(i)

    def _container(self, i: int) -> tuple[int, int, Any]:
        """A string, array or object: parsed from at most ``max_item + 1`` characters; longer, skipped."""
        cap = self._cap
        size = self._guess if cap is None else min(self._guess, cap)
        while True:
            room = len(self._text) - i
            if room < size and not self._eof:
                i -= self._fill(i)
                continue
            cut = size < room  # the parser gets a slice that stops before what is read
            try:
                if cut:
                    piece = self._text[i : i + size]
                    value, n = _DECODER.raw_decode(piece)
                else:
                    value, end = _DECODER.raw_decode(self._text, i)
                    n = end - i
            except RecursionError:
                # Deeper than the parser goes: like an element too long, its end is found by its
                # brackets and strings alone and it is given unbuilt (one entry, not the whole array).
                return self._skip(i)
            except ValueError as exc:
                if not _maybe_cut(exc, size if cut else len(self._text)):
                    raise self._error(str(getattr(exc, "msg", exc)), i) from None
                if cut:
                    if cap is not None and size >= cap:
                        return self._skip(i)  # longer than max_item: its end, not its value
                    size = 2 * size if cap is None else min(2 * size, cap)
                    continue
                if self._eof:
                    raise self._error(str(getattr(exc, "msg", exc)), i) from None
                i -= self._fill(i)
                continue
            self._guess = max(256, 2 * n)
            if self._max_item is not None and n > self._max_item:
                value = TOO_LARGE
            return i, i + n, value

    def _scalar(self, i: int) -> tuple[int, int, Any]:
        """A number or a literal (true, NaN, …): parsed where it is (it builds nothing large)."""
        while True:
            try:
                value, end = _DECODER.raw_decode(self._text, i)
            except ValueError as exc:
                if self._eof or not _maybe_cut(exc, len(self._text)):
                    raise self._error(str(getattr(exc, "msg", exc)), i) from None
            else:
                if self._eof or _NUMBER_TAIL.match(self._text, end) is None:
                    n = end - i
                    if self._max_item is not None and n > self._max_item:
                        value = TOO_LARGE
                    return i, end, value
                # the window may have cut it (1.|5, 1e|5): look again with more
            long = self._cap is not None and len(self._text) - i > self._cap + WINDOW
            if long and self._text[i] in "-0123456789":
                return self._skip_number(i)  # a number of millions of digits: its end, not its value
            i -= self._fill(i)

    def _skip_number(self, i: int) -> tuple[int, int, Any]:
        j = i
        while True:
            m = _NUMBER_CHARS.match(self._text, j)
            j = m.end() if m is not None else j
            if j < len(self._text) or self._eof:
                return j, j, TOO_LARGE
            j -= self._fill(j)

    def _skip(self, i: int) -> tuple[int, int, Any]:
        """Find where the string or container at ``i`` ends by its strings and brackets alone, the
        window moving on meanwhile (nothing of it is kept): ``(i, end, TOO_LARGE)``."""
        depth = 0
        in_string = False
        j = i
        while True:
            text = self._text
            if in_string:
                while True:
                    m = _STRING_BODY.match(text, j)
                    j = m.end() if m is not None else j
                    if j + 1 < len(text) and text[j] == "\\":
                        j += 2  # an escape the pattern left (Python 3.10)
                        continue
                    break
                if j < len(text) and text[j] == '"':
                    in_string = False
                    j += 1
                    if depth == 0:
                        return j, j, TOO_LARGE
                    continue
            else:
                if depth:  # (at the top, "[]" would be the element itself)
                    m = _FLAT.match(text, j)
                    j = m.end() if m is not None else j
                t = _TOKEN.match(text, j)
                if t is not None:
                    j = t.end()
                    token = t.group()
                    if token == '"':
                        in_string = True
                    elif token in "[{":
                        depth += 1
                    else:
                        depth -= 1
                        if depth == 0:
                            return j, j, TOO_LARGE
                    continue
            if self._eof:
                what = "string" if in_string and depth == 0 else "container"
                raise self._error(f"Unterminated {what}", j)
            j -= self._fill(j)  # (a backslash cut from what it escapes stays in the window)

    def _rest(self, i: int, limit: int | None) -> str:
        """The text from ``i`` on: all of it, or (with a ``limit``) at least ``limit + 1`` characters."""
        while not self._eof and (limit is None or len(self._text) - i <= limit):
            i -= self._fill(i)
        return self._text[i:]

    def _what_instead(self, i: int) -> str:
        """What a text that is not an array holds, as ``type(json.loads(text)).__name__`` says; a large
        one is not parsed (its first character tells). ``ValueError`` if it is no JSON at all."""
        limit = self._max_item
        rest = self._rest(i, limit)
        if limit is not None and len(rest) > limit:
            first = rest[:1]
            return "an object" if first == "{" else f"a value starting with {first!r}"
        try:
            return type(json.loads(rest)).__name__
        except RecursionError:
            raise ValueError("nested too deeply") from None


# -- a file --------------------------------------------------------------------------------------

#: ``json.detect_encoding``'s answer -> (the codec of the text after the BOM, the BOM's length).
_BOMS = {"utf-8-sig": ("utf-8", 3), "utf-16": ("utf-16", 2), "utf-32": ("utf-32", 4)}


def _codec_of(head: bytes) -> tuple[str, int]:
    """The codec ``json.loads`` would decode a file beginning with ``head`` with (the byte order of a
    BOM made explicit, so it can be read from the middle), and the length of its BOM."""
    name = json.detect_encoding(head)
    codec, bom = _BOMS.get(name, (name, 0))
    if codec in ("utf-16", "utf-32"):
        codec += "-le" if head[:2] == b"\xff\xfe" else "-be"
    return codec, bom


def is_blank(fd: int, size: int) -> bool:
    """Does the file hold only whitespace (what ``bytes.strip`` removes), or nothing? Read from the
    start, as far as the first other byte."""
    offset = 0
    while offset < size:
        block = os.pread(fd, 1 << 16, offset)
        if not block:
            break
        if not _BLANK.issuperset(block):
            return False
        offset += len(block)
    return True


def open_array(fd: int, *, max_item: int, after: int | None = None) -> ArrayReader:
    """A reader of the JSON array in the open file ``fd`` (decoded as ``json.loads`` decodes bytes:
    UTF-8, -16 or -32, a BOM skipped), from its start or right after the element that ends at byte
    ``after``. Offsets are bytes of the file. Bytes that do not decode are a ``ValueError``."""
    codec, bom = _codec_of(os.pread(fd, 4, 0))
    start = bom if after is None else after
    os.lseek(fd, start, os.SEEK_SET)
    decoder = codecs.getincrementaldecoder(codec)("surrogatepass")

    def more() -> str:
        while True:
            raw = os.read(fd, WINDOW)
            text: str = decoder.decode(raw, final=not raw)
            if text or not raw:
                return text

    if codec == "utf-8":

        def measure(s: str) -> int:
            return len(s) if s.isascii() else len(s.encode("utf-8", "surrogatepass"))

    else:

        def measure(s: str) -> int:
            return len(s.encode(codec, "surrogatepass"))

    return ArrayReader(
        more, measure, max_item=max_item, base=start, state="start" if after is None else "after"
    )
