"""The Dream.OS legacy intake against a co-tenant of the group (second round).

A co-tenant can rename or replace anything in another agent's folder under a 0770 setgid root, and
the operator may run ``doctor --fix`` / ``migrate`` as root:

- the ingestion journals are reached through the agent folder's descriptor only: a folder swapped for
  a link mid-ingestion never makes a journal be written or removed elsewhere;
- one legacy entry that cannot become a message (NaN, a lone surrogate) never blocks the rest of the
  file, a consumer's durable deliveries, ``migrate --dry-run`` or ``doctor`` for the other agents;
- ``migrate``'s backup skips hard links and sparse files and stops at a total cap.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from hybridcomms import FileMailbox, Message
from hybridcomms.compat.dreamos import legacy
from hybridcomms.compat.dreamos.legacy import ingest
from hybridcomms.errors import UnsafePathError
from hybridcomms.states import State

JOURNALS = (".hybridcomms-ingest.json", ".hybridcomms-ingest-inbox.json", ".hybridcomms-ingest-flat.json")


def _entries(n: int, prefix: str = "m") -> list[dict[str, object]]:
    return [{"id": f"{prefix}{i:04d}", "sender": "x", "content": f"hello {i}", "type": "text"} for i in range(n)]


def _outside(tmp_path: Path) -> Path:
    """A folder outside the root, holding a sentinel where every journal would go."""
    out = tmp_path / "outside"
    out.mkdir()
    for name in JOURNALS:
        (out / name).write_text("sentinel")
    return out


def _swap(root: Path, agent: str, target: Path) -> None:
    """The co-tenant's move: the agent's folder renamed aside, a link to ``target`` in its place."""
    os.rename(root / agent, root / f"{agent}.moved")
    os.symlink(target, root / agent)


def _assert_untouched(out: Path) -> None:
    assert sorted(os.listdir(out)) == sorted(JOURNALS)
    for name in JOURNALS:
        assert (out / name).read_text() == "sentinel", name


# -- 1. the journals, through the folder's descriptor only ----------------------------------------


def test_inbox_json_journal_never_follows_a_swapped_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(legacy, "CHUNK_ENTRIES", 3)
    root = tmp_path / "root"
    out = _outside(tmp_path)
    with FileMailbox(root, "Victim") as mb:
        (root / "Victim" / "inbox.json").write_text(json.dumps(_entries(10)))
        swapped: list[int] = []

        def after_chunk(n: int) -> None:  # after the first chunk's journal was written
            if not swapped:
                _swap(root, "Victim", out)
                swapped.append(n)

        report = ingest(mb, on_taken=after_chunk)
    assert swapped
    _assert_untouched(out)
    moved = root / "Victim.moved"
    assert report.n_ingested == 10 and len(os.listdir(moved / "new")) == 10
    assert json.loads((moved / "inbox.json").read_text()) == []
    assert not any((moved / name).exists() for name in JOURNALS)  # ended where it was written


def test_inbox_folder_journal_never_follows_a_swapped_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(legacy, "CHUNK_ENTRIES", 2)
    root = tmp_path / "root"
    out = _outside(tmp_path)
    with FileMailbox(root, "Victim") as mb:
        inbox = root / "Victim" / "inbox"
        inbox.mkdir()
        for i, entry in enumerate(_entries(6)):
            (inbox / f"msg_{i}.json").write_text(json.dumps(entry))
        swapped: list[int] = []

        def after_chunk(n: int) -> None:
            if not swapped:
                _swap(root, "Victim", out)
                swapped.append(n)

        report = ingest(mb, on_taken=after_chunk, settle=0)
    assert swapped
    _assert_untouched(out)
    assert report.n_ingested == 6 and len(os.listdir(root / "Victim.moved" / "new")) == 6


def test_ingestion_refuses_a_folder_put_in_place_of_the_mailbox(tmp_path: Path) -> None:
    """Renamed away and another (real) folder made in its place since the mailbox was opened: the
    impostor's files are neither taken nor changed, and no journal is written in it."""
    root = tmp_path / "root"
    with FileMailbox(root, "Victim") as mb:
        os.rename(root / "Victim", root / "Victim.moved")
        impostor = root / "Victim"
        impostor.mkdir()
        text = json.dumps(_entries(3))
        (impostor / "inbox.json").write_text(text)
        with pytest.raises(UnsafePathError):
            ingest(mb)
    assert (impostor / "inbox.json").read_text() == text
    assert sorted(os.listdir(impostor)) == ["inbox.json"]
    assert os.listdir(root / "Victim.moved" / "new") == []
