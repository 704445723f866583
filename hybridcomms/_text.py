"""Text for people: whatever a producer wrote (a file name, a topic, a reason, an error, a command's
stderr, a payload) is shown so that it cannot act on the terminal that shows it.

Mailboxes are shared, and a producer chooses its bytes: an escape sequence in a dead reason can clear
an operator's screen and print a fake "all mailboxes healthy", a right-to-left override can make
``gnp.exe`` read as ``exe.png``. Everything printed for people goes through one of these:

- `shown` — a file name as text: bytes that are not UTF-8 as ``\\xNN`` (JSON-safe, printable);
- `printable` — one line of text: also every character that does not show as itself escaped as Python
  writes it (``\\x1b``, ``\\u202e``), newlines included: what `str.isprintable` refuses (C0 and C1
  controls, DEL, bidi overrides and isolates, zero-width marks, line separators, lone surrogates,
  unassigned code points) and every Default_Ignorable_Code_Point (`is_hidden`: invisible characters
  that `str.isprintable` lets through, such as U+034F COMBINING GRAPHEME JOINER, the variation
  selectors and the Hangul fillers, which can make two different names or topics look alike);
- `json_text` — a JSON document (``--json``, the message body `show` prints): exact (it decodes to the
  very same values) and inert (those characters written as ``\\uXXXX`` escapes inside its strings).

`shows_as_itself` says whether a text needs none of this (a topic must: `hybridcomms.message`).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import orjson

__all__ = ["DEFAULT_IGNORABLE", "is_hidden", "json_text", "printable", "shown", "shows_as_itself"]

#: The Default_Ignorable_Code_Point property, as ranges of code points (first, last), copied from
#: DerivedCoreProperties.txt of Unicode 14.0.0 (the version of the Unicode database of Python 3.11's
#: `unicodedata`; checked against Perl's ``Unicode::UCD::prop_invlist``, 14.0.0 too). `unicodedata`
#: has no API for the property: it is Other_Default_Ignorable_Code_Point + Cf + Variation_Selector,
#: less White_Space, U+FFF9..FFFB, U+13430..13440 and the Prepended_Concatenation_Marks (UAX #44).
#: A fixed table, whatever Unicode version the interpreter has; tests/test_cli_cotenant.py checks
#: it against the interpreter's format characters.
DEFAULT_IGNORABLE: tuple[tuple[int, int], ...] = (
    (0x00AD, 0x00AD),  # Cf SOFT HYPHEN
    (0x034F, 0x034F),  # Mn COMBINING GRAPHEME JOINER
    (0x061C, 0x061C),  # Cf ARABIC LETTER MARK
    (0x115F, 0x1160),  # Lo HANGUL CHOSEONG FILLER..HANGUL JUNGSEONG FILLER
    (0x17B4, 0x17B5),  # Mn KHMER VOWEL INHERENT AQ..KHMER VOWEL INHERENT AA
    (0x180B, 0x180D),  # Mn MONGOLIAN FREE VARIATION SELECTOR ONE..THREE
    (0x180E, 0x180E),  # Cf MONGOLIAN VOWEL SEPARATOR
    (0x180F, 0x180F),  # Mn MONGOLIAN FREE VARIATION SELECTOR FOUR
    (0x200B, 0x200F),  # Cf ZERO WIDTH SPACE..RIGHT-TO-LEFT MARK
    (0x202A, 0x202E),  # Cf LEFT-TO-RIGHT EMBEDDING..RIGHT-TO-LEFT OVERRIDE
    (0x2060, 0x2064),  # Cf WORD JOINER..INVISIBLE PLUS
    (0x2065, 0x2065),  # Cn <reserved-2065>
    (0x2066, 0x206F),  # Cf LEFT-TO-RIGHT ISOLATE..NOMINAL DIGIT SHAPES
    (0x3164, 0x3164),  # Lo HANGUL FILLER
    (0xFE00, 0xFE0F),  # Mn VARIATION SELECTOR-1..VARIATION SELECTOR-16
    (0xFEFF, 0xFEFF),  # Cf ZERO WIDTH NO-BREAK SPACE
    (0xFFA0, 0xFFA0),  # Lo HALFWIDTH HANGUL FILLER
    (0xFFF0, 0xFFF8),  # Cn <reserved-FFF0>..<reserved-FFF8>
    (0x1BCA0, 0x1BCA3),  # Cf SHORTHAND FORMAT LETTER OVERLAP..SHORTHAND FORMAT UP STEP
    (0x1D173, 0x1D17A),  # Cf MUSICAL SYMBOL BEGIN BEAM..MUSICAL SYMBOL END PHRASE
    (0xE0000, 0xE0000),  # Cn <reserved-E0000>
    (0xE0001, 0xE0001),  # Cf LANGUAGE TAG
    (0xE0002, 0xE001F),  # Cn <reserved-E0002>..<reserved-E001F>
    (0xE0020, 0xE007F),  # Cf TAG SPACE..CANCEL TAG
    (0xE0080, 0xE00FF),  # Cn <reserved-E0080>..<reserved-E00FF>
    (0xE0100, 0xE01EF),  # Mn VARIATION SELECTOR-17..VARIATION SELECTOR-256
    (0xE01F0, 0xE0FFF),  # Cn <reserved-E01F0>..<reserved-E0FFF>
)

_HIDDEN = re.compile("[" + "".join(f"{chr(a)}-{chr(b)}" for a, b in DEFAULT_IGNORABLE) + "]")


def is_hidden(ch: str) -> bool:
    """Whether the character ``ch`` is a Default_Ignorable_Code_Point (`DEFAULT_IGNORABLE`)."""
    return _HIDDEN.match(ch) is not None


def shows_as_itself(text: str) -> bool:
    """Whether ``text`` is printed as it is by `printable`: all of it `str.isprintable` and none of it
    default-ignorable (nothing in it can act on a terminal or hide)."""
    return text.isprintable() and _HIDDEN.search(text) is None


def _shows(ch: str) -> bool:
    return ch.isprintable() and _HIDDEN.match(ch) is None


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
    if not shows_as_itself(text):
        text = _escaped(text)
    if limit is not None and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


def _escaped(text: str) -> str:
    """``text`` with every character that does not show as itself written as its Python escape."""
    return "".join(ch if _shows(ch) else ascii(ch)[1:-1] for ch in text)


#: Candidates: all but the JSON syntax's own newline and printable ASCII. Of those, what does not show
#: as itself (`_shows`) is escaped (orjson escapes C0 controls inside strings already; C1, DEL, the
#: invisible format characters and the other default-ignorables it writes raw, as JSON allows).
_CANDIDATE = re.compile(r"[^\n -~]")


def _escape(m: re.Match[str]) -> str:
    ch = m.group()
    if _shows(ch):
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
