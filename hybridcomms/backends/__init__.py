"""The mailbox backends, and the one place a URL (or a root) becomes one.

``base`` holds the contract every backend implements (the `Mailbox` and `MailboxDelivery` Protocols,
the values they return, the options and checks they share); beside it, one module or package per
backend: ``file`` (`FileMailbox`: files under a root on one host), ``memory`` (`MemoryMailbox`:
threads of one process) and ``redis`` (`RedisMailbox`: Redis Streams, a fleet across hosts), each with
its durable subscriptions (``subscriptions``).

Code outside this package never asks which backend it has: it calls `open_mailbox` (or
`registry_for`), asks the mailbox what it can do (the contract's ``folder`` and ``shared``), asks a
URL the same (`served`, `in_one_process`, `file_root`, `fanout_url`), and gets a feature only the file
backend has through a function here that answers for any mailbox (`files_of`, `put_reporting_file`).
``mailbox.kind`` and `backend_of` only *name* a backend, for messages and metrics labels.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._urls import shown_url
from ..message import Message
from ..states import State
from .base import Mailbox, MailboxDelivery, MessageInfo, put_once
from .subscriptions import SubscriptionRegistry

if TYPE_CHECKING:
    from .file.mailbox import FileMailbox

__all__ = [
    "KINDS",
    "SCHEMES",
    "Mailbox",
    "MailboxDelivery",
    "backend_of",
    "fanout_url",
    "file_root",
    "files_of",
    "in_one_process",
    "list_without_reasons",
    "open_mailbox",
    "put_once",
    "put_reporting_file",
    "registry_for",
    "served",
    "url_agents",
]

#: The backends, as `backend_of` and ``mailbox.kind`` name them.
KINDS = ("file", "memory", "redis")
_REDIS_SCHEMES = ("redis", "rediss", "unix")
#: The URL schemes some backend serves.
SCHEMES = (*_REDIS_SCHEMES, "memory", "file")
#: A URL with a slash missing (``redis:/host``) or a user in it (``redis::pw@host``), in what has no "://".
_SCHEME_LIKE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:(/|.*@)", re.DOTALL)


def backend_of(url: str | None) -> str:
    """``"file"`` (None, ``"local"``, a plain path or ``file://…``), ``"redis"`` (``redis://``,
    ``rediss://``, ``unix://``), ``"memory"`` (``memory://…``), or ``""`` for a scheme no backend
    serves."""
    if url is None or url == "local":
        return "file"
    if "://" not in url:
        return _backend_of_path(url)
    return _backend_of_scheme(url.split("://", 1)[0].lower())


def fanout_url(url: str | None) -> str | None:
    """Where the bus that goes with the mailboxes at ``url`` is shared across hosts: the URL itself
    for a backend with a pub/sub of its own (Redis), None when the bus is shared on this host through
    the root's ``.bus/`` folder (files; a memory URL has no other process to reach)."""
    return url if url is not None and backend_of(url) == "redis" else None


def served(url: str) -> bool:
    """Whether some backend serves ``url`` (a plain path counts: files under it)."""
    return backend_of(url) != ""


def in_one_process(url: str) -> bool:
    """Whether the mailboxes at ``url`` live inside one process (``memory://``): no other process,
    no command, can reach them."""
    return backend_of(url) == "memory"


def file_root(where: str | None) -> str | None:
    """The root of the file mailboxes ``where`` names (``file:///path`` or a plain path, as
    `backend_of` reads it), else None (another backend, or None: the caller's own root)."""
    if where is None or backend_of(where) != "file":
        return None
    return where[len("file://") :] if where[:7].lower() == "file://" else where  # (FILE:// too)


def files_of(mailbox: Mailbox) -> FileMailbox | None:
    """``mailbox`` as the file backend's `FileMailbox`, for a feature only files have (the legacy
    intake beside its folder, listings that read no reason file, purge file by file); None for a
    mailbox of another backend."""
    from .file.mailbox import FileMailbox

    return mailbox if isinstance(mailbox, FileMailbox) else None


def url_agents(url: str) -> list[str]:
    """The agents that have a mailbox at ``url``, a URL of a backend that is not files (a root's
    agents are its folders: `file.inspection.survey_root`)."""
    if backend_of(url) != "redis":
        raise ValueError(f"no listing of the agents at {shown_url(url)!r}")
    from .redis.mailbox import redis_agents

    return redis_agents(url)


def list_without_reasons(mailbox: Mailbox, state: State) -> list[MessageInfo]:
    """``mailbox.list(state)``, except that on files the dead letters' reason files are not read
    (names, sizes and times only: a page reads the reasons of the rows it shows)."""
    files = files_of(mailbox)
    if files is None or state is not State.DEAD:
        return mailbox.list(state)
    from .file import inspection

    return inspection.list_state(files, state, reasons=False)


def put_reporting_file(mailbox: Mailbox, message: Message, *, delay: float | None = None) -> Path | None:
    """Put ``message``; the file it was written to when the mailbox keeps messages as files, else
    None."""
    files = files_of(mailbox)
    if files is None:
        mailbox.put(message, delay=delay)
        return None
    return files.path / State.NEW.folder / files.put_file(message, delay=delay)


def _backend_of_path(path: str) -> str:
    """``"file"`` for a path; ``""`` for what looks like a URL mistyped, not a folder to make
    mailboxes in (``redis:/host``, ``redis::pw@host``)."""
    return "" if _SCHEME_LIKE.match(path) and not path.startswith(("./", "/")) else "file"


def _backend_of_scheme(scheme: str) -> str:
    """The backend that serves the URL scheme ``scheme`` (lower case); ``""`` if none does."""
    if scheme in _REDIS_SCHEMES:
        return "redis"
    return scheme if scheme in ("memory", "file") else ""


def open_mailbox(
    where: str | os.PathLike[str],
    agent_id: str,
    *,
    file_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> Mailbox:
    """The mailbox of ``agent_id`` at ``where``:

    - ``redis://[user:password@]host[:port][/db]``, ``rediss://…`` (TLS) or ``unix://…``: a
      `RedisMailbox` (needs the ``hybridcomms[redis]`` extra);
    - ``memory://<name>``: a `MemoryMailbox` shared by everything in this process that names it;
    - ``file:///path``, a plain path or a `os.PathLike`: a `FileMailbox` under that root.

    ``options`` are the mailbox options every backend takes (``lease``, ``max_attempts``,
    ``backoff``, ``max_message_size``, ``done_retention``, ``create``) and the backend's own (``fsync``
    for files, ``namespace`` for Redis, …). ``file_options`` are options for a file mailbox only
    (``fsync``, ``read_only``, …): given to a `FileMailbox`, left out for the other backends (a
    caller that opens whatever a URL names passes them without asking which backend it is)."""
    if not isinstance(where, str):
        return _open_file(os.fspath(where), agent_id, options, file_options)
    opener = _OPENERS.get(backend_of(where))
    if opener is None:
        raise ValueError(f"unknown mailbox URL scheme in {shown_url(where)!r} (redis, rediss, memory, file)")
    return opener(where, agent_id, options, file_options)


_FileOptions = Mapping[str, Any] | None


def _open_redis(url: str, agent_id: str, options: dict[str, Any], _file_options: _FileOptions) -> Mailbox:
    from .redis.mailbox import RedisMailbox

    return RedisMailbox(url, agent_id, **options)


def _open_memory(url: str, agent_id: str, options: dict[str, Any], _file_options: _FileOptions) -> Mailbox:
    from .memory import MemoryMailbox

    return MemoryMailbox.named(url[len("memory://") :], agent_id, **options)


def _open_file_url(where: str, agent_id: str, options: dict[str, Any], file_options: _FileOptions) -> Mailbox:
    """The file mailbox under ``file:///path`` or a plain path."""
    root = where[len("file://") :] if where.startswith("file://") else where
    return _open_file(root, agent_id, options, file_options)


def _open_file(root: str, agent_id: str, options: dict[str, Any], file_options: _FileOptions) -> Mailbox:
    """The file mailbox of ``agent_id`` under ``root``, with the options for files only too."""
    from .file.mailbox import FileMailbox

    return FileMailbox(root, agent_id, **{**options, **(file_options or {})})


#: How `open_mailbox` opens each backend (`backend_of`).
_OPENERS: dict[str, Callable[[str, str, dict[str, Any], _FileOptions], Mailbox]] = {
    "redis": _open_redis,
    "memory": _open_memory,
    "file": _open_file_url,
}


def registry_for(
    root: str | os.PathLike[str], url: str | None, file_mode: int = 0o600
) -> SubscriptionRegistry:
    """The durable subscriptions that go with the mailboxes at ``url`` (None: files under ``root``)."""
    opener = _REGISTRIES.get(backend_of(url))
    if url is not None and opener is not None:
        return opener(url)
    from .file.subscriptions import FileSubscriptions

    return FileSubscriptions(root, file_mode)


def _redis_registry(url: str) -> SubscriptionRegistry:
    from .redis.subscriptions import RedisSubscriptions

    return RedisSubscriptions(url)


def _memory_registry(url: str) -> SubscriptionRegistry:
    from .memory import MemorySubscriptions

    return MemorySubscriptions(url[len("memory://") :])


#: How `registry_for` opens the subscriptions of the backends that are not files (`backend_of`).
_REGISTRIES: dict[str, Callable[[str], SubscriptionRegistry]] = {
    "redis": _redis_registry,
    "memory": _memory_registry,
}
