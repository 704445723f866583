"""`doctor --fix` and `purge` in a shared root: a co-tenant may swap any entry between the scan and the
fix, and place folders where files belong. Nothing outside the mailbox ever changes mode, and a folder
is never given a file's mode or removed with what it holds."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_runner import clean_env, run_cli
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridcomms import FileMailbox, Message, State
from hybridcomms.cli import doctor as commands


def mode(p: Path) -> int:
    return stat.S_IMODE(os.lstat(p).st_mode)


def setup_root(base: Path) -> tuple[Path, Path, FileMailbox]:
    root, outside = base / "root", base / "outside"
    outside.mkdir()
    (outside / "secret").write_text("s")
    os.chmod(outside / "secret", 0o600)
    (outside / "done").mkdir()
    mb = FileMailbox(root, "A", fsync="never")
    for i in range(3):
        mb.put(Message("t", i))
        d = mb.claim()
        assert d is not None
        d.ack()
    for p in (mb.path / "done").iterdir():  # the same names outside, where a followed path would lead
        (outside / "done" / p.name).write_text("outside")
        os.chmod(outside / "done" / p.name, 0o640)
    return root, outside, mb


SWAPS = ["file-to-link", "file-to-fifo", "file-to-folder", "folder-to-link", "file-replaced"]


def swap(kind: str, mb: FileMailbox, outside: Path) -> None:
    done = mb.path / "done"
    victim = sorted(done.iterdir())[0]
    if kind == "folder-to-link":
        os.rename(done, mb.path / "done.old")
        os.symlink(outside / "done", done)
        return
    victim.unlink()
    if kind == "file-to-link":
        os.symlink(outside / "secret", victim)
    elif kind == "file-to-fifo":
        os.mkfifo(victim, 0o644)
    elif kind == "file-to-folder":
        victim.mkdir(0o755)
    elif kind == "file-replaced":  # another inode under the same name
        victim.write_text("{}")
        os.chmod(victim, 0o644)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(kind=st.sampled_from(SWAPS), bad_modes=st.lists(st.sampled_from([0o644, 0o666, 0o604]), min_size=1))
def test_an_entry_swapped_between_the_scan_and_the_fix_is_never_chmodded(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch, kind: str, bad_modes: list[int]
) -> None:
    base = tmp_path_factory.mktemp("swap")
    root, outside, mb = setup_root(base)
    for p, m in zip(sorted((mb.path / "done").iterdir()), bad_modes, strict=False):
        os.chmod(p, m)  # modes doctor --fix repairs
    before = {p: mode(p) for p in outside.rglob("*")}
    real: Callable[..., None] = commands._doctor_fix

    def swapped_then_fixed(fixing: FileMailbox, findings: list[dict[str, object]]) -> None:
        swap(kind, mb, outside)  # between the scan and the fix, as a co-tenant racing it would
        real(fixing, findings)

    monkeypatch.setattr(commands, "_doctor_fix", swapped_then_fixed)
    out = run_cli(["--root", str(root), "doctor", "--fix", "--json"], env=clean_env())
    assert "Traceback" not in out.stderr
    assert {p: mode(p) for p in outside.rglob("*")} == before  # nothing outside changed mode
    for p in (mb.path / "done").iterdir() if (mb.path / "done").is_dir() else ():
        if p.is_dir() and not p.is_symlink():
            assert mode(p) == 0o755  # a folder never gets a file's mode
    mb.close()


def test_a_folder_in_done_or_dead_is_reported_never_chmodded_and_purge_passes_over_it(tmp_path: Path) -> None:
    root, _outside, mb = setup_root(tmp_path)
    mb.put(Message("t", "d"))
    d = mb.claim()
    assert d is not None
    d.dead("because")
    for state in ("done", "dead"):
        folder = mb.path / state / "made-by-someone"
        folder.mkdir(0o755)
        (folder / "their-file").write_text("keep")
    doctor = run_cli(["--root", str(root), "doctor", "--fix"], env=clean_env())
    assert "not-a-file: done/made-by-someone" in doctor.stdout
    assert "not-a-file: dead/made-by-someone" in doctor.stdout
    for state in ("done", "dead"):
        assert mode(mb.path / state / "made-by-someone") == 0o755
    for state in ("done", "dead"):
        purge = run_cli(
            ["--root", str(root), "purge", "A", "--state", state, "--older-than", "0s"], env=clean_env()
        )
        assert purge.returncode == 0, purge.stderr
        assert "made-by-someone" in purge.stderr and "left" in purge.stderr
        assert sorted(os.listdir(mb.path / state)) == ["made-by-someone"]  # the rest was purged
        assert (mb.path / state / "made-by-someone" / "their-file").read_text() == "keep"
    assert mb.stats().states[State.DONE].count <= 1
    mb.close()


def test_recovery_by_a_user_who_may_not_open_a_live_claim_leaves_it_alone(tmp_path: Path) -> None:
    """Another user's claim (mode 0600, or 000 here) cannot be opened, so its lock cannot be looked at:
    judged by its lease, it is left alone, never dead-lettered for being unreadable to us."""
    import shutil
    import subprocess
    import sys

    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv: a mode cannot be enforced")
        prefix = [setpriv, "--bounding-set", "-dac_override,-dac_read_search", "--"]
    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never") as owner:
        m = Message("t", "live")
        owner.put(m)
        d = owner.claim()  # held: its owner is alive and within its lease
        assert d is not None
        [held] = list((owner.path / "processing").iterdir())
        os.chmod(held, 0)
        got = subprocess.run(
            [*prefix, sys.executable, "-m", "hybridcomms", "--root", str(root), "recover", "--json"],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
        )
        assert got.returncode == 0, got.stderr
        assert os.listdir(owner.path / "dead") == []  # not dead-lettered
        assert held.exists()
        os.chmod(held, 0o600)
        d.ack()  # the owner finishes normally
        info = owner.get(m.id)
        assert info is not None and info.state is State.DONE
