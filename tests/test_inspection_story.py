"""Inspection tells the whole story (issue #20, section 4).

- a mailbox adopted by hand (only ``new/``) is a mailbox for every command; what only looks never writes;
- one broken agent never hides the others (stats, doctor, the metrics), generated over many kinds;
- ``tail`` starts from now (``--waiting`` lists what waits, labelled so, at the time it arrived);
- a bus event in JSON has a message's field names, ``payload`` being the payload;
- the mailbox gauges have one exporter, and the shipped dashboard and alerts never count a depth twice.
"""

from __future__ import annotations

import contextlib
import errno
import io
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from waiting import eventually

from hybridcomms import FileMailbox, Message, State
from hybridcomms._fs import printable
from hybridcomms.cli import main
from hybridcomms.errors import MailboxIOError
from hybridcomms.message import FIELDS
from hybridcomms.metrics import registry_for
from hybridcomms.watcher import MailboxWatcher

HC = [sys.executable, "-m", "hybridcomms"]
DOCS = Path(__file__).resolve().parent.parent / "docs" / "monitoring"
LEGACY_DROP = {
    "message_id": "legacy-1",
    "type": "dreamos.task.command",
    "sender_agent_id": "Captain",
    "body": {"do": "build"},
    "timestamp_utc": "2025-01-01T00:00:00Z",
}


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("HYBRIDCOMMS_")}


def cli(*args: str) -> tuple[int, str, str]:
    """``hybridcomms ARGS`` in this process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
            if not isinstance(exc.code, int):
                print(exc.code, file=sys.stderr)
    return code, out.getvalue(), err.getvalue()


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    """Every entry under ``root`` (links not followed): mode, size, mtime."""
    out: dict[str, tuple[int, int, int]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st_ = os.lstat(path)
            out[os.path.relpath(path, root)] = (st_.st_mode, st_.st_size, st_.st_mtime_ns)
    return out


def hand_adopt(root: Path, agent: str = "Agent-7", drop: bool = True) -> Path:
    """``mkdir -p <root>/<agent>/new`` (docs/compatibility.md), with a file a legacy-era tool dropped."""
    new = root / agent / "new"
    new.mkdir(parents=True)
    if drop:
        (new / "msg_20250101_000000_legacy.json").write_bytes(orjson.dumps(LEGACY_DROP))
    return new


# -- a mailbox adopted by hand -------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["stats", "--json"],
        ["stats"],
        ["stats", "Agent-7", "--json"],
        ["ls", "Agent-7", "--json"],
        ["ls", "Agent-7", "--state", "dead"],
        ["show", "msg_20250101_000000_legacy.json", "--json"],
        ["show", "msg_20250101_000000_legacy.json", "--agent", "Agent-7"],
        ["doctor", "--json"],
        ["doctor", "Agent-7", "--deep"],
        ["purge", "Agent-7", "--state", "done", "--older-than", "0", "--dry-run"],
    ],
)
def test_a_mailbox_adopted_by_hand_is_read_as_it_is_and_nothing_is_written(
    tmp_path: Path, command: list[str]
) -> None:
    root = tmp_path / "root"
    hand_adopt(root)
    before = tree(root)
    code, out, err = cli("--root", str(root), *command)
    assert tree(root) == before, "a command that only looks wrote something"
    assert "no mailbox folder" not in out + err
    if command[0] == "doctor":  # the missing folders are findings; --fix makes them
        assert code == 1, err
        if "--json" in command:
            missing = [f["where"] for f in json.loads(out)["findings"] if f["kind"] == "missing-folder"]
            assert sorted(missing) == ["dead/", "done/", "processing/", "tmp/"]
        else:
            assert out.count("missing-folder") == 4
        return
    assert code == 0, err
    if command == ["stats", "--json"] or command[:2] == ["stats", "Agent-7"]:
        (row,) = json.loads(out)["agents"]
        assert row["agent"] == "Agent-7" and row["new"]["count"] == 1
        assert all(row[s]["count"] == 0 for s in ("processing", "done", "dead", "tmp"))
    elif command == ["stats"]:
        assert out.splitlines()[1].split()[:6] == ["Agent-7", "1", "0", "0", "0", "0"]
    elif command[0] == "ls" and "--json" in command:
        (row,) = json.loads(out)
        assert (row["state"], row["file"], row["topic"]) == (
            "new",
            "msg_20250101_000000_legacy.json",
            "dreamos.task.command",
        )
    elif command[0] == "ls":
        assert out.strip() == "no messages for Agent-7 in dead/"
    elif command[0] == "show" and "--json" in command:
        assert json.loads(out)["message"]["payload"] == {"do": "build"}
    elif command[0] == "show":
        assert out.startswith("Agent-7: new/")
    else:
        assert "would delete 0" in out


def test_read_only_opening_refuses_every_write_and_creates_nothing(tmp_path: Path) -> None:
    root = tmp_path / "root"
    hand_adopt(root)
    with FileMailbox(root, "Agent-5", fsync="never") as full:  # a complete mailbox: folders exist
        full.put(Message("t", 1))
    before = tree(root)
    for agent in ("Agent-7", "Agent-5"):
        with FileMailbox(root, agent, read_only=True, fsync="never") as mb:
            assert mb.stats().states[State.NEW].count == 1
            assert [i.state for i in mb.list(State.NEW)] == [State.NEW]
            assert mb.list(State.DEAD) == [] and mb.list(State.PROCESSING) == []
            info = mb.list(State.NEW)[0]
            assert mb.get(info.name) == info and mb.read(info).topic in ("t", "dreamos.task.command")
            writes: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
                ("put", (Message("t"),), {}),
                ("put_many", ([Message("t")],), {}),
                ("claim", (), {}),
                ("claim", (), {"timeout": 0.05}),
                ("claim_file", (info.name,), {}),
                ("recover", (), {}),
                ("requeue", ("x",), {}),
                ("purge", ("done",), {}),
                ("import_done", ([Message("t")],), {}),
                ("bury", (b"x", "x.json", {"reason": "r"}), {}),
            ]
            for method, args, kwargs in writes:
                with pytest.raises(MailboxIOError) as caught:
                    getattr(mb, method)(*args, **kwargs)
                assert caught.value.errno == errno.EROFS, (method, caught.value)
    assert tree(root) == before
    with pytest.raises(MailboxIOError, match="no mailbox folder"):  # new/ is what makes a mailbox
        FileMailbox(root, "Nobody", read_only=True)
    assert not (root / "Nobody").exists()


@pytest.mark.parametrize(("root_mode", "expected"), [(0o755, 0o700), (0o2770, 0o770)])
@pytest.mark.parametrize("writer", ["recv", "work", "watch", "doctor --fix"])
def test_the_first_writer_makes_the_missing_folders_with_the_roots_modes(
    tmp_path: Path, writer: str, root_mode: int, expected: int
) -> None:
    root = tmp_path / "root"
    hand_adopt(root)
    os.chmod(root, root_mode)
    if writer == "recv":
        code, out, err = cli("--root", str(root), "--fsync", "never", "recv", "Agent-7")
        assert code == 0, err
        assert json.loads(out)["payload"] == {"do": "build"}
    elif writer == "work":
        done = subprocess.run(
            [
                *HC,
                "--root",
                str(root),
                "--fsync",
                "never",
                "work",
                "Agent-7",
                "--max-messages",
                "1",
                "--",
                "true",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )
        assert done.returncode == 0, done.stderr
        assert len(os.listdir(root / "Agent-7" / "done")) == 1
    elif writer == "watch":
        MailboxWatcher(root, recover_every=0).recover_all()  # what the service's recovery pass does
    else:
        code, out, err = cli("--root", str(root), "doctor", "--fix")
        assert code == 0, out + err
        assert cli("--root", str(root), "doctor")[0] == 0  # healthy now
    for state in State:
        folder = root / "Agent-7" / state.folder
        assert folder.is_dir() and not folder.is_symlink()
        if state is not State.NEW:  # new/ was made by hand (doctor --fix sets its mode too)
            assert stat.S_IMODE(folder.stat().st_mode) == expected, (state, oct(folder.stat().st_mode))


# -- broken agents never hide the others (generated) -----------------------------------------------

BROKEN_KINDS = [
    "new-is-file",
    "state-is-file",
    "new-is-fifo",
    "state-is-fifo",
    "agent-mode-000",
    "state-mode-000",
    "agent-link-out",
    "state-link-out",
    "new-link-out",
    "no-new",
    "undecodable-name",
    "control-name",
]
#: Kinds that only the permission checks make unreadable (root reads them anyway).
PERMISSION_KINDS = {"agent-mode-000", "state-mode-000"}


@dataclass
class Good:
    name: str
    new: int
    done: int
    dead: int
    by_hand: bool = False


@dataclass
class Broken:
    name: str  # as printed: printable(real name)
    kind: str
    real: bytes = b""
    restore: list[Path] = field(default_factory=list)  # folders to give back their mode at the end

    @property
    def unreadable(self) -> bool:
        return self.kind not in PERMISSION_KINDS or os.geteuid() != 0 or _no_dac_override()


def _no_dac_override() -> bool:
    """True when this process lacks CAP_DAC_OVERRIDE (permission bits apply even to root)."""
    try:
        caps = Path("/proc/self/status").read_text()
    except OSError:
        return os.geteuid() != 0
    eff = next((line.split()[1] for line in caps.splitlines() if line.startswith("CapEff:")), "0")
    return not int(eff, 16) & (1 << 1)


def make_good(root: Path, good: Good) -> None:
    if good.by_hand:
        new = hand_adopt(root, good.name, drop=False)
        for i in range(good.new):
            (new / f"dropped-{i}.json").write_bytes(orjson.dumps({**LEGACY_DROP, "message_id": f"l{i}"}))
        return
    with FileMailbox(root, good.name, fsync="never", max_attempts=1) as mb:
        for i in range(good.done + good.dead):
            mb.put(Message("t", i))
            d = mb.claim()
            assert d is not None
            if i < good.done:
                d.ack()
            else:
                d.nack(error="failed")  # max_attempts=1: dead
        for i in range(good.new):
            mb.put(Message("t", i))


def make_broken(root: Path, outside: Path, index: int, kind: str) -> Broken:
    name: str | bytes = f"Broken-{index}"
    if kind == "undecodable-name":
        name = f"Agent-{index}-".encode() + b"\xff\xfe"
    elif kind == "control-name":
        name = f"Agent-{index}\x1b[31m\nsecond line"
    raw = os.fsencode(name)
    agent = os.path.join(os.fsencode(root), raw)
    b = Broken(printable(os.fsdecode(raw)), kind, raw)

    def sub(folder: str) -> bytes:
        return os.path.join(agent, folder.encode())

    if kind == "agent-link-out":
        target = outside / f"real-{index}"
        with FileMailbox(outside, f"real-{index}", fsync="never") as mb:
            mb.put(Message("t"))
        os.symlink(os.fsencode(target), agent)
        return b
    os.mkdir(agent)
    if kind in ("new-is-file", "new-is-fifo", "new-link-out"):
        if kind == "new-is-file":
            Path(os.fsdecode(sub("new"))).write_bytes(b"not a folder")
        elif kind == "new-is-fifo":
            os.mkfifo(sub("new"))
        else:
            (outside / f"new-{index}").mkdir()
            os.symlink(os.fsencode(outside / f"new-{index}"), sub("new"))
        return b
    if kind == "no-new":
        for folder in ("tmp", "done", "dead"):
            os.mkdir(sub(folder))
        Path(os.fsdecode(sub("dead")), "left.json").write_bytes(b"{}")
        return b
    with FileMailbox(root, f"Tmp-{index}", fsync="never") as mb:  # a sound mailbox to break
        mb.put(Message("t"))
    os.rmdir(agent)
    os.rename(os.path.join(os.fsencode(root), f"Tmp-{index}".encode()), agent)
    if kind == "state-is-file":
        os.rmdir(sub("processing"))
        Path(os.fsdecode(sub("processing"))).write_bytes(b"")
    elif kind == "state-is-fifo":
        os.rmdir(sub("dead"))
        os.mkfifo(sub("dead"))
    elif kind == "state-link-out":
        os.rmdir(sub("processing"))
        (outside / f"proc-{index}").mkdir()
        os.symlink(os.fsencode(outside / f"proc-{index}"), sub("processing"))
    elif kind == "agent-mode-000":
        os.chmod(agent, 0)
        b.restore.append(Path(os.fsdecode(agent)))
    elif kind == "state-mode-000":
        os.chmod(sub("done"), 0)
        b.restore.append(Path(os.fsdecode(sub("done"))))
    # (undecodable-name, control-name: a sound mailbox under a name that is no agent id)
    return b


@contextlib.contextmanager
def generated_root(goods: list[Good], kinds: list[str]) -> Iterator[tuple[Path, list[Broken]]]:
    base = Path(tempfile.mkdtemp(prefix="hc-story-"))
    root, outside = base / "root", base / "outside"
    root.mkdir()
    outside.mkdir()
    broken: list[Broken] = []
    try:
        for good in goods:
            make_good(root, good)
        for i, kind in enumerate(kinds):
            broken.append(make_broken(root, outside, i, kind))
        (root / ".bus").mkdir()  # not an agent
        (root / "README.md").write_text("a file at the root is not an agent")
        (root / "broadcast").mkdir()  # a folder of something else
        yield root, broken
    finally:
        for b in broken:
            for path in b.restore:
                os.chmod(path, 0o700)
        shutil.rmtree(base)


goods_strategy = st.lists(
    st.builds(
        Good,
        name=st.just(""),
        new=st.integers(0, 3),
        done=st.integers(0, 2),
        dead=st.integers(0, 2),
        by_hand=st.booleans(),
    ),
    min_size=1,
    max_size=4,
)


def named(goods: list[Good]) -> list[Good]:
    for i, g in enumerate(goods):
        g.name = f"Good-{i}"
        if g.by_hand:
            g.done = g.dead = 0
    return goods


def check_stats(root: Path, goods: list[Good], broken: list[Broken]) -> None:
    errors = [b for b in broken if b.unreadable]
    code, out, err = cli("--root", str(root), "stats", "--json")
    rows = {r["agent"]: r for r in json.loads(out)["agents"]}
    assert code == (1 if errors else 0), err
    for g in goods:
        r = rows[g.name]
        assert "error" not in r, r
        assert (r["new"]["count"], r["done"]["count"], r["dead"]["count"]) == (g.new, g.done, g.dead)
        assert r["processing"]["count"] == 0
    for b in broken:
        assert b.name in rows, (b.kind, sorted(rows))
        assert ("error" in rows[b.name]) == b.unreadable, (b.kind, rows[b.name])
    assert set(rows) == {g.name for g in goods} | {b.name for b in broken}
    if errors:
        (line,) = err.strip().splitlines()
        assert (
            line.startswith("hybridcomms stats: ") and f"{len(errors)} mailbox(es) could not be read" in line
        )
    # the table: one line per agent, however hostile its name
    code, out, err = cli("--root", str(root), "stats")
    assert code == (1 if errors else 0)
    lines = out.splitlines()
    assert len(lines) == 1 + len(goods) + len(broken), out
    by_name = {line.split("  ")[0].rstrip(): line for line in lines[1:]}
    for g in goods:
        assert by_name[g.name].split()[1:5] == [str(g.new), "0", str(g.done), str(g.dead)]
    for b in errors:
        assert "error: " in by_name[b.name]


def check_doctor(root: Path, goods: list[Good], broken: list[Broken]) -> None:
    before = tree(root)
    code, out, _ = cli("--root", str(root), "doctor", "--json")
    report = json.loads(out)
    unopenable = {f["agent"] for f in report["findings"] if f["kind"] == "unopenable"}
    assert unopenable == {b.name for b in broken if b.unreadable}
    missing = {f["agent"] for f in report["findings"] if f["kind"] == "missing-folder"}
    assert missing == {g.name for g in goods if g.by_hand}
    assert code == (0 if report["healthy"] else 1) and report["healthy"] == (not unopenable and not missing)
    assert tree(root) == before  # doctor without --fix only looks


def check_metrics(root: Path, goods: list[Good], broken: list[Broken]) -> None:
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(generate_latest(registry_for(root)).decode())
        for s in fam.samples
    }
    assert samples[("hybridcomms_unreadable_mailboxes", ())] == sum(b.unreadable for b in broken)
    for g in goods:
        for state, n in (("new", g.new), ("done", g.done), ("dead", g.dead)):
            assert samples[("hybridcomms_messages", (("agent", g.name), ("state", state)))] == n


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(goods=goods_strategy, kinds=st.lists(st.sampled_from(BROKEN_KINDS), max_size=5))
def test_one_broken_agent_never_hides_the_others(goods: list[Good], kinds: list[str]) -> None:
    goods = named(goods)
    with generated_root(goods, kinds) as (root, broken):
        check_stats(root, goods, broken)
        check_doctor(root, goods, broken)
        check_metrics(root, goods, broken)


@pytest.mark.parametrize("kind", BROKEN_KINDS)
def test_every_kind_of_broken_agent_beside_a_good_one(kind: str) -> None:
    """Each kind on its own, so a failure names it (the generated test combines them)."""
    goods = named([Good("", 2, 1, 1), Good("", 1, 0, 0, by_hand=True)])
    with generated_root(goods, [kind]) as (root, broken):
        check_stats(root, goods, broken)
        check_doctor(root, goods, broken)
        check_metrics(root, goods, broken)


def test_permission_denied_is_one_row_under_real_permission_checks() -> None:
    """Mode 000 folders, with the permission bits enforced: as another user, or as root without
    CAP_DAC_OVERRIDE (setpriv), so that the test means the same under any account."""
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: mode 000 cannot be enforced")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]
    goods = named([Good("", 2, 1, 0)])
    with generated_root(goods, ["agent-mode-000", "state-mode-000"]) as (root, broken):
        for command in (["stats", "--json"], ["doctor", "--json"]):
            got = subprocess.run(
                [*prefix, *HC, "--root", str(root), *command],
                capture_output=True,
                text=True,
                timeout=60,
                env=clean_env(),
            )
            assert got.returncode == 1, got.stderr
            report = json.loads(got.stdout)
            if command[0] == "stats":
                rows = {r["agent"]: r for r in report["agents"]}
                assert rows["Good-0"]["new"]["count"] == 2 and rows["Good-0"]["done"]["count"] == 1
                for b in broken:
                    assert "Permission denied" in rows[b.name]["error"], rows[b.name]
            else:
                bad = {f["agent"]: f["detail"] for f in report["findings"] if f["kind"] == "unopenable"}
                assert set(bad) == {b.name for b in broken}
                assert all("Permission denied" in d for d in bad.values()), bad


def test_show_and_top_pass_over_a_broken_agent(tmp_path: Path) -> None:
    from hybridcomms.cli.top import _snapshot

    root = tmp_path / "root"
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        mid = mb.put(Message("t", {"n": 1}))
    (root / "Agent-0" / "new").mkdir(parents=True)
    (root / "Agent-0" / "processing").write_bytes(b"")  # sorts first: opening it fails
    code, out, err = cli("--root", str(root), "show", mid, "--json")
    assert code == 0, err
    assert json.loads(out)["message"]["payload"] == {"n": 1}
    assert set(_snapshot(root)) == {"Agent-1"}


# -- tail starts from now ------------------------------------------------------------------------


@contextlib.contextmanager
def tail(root: Path, *extra: str) -> Iterator[subprocess.Popen[str]]:
    p = subprocess.Popen(
        [*HC, "--root", str(root), "tail", *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        yield p
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            assert p.wait(30) == 0
        finally:
            p.kill()
            p.wait()


def test_tail_starts_from_now(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        waiting = mb.put(Message("old"))
        with tail(root, "--json") as p:
            assert p.stderr is not None and "following" in p.stderr.readline()  # it is watching now
            fresh = mb.put(Message("new"))
            assert p.stdout is not None
            first = json.loads(p.stdout.readline())  # what waited before would have come first
            assert (first["kind"], first["id"]) == ("delivered", fresh)
            d = mb.claim()  # what happens to the old message from now on is shown
            assert d is not None and d.message.id in (waiting, fresh)
            second = json.loads(p.stdout.readline())
            assert (second["kind"], second["id"]) == ("claimed", d.message.id)
            d.ack()


@pytest.mark.parametrize("as_json", [True, False])
def test_tail_waiting_labels_what_waits_with_its_own_time(tmp_path: Path, as_json: bool) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "Agent-1", fsync="never") as mb:
        waiting = mb.put(Message("old"))
        (info,) = mb.list(State.NEW)
        arrived = os.stat(root / "Agent-1" / "new" / info.name).st_ctime
        with tail(root, "--waiting", *(["--json"] if as_json else [])) as p:
            assert p.stderr is not None and "following" in p.stderr.readline()
            fresh = mb.put(Message("new"))
            assert p.stdout is not None
            first, second = p.stdout.readline(), p.stdout.readline()
    if as_json:
        one, two = json.loads(first), json.loads(second)
        assert (one["kind"], one["id"], one["state"]) == ("waiting", waiting, "new")
        assert one["time"] == pytest.approx(arrived, abs=1e-6)
        assert (two["kind"], two["id"]) == ("delivered", fresh)
    else:  # HH:MM:SS of its arrival (a date before it if that was another day)
        assert first.split()[-3:] == ["waiting", "Agent-1", waiting]
        assert time.strftime("%H:%M:%S", time.localtime(arrived)) in first
        assert second.split()[-3:] == ["delivered", "Agent-1", fresh]


# -- bus events in JSON: a message's field names -------------------------------------------------

PUBLISHER = """
import json, sys
from hybridcomms import Comms
from hybridcomms.bus import AgentBus
from hybridcomms.bus.fanout import share_bus
root = sys.argv[1]
with Comms("Publisher", root=root, fsync="never") as comms:
    sent = comms.publish("fleet.status", {"state": "busy"}, route="ephemeral", priority="HIGH",
                         correlation_id="c-1", headers={"h": "v"})
    print(json.dumps(sent.message.to_dict()), flush=True)
bus = AgentBus()
release = share_bus(bus, root=root)
bus.publish("fleet.heartbeat", [1, 2, 3], source="Beater", correlation_id="c-2")
release()
"""


@pytest.mark.parametrize("command", ["tail", "watch"])
def test_a_bus_event_in_json_has_a_messages_field_names(tmp_path: Path, command: str) -> None:
    root = tmp_path / "root"
    root.mkdir()
    ready = "following" if command == "tail" else "watching"
    p = subprocess.Popen(
        [*HC, "--root", str(root), command, "--json", "--bus", "fleet.*"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert p.stderr is not None and ready in p.stderr.readline()  # its bus is registered by now
        pub = subprocess.run(
            [sys.executable, "-c", PUBLISHER, str(root)],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )
        assert pub.returncode == 0, pub.stderr
        sent = json.loads(pub.stdout)
        assert p.stdout is not None
        records = []
        while len(records) < 2:
            record = json.loads(p.stdout.readline())
            if record["kind"] == "bus":  # (watch also reports the publisher's mailbox, if any)
                records.append(record)
    finally:
        p.send_signal(signal.SIGTERM)
        assert p.wait(30) == 0
    message, plain = records
    expected_keys = {"kind", *FIELDS, "durable", "origin"}
    assert set(message) == expected_keys and set(plain) == expected_keys
    assert message["payload"] == {"state": "busy"}  # the payload, never the envelope
    assert {k: message[k] for k in FIELDS} == {k: sent[k] for k in FIELDS}
    assert (message["priority"], message["sender"], message["headers"]) == ("HIGH", "Publisher", {"h": "v"})
    assert plain["payload"] == [1, 2, 3] and plain["topic"] == "fleet.heartbeat"
    assert (plain["sender"], plain["correlation_id"], plain["priority"]) == ("Beater", "c-2", None)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", plain["created_at"])
    assert plain["origin"] and plain["origin"] == message["origin"]


# -- metrics: one exporter of the depths; the dashboard and alerts never double them -------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as resp:
        text = resp.read().decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


#: The mailbox gauges: state of the root, one exporter.
ROOT_GAUGES = (
    "hybridcomms_messages",
    "hybridcomms_oldest_age_seconds",
    "hybridcomms_delayed_messages",
    "hybridcomms_mailboxes",
    "hybridcomms_unreadable_mailboxes",
    "hybridcomms_bus_processes",
    "hybridcomms_bus_dropped_events",
)
_AGG = re.compile(
    r"\b(max|sum|min|avg|count)\s*(?:by\s*\(([^)]*)\)\s*)?\(\s*(hybridcomms_[a-z_]+)(\{[^}]*\})?\s*\)"
)


def queries() -> list[str]:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    alerts = (DOCS / "prometheus-alerts.yml").read_text()
    exprs += [m.group(1) for m in re.finditer(r"^\s*expr:\s*(.+)$", alerts, re.M)]
    return exprs


def evaluate(
    agg: str, by: str | None, metric: str, selector: str | None, series: list[Any]
) -> dict[Any, float]:
    """One aggregation of the form the shipped queries use, over samples from several exporters."""
    wanted = dict(re.findall(r'(\w+)="([^"]*)"', selector or ""))
    groups: dict[Any, list[float]] = {}
    for (name, labels), value in series:
        labels = dict(labels)
        if name != metric or any(labels.get(k) != v for k, v in wanted.items()):
            continue
        key = tuple(labels.get(k.strip()) for k in by.split(",")) if by else ()
        groups.setdefault(key, []).append(value)
    fn = {"max": max, "min": min, "sum": sum, "avg": lambda v: sum(v) / len(v), "count": len}[agg]
    return {k: float(fn(v)) for k, v in groups.items()}  # type: ignore[operator]


def test_watch_owns_the_depths_and_the_shipped_queries_never_double_them(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "Agent-1", fsync="never", max_attempts=1) as mb:
        for i in range(3):
            mb.put(Message("t", i))
        d = mb.claim()
        assert d is not None
        d.nack(error="x")  # dead
    hand_adopt(root, "Agent-2")
    with FileMailbox(root, "Worker", fsync="never") as worker:  # one message for work to handle
        worker.put(Message("job"))
    watch_port, work_port = free_port(), free_port()
    work_args = ["--metrics-port", str(work_port), "--", "true"]
    procs = [
        subprocess.Popen(
            [*HC, "--root", str(root), "watch", "--metrics-port", str(watch_port), "--recover-every", "0"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        ),
        subprocess.Popen(
            [*HC, "--root", str(root), "--fsync", "never", "work", "Worker", "--create", *work_args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        ),
    ]
    try:
        for p, needle in zip(procs, ("metrics on", "running"), strict=True):
            assert p.stderr is not None
            line = p.stderr.readline()
            while needle not in line:  # handshake: its metrics server is up once this is printed
                assert line, "the exporter exited"
                line = p.stderr.readline()
        exporters = {"watch": scrape(watch_port), "work": scrape(work_port)}
        acked = ("hybridcomms_work_messages_total", (("agent", "Worker"), ("outcome", "acked")))
        exporters["work"] = eventually(  # work has handled its message
            lambda: scrape(work_port), "work's exporter to count an ack", 30, until=lambda got: acked in got
        )
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        for p in procs:
            assert p.wait(30) == 0
    # Which series each exporter emits: the root's gauges from watch only; work only its own (what it
    # did, and the outages of its backend).
    assert {name for name, _ in exporters["watch"]} >= set(ROOT_GAUGES)
    work_names = {name for name, _ in exporters["work"]}
    assert not work_names & set(ROOT_GAUGES), work_names
    assert {n for n in work_names if n.startswith("hybridcomms_")} == {
        n for n in work_names if n.startswith(("hybridcomms_work_", "hybridcomms_backend_"))
    }
    assert exporters["work"][("hybridcomms_backend_up", (("agent", "Worker"), ("backend", "file")))] == 1
    assert exporters["work"][acked] == 1
    # A second exporter of the same root (a textfile beside watch) must change nothing either.
    prom = tmp_path / "hybridcomms.prom"
    assert cli("--root", str(root), "stats", "--prometheus", str(prom))[0] == 0
    exporters["textfile"] = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(prom.read_text())
        for s in fam.samples
    }
    series = [
        ((name, (*labels, ("instance", where))), value)
        for where, samples in exporters.items()
        for (name, labels), value in samples.items()
    ]
    truth = {"Agent-1": {"new": 2, "processing": 0, "dead": 1, "done": 0}, "Agent-2": {"new": 1}}
    checked = 0
    for expr in queries():
        for gauge in ROOT_GAUGES:
            if gauge not in expr:
                continue
            aggs = [m for m in _AGG.finditer(expr) if m.group(3) == gauge]
            assert aggs, f"{gauge} used without an aggregation in: {expr}"
            for m in aggs:
                agg, by, metric, selector = m.groups()
                assert agg in ("max", "min", "avg"), f"{agg} of a gauge scraped by several exporters: {expr}"
                values = evaluate(agg, by, metric, selector, series)
                if metric == "hybridcomms_messages" and by == "agent":
                    state = dict(re.findall(r'(\w+)="([^"]*)"', selector or ""))["state"]
                    for agent, counts in truth.items():
                        if state in counts:
                            assert values[(agent,)] == counts[state], (expr, agent, values)
                    checked += 1
    assert checked >= 3  # depth, in flight, dead letters at least
