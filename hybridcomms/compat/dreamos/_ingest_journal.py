"""The journal that makes a legacy ingestion safe to kill: what it is publishing, and how far it got.

One file per kind of legacy drop in the agent's folder (``inbox.json``: ``.hybridcomms-ingest.json``;
``inbox/``: ``.hybridcomms-ingest-inbox.json``; flat files: ``.hybridcomms-ingest-flat.json``), present
only while an ingestion runs or after it was killed. It is written (atomically) before every batch is
published and removed once the legacy files are cleared, so the next ingestion knows:

- ``ids``: the message ids of the batch being published (found in the mailbox: published already),
  with those an interrupted ingestion was publishing that this one has not met yet;
- for ``inbox.json``, which is taken in chunks: ``taken``, how many entries of the array were taken
  before that batch, with ``digest``, a digest of those entries (they are skipped only if the array
  still begins with them); ``upto``, the end of the entries ``ids`` came from; and ``clearing``, the
  file ``[]`` was written to before it replaced ``inbox.json`` (still there: the array was not emptied).
- for ``inbox.json`` taken in steps (a consumer takes one chunk per turn, the lock released between
  them): ``file``, the identity of the file the positions are about (device, inode, size, change
  times; ``count`` entries, all of it checked to be JSON), ``offset``, the byte where entry ``taken - 1``
  ends (the next step reads on from there without reading the file again, while ``file`` is still
  what is there), and ``previous``, the ids of the last chunk (the same entry appended twice across a
  step is delivered once). Any change to the file (a legacy writer's append replaces it) makes the
  next step check it again, and the digest say whether it still begins with the entries taken.

``digest`` is a chain (``v`` 2: each entry's digest taken over the one before, so a step can go on from
the last one); a journal without ``v`` has the running digest of an earlier version, still honoured.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, TypeGuard

import orjson

from ... import _fs

__all__ = ["FileId", "Journal", "Resume", "file_id", "folder_journal_name", "is_clearing_name"]

#: The ``inbox.json`` journal (the name every version used).
ARRAY_JOURNAL = ".hybridcomms-ingest.json"
_ANYWHERE = 1 << 62  # an index beyond any array
_CLEARING = re.compile(r"\.inbox\.json\.hybridcomms-[0-9a-f]{12}\.tmp")
_HEX = re.compile(r"(?:[0-9a-f]{64})?")


#: A file's identity: it changes whenever the file does (a rename over it, a write, even a ``touch``:
#: the change time cannot be set by anyone).
FileId = tuple[int, int, int, int, int]


def file_id(st: os.stat_result) -> FileId:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


@dataclass
class Resume:
    """Where a step of an ``inbox.json`` ingestion stopped, in the file it read (see the docstring)."""

    file: FileId
    count: int  # the entries of that file
    offset: int | None  # where entry ``taken - 1`` ends (None: nothing taken)
    previous: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "file": list(self.file),
            "count": self.count,
            "offset": self.offset,
            "previous": self.previous,
        }

    @staticmethod
    def from_json(data: Any) -> Resume | None:
        """The `Resume` a journal holds, if each of its fields is valid; else None."""
        if not _is_resume_json(data):
            return None
        ident = data["file"]
        file = (ident[0], ident[1], ident[2], ident[3], ident[4])
        return Resume(file, data["count"], data["offset"], _strings(data["previous"]))


def _is_resume_json(data: Any) -> TypeGuard[dict[str, Any]]:
    """Is ``data`` a `Resume` as JSON holds it (a file's identity, a count, an offset, a list)?"""
    return (
        isinstance(data, dict)
        and _is_file_id(data.get("file"))
        and _is_count(data.get("count"))
        and _is_offset(data.get("offset"))
        and isinstance(data.get("previous"), list)
    )


def _is_file_id(value: Any) -> TypeGuard[list[int]]:
    """Is ``value`` a `FileId` as JSON holds it (a list of five integers)?"""
    return isinstance(value, list) and len(value) == 5 and all(type(x) is int for x in value)


def _is_count(value: Any) -> TypeGuard[int]:
    """Is ``value`` a count (an integer, not a bool, at least 0)?"""
    return type(value) is int and value >= 0


def _is_offset(value: Any) -> TypeGuard[int | None]:
    """Is ``value`` an offset in the file, or None (nothing taken)?"""
    return value is None or _is_count(value)


def _count_or_default(value: Any, default: int) -> int:
    """``value`` if it is an integer at least 0 (a bool passes, as it always did), else ``default``."""
    return value if isinstance(value, int) and value >= 0 else default


def _strings(value: Any) -> list[str]:
    """The strings of a JSON list (none for anything else)."""
    return [i for i in value if isinstance(i, str)] if isinstance(value, list) else []


def _clearing_name(value: Any) -> str | None:
    """``value`` if it is a name `is_clearing_name` accepts (never another file to remove), else None."""
    return value if isinstance(value, str) and is_clearing_name(value) else None


def _journal_json(
    ids: list[str],
    taken: int | None,
    digest: str | None,
    upto: int | None,
    clearing: str | None,
    resume: Resume | None,
) -> dict[str, Any]:
    """The journal's object: the ids, and what is given of the rest (``upto`` is ``taken`` if not
    given; with ``taken``, ``v`` 2: the digest is a chain)."""
    data: dict[str, Any] = {"ids": ids, "started_at": datetime.now(timezone.utc).isoformat()}
    if taken is not None:
        data.update(_array_position(taken, digest, upto))
    if clearing is not None:
        data["clearing"] = clearing
    if resume is not None:
        data["resume"] = resume.to_json()
    return data


def _array_position(taken: int, digest: str | None, upto: int | None) -> dict[str, Any]:
    """Where ``inbox.json`` stands, as the journal holds it: ``v`` 2 (a chained digest), the entries
    taken, their digest, and ``upto`` (``taken`` if not given)."""
    return {"v": 2, "taken": taken, "digest": digest or "", "upto": upto if upto is not None else taken}


def _upto(data: dict[str, Any]) -> int:
    """``upto`` as written; a journal of a version that took ``inbox.json`` whole has none: its ids
    may be anywhere."""
    return _count_or_default(data.get("upto"), 0) if "upto" in data else _ANYWHERE


def _text_or_empty(value: Any) -> str:
    """``value`` if it is a string, else the empty one."""
    return value if isinstance(value, str) else ""


def _read_journal(dir_fd: int, name: str) -> dict[str, Any] | None:
    """The journal's object as written; None if it is missing, unreadable or not an object."""
    try:
        data: Any = orjson.loads(_fs.read_regular(name, 16 << 20, dir_fd=dir_fd))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def folder_journal_name(label: str) -> str:
    """The journal of a folder of legacy files (``label``: ``inbox``, or empty for the agent's folder)."""
    return f".hybridcomms-ingest-{label or 'flat'}.json"


def is_clearing_name(name: str) -> bool:
    """Is ``name`` one this module gives the file that empties ``inbox.json``?"""
    return _CLEARING.fullmatch(name) is not None


def _is_file_of(resume: Resume, st: os.stat_result) -> bool:
    """Is ``st`` the regular file ``resume`` was read from (same identity)?"""
    return stat.S_ISREG(st.st_mode) and resume.file == file_id(st)


class Journal:
    """One journal file, as loaded (missing or unreadable: empty)."""

    def __init__(self, dir_fd: int, name: str, *, agent: str = "", sync: bool = True) -> None:
        """The journal ``name`` in the open agent folder ``dir_fd`` (``agent``: its name, for logs;
        ``sync``: writes are committed, unless the mailbox never syncs)."""
        self.dir_fd = dir_fd
        self.name = name
        self.agent = agent
        self.sync = sync
        self.ids: list[str] = []
        self.taken = 0
        self.digest = ""
        self.upto = 0
        self.clearing: str | None = None
        self.chained = False  # digest is a chain (v 2)
        self.resume: Resume | None = None
        data = _read_journal(dir_fd, name)
        if data is not None:
            self._load(data)

    def _load(self, data: dict[str, Any]) -> None:
        """Each field as written, if it is valid (else it keeps its empty value)."""
        self.ids = _strings(data.get("ids"))
        self.taken = _count_or_default(data.get("taken"), 0)
        self.upto = _upto(data)
        self.digest = _text_or_empty(data.get("digest"))
        self.clearing = _clearing_name(data.get("clearing"))
        self.chained = data.get("v") == 2
        self.resume = None
        if self.chained:
            self._load_chain(data)

    def _load_chain(self, data: dict[str, Any]) -> None:
        """The fields of a chained (v 2) journal: its digest must be hex (anything else: none, nothing
        taken), and where the last step stopped."""
        if _HEX.fullmatch(self.digest) is None:
            self.digest, self.taken = "", 0
        self.resume = Resume.from_json(data.get("resume"))

    def forget(self) -> None:
        """Start over (the file stays until the next `write` or `end`)."""
        self.ids, self.taken, self.digest, self.upto, self.clearing = [], 0, "", 0, None
        self.chained, self.resume = False, None

    def resumes(self, st: os.stat_result) -> Resume | None:
        """Where the last step stopped, if the file ``st`` is still the very one it read."""
        resume = self.resume
        if resume is not None and _is_file_of(resume, st) and self._knows_offset(resume):
            return resume
        return None

    def _knows_offset(self, resume: Resume) -> bool:
        """Does ``resume`` say where the entries taken end (or were none taken)?"""
        return resume.offset is not None or not self.taken

    def write(
        self,
        ids: list[str],
        *,
        taken: int | None = None,
        digest: str | None = None,
        upto: int | None = None,
        clearing: str | None = None,
        resume: Resume | None = None,
    ) -> None:
        """Record (durably) the ids about to be published, and for ``inbox.json`` where it is."""
        data = _journal_json(ids, taken, digest, upto, clearing, resume)
        _fs.replace_atomically_at(self.dir_fd, self.name, orjson.dumps(data), 0o600, sync=self.sync)
        self._hold(ids, taken, digest, upto, clearing, resume)

    def _hold(
        self,
        ids: list[str],
        taken: int | None,
        digest: str | None,
        upto: int | None,
        clearing: str | None,
        resume: Resume | None,
    ) -> None:
        """What was just written, as `_load` would read it back."""
        self.ids = ids
        self.taken, self.digest = taken or 0, digest or ""
        self.upto = upto if upto is not None else self.taken
        self.clearing = clearing
        self.chained = taken is not None
        self.resume = resume

    def end(self) -> None:
        """The ingestion finished: remove the file."""
        try:
            os.unlink(self.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        self.forget()
