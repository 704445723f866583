"""Text for people: whatever a producer wrote (a file name, a topic, a reason, an error, a command's
stderr, a payload) is shown so that it cannot act on the terminal that shows it.

Mailboxes are shared, and a producer chooses its bytes: an escape sequence in a dead reason can clear
an operator's screen and print a fake "all mailboxes healthy", a right-to-left override can make
``gnp.exe`` read as ``exe.png``. Everything printed for people goes through one of these:

- `shown` — a file name as text: bytes that are not UTF-8 as ``\\xNN`` (JSON-safe, printable);
- `printable` — one line of text: also every character that is not printable (C0 and C1 controls, DEL,
  bidi overrides and isolates, zero-width marks, line separators) escaped as Python writes it
  (``\\x1b``, ``\\u202e``), newlines included;
- `json_text` — a JSON document (``--json``, the message body `show` prints): exact (it decodes to the
  very same values) and inert (those characters written as ``\\uXXXX`` escapes inside its strings).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["json_text", "printable", "shown"]


def shown(name: str) -> str:
    """A name as printable, JSON-safe text (bytes that are not UTF-8 as ``\\xNN``)."""
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def printable(text: str, limit: int | None = None) -> str:
    """``text`` as one line a terminal shows as it is (see the module docstring); at most ``limit``
    characters (cut with "…")."""
    text = shown(text)
    if not text.isprintable():
        text = "".join(ch if ch.isprintable() else ascii(ch)[1:-1] for ch in text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


#: Candidates: all but the JSON syntax's own newline and printable ASCII. Of those, what `str.isprintable`
#: refuses is escaped (orjson escapes C0 controls inside strings already; C1, DEL and the invisible
#: format characters it writes raw, as JSON allows).
_CANDIDATE = re.compile(r"[^\n -~]")


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    if ch.isprintable():
        return ch
    code = ord(ch)
    if code > 0xFFFF:  # a UTF-16 surrogate pair, as JSON writes characters past the BMP
        code -= 0x10000
        return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"
    return f"\\u{code:04x}"


def json_text(value: Any, *, indent: bool = False, default: Callable[[Any], Any] | None = None) -> str:
    """``value`` as JSON text that is exact and inert (see the module docstring)."""
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0, default=default).decode()
    if text.isascii() and "\x7f" not in text:
        return text  # the common case: nothing to look at
    return _CANDIDATE.sub(_escape, text)
