"""Names a producer writes with bytes that are not UTF-8.

`os.listdir` gives such names back with each undecodable byte as a lone surrogate (U+DC80-U+DCFF,
PEP 383); they encode back to the same bytes with `os.fsencode`, and never as UTF-8 text. Every place
the library turns a listed name (or an argument, which Python decodes the same way) into bytes must
use `os.fsencode`: a plain ``.encode()`` raises `UnicodeEncodeError` and stops the whole run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridcomms import FileMailbox
from hybridcomms.compat.dreamos.legacy import ingest

# Any bytes a file name may hold, at least one of them not UTF-8, ending in .json (a legacy drop).
STEMS = st.binary(min_size=1, max_size=40).filter(
    lambda b: b"/" not in b and b"\x00" not in b and not b.startswith(b".")  # dot files: temp files, left
)
UNDECODABLE = st.tuples(STEMS, st.binary(min_size=1, max_size=4).map(lambda b: bytes(0x80 | x for x in b)))


def _undecodable_name(parts: tuple[bytes, bytes]) -> bytes:
    stem, bad = parts
    name = stem + bad + b".json"
    try:
        name.decode("utf-8")
    except UnicodeDecodeError:
        return name
    return b"\xff" + name  # made undecodable for sure


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(names=st.lists(UNDECODABLE.map(_undecodable_name), min_size=1, max_size=4, unique=True))
def test_legacy_drops_with_undecodable_names_are_ingested(tmp_path_factory, names: list[bytes]) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path_factory.mktemp("root")
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        inbox = os.fsencode(mb.path / "inbox")
        os.mkdir(inbox)
        for i, name in enumerate(names):  # no message_id: the id is derived from the name and bytes
            body = {"type": "TASK_COMMAND", "content": i, "from": "Agent-9"}
            with open(os.path.join(inbox, name), "wb") as f:
                f.write(orjson.dumps(body))
        report = ingest(mb, settle=0.0)
        assert len(report.ingested) == len(names)
        got = []
        while (d := mb.claim()) is not None:
            got.append(d.message.payload)
            d.ack()
        assert sorted(got) == list(range(len(names)))
        assert [n for n in os.listdir(inbox) if n.endswith(b".json")] == []
        # A second ingestion of the same drops (re-dropped) derives the same ids: delivered once.
        for i, name in enumerate(names):
            body = {"type": "TASK_COMMAND", "content": i, "from": "Agent-9"}
            with open(os.path.join(inbox, name), "wb") as f:
                f.write(orjson.dumps(body))
        again = ingest(mb, settle=0.0)
        assert len(again.ingested) + again.duplicates == len(names)


def test_an_undecodable_payload_argument_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    out = subprocess.run(
        [
            *(sys.executable, "-m", "hybridcomms", "--root", str(tmp_path), "send", "--to", "Agent-1"),
            *("--topic", "t", "--route", "durable", "--payload", b'"\xff\xfe"'),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "not valid JSON" in out.stderr and len(out.stderr.strip().splitlines()) == 1
