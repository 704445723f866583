"""Legacy ``dreamos.core.comms.mailbox_utils``, on hybridcomms.

Same names and call shapes as the Dream.OS module (docs/compatibility.md). What changed
underneath: a message goes where its recipient reads (a durable file in ``new/`` once the recipient is
adopted, else exactly the legacy format, under the legacy locks); nothing is half-written; the
functions that callers ``await`` also work when called plainly (they do their work at call time).

``MAILBOX_ROOT`` is read at every call, so ``monkeypatch.setattr(mailbox_utils, "MAILBOX_ROOT", p)``
works (also through the legacy module path after `install`, which is this same module). A worker
process inherits it with fork; with spawn, set ``HYBRIDCOMMS_ROOT`` in the environment (read when this
module is imported) or set ``MAILBOX_ROOT`` in the worker.
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from ... import _env, _log
from ..._fs import read_regular, replace_atomically
from ...backends.base import check_agent_id
from ...backends.file import DEFAULT_ROOT
from ...message import DEFAULT_MAX_MESSAGE_SIZE, Message
from ...states import State
from . import _json
from ._delivery import adopted, complete, deliver, mailbox_for, owner_of
from ._dual import AwaitableList, Flag, dual
from ._legacy_store import write_into_inbox
from ._messages import create_mailbox_message, validate_mailbox_message_schema
from .file_locking import acquire_lock
from .legacy import (
    DEFAULT_MAX_INBOX_JSON,
    INBOX_DIR,
    INBOX_JSON,
    ingest,
    is_adopted,
    is_drop_name,
    is_safe_agent_id,
    to_legacy_dict,
)

__all__ = [
    "MAILBOX_ROOT",
    "create_mailbox_message",
    "delete_message",
    "get_agent_dir",
    "get_agent_mailbox_path",
    "get_mailbox_root",
    "list_mailbox_messages",
    "read_mailbox_message",
    "read_mailbox_messages",
    "read_message",
    "validate_agent_mailbox_path",
    "validate_mailbox_message_schema",
    "write_mailbox_message",
]

log = _log.get("hybridcomms.compat.dreamos")

#: The mailbox root. Read at every call (monkeypatch it freely).
MAILBOX_ROOT: Path = Path(_env.value(_env.ROOT) or DEFAULT_ROOT)


def get_mailbox_root() -> Path:
    """The current ``MAILBOX_ROOT`` (whatever it has been set to)."""
    return Path(globals()["MAILBOX_ROOT"])


def get_agent_dir(agent_id: str) -> Path:
    return get_mailbox_root() / check_agent_id(agent_id)


def get_agent_mailbox_path(agent_id: str, config: Any = None) -> Path:
    """The agent's legacy inbox folder, ``<root>/<agent>/inbox``. ``config`` (a Dream.OS AppConfig)
    may name the root as ``system.paths.mailboxes``; otherwise ``MAILBOX_ROOT`` is used."""
    return _root_from(config) / check_agent_id(agent_id) / INBOX_DIR


def validate_agent_mailbox_path(path: str | os.PathLike[str], config: Any = None) -> bool:
    """True if ``path`` is ``<root>/<agent>/inbox`` for a safe agent id under the root."""
    base = _root_from(config).resolve()
    target = Path(path).resolve()
    try:
        parts = target.relative_to(base).parts
    except ValueError:
        return False
    return len(parts) == 2 and parts[1] == INBOX_DIR and is_safe_agent_id(parts[0])


def _root_from(config: Any) -> Path:
    if config is not None:
        getter = getattr(config, "get", None)
        value = getter("system.paths.mailboxes") if callable(getter) else None
        if value:
            return Path(value)
    return get_mailbox_root()


# -- writing ------------------------------------------------------------------------------------


def write_mailbox_message(*args: Any, **kwargs: Any) -> Any:
    """Deliver a message. The three call shapes in use, told apart by their arguments:

    ``write_mailbox_message(agent_id: str, message: dict) -> None``
        deliver to that agent under ``MAILBOX_ROOT`` (synchronous).
    ``await write_mailbox_message(message_data: dict, recipient_inbox_path, filename_prefix="msg",
    lock_timeout=10) -> Path``
        deliver to the agent whose inbox folder that is; ``ValueError`` if the message is not a valid
        mailbox message, ``OSError`` if the write fails.
    ``await write_mailbox_message(file_path: Path, content: dict) -> Path``
        deliver to the agent that owns the folder of ``file_path`` (written at that very path while the
        agent is on a legacy layout).

    The awaited shapes also work called plainly. Where the recipient is adopted, the file is a native
    one in its ``new/`` folder, and that is the path returned.
    """
    shape, values = _shape(args, kwargs)
    return _WRITERS[shape](values)


def _write_to_agent(values: dict[str, Any]) -> None:
    """``(agent_id, message)``: deliver to that agent under ``MAILBOX_ROOT``."""
    agent_id, message = values["agent_id"], values["message"]
    _need_mapping(message, "message")
    # The newest Dream.OS writer stores any object as it is: so does this, and readers get it back.
    deliver(get_mailbox_root(), agent_id, dict(message), exact=True)


def _write_to_inbox(values: dict[str, Any]) -> Any:
    """``(message_data, recipient_inbox_path, …)``: a valid mailbox message to the agent whose inbox
    folder that is (into ``new/`` once adopted, else a file of its ``inbox/``)."""
    data = values["message_data"]
    _need_mapping(data, "message_data")
    if not validate_mailbox_message_schema(data):
        raise ValueError("message data failed mailbox schema validation (see the log)")
    inbox = Path(values["recipient_inbox_path"])
    prefix = values.get("filename_prefix", "msg")
    timeout = float(values.get("lock_timeout", 10))
    owner = owner_of(inbox)
    if owner is not None and adopted(*owner):
        return dual(deliver(owner[0], owner[1], dict(data), lock_timeout=timeout))
    return dual(write_into_inbox(inbox, dict(data), filename_prefix=prefix, timeout=timeout))


def _write_at_path(values: dict[str, Any]) -> Any:
    """``(file_path, content)``: to the agent owning that folder (at that very path while the agent is
    on a legacy layout)."""
    path = Path(values["file_path"])
    content = values["content"]
    _need_mapping(content, "content")
    owner = owner_of(path)
    if owner is None:
        raise ValueError(f"{path} is not inside an agent's mailbox folder")
    root, agent = owner
    if adopted(root, agent) or path.name == INBOX_JSON:
        return dual(deliver(root, agent, dict(content)))
    path.parent.mkdir(parents=True, exist_ok=True)
    with acquire_lock(_legacy_lock_of(path)):
        data = _json.dumps(complete(dict(content), agent), indent=2)
        replace_atomically(path, data, 0o660)
    return dual(path)


def _legacy_lock_of(path: Path) -> Path:
    """What a legacy writer locks to write ``path``: ``inbox/.inbox`` in an inbox folder, else the file."""
    return path.parent / ".inbox" if path.parent.name == INBOX_DIR else path


#: The writer of each call shape (`_shape_of`).
_WRITERS: dict[str, Callable[[dict[str, Any]], Any]] = {
    "agent": _write_to_agent,
    "inbox": _write_to_inbox,
    "file": _write_at_path,
}


_SHAPES = {
    "agent": ("agent_id", "message"),
    "inbox": ("message_data", "recipient_inbox_path", "filename_prefix", "lock_timeout"),
    "file": ("file_path", "content"),
}


def _shape(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    shape = _shape_of(args, kwargs)
    return shape, _bind(_SHAPES[shape], args, kwargs)


def _shape_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """The call shape (``"inbox"``, ``"file"`` or ``"agent"``), from its names or its first value."""
    first = args[0] if args else next(iter(kwargs.values()), None)
    for shape, names, first_type in _SHAPE_HINTS:
        if not names.isdisjoint(kwargs) or isinstance(first, first_type):
            return shape
    return "agent"  # a str first: an agent id (checked: "../x" is refused, never taken for a path)


#: What tells a call shape (other than ``"agent"``) apart, in the order asked: one of its keyword
#: names, or the type of its first value.
_SHAPE_HINTS: tuple[tuple[str, frozenset[str], type], ...] = (
    ("inbox", frozenset({"message_data", "recipient_inbox_path"}), Mapping),
    ("file", frozenset({"file_path", "content"}), os.PathLike),
)


def _bind(names: tuple[str, ...], args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """The arguments by name, as Python binds them to a function of these parameters (its errors too)."""
    _check_positional(names, args)
    values = dict(zip(names[: len(args)], args, strict=True))
    _bind_keywords(names, values, kwargs)
    _check_required(names, values)
    return values


def _check_positional(names: tuple[str, ...], args: tuple[Any, ...]) -> None:
    """``TypeError`` if there are more positional arguments than parameters."""
    if len(args) > len(names):
        raise TypeError(f"write_mailbox_message() takes at most {len(names)} arguments for this call shape")


def _bind_keywords(names: tuple[str, ...], values: dict[str, Any], kwargs: dict[str, Any]) -> None:
    """The keyword arguments into ``values``; ``TypeError`` for an unknown one or one given twice."""
    for key, value in kwargs.items():
        if key not in names:
            raise TypeError(f"write_mailbox_message() got an unexpected keyword argument {key!r}")
        if key in values:
            raise TypeError(f"write_mailbox_message() got multiple values for argument {key!r}")
        values[key] = value


def _check_required(names: tuple[str, ...], values: dict[str, Any]) -> None:
    """``TypeError`` naming the first two parameters (the required ones) that are not bound."""
    missing = [n for n in names[:2] if n not in values]
    if missing:
        raise TypeError(f"write_mailbox_message() missing argument(s): {', '.join(missing)}")


def _need_mapping(value: Any, what: str) -> None:
    if not isinstance(value, Mapping):
        raise ValueError(f"{what} must be a dict (a JSON object), not {type(value).__name__}")


# -- reading ------------------------------------------------------------------------------------


def read_mailbox_messages(agent_id: str) -> list[Any]:
    """Every message waiting for ``agent_id``, oldest first, without taking any (``[]`` on error).

    For an adopted agent: what is in ``new/``, plus legacy drops not ingested yet; otherwise what is
    in ``inbox.json`` and ``inbox/``."""
    try:
        root = get_mailbox_root()
        agent_dir = root / check_agent_id(agent_id)
        out: list[Any] = []
        if is_adopted(root, agent_id):
            out = _new_values(root, agent_id)
        out += _legacy_entries(agent_dir)
        return out
    except Exception as exc:
        log.error("could not read the mailbox of %r: %s", agent_id, exc)
        return []


def _new_values(root: Path, agent_id: str) -> list[Any]:
    """The legacy dicts of what waits in an adopted agent's ``new/``, by name."""
    out: list[Any] = []
    mb = mailbox_for(root, agent_id, create=False)
    for info in sorted(mb.list(State.NEW), key=lambda i: i.name):
        try:
            out.append(to_legacy_dict(mb.read(info)))
        except (OSError, ValueError):
            continue  # claimed meanwhile, or undecodable (the next claim sends it to dead/)
    return out


def _legacy_entries(agent_dir: Path) -> list[Any]:
    """What a legacy reader reads: every value of ``inbox.json`` (stdlib JSON, exactly as written),
    then the ``inbox/`` files."""
    return _inbox_json_values(agent_dir) + _inbox_dir_values(agent_dir)


def _inbox_json_values(agent_dir: Path) -> list[Any]:
    """Every value of ``inbox.json`` (``[]`` if it cannot be read, or is no array)."""
    try:
        entries = _json.loads(read_regular((agent_dir / INBOX_JSON), DEFAULT_MAX_INBOX_JSON))
    except (OSError, ValueError):
        return []
    return entries if isinstance(entries, list) else []


def _inbox_dir_values(agent_dir: Path) -> list[Any]:
    """The objects of the ``inbox/`` files, by name (a file that cannot be read, or holds no object,
    skipped)."""
    out: list[Any] = []
    for name in _inbox_dir_names(agent_dir):
        try:
            value = _json.loads(read_regular(agent_dir / INBOX_DIR / name, DEFAULT_MAX_MESSAGE_SIZE))
        except (OSError, ValueError):
            continue
        if isinstance(value, dict):
            out.append(value)
    return out


def _inbox_dir_names(agent_dir: Path) -> list[str]:
    """The names a legacy reader reads in ``inbox/`` (``*.json``, not hidden), sorted; none if unlistable."""
    try:
        return sorted(n for n in os.listdir(agent_dir / INBOX_DIR) if is_drop_name(n))
    except OSError:
        return []


def read_mailbox_message(filepath: str | os.PathLike[str], lock_timeout: float = 10) -> Any:
    """The message in one file, as a dict; ``None`` if it is missing, unreadable or not JSON.

    A file of a hybridcomms folder (``new/``, ``processing/``…) is read as it is (files there are only
    ever renamed, never rewritten); another file is read under its ``<file>.lock``, as before."""
    path = Path(filepath)
    try:
        if _in_state_folder(path):
            return dual(_read_state_file(path))
        return dual(_read_locked_json(path, lock_timeout))
    except FileNotFoundError:
        log.warning("mailbox message file not found: %s", path)
    except Exception as exc:
        log.error("could not read mailbox message %s: %s", path, exc)
    return dual(None)


def _in_state_folder(path: Path) -> bool:
    """Is the file in one of the hybridcomms folders (``new/``, ``processing/``, ...)?"""
    return path.parent.name in {s.folder for s in State}


def _read_state_file(path: Path) -> Any:
    """The legacy dict of a message file of a hybridcomms folder (read as it is, never rewritten)."""
    return to_legacy_dict(Message.decode(path.read_bytes(), path=str(path)))


def _read_locked_json(path: Path, lock_timeout: float) -> Any:
    """A legacy file read under its ``<file>.lock``: its object or array (None for any other JSON)."""
    with acquire_lock(path, lock_timeout):
        raw = read_regular(path, DEFAULT_MAX_MESSAGE_SIZE)
    value = _json.loads(raw)
    return value if isinstance(value, (dict, list)) else None


#: ``read_message``: imported by the May-2025 ``base_agent`` (``from dreamos.core.comms.mailbox_utils
#: import read_message``) and defined by no version; it meant this reader (awaited with a file path).
read_message = read_mailbox_message


def list_mailbox_messages(inbox_path: str | os.PathLike[str], pattern: str = "msg_*.json") -> AwaitableList:
    """Message files in an inbox folder (no temp or lock files), oldest first.

    For an adopted agent's ``inbox`` folder, legacy drops are first taken into ``new/``, and the files
    waiting in ``new/`` are listed (their names are hybridcomms names, so ``pattern`` is not applied)."""
    path = Path(inbox_path)
    owner = owner_of(path) if path.name == INBOX_DIR else None
    if owner is not None and is_adopted(*owner):
        return _list_adopted(path, *owner)
    return _list_legacy(path, pattern)


def _list_adopted(path: Path, root: Path, agent: str) -> AwaitableList:
    """The files waiting in an adopted agent's ``new/``, its legacy drops taken in first."""
    try:
        mb = mailbox_for(root, agent, create=False)
        ingest(mb)
        infos = sorted(mb.list(State.NEW), key=lambda i: i.name)
        return AwaitableList([i.path for i in infos])
    except Exception as exc:
        log.error("could not list %s: %s", path, exc)
        return AwaitableList()


def _list_legacy(path: Path, pattern: str) -> AwaitableList:
    """The message files of a legacy inbox folder that match ``pattern``, oldest (by name) first."""
    if not path.is_dir():
        log.warning("inbox folder not found: %s", path)
        return AwaitableList()
    try:
        found = [p for p in sorted(path.iterdir()) if _is_message_file(p, pattern)]
    except OSError as exc:
        log.error("could not list %s: %s", path, exc)
        return AwaitableList()
    return AwaitableList(found)


def _is_message_file(p: Path, pattern: str) -> bool:
    """A regular file (not a link) named by ``pattern``, neither a temp nor a lock file."""
    return (
        fnmatch.fnmatchcase(p.name, pattern)
        and not p.name.endswith((".tmp", ".lock"))
        and p.is_file()
        and not p.is_symlink()
    )


def delete_message(filepath: str | os.PathLike[str], lock_timeout: float = 5) -> Flag:
    """Remove a handled message; True also when it is already gone, False if it could not be.

    A file in an adopted agent's ``new/`` is not deleted but acknowledged: claimed and moved to
    ``done/`` (kept for audit). One already claimed by someone else is theirs: False."""
    path = Path(filepath)
    try:
        owner = _adopted_owner_of_new(path)
        if owner is not None:
            return Flag(_acknowledge(path, *owner))
        _remove_under_lock(path, lock_timeout)
        return Flag(True)
    except Exception as exc:
        log.error("could not delete mailbox message %s: %s", path, exc)
        return Flag(False)


def _adopted_owner_of_new(path: Path) -> tuple[Path, str] | None:
    """``(root, agent)`` if ``path`` is in the ``new/`` of an adopted agent; None for any other file."""
    if path.parent.name != State.NEW.folder:
        return None
    owner = owner_of(path)
    return owner if owner is not None and is_adopted(*owner) else None


def _acknowledge(path: Path, root: Path, agent: str) -> bool:
    """Claim and ack a file of the agent's ``new/``: True, or if it is already gone; False if someone
    else claimed it."""
    if not path.exists():
        return True
    mb = mailbox_for(root, agent, create=False)
    d = mb.claim_file(path.name)
    if d is None:
        return not path.exists() and not _claimed_elsewhere(mb, path.name)
    d.ack()
    return True


def _remove_under_lock(path: Path, lock_timeout: float) -> None:
    """Remove a legacy message file under its lock, then the lock file (either gone already is fine)."""
    with acquire_lock(path, lock_timeout), contextlib.suppress(FileNotFoundError):
        path.unlink()
    with contextlib.suppress(FileNotFoundError):
        Path(f"{path}.lock").unlink()


def _claimed_elsewhere(mb: Any, name: str) -> bool:
    stem = name.rsplit(".a", 1)[0]
    return any(i.name.startswith(stem) for i in mb.list(State.PROCESSING))
