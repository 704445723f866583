"""The server-side scripts of `RedisMailbox`, read at import from the ``.lua`` files beside this module
(installed with the package: ``[tool.setuptools.package-data]``).

Each script is its file after the shared parts it names in its first line: ``copy.lua`` (copy an
entry's fields into an XADD, and ``failed``), ``owned.lua`` (the owner check every settle starts with:
the XACK) and ``free_token.lua`` (a free token of the delayed set)."""

from __future__ import annotations

from importlib.resources import files

__all__ = ["ACK", "CLAIM", "DEAD", "NACK", "RECOVER", "RELEASE", "STATS"]


def _read(name: str) -> str:
    return files(__package__).joinpath(f"{name}.lua").read_text(encoding="utf-8")


def _script(*parts: str) -> str:
    return "".join(_read(p) for p in parts)


CLAIM = _script("copy", "claim")
ACK = _script("copy", "owned", "ack")
NACK = _script("free_token", "owned", "nack")
DEAD = _script("copy", "owned", "dead")
RELEASE = _script("copy", "owned", "release")
RECOVER = _script("copy", "free_token", "recover")
STATS = _script("stats")
