"""A payload as text for the message page, whatever its shape.

A producer's JSON may nest as deep as the reader accepts (1,024 levels), deeper than the JSON writer
goes (254): the page never fails on it. Up to `DEPTH` levels it is pretty-printed; what is deeper is
replaced by a note saying how it was cut (a string, so it stays inert JSON text).
"""

from __future__ import annotations

from typing import Any

from ._source import json_text

#: Levels shown; a list or object deeper than this shows as a note.
DEPTH = 64
#: The note a cut value shows as.
CUT = "… (nested deeper than {depth} levels: not shown)"


def clipped(value: Any, depth: int = DEPTH) -> tuple[Any, bool]:
    """``value`` with every list or object below ``depth`` levels replaced by a note (iterative: no
    recursion however deep the value is); and whether anything was cut."""
    cut = False
    note = CUT.format(depth=depth)
    root = _shallow(value)
    stack: list[tuple[Any, Any, int]] = [(value, root, 1)]  # (source, copy being filled, its level)
    while stack:
        src, dst, level = stack.pop()
        for k, v in _members(src):
            child: Any = v
            if isinstance(v, (list, dict)):
                if level >= depth:
                    child = note
                    cut = True
                else:
                    child = _shallow(v)
                    stack.append((v, child, level + 1))
            _put(dst, k, child)
    return root, cut


def _shallow(v: Any) -> Any:
    """An empty list or object of the same kind as ``v`` (to be filled), or ``v`` itself."""
    return [] if isinstance(v, list) else {} if isinstance(v, dict) else v


def _members(v: list[Any] | dict[Any, Any]) -> Any:
    """A list's (index, item) or an object's (key, value) pairs."""
    return enumerate(v) if isinstance(v, list) else v.items()


def _put(dst: list[Any] | dict[str, Any], k: Any, child: Any) -> None:
    """Adds ``child`` to the copy being filled: appended to a list, under its key (as text) in an object."""
    if isinstance(dst, list):
        dst.append(child)
    else:
        dst[str(k)] = child


def payload_text(value: Any) -> str:
    """``value`` as pretty-printed, inert JSON, cut at `DEPTH` levels (with a note above it)."""
    shown, cut = clipped(value) if isinstance(value, (list, dict)) else (value, False)
    text = json_text(shown, indent=True, default=str)
    if cut:
        return f"(the payload nests deeper than {DEPTH} levels: what is deeper is not shown)\n{text}"
    return text


#: Levels of a dead reason's values shown (a reason is a few fields: deeper is a producer's game).
REASON_DEPTH = 8


def reason_shown(reason: dict[str, Any] | None) -> dict[str, Any] | None:
    """A dead reason as the pages show it: each value cut at `REASON_DEPTH` levels (`clipped`), so
    that printing it never recurses deeper than that, however deep the reason file or entry nests."""
    if reason is None:
        return None
    return {
        str(k): clipped(v, REASON_DEPTH)[0] if isinstance(v, (list, dict)) else v for k, v in reason.items()
    }
