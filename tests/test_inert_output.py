"""What is printed for people is inert: nothing a producer writes can move the cursor, clear the
screen, reorder the text or forge a line on an operator's terminal."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from cli_runner import clean_env, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridcomms import FileMailbox, Message, MessageError
from hybridcomms._text import is_hidden
from hybridcomms.message import valid_topic

ACTIVE = st.characters(codec=None, categories=("Cc", "Cf", "Cs", "Co", "Zl", "Zp"))


@given(head=st.text(max_size=20), bad=ACTIVE, tail=st.text(max_size=20))
def test_a_topic_with_a_control_or_formatting_character_is_refused(head: str, bad: str, tail: str) -> None:
    topic = head[:100] + bad + tail[:100]
    with pytest.raises(MessageError):
        Message(topic)
    assert not valid_topic(topic)


#: Visible characters: not the default-ignorable ones among letters and marks (Hangul fillers, variation
#: selectors, the combining grapheme joiner), which topics refuse too (test_cli_cotenant.py).
VISIBLE = st.characters(categories=("L", "M", "N", "P", "S")).filter(lambda c: not is_hidden(c))


@given(st.text(VISIBLE, min_size=1, max_size=200))
def test_a_topic_of_printable_text_is_accepted(topic: str) -> None:
    assert Message(topic).topic == topic and valid_topic(topic)
    assert Message(f"a {topic}").topic == f"a {topic}"  # spaces too


# -- everything printed for people, end to end ------------------------------------------------------

ATTACKS = [
    "\x1b[2J\x1b[H",  # clear the screen, cursor home
    "\x1b]0;owned\x07",  # set the terminal's title
    "\r\nall mailboxes healthy\r\n",  # a forged line
    "\x9b31m",  # C1 CSI
    "\u202egnp.exe",  # right-to-left override
    "a\u2028b\u2029c",  # line and paragraph separators
    "zero\u200bwidth\u2066isolate\u2069",
    "\x7f\x08\x00",
]
HOSTILE = st.lists(st.sampled_from(ATTACKS) | st.text(max_size=4), min_size=1, max_size=4).map("".join)


def assert_inert(text: str, what: str) -> None:
    bad = sorted({c for c in text if c != "\n" and unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp")})
    assert not bad, f"{what} printed {bad!r}: {text[:300]!r}"


def hostile_root(root: Path, s: str) -> dict[str, str]:
    """A mailbox whose every producer-written field carries ``s``; the ids to look at."""
    with FileMailbox(root, "A", fsync="never") as mb:
        failed = Message("t.failed", s, sender=s, headers={"h": s})
        mb.put(failed)
        d = mb.claim()
        assert d is not None and d.message.id == failed.id
        d.nack(delay=3600, error=s)  # waits for its retry, with this error
        dead = Message("t.dead", s, sender=s)
        mb.put(dead)
        d = mb.claim()
        assert d is not None and d.message.id == dead.id
        d.dead(s)
        waiting = Message("t", {"x": s}, sender=s, reply_to="B", correlation_id=None, headers={s: s})
        mb.put(waiting)
        # A file another agent dropped under a name of its choosing.
        name = ("x" + s).replace("/", "_").replace("\x00", "_")[:200] + ".json"
        try:
            (mb.path / "new" / name).write_bytes(b"{not json")
        except (OSError, ValueError):
            pass
    return {"waiting": waiting.id, "failed": failed.id, "dead": dead.id}


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(s=HOSTILE)
def test_nothing_a_producer_writes_reaches_a_terminal_raw(
    tmp_path_factory: pytest.TempPathFactory, s: str
) -> None:
    root = tmp_path_factory.mktemp("inert") / "root"
    ids = hostile_root(root, s)
    env = clean_env()
    commands = [
        ["stats"],
        ["ls", "A"],
        ["ls", "A", "--state", "dead"],
        *[["show", i] for i in ids.values()],
        ["doctor"],
        ["recover"],
        ["recv", "A", "--peek", "--count", "5"],
    ]
    for command in commands:
        out = run_cli(["--root", str(root), "--fsync", "never", *command], env=env)
        assert_inert(out.stdout, f"{command} stdout")
        assert_inert(out.stderr, f"{command} stderr")


def test_every_logger_of_the_package_makes_its_records_inert() -> None:
    """A logger's filter applies to its own records only: every module takes its logger from
    `hybridcomms._log.get`, so the arguments of every record are made printable."""
    import re

    import hybridcomms

    package = Path(hybridcomms.__file__).parent
    direct = [
        f"{p.relative_to(package)}:{n}"
        for p in package.rglob("*.py")
        if "_shim" not in p.parts and p.name != "_log.py"
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if re.search(r"""logging\.getLogger\(["']hybridcomms[.\w]*["']\)(?!\.setLevel)""", line)
    ]
    assert direct == []


def test_a_log_record_quoting_a_producer_is_one_inert_line(caplog: pytest.LogCaptureFixture) -> None:
    from hybridcomms import _log

    log = _log.get("hybridcomms.test")
    with caplog.at_level("WARNING"):
        log.warning("%s: %s (%d)", "A", "".join(ATTACKS), 3)
        log.warning("pre-built: " + ATTACKS[0])
    for record in caplog.records:
        line = record.getMessage()
        assert "\n" not in line
        assert_inert(line, "log line")
    assert caplog.records[0].getMessage().endswith("(3)")


def test_work_prints_a_commands_hostile_stderr_inert(tmp_path: Path) -> None:
    import subprocess
    import sys

    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never", max_attempts=1) as mb:
        mb.put(Message("job", {}))
    script = "import sys; sys.stderr.write(" + repr("".join(ATTACKS)) + "); sys.exit(3)"
    got = subprocess.run(
        [
            *(sys.executable, "-m", "hybridcomms", "--root", str(root), "work", "A", "--max-messages", "1"),
            *("--max-attempts", "1", "--", sys.executable, "-c", script),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
    )
    assert got.returncode == 0, got.stderr
    assert "dead" in got.stdout
    assert_inert(got.stdout, "work stdout")
    assert_inert(got.stderr, "work stderr")


def test_a_forged_bus_event_with_a_hostile_topic_is_dropped(tmp_path: Path) -> None:
    """A datagram any co-tenant can send: a topic that is not printable never reaches `watch --bus`."""
    from hybridcomms.bus.fanout import wire as fanout

    data = fanout._dumps([1, "a\x1b[2Jb", {"x": "".join(ATTACKS)}, None, None, "id1", 1.0, False, "h:1"])
    assert fanout.decode_event(data) is None
    ok = fanout.decode_event(
        fanout._dumps([1, "a.b", {"x": "".join(ATTACKS)}, None, None, "i", 1.0, False, "h:1"])
    )
    assert ok is not None and ok.topic == "a.b"
