"""Mailbox URLs, read in one place: which backend a URL names, and how to show one without its
password. (No imports from the package: every layer may use it.)"""

from __future__ import annotations

__all__ = ["REDIS_SCHEMES", "backend_of", "shown_url"]

REDIS_SCHEMES = ("redis", "rediss", "unix")


def backend_of(url: str | None) -> str:
    """``"file"`` (None, ``"local"``, a plain path or ``file://…``), ``"redis"`` (``redis://``,
    ``rediss://``, ``unix://``), ``"memory"`` (``memory://…``), or ``""`` for a scheme no backend
    serves."""
    if url is None or url == "local" or "://" not in url:
        return "file"
    scheme = url.split("://", 1)[0].lower()
    if scheme in REDIS_SCHEMES:
        return "redis"
    return scheme if scheme in ("memory", "file") else ""


def shown_url(url: str) -> str:
    """``url`` without its password (``redis://***@host:6379/0``)."""
    head, sep, tail = url.partition("@")
    return f"{head.partition('://')[0]}://***@{tail}" if sep else url
