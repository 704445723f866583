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
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import orjson

from ... import _fs

__all__ = ["Journal", "folder_journal_name", "is_clearing_name"]

#: The ``inbox.json`` journal (the name every version used).
ARRAY_JOURNAL = ".hybridcomms-ingest.json"
_ANYWHERE = 1 << 62  # an index beyond any array
_CLEARING = re.compile(r"\.inbox\.json\.hybridcomms-[0-9a-f]{12}\.tmp")


def folder_journal_name(label: str) -> str:
    """The journal of a folder of legacy files (``label``: ``inbox``, or empty for the agent's folder)."""
    return f".hybridcomms-ingest-{label or 'flat'}.json"


def is_clearing_name(name: str) -> bool:
    """Is ``name`` one this module gives the file that empties ``inbox.json``?"""
    return _CLEARING.fullmatch(name) is not None


class Journal:
    """One journal file, as loaded (missing or unreadable: empty)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: list[str] = []
        self.taken = 0
        self.digest = ""
        self.upto = 0
        self.clearing: str | None = None
        try:
            data: Any = orjson.loads(_fs.read_regular(path, 16 << 20))
        except (OSError, ValueError):
            return
        if not isinstance(data, dict):
            return
        ids = data.get("ids")
        if isinstance(ids, list):
            self.ids = [i for i in ids if isinstance(i, str)]
        for key in ("taken", "upto"):
            value = data.get(key)
            if isinstance(value, int) and value >= 0:
                setattr(self, key, value)
        if "upto" not in data:  # written by a version that took inbox.json whole: its ids may be anywhere
            self.upto = _ANYWHERE
        if isinstance(data.get("digest"), str):
            self.digest = data["digest"]
        clearing = data.get("clearing")
        if isinstance(clearing, str) and is_clearing_name(clearing):
            self.clearing = clearing

    def forget(self) -> None:
        """Start over (the file stays until the next `write` or `end`)."""
        self.ids, self.taken, self.digest, self.upto, self.clearing = [], 0, "", 0, None

    def write(
        self,
        ids: list[str],
        *,
        taken: int | None = None,
        digest: str | None = None,
        upto: int | None = None,
        clearing: str | None = None,
    ) -> None:
        """Record (durably) the ids about to be published, and for ``inbox.json`` where it is."""
        data: dict[str, Any] = {"ids": ids, "started_at": datetime.now(timezone.utc).isoformat()}
        if taken is not None:
            data.update(taken=taken, digest=digest or "", upto=upto if upto is not None else taken)
        if clearing is not None:
            data["clearing"] = clearing
        _fs.replace_atomically(self.path, orjson.dumps(data), 0o600)
        self.ids = ids
        self.taken, self.digest = taken or 0, digest or ""
        self.upto = upto if upto is not None else self.taken
        self.clearing = clearing

    def end(self) -> None:
        """The ingestion finished: remove the file."""
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        self.forget()
