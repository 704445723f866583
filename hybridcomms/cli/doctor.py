"""``hybridcomms doctor``: what is wrong with the mailboxes (stale ``tmp/`` files, orphaned claims,
undecodable files, modes, foreign names, legacy drops not taken in), and with ``--fix`` the repairs.

Looking never changes anything: each mailbox is scanned opened read-only; the repairs go through a
mailbox opened for writing, and a finding stays ``fixed`` only if its repair is seen done.
"""

from __future__ import annotations

import argparse
import os
import stat
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from .. import _fs, _log
from .._locking import drop, try_lock
from .._names import REASON_SUFFIX, parse_name
from ..backends.file import FileMailbox, inspection
from ..backends.file import last_errors as _last_errors
from ..errors import HybridCommsError, UnsafePathError
from ..message import Message
from ..states import State
from . import dreamos
from .common import EXIT_ERROR, EXIT_OK, Parents, human_age, need_mailbox, need_root, print_json
from .progress import Progress

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["register"]


def _doctor_one(mb: FileMailbox, fix: bool, deep: bool = False) -> list[dict[str, Any]]:
    """What is wrong with one mailbox, opened read-only (looking never changes anything); with ``fix``,
    the findings it can repair say ``fixed``, and `_doctor_fix` repairs them through a mailbox opened
    for writing."""
    findings: list[dict[str, Any]] = []
    now = time.time()

    def found(
        kind: str,
        where: str,
        detail: str,
        fixed: bool = False,
        target: _Target | None = None,
        entry: tuple[str, str] | None = None,
    ) -> None:
        finding: dict[str, Any] = {
            "agent": mb.agent_id,
            "kind": kind,
            "where": where,
            "detail": detail,
            "fixed": fixed,
        }
        if target is not None:
            finding[_TARGET] = target  # what was scanned: a fix touches that inode or nothing
        if entry is not None:
            finding[_ENTRY] = entry  # (folder, name as listed): recovery's fix is checked by it
        findings.append(finding)

    # state folders a mailbox made by hand (mkdir -p <root>/<agent>/new) does not have yet
    for state in State:
        if not mb.folders.has(state):
            detail = f"missing (a mailbox adopted by hand); --fix makes it, mode {mb.dir_mode:o}"
            found("missing-folder", f"{state.value}/", detail, fix)
    # stale tmp/ files (a writer died) and interrupted steals
    for name in _fs.listdir_at(mb.folders.fd(State.TMP)) if mb.folders.has(State.TMP) else []:
        try:
            st = os.stat(name, dir_fd=mb.folders.fd(State.TMP), follow_symlinks=False)
        except FileNotFoundError:
            continue
        if name.endswith(".stolen") or now - st.st_mtime >= mb.tmp_max_age:
            age = f"{human_age(now - st.st_mtime)} old"
            found("stale-tmp", f"tmp/{_fs.shown(name)}", age, fix, entry=("tmp", name))
    # orphaned claims: in processing/ with nobody holding the lock
    proc_names = _fs.listdir_at(mb.folders.fd(State.PROCESSING)) if mb.folders.has(State.PROCESSING) else []
    for name in proc_names:
        proc_fd = mb.folders.fd(State.PROCESSING)
        try:
            fd = os.open(name, _fs.O_READ_MSG, dir_fd=proc_fd)
        except OSError:
            where = f"processing/{_fs.shown(name)}"
            found("orphaned-claim", where, "cannot be opened", fix, entry=("processing", name))
            continue
        try:
            if try_lock(fd):
                where = f"processing/{_fs.shown(name)}"
                found("orphaned-claim", where, "its consumer is gone", fix, entry=("processing", name))
        finally:
            drop(fd)
    # last errors kept in errors/ for messages no longer waiting (a crash after an ack or a dead-letter)
    try:
        for name, folder in _last_errors.leftovers(mb.folders, now):
            what = "a folder (never removed)" if folder else "its message is no longer waiting"
            where = f"{_last_errors.ERRORS}/{_fs.shown(name)}"
            found("stale-error-record", where, what, fix and not folder, entry=(_last_errors.ERRORS, name))
    except (OSError, HybridCommsError) as exc:  # errors/ is a link, or not a folder
        found("errors-folder", f"{_last_errors.ERRORS}/", str(exc), False)
    # One pass over each folder (one lstat per file): modes, names that do not parse, and files that
    # will never decode (those with such names, those in processing/, and with --deep every file
    # waiting in new/, which reads them all).
    for state in State:
        if not mb.folders.has(state):
            continue
        folder_st = os.fstat(mb.folders.fd(state))
        folder_mode = stat.S_IMODE(folder_st.st_mode)
        if folder_mode & ~mb.dir_mode & 0o077:
            target = _Target(state, None, folder_st.st_dev, folder_st.st_ino)
            detail = f"folder mode {folder_mode:o}, expected {mb.dir_mode:o}"
            found("mode", f"{state.value}/", detail, fix, target)
        if state is State.TMP:
            continue
        with os.scandir(mb.folders.fd(state)) as entries:
            for entry in entries:
                name = entry.name
                if state is State.DEAD and name.endswith(REASON_SUFFIX):
                    continue
                where = f"{state.value}/{_fs.shown(name)}"
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if not stat.S_ISREG(st.st_mode):
                    # A folder, link, FIFO or socket someone placed: reported, never given a file's
                    # mode (nor followed), left for a person.
                    found("not-a-file", where, f"{_kind_of(st.st_mode)}, not a message file; left as it is")
                    continue
                mode = stat.S_IMODE(st.st_mode)
                if mode & ~mb.file_mode & 0o077:
                    target = _Target(state, name, st.st_dev, st.st_ino)
                    found("mode", where, f"mode {mode:o}, expected {mb.file_mode:o}", fix, target)
                if state not in (State.NEW, State.PROCESSING, State.DONE):
                    continue
                if state is State.DONE and not deep:
                    continue
                foreign = parse_name(name) is None
                if foreign and state is not State.DONE:
                    found("foreign-name", where, "not a hybridcomms name (renamed on its first claim)", False)
                if not (deep or foreign or state is State.PROCESSING):
                    continue
                try:
                    Message.decode(_fs.read_regular(name, mb.max_message_size, dir_fd=mb.folders.fd(state)))
                except FileNotFoundError:
                    continue
                except (OSError, HybridCommsError) as exc:
                    target = _Target(state, name, st.st_dev, st.st_ino)
                    found("undecodable", where, str(exc)[:200], fix and state is State.NEW, target)
    # legacy drops not taken in yet
    if dreamos.has_drops(mb):
        found("legacy-drops", "inbox.json / inbox/", "Dream.OS messages waiting to be ingested", fix)
    return findings


_TARGET = "_target"  # a finding's private key (never printed): what the scan saw, for its fix
_ENTRY = "_entry"  # another: (folder, name as listed) of what recovery is to take away


class _Target(NamedTuple):
    state: State
    name: str | None  # None: the state folder itself
    dev: int
    ino: int


def _kind_of(mode: int) -> str:
    for test, kind in (
        (stat.S_ISDIR, "a folder"),
        (stat.S_ISLNK, "a symbolic link"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return kind
    return "a device or other special file"


def _fix_mode(mb: FileMailbox, target: _Target) -> bool:
    """Give the inode the scan saw its mode, through descriptors only: the folder's descriptor this
    mailbox holds, and the entry opened ``O_PATH | O_NOFOLLOW`` relative to it and checked to be that
    same regular file. A co-tenant who swapped a folder or an entry for a link (or another file) since
    the scan makes the fix fail; it never changes the mode of anything else."""
    try:
        folder_fd = mb.folders.fd(target.state)
        if target.name is None:
            st = os.fstat(folder_fd)
            if (st.st_dev, st.st_ino) != (target.dev, target.ino):
                return False
            os.fchmod(folder_fd, mb.dir_mode)
            return True
        fd = os.open(target.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != (target.dev, target.ino):
                return False
            os.chmod(f"/proc/self/fd/{fd}", mb.file_mode)  # that inode (fchmod refuses an O_PATH fd)
            return True
        finally:
            os.close(fd)
    except (OSError, HybridCommsError):
        return False


def _doctor_fix(mb: FileMailbox, findings: list[dict[str, Any]]) -> None:
    """Repair the findings marked ``fixed`` with ``mb``, opened for writing (which made the state folders
    it lacked, with the root's modes). A finding stays marked ``fixed`` only if its repair is seen done;
    one that was refused, left in place or failed is marked not fixed, and its ``detail`` says why.
    What this reports the library does not log too (`_log.reported_by_caller`): one line each."""
    with _log.reported_by_caller():
        _fix_all(mb, findings)


def _not_fixed(finding: dict[str, Any], why: str) -> None:
    finding["fixed"] = False
    finding["detail"] = f"{finding['detail']}; --fix: {why}"


def _fix_all(mb: FileMailbox, findings: list[dict[str, Any]]) -> None:
    kinds = {f["kind"] for f in findings if f["fixed"]}
    for f in findings:
        if f["kind"] == "missing-folder" and f["fixed"]:
            f["fixed"] = mb.folders.has(State(f["where"].rstrip("/")))
    if kinds & _RECOVERED_KINDS:
        # returns orphaned claims, finishes steals, removes tmp/ files past tmp_max_age and stale records
        _fix_by_recovery(mb, findings)
    if "mode" in kinds:
        for f in findings:
            if f["kind"] == "mode" and f["fixed"] and not _fix_mode(mb, f[_TARGET]):
                _not_fixed(f, "left as it is (it changed since the scan, or cannot be changed)")
    if "undecodable" in kinds:
        for f in findings:
            if f["kind"] == "undecodable" and f["fixed"]:
                name = f[_TARGET].name  # as listed (an escaped `where` may not name it)
                try:
                    mb.reject(name, f"found by doctor: {f['detail']}")
                except (OSError, HybridCommsError) as exc:
                    _not_fixed(f, f"not moved to dead/: {exc}")
    if "legacy-drops" in kinds:
        _fix_legacy_drops(mb, findings)


#: The findings `FileMailbox.recover` repairs.
_RECOVERED_KINDS = {"stale-tmp", "orphaned-claim", "stale-error-record"}


def _fix_by_recovery(mb: FileMailbox, findings: list[dict[str, Any]]) -> None:
    """One recovery pass; then each finding it was to repair is fixed only if its entry is gone."""
    try:
        report = mb.recover()
    except (OSError, HybridCommsError) as exc:
        for f in findings:
            if f["kind"] in _RECOVERED_KINDS and f["fixed"]:
                _not_fixed(f, f"recovery failed: {exc}")
        return
    errors = dict(report.errors)
    for f in findings:
        if f["kind"] not in _RECOVERED_KINDS or not f["fixed"]:
            continue
        folder, name = f[_ENTRY]
        if not _still_there(mb, folder, name):
            continue
        if report.busy:
            _not_fixed(f, "left in place: a recovery in another process holds the mailbox; try again")
        else:
            _not_fixed(f, f"left in place: {errors.get(f['where'], 'recovery did not take it')}")
    said = {f["where"] for f in findings}
    for where, why in report.errors:  # what the pass met that the scan had not (it changed since)
        if where not in said:
            finding = {"agent": mb.agent_id, "kind": "recovery-error", "where": where, "detail": why}
            findings.append({**finding, "fixed": False})


def _still_there(mb: FileMailbox, folder: str, name: str) -> bool:
    """Whether ``folder/name`` of the mailbox is still there (looked at through the folder's descriptor,
    no link followed)."""
    try:
        if folder == _last_errors.ERRORS:
            fd = mb.errors_folder(create=False)
            if fd is None:
                return False
        else:
            fd = mb.folders.fd(State(folder))
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except (OSError, HybridCommsError):
        return True  # cannot tell: not said to be fixed
    return True


def _fix_legacy_drops(mb: FileMailbox, findings: list[dict[str, Any]]) -> None:
    """Take the legacy drops in; what ingestion refused (a link, a FIFO, a folder where a file belongs,
    a file over the size limit) or left for later is reported, and the finding is not fixed."""
    finding = next(f for f in findings if f["kind"] == "legacy-drops")
    try:
        report = dreamos.ingest(mb)
    except (OSError, HybridCommsError) as exc:
        _not_fixed(finding, f"not ingested: {exc}")
        return
    except Exception as exc:  # a fault of this agent's drops is a finding for it, never the end of doctor
        _not_fixed(finding, f"not ingested: {type(exc).__name__}: {exc}")
        return
    if report.refused or report.waiting:
        _not_fixed(finding, str(report))
    prefix = f"{mb.agent_id}/"
    for where, why in report.refused:
        findings.append(
            {
                "agent": mb.agent_id,
                "kind": "legacy-refused",
                "where": where.removeprefix(prefix),
                "detail": f"{why}; refused by --fix and left in place (move it away by hand)",
                "fixed": False,
            }
        )


def cmd_doctor(args: argparse.Namespace, root: Path) -> int:
    """Every mailbox under the root (or the ones named), each on its own: one that cannot be opened (a
    link, a file where a folder should be, a name that is not an agent id, no permission) is an
    ``unopenable`` finding, one whose check or fix fails in any other way a ``check-failed`` finding
    (what was found before the failure is kept, marked not fixed), and the others are still checked
    and fixed; the exit status is non-zero while any problem is left."""
    entries = _entries(args, root)
    progress = Progress("doctor", len(entries))
    findings: list[dict[str, Any]] = []
    modes = _modes(root)
    for n, (shown, agent, problem) in enumerate(entries, 1):
        findings += _check_agent(args, root, shown, agent, problem, modes)
        progress.step(n)
    progress.end()
    open_problems = [f for f in findings if not f["fixed"] and f["kind"] != "foreign-name"]
    if args.json:
        public = [{k: v for k, v in f.items() if not k.startswith("_")} for f in findings]
        print_json({"root": str(root), "healthy": not open_problems, "findings": public})
    else:
        _print_findings(args, findings, len(open_problems))
    return EXIT_OK if not open_problems else EXIT_ERROR


def _entries(args: argparse.Namespace, root: Path) -> list[tuple[str, str | None, str | None]]:
    """(name shown, agent id or None, problem) of the agents named, else of every mailbox entry."""
    if args.agents:
        return [(a, a, None) for a in args.agents]
    return [(e.name, e.agent, e.problem) for e in inspection.survey_root(root) if e.kind != "legacy"]


def _modes(root: Path) -> tuple[int, int]:
    """The modes every mailbox should have: a group setup when the root is group-writable."""
    group = stat.S_IMODE(os.stat(root).st_mode) & 0o070 == 0o070
    dir_mode, file_mode = (0o770, 0o660) if group else (0o700, 0o600)
    return dir_mode, file_mode


def _check_agent(
    args: argparse.Namespace,
    root: Path,
    shown: str,
    agent: str | None,
    problem: str | None,
    modes: tuple[int, int],
) -> list[dict[str, Any]]:
    """One agent's findings; whatever its files make go wrong is its finding, and the rest go on."""
    found: list[dict[str, Any]] = []
    try:
        if agent is None or problem is not None:
            raise UnsafePathError(problem or "not a safe agent id")
        _check_and_fix(args, root, agent, modes, found)
    except (OSError, HybridCommsError) as exc:
        found.append({"agent": shown, "kind": "unopenable", "where": "", "detail": str(exc), "fixed": False})
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        found.append({"agent": shown, "kind": "check-failed", "where": "", "detail": detail, "fixed": False})
    return found


def _check_and_fix(
    args: argparse.Namespace, root: Path, agent: str, modes: tuple[int, int], found: list[dict[str, Any]]
) -> None:
    """Scan the mailbox read-only into ``found``; with --fix, repair through it opened for writing
    (which makes the state folders it lacks). A fix that fails leaves every finding not fixed."""
    dir_mode, file_mode = modes
    with FileMailbox(
        root, agent, read_only=True, fsync="never", dir_mode=dir_mode, file_mode=file_mode
    ) as mb:
        found += _doctor_one(mb, args.fix, args.deep)
    if not any(f["fixed"] for f in found):
        return
    try:
        with FileMailbox(
            root, agent, create=False, fsync="never", dir_mode=dir_mode, file_mode=file_mode
        ) as mb:
            _doctor_fix(mb, found)  # (it may add findings: what it refused)
    except Exception:
        for f in found:
            f["fixed"] = False
        raise


def _print_findings(args: argparse.Namespace, findings: list[dict[str, Any]], open_problems: int) -> None:
    for f in findings:
        mark = "fixed" if f["fixed"] else ("note" if f["kind"] == "foreign-name" else "PROBLEM")
        print(_fs.printable(f"{mark:<8} {f['agent']}: {f['kind']}: {f['where']}: {f['detail']}"))
    if not open_problems:
        print("healthy")
    elif args.fix:
        print(f"{open_problems} problem(s) left that --fix did not repair (see above)")
    else:
        print(f"{open_problems} problem(s); run 'hybridcomms doctor --fix'")


def run_doctor(args: argparse.Namespace, root: Path) -> int:
    need_root(root, "doctor", False)
    for agent in args.agents:  # a named mailbox must exist; what is wrong with it is a finding
        need_mailbox(root, agent, "doctor")
    return cmd_doctor(args, root)


def register(sub: Subparsers, parents: Parents) -> None:
    dr = sub.add_parser(
        "doctor",
        parents=[parents.files],
        help="check the mailboxes (stale tmp/ files, orphaned claims, undecodable files, modes, "
        "legacy drops); exit 0 only when healthy",
        description="Checks every mailbox (or the agents named) for stale tmp/ files, orphaned claims, "
        "files that will never decode, wrong modes, names hybridcomms did not give and legacy drops not "
        "taken in yet, and prints what it found. --fix repairs what can be repaired. Exit 0 only when "
        "healthy.",
    )
    dr.add_argument("agents", nargs="*", help="only these agents")
    dr.add_argument("--fix", action="store_true", help="repair what can be repaired")
    dr.add_argument(
        "--deep",
        action="store_true",
        help="also decode every message waiting in new/ (reads them all; by default only the files with "
        "foreign names and those in processing/ are read)",
    )
    dr.add_argument("--json", action="store_true", help="print JSON (ages in seconds)")
    dr.set_defaults(func=run_doctor, files_only="reads mailbox files")
