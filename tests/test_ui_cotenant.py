"""The dashboard against a hostile co-tenant: a producer that writes what it likes into the mailboxes
the dashboard shows (giant files, FIFOs, links, folders, names with controls, JSON with extreme values,
reason and error records of any shape). Every page still answers, quickly, without following a link,
opening a FIFO or reading a giant file, and shows what it found as text."""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from pathlib import Path

import pytest

pytest.importorskip("starlette")

from starlette.testclient import TestClient

from hybridcomms import FileMailbox, Message
from hybridcomms.ui._app import create_app
from hybridcomms.ui._security import Guard
from hybridcomms.ui._source import Source

TOKEN = "cotenant-token"
DUE = "20261204T100000000000Z"


def name(mid: str | None = None, attempt: int = 1) -> str:
    return f"2M.{DUE}.{mid or uuid.uuid4().hex}.a{attempt}.json"


@pytest.fixture
def hostile_root(tmp_path: Path) -> Path:
    root = tmp_path / "mailboxes"
    with FileMailbox(root, "Target", fsync="never") as mb:
        mb.put(Message(topic="fine", payload=1, sender="Friend"))
    box = root / "Target"
    secret = tmp_path / "secret.txt"
    secret.write_text('{"topic": "SECRET-CONTENT", "payload": "SECRET-CONTENT"}')
    for folder in ("new", "dead"):
        d = box / folder
        with open(d / name(), "wb") as f:  # a giant file (sparse: costs no disk)
            f.truncate(64 << 20)
        os.mkfifo(d / name())  # a FIFO: opening it would block
        os.symlink(secret, d / name())  # a link out of the mailbox
        (d / name()).mkdir()  # a folder where a message should be
        (d / "ctl-\x1b]0;pwned\x07-\u202e.json").write_text('{"topic": "x\\u001b[2J", "payload": 1}')
    extreme = {
        "topic": "extreme",
        "payload": {"big": 1.7976931348623157e308, "neg": -(2**63), "deep": [[[[[[[[[1]]]]]]]]]},
        "sender": "S" * 5000,
        "headers": {"h" * 300: "v" * 100_000},
        "created_at": "0001-01-01T00:00:00Z",
        "expires": "9999-12-31T23:59:59Z",
    }
    (box / "dead" / name("extreme")).write_text(json.dumps(extreme))
    # reason records of every shape
    dead_names = [n for n in os.listdir(box / "dead") if n.endswith(".json")]
    shapes = [
        '{"reason": {"nested": [1, 2, {"x": "<script>"}]}, "last_error": 1e308}',
        "[1, 2]",
        "not json",
        "",
    ]
    for n, shape in zip(dead_names, shapes, strict=False):
        (box / "dead" / (n + ".reason.json")).write_text(shape)
    # a last-error record that is a FIFO, and one with hostile text
    (box / "errors").mkdir(exist_ok=True)
    os.mkfifo(box / "errors" / "fifo.json")
    # agent folders that are not mailboxes
    os.symlink(box, root / "Link-Agent")
    (root / "bad\x1bname").mkdir()
    (root / "bad\x1bname" / "new").mkdir()
    os.mkfifo(root / "Fifo-Agent")
    return root


@pytest.mark.timeout(60)
def test_every_page_answers_and_shows_text(hostile_root: Path) -> None:
    app, _ = create_app(Source(str(hostile_root)), Guard(TOKEN), live=False)
    c = TestClient(app, base_url="http://127.0.0.1:8765" + Guard(TOKEN).prefix)
    c.get(f"/?token={TOKEN}")
    start = time.monotonic()
    fleet = c.get("/")
    assert fleet.status_code == 200
    assert "a symlink" in fleet.text and "bad\\x1bname" in fleet.text
    pages = []
    for state in ("new", "dead"):
        r = c.get(f"/a/Target?state={state}")
        assert r.status_code == 200
        assert "SECRET-CONTENT" not in r.text and "\x1b" not in r.text and "\u202e" not in r.text
        pages += re.findall(rf'href="{Guard(TOKEN).prefix}(/a/Target/m/[^"]+)"', r.text)
    assert len(pages) >= 10
    for path in pages:
        r = c.get(path)
        assert r.status_code in (200, 404), (
            path
        )  # 404: a folder or link the mailbox does not list as a message
        assert "SECRET-CONTENT" not in r.text
        script = f'<script src="{Guard(TOKEN).prefix}/static/ui.js"'
        assert "\x1b" not in r.text and "<script>" not in r.text.replace(script, "")
    r = c.get("/a/Target?state=new&topic=*")
    assert r.status_code == 200
    assert time.monotonic() - start < 20  # no FIFO waited on, no giant file read
