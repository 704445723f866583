"""JSON the way the legacy Dream.OS code wrote and read it: the standard library's ``json``.

orjson (used for native messages) refuses or changes what ``json`` accepts: integers beyond 64 bits
(orjson reads them as floats, and refuses to write them), ``NaN`` and ``Infinity``, dict keys that are
not strings (``json`` writes ``{1: x}`` as ``{"1": x}``). A legacy reader must get back exactly what a
legacy writer stored, so every legacy file is read and written through this module.
"""

from __future__ import annotations

import json
from typing import Any

__all__ = ["dumps", "loads", "round_trip"]


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
