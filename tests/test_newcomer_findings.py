"""What a newcomer following the README tripped on: each fixed, each tested."""

from __future__ import annotations

from pathlib import Path

from cli_runner import clean_env, run_cli

from hybridcomms import FileMailbox, Message, State


def test_demo_never_deletes_a_message_it_did_not_write(tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = run_cli(["--root", str(root), "demo"], env=clean_env())
    assert first.returncode == 0, first.stderr
    again = run_cli(["--root", str(root), "demo"], env=clean_env())
    assert again.returncode == 0 and "cleared the previous demo's Demo-Agent mailbox" in again.stdout
    with FileMailbox(root, "Demo-Agent", fsync="never") as mb:
        real = Message("real.work", {"important": 1}, sender="Captain")
        mb.put(real)
    refused = run_cli(["--root", str(root), "demo"], env=clean_env())
    assert refused.returncode == 1 and "did not write" in refused.stderr
    with FileMailbox(root, "Demo-Agent", fsync="never") as mb:
        info = mb.get(real.id)
        assert info is not None and info.state is State.NEW  # still there


def test_show_of_a_poison_file_says_why_instead_of_null(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "W", fsync="never") as mb:
        (mb.path / "new" / "x.json").write_bytes(b"{bad")
    out = run_cli(["--root", str(root), "show", "x.json"], env=clean_env())
    assert out.returncode == 0
    assert "unreadable: cannot decode message" in out.stdout and "null" not in out.stdout


def test_migrate_knows_the_errors_folder_of_a_mailbox(tmp_path: Path) -> None:
    root = tmp_path / "root"
    with FileMailbox(root, "A", fsync="never") as mb:
        mb.put(Message("t"))
        d = mb.claim()
        assert d is not None
        d.nack(delay=60, error="failed once")  # makes errors/
    assert (root / "A" / "errors").is_dir()
    out = run_cli(["--root", str(root), "migrate", "--dry-run"], env=clean_env())
    assert out.returncode == 0, out.stderr
    assert "errors/" not in out.stdout and "unknown folder" not in out.stdout
