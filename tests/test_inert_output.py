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
from hybridcomms.message import valid_topic

ACTIVE = st.characters(codec=None, categories=("Cc", "Cf", "Cs", "Co", "Zl", "Zp"))


@given(head=st.text(max_size=20), bad=ACTIVE, tail=st.text(max_size=20))
def test_a_topic_with_a_control_or_formatting_character_is_refused(head: str, bad: str, tail: str) -> None:
    topic = head[:100] + bad + tail[:100]
    with pytest.raises(MessageError):
        Message(topic)
    assert not valid_topic(topic)


@given(st.text(st.characters(categories=("L", "M", "N", "P", "S")), min_size=1, max_size=200))
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
