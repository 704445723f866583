"""A co-tenant against what the commands print (issue 21, §6, second round): invisible characters,
file names that are not UTF-8, repairs that did not happen, a mailbox broken for good, and events said
twice or under the wrong name.

The commands run in this process (`cli_runner.run_cli`, or `_streamed` for the ones that run until
told to stop); none of these tests is about exit codes, signals or terminals."""

from __future__ import annotations

import io
import logging
import os
import shutil
import subprocess
import sys
import threading
import time
import unicodedata
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
from cli_runner import clean_env, run_cli
from hypothesis import given
from hypothesis import strategies as st
from waiting import eventually

from hybridcomms import FileMailbox, Message, MessageError, cli
from hybridcomms._log import get as get_logger
from hybridcomms._text import DEFAULT_IGNORABLE, is_hidden, json_text, printable, shows_as_itself
from hybridcomms.message import valid_topic
from hybridcomms.watcher import MailboxWatcher

# -- 1. default-ignorable code points ---------------------------------------------------------------


def ignorable_code_points() -> Iterator[int]:
    for first, last in DEFAULT_IGNORABLE:
        yield from range(first, last + 1)


#: The examples the attack used, each of which `str.isprintable` lets through or used to pass a topic.
NAMED = [0x034F, 0xFE0F, 0xE0100, 0xE01EF, 0x115F, 0x1160, 0x3164, 0xFFA0, 0x180E, 0x200B, 0x200F]
NAMED += [0x2060, 0x206F, 0xFEFF, 0xE0001, 0xE0041, 0xE007F, 0x00AD, 0x17B4, 0x180B, 0x180F]


def test_the_table_holds_every_code_point_the_attack_named() -> None:
    table = set(ignorable_code_points())
    assert set(NAMED) <= table
    assert len(table) == 4174  # Unicode 14.0's count of Default_Ignorable_Code_Point


def test_the_table_is_the_property_derived_from_this_unicode_database() -> None:
    """Default_Ignorable_Code_Point = Other_Default_Ignorable_Code_Point + Cf + Variation_Selector
    - White_Space - U+FFF9..FFFB - U+13430..13440 - Prepended_Concatenation_Mark (UAX #44): every format
    character and variation selector the interpreter knows, less those, is in the table, and every
    entry of the table that is assigned is a format character, a variation selector or one of the
    Other_Default_Ignorable_Code_Points."""
    table = set(ignorable_code_points())
    excluded = {*range(0xFFF9, 0xFFFC), *range(0x13430, 0x13441)}
    prepended = {*range(0x0600, 0x0606), 0x06DD, 0x070F, 0x0890, 0x0891, 0x08E2, 0x110BD, 0x110CD}
    variation = {*range(0x180B, 0x180E), 0x180F, *range(0xFE00, 0xFE10), *range(0xE0100, 0xE01F0)}
    other = {0x034F, 0x115F, 0x1160, 0x17B4, 0x17B5, 0x3164, 0xFFA0}  # the assigned ones
    for code in range(sys.maxunicode + 1):
        category = unicodedata.category(chr(code))
        if category == "Cf" and code not in excluded | prepended:
            assert code in table, f"U+{code:04X}"
        if code in table and category != "Cn":
            assert category == "Cf" or code in variation | other, f"U+{code:04X} {category}"
    assert variation <= table


@pytest.mark.skipif(shutil.which("perl") is None, reason="no perl here")
def test_the_table_is_perls_default_ignorable_code_point() -> None:
    """Perl ships the Unicode database with its own reader: where it is Unicode 14.0, as the table is,
    the two agree exactly."""
    script = (
        "use Unicode::UCD qw(prop_invlist); print Unicode::UCD::UnicodeVersion(), qq(\\n);"
        "print join(qq( ), prop_invlist(q(Default_Ignorable_Code_Point))), qq(\\n);"
    )
    got = subprocess.run(["perl", "-e", script], capture_output=True, text=True, timeout=30)
    if got.returncode != 0:
        pytest.skip(f"perl has no Unicode::UCD: {got.stderr.strip()}")
    version, inversion = got.stdout.splitlines()
    if version != "14.0.0":
        pytest.skip(f"perl's Unicode is {version}")
    bounds = [int(n) for n in inversion.split()]
    ranges = [(bounds[i], bounds[i + 1] - 1) for i in range(0, len(bounds), 2)]
    assert sorted(set(ignorable_code_points())) == [c for a, b in ranges for c in range(a, b + 1)]


def test_every_default_ignorable_code_point_is_escaped_and_refused_in_a_topic() -> None:
    """All 4,174, one at a time, between visible letters."""
    for code in ignorable_code_points():
        ch = chr(code)
        text = f"a{ch}b"
        assert is_hidden(ch) and not shows_as_itself(text)
        assert printable(text) == f"a{ascii(ch)[1:-1]}b"
        assert not valid_topic(text), f"U+{code:04X}"
        assert ch not in json_text({text: text}) and orjson.loads(json_text({text: text})) == {text: text}


HIDDEN = st.sampled_from(DEFAULT_IGNORABLE).flatmap(lambda r: st.integers(r[0], r[1])).map(chr)


@given(head=st.text(max_size=20), hidden=HIDDEN, tail=st.text(max_size=20))
def test_text_with_a_default_ignorable_character_is_inert_everywhere(
    head: str, hidden: str, tail: str
) -> None:
    text = head + hidden + tail
    with pytest.raises(MessageError):
        Message(text)
    assert not valid_topic(text)
    shown = printable(text)
    assert not any(is_hidden(c) or not c.isprintable() for c in shown)
    doc = json_text({"t": text, text: [text]})
    assert not any(is_hidden(c) for c in doc) and orjson.loads(doc) == {"t": text, text: [text]}


def test_a_log_line_quoting_a_default_ignorable_character_escapes_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    log = get_logger("hybridcomms.test.cotenant")
    with caplog.at_level("WARNING"):
        log.warning("%s: %s", "A", "all\u3164mailboxes\u034fhealthy\ufe0f")
        log.warning("built: " + "x\u2060y")
    assert [r.getMessage() for r in caplog.records] == [
        "A: all\\u3164mailboxes\\u034fhealthy\\ufe0f",
        "built: x\\u2060y",
    ]


def test_ls_escapes_a_file_name_with_invisible_characters(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never") as mb:
        (mb.path / "new" / "look\u3164alike\ufe0f.json").write_bytes(b"{}")
    out = run_cli(["--root", str(root), "ls", "A"], env=clean_env())
    assert "look\\u3164alike\\ufe0f.json" in out.stdout
    assert not any(is_hidden(c) for c in out.stdout + out.stderr)


# -- commands that run until stopped, in this process ------------------------------------------------


class Stream(io.StringIO):
    """A std stream that keeps what is written and lets a test wait on it. Once ``closed_when`` holds
    for what was written, the write that made it hold raises BrokenPipeError: the reader is gone, and
    `tail` and `watch` stop as they do under ``| head`` (no signal needed)."""

    def __init__(self, closed_when: Callable[[str], bool] | None = None) -> None:
        super().__init__()
        self.changed = threading.Condition()
        self.closed_when = closed_when

    def write(self, s: str) -> int:
        with self.changed:
            n = super().write(s)
            self.changed.notify_all()
            gone = self.closed_when is not None and self.closed_when(self.getvalue())
        if gone:
            raise BrokenPipeError(32, "the reader is gone")
        return n

    def wait_for(self, holds: Callable[[str], bool], timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: holds(self.getvalue()), timeout)


def _streamed(args: list[str], stdout: Stream, stderr: Stream) -> int:
    saved = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = stdout, stderr
    try:
        return cli.main(args)
    finally:
        sys.stdout, sys.stderr = saved


@pytest.fixture
def quiet_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No HYBRIDCOMMS_* setting and no policy file: the built-in defaults."""
    for key in [k for k in os.environ if k.startswith("HYBRIDCOMMS_")]:
        monkeypatch.delenv(key)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)


def json_lines(text: str) -> list[dict[str, object]]:
    return [orjson.loads(line) for line in text.splitlines() if line.startswith("{")]


# -- 2. names that are not UTF-8 in --json ------------------------------------------------------------

BAD = b"0-\xff\xfe.json"  # sorts before every hybridcomms name ("0C.", "1H.", "2M.", "3L.")


def mailbox_with_an_undecodable_name(root: Path) -> str:
    """A mailbox where a co-tenant dropped a file whose name is not UTF-8, and a message after it (in
    the listing's order); the message's id."""
    with FileMailbox(root, "A", fsync="never") as mb:
        later = mb.put(Message("t.after", {}))
        with open(os.fsencode(mb.path / "new") + b"/" + BAD, "wb") as f:
            f.write(b"{not json")
    return later


@pytest.mark.timeout(60)
def test_tail_json_prints_an_event_for_a_file_whose_name_is_not_utf8(
    tmp_path: Path, quiet_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    later = mailbox_with_an_undecodable_name(root)
    out = Stream(closed_when=lambda text: later in text)  # the event after it: the listing is done
    err = Stream()
    with caplog.at_level(logging.WARNING):
        code = _streamed(["--root", str(root), "tail", "--json", "--waiting"], out, err)
    assert code == 0, err.getvalue()
    events = json_lines(out.getvalue())
    assert [(e["kind"], e["id"]) for e in events] == [("waiting", None), ("waiting", later)]
    bad = events[0]
    assert bad["name"] == "0-\\xff\\xfe.json"  # the shown() form: JSON strings cannot carry the bytes
    assert str(bad["path"]).endswith("/A/new/0-\\xff\\xfe.json")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


@pytest.mark.timeout(60)
def test_watch_json_prints_it_and_still_runs_exec_with_the_exact_name(
    tmp_path: Path, quiet_env: None, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    later = mailbox_with_an_undecodable_name(root)
    marker = tmp_path / "ran"
    command = f'printf "%s\\n" "$HYBRIDCOMMS_NAME" >> {marker}'
    stop = threading.Event()  # the test has seen what it waits for (or gave up)
    out = Stream(closed_when=lambda text: stop.is_set() and "t.stop" in text)
    err = Stream()

    def then_stop() -> None:
        def both_ran() -> bool:
            return marker.exists() and len(marker.read_bytes().splitlines()) >= 2

        try:
            eventually(both_ran, "both commands to run", 20)  # polling the commands' output
        finally:
            stop.set()
            with FileMailbox(root, "A", fsync="never") as mb:  # a third event: its line closes the output
                mb.put(Message("t.stop", {}))

    started = threading.Thread(target=lambda: err.wait_for(lambda t: "watching" in t, 30) and then_stop())
    started.start()
    args = ["--root", str(root), "watch", "--json", "--recover-every", "0", "--rescan-every", "60"]
    with caplog.at_level(logging.WARNING):
        code = _streamed([*args, "--exec", command, "--grace", "2"], out, err)
    started.join(30)
    assert code == 0, err.getvalue()
    names = [e["name"] for e in json_lines(out.getvalue())]
    assert names[0] == "0-\\xff\\xfe.json" and later in names[1], names
    ran = marker.read_bytes().splitlines()  # the exact bytes of the name, in the command's environment
    assert BAD in ran and names[1].encode() in ran
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], caplog.text


# -- 3. doctor --fix says what it did not fix ---------------------------------------------------------


def test_doctor_fix_reports_a_legacy_link_it_refused_as_a_problem_in_one_line(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (tmp_path / "secret.json").write_text('{"type": "X"}')
    with FileMailbox(root, "A", fsync="never") as mb:
        (mb.path / "inbox").mkdir()
        os.symlink(tmp_path / "secret.json", mb.path / "inbox" / "evil.json")
    got = run_cli(["--root", str(root), "doctor", "--fix"], env=clean_env())
    assert got.returncode == 1, got.stdout
    lines = got.stdout.splitlines()
    assert not [line for line in lines if line.startswith("fixed")], got.stdout
    assert [line for line in lines if "legacy-refused" in line] == [
        "PROBLEM  A: legacy-refused: inbox/evil.json: a symlink (never followed); refused by --fix and left "
        "in place (move it away by hand)"
    ]
    assert "legacy-drops" in got.stdout and "1 refused and left in place" in got.stdout
    assert "healthy" not in lines
    assert got.stderr == ""  # said once, by doctor: not logged by the library too
    assert os.path.islink(mb.path / "inbox" / "evil.json")
    report = orjson.loads(run_cli(["--root", str(root), "doctor", "--fix", "--json"], env=clean_env()).stdout)
    assert report["healthy"] is False
    assert [(f["kind"], f["fixed"]) for f in report["findings"]] == [
        ("legacy-drops", False),
        ("legacy-refused", False),
    ]


def test_doctor_fix_says_fixed_only_for_what_recovery_took_away(tmp_path: Path) -> None:
    """A folder in tmp/ that is past tmp_max_age is a stale tmp/ entry, but recovery never removes a
    folder: --fix says so instead of "fixed"."""
    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never") as mb:
        stale = mb.path / "tmp" / "left-by-someone"
        stale.mkdir()
        (mb.path / "tmp" / "half-written").write_bytes(b"{")
        for p in (stale, mb.path / "tmp" / "half-written"):
            os.utime(p, (time.time() - 7 * 86400,) * 2)
    got = run_cli(["--root", str(root), "doctor", "--fix"], env=clean_env())
    assert got.returncode == 1
    assert "fixed    A: stale-tmp: tmp/half-written: " in got.stdout
    [folder] = [line for line in got.stdout.splitlines() if "tmp/left-by-someone" in line]
    assert folder.startswith("PROBLEM  A: stale-tmp: tmp/left-by-someone: ")
    assert "--fix: left in place: IsADirectoryError" in folder
    assert got.stderr == ""  # not logged by recovery too
    assert stale.is_dir() and not (mb.path / "tmp" / "half-written").exists()


# -- 4. a mailbox broken for good is said once, and once when it heals --------------------------------


def test_recovery_of_a_broken_mailbox_is_logged_once_when_it_breaks_and_once_when_it_heals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / "root"
    FileMailbox(root, "A", fsync="never").close()
    FileMailbox(root, "B", fsync="never").close()
    processing = root / "A" / "processing"
    processing.rmdir()
    processing.write_text("a co-tenant's file where the folder was")
    watcher = MailboxWatcher(root, recover_every=0)
    with caplog.at_level(logging.INFO):
        for _ in range(5):
            watcher.recover_all()
        broken = [r for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(broken) == 1, caplog.text
        assert broken[0].exc_info is None and broken[0].exc_text is None  # no traceback
        line = broken[0].getMessage()
        assert "\n" not in line and line.startswith("recovery fails for A: ")
        assert "processing is not a folder" in line
        caplog.clear()
        processing.unlink()
        processing.mkdir(0o700)
        for _ in range(3):
            watcher.recover_all()
        healed = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(healed) == 1 and healed[0].startswith("recovery works again for A after "), healed
        caplog.clear()
        processing.rmdir()
        processing.write_text("again")
        watcher.recover_all()
        watcher.recover_all()
        again = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(again) == 1 and again[0].startswith("recovery fails for A: ")


# -- 5. one line per event, under its true name -------------------------------------------------------


def test_work_says_a_dead_letter_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never") as mb:
        sent = mb.put(Message("job", {}))
    got = run_cli(
        [
            *("--root", str(root), "work", "A", "--max-messages", "1", "--max-attempts", "1", "--"),
            *(sys.executable, "-c", "import sys; sys.stderr.write('broke'); sys.exit(3)"),
        ],
        env=clean_env(),
    )
    assert got.returncode == 0, got.stderr
    assert got.stdout.splitlines() == [f"dead   {sent} job attempt 1: exit status 3: broke"]
    assert "dead-lettered:" not in got.stderr and sent not in got.stderr, got.stderr
    assert "1 dead-lettered" in got.stderr  # the closing count


def test_doctor_fix_says_an_undecodable_file_it_moved_once(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never") as mb:
        (mb.path / "new" / "junk.json").write_bytes(b"{not json")
    got = run_cli(["--root", str(root), "doctor", "--fix"], env=clean_env())
    assert got.returncode == 0, got.stdout + got.stderr
    assert "fixed    A: undecodable: new/junk.json: " in got.stdout
    assert got.stderr == ""  # not also "new/junk.json goes to dead/" from the library
    assert os.listdir(mb.path / "new") == []


@pytest.mark.timeout(60)
def test_watch_says_the_backlog_at_the_start_is_waiting_not_delivered(
    tmp_path: Path, quiet_env: None
) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never") as mb:
        old = mb.put(Message("t.old", {}))
    out = Stream(closed_when=lambda text: old in text)
    err = Stream()
    args = ["--root", str(root), "watch", "--recover-every", "0", "--rescan-every", "60"]
    assert _streamed(args, out, err) == 0, err.getvalue()
    [line] = out.getvalue().splitlines()
    assert line.split()[0] == "waiting" and old in line and "(rescan)" not in line


def test_what_the_first_look_takes_in_from_legacy_drops_is_delivered_and_the_rest_waits(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never") as mb:
        old = mb.put(Message("t.old", {}))
    (root / "A" / "inbox.json").write_bytes(orjson.dumps([{"message_id": "m-1", "type": "TASK", "body": 1}]))
    seen: list[tuple[str, str | None, str | None]] = []
    watcher = MailboxWatcher(
        root,
        on_event=lambda e: seen.append((e.kind, e.id, e.topic)),
        recover_every=0,
        rescan_every=60,
        waiting="waiting",
        ingest_legacy=True,
    )
    with watcher:
        pass  # the first look runs in start()
    assert ("waiting", old, "t.old") in seen
    assert [kind for kind, _, topic in seen if topic == "TASK"] == ["delivered"]
