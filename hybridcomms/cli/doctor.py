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
from collections.abc import Callable, Collection
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
    from ..backends.base import RecoveryReport
    from ..intake import Taken
    from .common import Subparsers

__all__ = ["register"]


def _doctor_one(mb: FileMailbox, fix: bool, deep: bool = False) -> list[dict[str, Any]]:
    """What is wrong with one mailbox, opened read-only (looking never changes anything); with ``fix``,
    the findings it can repair say ``fixed``, and `_doctor_fix` repairs them through a mailbox opened
    for writing."""
    scan = _Scan(mb, fix, deep)
    scan.missing_folders()
    scan.stale_tmp()
    scan.orphaned_claims()
    scan.stale_error_records()
    scan.folders()
    scan.legacy_drops()
    return scan.findings


class _Scan:
    """One read-only look at a mailbox: each check adds its findings, in the order they are printed."""

    def __init__(self, mb: FileMailbox, fix: bool, deep: bool) -> None:
        self.mb = mb
        self.fix = fix
        self.deep = deep
        self.now = time.time()
        self.findings: list[dict[str, Any]] = []

    def found(
        self,
        kind: str,
        where: str,
        detail: str,
        fixed: bool = False,
        target: _Target | None = None,
        entry: tuple[str, str] | None = None,
    ) -> None:
        """Add a finding (``fixed``: the repair `_doctor_fix` is to make)."""
        finding: dict[str, Any] = {
            "agent": self.mb.agent_id,
            "kind": kind,
            "where": where,
            "detail": detail,
            "fixed": fixed,
        }
        if target is not None:
            finding[_TARGET] = target  # what was scanned: a fix touches that inode or nothing
        if entry is not None:
            finding[_ENTRY] = entry  # (folder, name as listed): recovery's fix is checked by it
        self.findings.append(finding)

    def _names(self, state: State) -> list[str]:
        """The names in a state folder (none if the mailbox lacks it)."""
        return _fs.listdir_at(self.mb.folders.fd(state)) if self.mb.folders.has(state) else []

    def missing_folders(self) -> None:
        """State folders a mailbox made by hand (mkdir -p <root>/<agent>/new) does not have yet."""
        for state in State:
            if not self.mb.folders.has(state):
                detail = f"missing (a mailbox adopted by hand); --fix makes it, mode {self.mb.dir_mode:o}"
                self.found("missing-folder", f"{state.value}/", detail, self.fix)

    def stale_tmp(self) -> None:
        """Stale tmp/ files (a writer died) and interrupted steals."""
        for name in self._names(State.TMP):
            try:
                st = os.stat(name, dir_fd=self.mb.folders.fd(State.TMP), follow_symlinks=False)
            except FileNotFoundError:
                continue
            if self._is_stale_tmp(name, st):
                age = f"{human_age(self.now - st.st_mtime)} old"
                self.found("stale-tmp", f"tmp/{_fs.shown(name)}", age, self.fix, entry=("tmp", name))

    def _is_stale_tmp(self, name: str, st: os.stat_result) -> bool:
        """Whether a tmp/ file is left over: an interrupted steal, or older than ``tmp_max_age``."""
        return name.endswith(".stolen") or self.now - st.st_mtime >= self.mb.tmp_max_age

    def orphaned_claims(self) -> None:
        """Orphaned claims: in processing/ with nobody holding the lock."""
        for name in self._names(State.PROCESSING):
            why = self._orphaned(name)
            if why is not None:
                where = f"processing/{_fs.shown(name)}"
                self.found("orphaned-claim", where, why, self.fix, entry=("processing", name))

    def _orphaned(self, name: str) -> str | None:
        """Why a claim in processing/ is orphaned, or None while its consumer holds its lock."""
        proc_fd = self.mb.folders.fd(State.PROCESSING)
        try:
            fd = os.open(name, _fs.O_READ_MSG, dir_fd=proc_fd)
        except OSError:
            return "cannot be opened"
        try:
            return "its consumer is gone" if try_lock(fd) else None
        finally:
            drop(fd)

    def stale_error_records(self) -> None:
        """Last errors kept in errors/ for messages no longer waiting (a crash after an ack or a
        dead-letter)."""
        try:
            for name, folder in _last_errors.leftovers(self.mb.folders, self.now):
                self._stale_record(name, folder)
        except (OSError, HybridCommsError) as exc:  # errors/ is a link, or not a folder
            self.found("errors-folder", f"{_last_errors.ERRORS}/", str(exc), False)

    def _stale_record(self, name: str, folder: bool) -> None:
        """One stale record of errors/ (a folder there is reported, never removed)."""
        what = "a folder (never removed)" if folder else "its message is no longer waiting"
        where = f"{_last_errors.ERRORS}/{_fs.shown(name)}"
        entry = (_last_errors.ERRORS, name)
        self.found("stale-error-record", where, what, self.fix and not folder, entry=entry)

    def folders(self) -> None:
        """One pass over each folder (one lstat per file): modes, names that do not parse, and files
        that will never decode (those with such names, those in processing/, and with --deep every file
        waiting in new/, which reads them all)."""
        for state in State:
            if not self.mb.folders.has(state):
                continue
            self._folder_mode(state)
            if state is not State.TMP:
                self._scan_folder(state)

    def _scan_folder(self, state: State) -> None:
        """Each entry of a state folder, checked (`_entry`)."""
        with os.scandir(self.mb.folders.fd(state)) as entries:
            for entry in entries:
                self._entry(state, entry)

    def _folder_mode(self, state: State) -> None:
        """A state folder open to more than the mailbox's mode allows."""
        folder_st = os.fstat(self.mb.folders.fd(state))
        folder_mode = stat.S_IMODE(folder_st.st_mode)
        if folder_mode & ~self.mb.dir_mode & 0o077:
            target = _Target(state, None, folder_st.st_dev, folder_st.st_ino)
            detail = f"folder mode {folder_mode:o}, expected {self.mb.dir_mode:o}"
            self.found("mode", f"{state.value}/", detail, self.fix, target)

    def _entry(self, state: State, entry: os.DirEntry[str]) -> None:
        """One entry of a state folder: what it is, its mode, and for a message its name and content."""
        name = entry.name
        if _is_reason_file(state, name):
            return
        where = f"{state.value}/{_fs.shown(name)}"
        st = _lstat(entry)
        if st is None:
            return
        if not stat.S_ISREG(st.st_mode):
            # A folder, link, FIFO or socket someone placed: reported, never given a file's
            # mode (nor followed), left for a person.
            self.found("not-a-file", where, f"{_kind_of(st.st_mode)}, not a message file; left as it is")
            return
        self._file(state, name, st, where)

    def _file(self, state: State, name: str, st: os.stat_result, where: str) -> None:
        """A regular file of a state folder: its mode, and in a state that is checked, the message."""
        self._file_mode(state, name, st, where)
        if self._is_checked(state):
            self._message(state, name, st, where)

    def _file_mode(self, state: State, name: str, st: os.stat_result, where: str) -> None:
        """A file open to more than the mailbox's mode allows."""
        mode = stat.S_IMODE(st.st_mode)
        if mode & ~self.mb.file_mode & 0o077:
            target = _Target(state, name, st.st_dev, st.st_ino)
            self.found("mode", where, f"mode {mode:o}, expected {self.mb.file_mode:o}", self.fix, target)

    def _is_checked(self, state: State) -> bool:
        """Whether the messages of a state are checked: waiting and claimed ones, done ones with --deep."""
        return state in (State.NEW, State.PROCESSING) or (state is State.DONE and self.deep)

    def _message(self, state: State, name: str, st: os.stat_result, where: str) -> None:
        """A message's name (a foreign one is noted) and, when it may never decode, its content."""
        foreign = parse_name(name) is None
        if foreign and state is not State.DONE:
            self.found("foreign-name", where, "not a hybridcomms name (renamed on its first claim)", False)
        if self._may_not_decode(state, foreign):
            self._decode(state, name, st, where)

    def _may_not_decode(self, state: State, foreign: bool) -> bool:
        """Whether a message's content is read: every one with --deep, else those with foreign names
        and those claimed."""
        return self.deep or foreign or state is State.PROCESSING

    def _decode(self, state: State, name: str, st: os.stat_result, where: str) -> None:
        """A file that will never decode (--fix dead-letters it from new/)."""
        try:
            Message.decode(_fs.read_regular(name, self.mb.max_message_size, dir_fd=self.mb.folders.fd(state)))
        except FileNotFoundError:
            return
        except (OSError, HybridCommsError) as exc:
            target = _Target(state, name, st.st_dev, st.st_ino)
            self.found("undecodable", where, str(exc)[:200], self.fix and state is State.NEW, target)

    def legacy_drops(self) -> None:
        """Legacy drops not taken in yet."""
        if dreamos.has_drops(self.mb):
            self.found(
                "legacy-drops", "inbox.json / inbox/", "Dream.OS messages waiting to be ingested", self.fix
            )


_TARGET = "_target"  # a finding's private key (never printed): what the scan saw, for its fix
_ENTRY = "_entry"  # another: (folder, name as listed) of what recovery is to take away


class _Target(NamedTuple):
    state: State
    name: str | None  # None: the state folder itself
    dev: int
    ino: int

    def same(self, st: os.stat_result) -> bool:
        """Whether ``st`` is of the inode the scan saw."""
        return (st.st_dev, st.st_ino) == (self.dev, self.ino)


def _is_reason_file(state: State, name: str) -> bool:
    """Whether an entry is a dead letter's reason file (checked with its message, not as one)."""
    return state is State.DEAD and name.endswith(REASON_SUFFIX)


def _lstat(entry: os.DirEntry[str]) -> os.stat_result | None:
    """An entry's own status (a link not followed); None when it is gone since the listing."""
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None


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
            return _fix_folder_mode(mb, folder_fd, target)
        return _fix_file_mode(mb, folder_fd, target.name, target)
    except (OSError, HybridCommsError):
        return False


def _fix_folder_mode(mb: FileMailbox, folder_fd: int, target: _Target) -> bool:
    """The state folder held open given the mailbox's folder mode, if it is the one the scan saw."""
    if not target.same(os.fstat(folder_fd)):
        return False
    os.fchmod(folder_fd, mb.dir_mode)
    return True


def _fix_file_mode(mb: FileMailbox, folder_fd: int, name: str, target: _Target) -> bool:
    """The entry ``name`` given the mailbox's file mode, if it is still the regular file the scan saw."""
    fd = os.open(name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or not target.same(st):
            return False
        os.chmod(f"/proc/self/fd/{fd}", mb.file_mode)  # that inode (fchmod refuses an O_PATH fd)
        return True
    finally:
        os.close(fd)


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
    """Each kind of repair once, for the findings of its kinds marked ``fixed``."""
    kinds = _kinds_to_fix(findings)
    _check_folders_made(mb, findings)
    for repaired, repair in _REPAIRS:
        if kinds & repaired:
            repair(mb, findings)


def _kinds_to_fix(findings: list[dict[str, Any]]) -> set[str]:
    """The kinds of the findings marked ``fixed`` (each kind's repair runs once)."""
    return {f["kind"] for f in findings if f["fixed"]}


def _to_fix(findings: list[dict[str, Any]], kinds: Collection[str]) -> list[dict[str, Any]]:
    """The findings of these kinds marked ``fixed`` (still to be repaired, or seen repaired)."""
    return [f for f in findings if f["kind"] in kinds and f["fixed"]]


def _check_folders_made(mb: FileMailbox, findings: list[dict[str, Any]]) -> None:
    """A missing folder is fixed if opening the mailbox for writing made it."""
    for f in _to_fix(findings, ("missing-folder",)):
        f["fixed"] = mb.folders.has(State(f["where"].rstrip("/")))


def _fix_modes(mb: FileMailbox, findings: list[dict[str, Any]]) -> None:
    """Give each file and folder found too open the mailbox's mode (`_fix_mode`)."""
    for f in _to_fix(findings, ("mode",)):
        if not _fix_mode(mb, f[_TARGET]):
            _not_fixed(f, "left as it is (it changed since the scan, or cannot be changed)")


def _fix_undecodable(mb: FileMailbox, findings: list[dict[str, Any]]) -> None:
    """Dead-letter the files in new/ that will never decode, with what doctor found as the reason."""
    for f in _to_fix(findings, ("undecodable",)):
        name = f[_TARGET].name  # as listed (an escaped `where` may not name it)
        try:
            mb.reject(name, f"found by doctor: {f['detail']}")
        except (OSError, HybridCommsError) as exc:
            _not_fixed(f, f"not moved to dead/: {exc}")


#: The findings `FileMailbox.recover` repairs.
_RECOVERED_KINDS = {"stale-tmp", "orphaned-claim", "stale-error-record"}


def _fix_by_recovery(mb: FileMailbox, findings: list[dict[str, Any]]) -> None:
    """One recovery pass; then each finding it was to repair is fixed only if its entry is gone."""
    try:
        report = mb.recover()
    except (OSError, HybridCommsError) as exc:
        for f in _to_fix(findings, _RECOVERED_KINDS):
            _not_fixed(f, f"recovery failed: {exc}")
        return
    _check_recovered(mb, findings, report)
    _add_recovery_errors(mb, findings, report)


def _check_recovered(mb: FileMailbox, findings: list[dict[str, Any]], report: RecoveryReport) -> None:
    """Each finding recovery was to repair whose entry is still there is not fixed, and says why."""
    errors = dict(report.errors)
    for f in _to_fix(findings, _RECOVERED_KINDS):
        folder, name = f[_ENTRY]
        if not _still_there(mb, folder, name):
            continue
        if report.busy:
            _not_fixed(f, "left in place: a recovery in another process holds the mailbox; try again")
        else:
            _not_fixed(f, f"left in place: {errors.get(f['where'], 'recovery did not take it')}")


def _add_recovery_errors(mb: FileMailbox, findings: list[dict[str, Any]], report: RecoveryReport) -> None:
    """What the pass met that the scan had not (it changed since): a ``recovery-error`` finding each."""
    said = {f["where"] for f in findings}
    for where, why in report.errors:
        if where not in said:
            finding = {"agent": mb.agent_id, "kind": "recovery-error", "where": where, "detail": why}
            findings.append({**finding, "fixed": False})


def _still_there(mb: FileMailbox, folder: str, name: str) -> bool:
    """Whether ``folder/name`` of the mailbox is still there (looked at through the folder's descriptor,
    no link followed)."""
    try:
        fd = _folder_fd(mb, folder)
        if fd is None:
            return False
        os.stat(name, dir_fd=fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    except (OSError, HybridCommsError):
        return True  # cannot tell: not said to be fixed
    return True


def _folder_fd(mb: FileMailbox, folder: str) -> int | None:
    """The descriptor of a folder of the mailbox: a state folder, or errors/ (None when it is not there)."""
    if folder == _last_errors.ERRORS:
        return mb.errors_folder(create=False)
    return mb.folders.fd(State(folder))


def _fix_legacy_drops(mb: FileMailbox, findings: list[dict[str, Any]]) -> None:
    """Take the legacy drops in; what ingestion refused (a link, a FIFO, a folder where a file belongs,
    a file over the size limit) or left for later is reported, and the finding is not fixed."""
    finding = _first(findings, "legacy-drops")
    report = _ingested(mb, finding)
    if report is None:
        return
    if report.refused or report.waiting:
        _not_fixed(finding, str(report))
    _add_refused(mb, findings, report.refused)


def _first(findings: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    """The first finding of ``kind`` (there is one)."""
    return next(f for f in findings if f["kind"] == kind)


def _ingested(mb: FileMailbox, finding: dict[str, Any]) -> Taken | None:
    """The report of taking the legacy drops in; None when ingestion failed (``finding`` says why)."""
    try:
        return dreamos.ingest(mb)
    except (OSError, HybridCommsError) as exc:
        _not_fixed(finding, f"not ingested: {exc}")
    except Exception as exc:  # a fault of this agent's drops is a finding for it, never the end of doctor
        _not_fixed(finding, f"not ingested: {type(exc).__name__}: {exc}")
    return None


def _add_refused(mb: FileMailbox, findings: list[dict[str, Any]], refused: list[tuple[str, str]]) -> None:
    """What ingestion refused: a ``legacy-refused`` finding each, left for a person."""
    prefix = f"{mb.agent_id}/"
    for where, why in refused:
        findings.append(
            {
                "agent": mb.agent_id,
                "kind": "legacy-refused",
                "where": where.removeprefix(prefix),
                "detail": f"{why}; refused by --fix and left in place (move it away by hand)",
                "fixed": False,
            }
        )


#: The repairs `_fix_all` makes, in this order: the kinds of findings each repairs, and how.
_REPAIRS: tuple[tuple[set[str], Callable[[FileMailbox, list[dict[str, Any]]], None]], ...] = (
    # returns orphaned claims, finishes steals, removes tmp/ files past tmp_max_age and stale records
    (_RECOVERED_KINDS, _fix_by_recovery),
    ({"mode"}, _fix_modes),
    ({"undecodable"}, _fix_undecodable),
    ({"legacy-drops"}, _fix_legacy_drops),
)


def cmd_doctor(args: argparse.Namespace, root: Path) -> int:
    """Every mailbox under the root (or the ones named), each on its own: one that cannot be opened (a
    link, a file where a folder should be, a name that is not an agent id, no permission) is an
    ``unopenable`` finding, one whose check or fix fails in any other way a ``check-failed`` finding
    (what was found before the failure is kept, marked not fixed), and the others are still checked
    and fixed; the exit status is non-zero while any problem is left."""
    findings = _check_all(args, root)
    open_problems = _open_problems(findings)
    if args.json:
        _print_json_report(root, findings, open_problems)
    else:
        _print_findings(args, findings, len(open_problems))
    return EXIT_OK if not open_problems else EXIT_ERROR


def _check_all(args: argparse.Namespace, root: Path) -> list[dict[str, Any]]:
    """The findings of every agent checked (and fixed, with --fix), in order, with a progress line."""
    entries = _entries(args, root)
    progress = Progress("doctor", len(entries))
    findings: list[dict[str, Any]] = []
    modes = _modes(root)
    for n, (shown, agent, problem) in enumerate(entries, 1):
        findings += _check_agent(args, root, shown, agent, problem, modes)
        progress.step(n)
    progress.end()
    return findings


def _print_json_report(
    root: Path, findings: list[dict[str, Any]], open_problems: list[dict[str, Any]]
) -> None:
    """The ``--json`` report: the root, whether it is healthy, the findings without their private keys."""
    public = [_public(f) for f in findings]
    print_json({"root": str(root), "healthy": not open_problems, "findings": public})


def _open_problems(findings: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The findings that are problems left (`_is_open`)."""
    return [f for f in findings if _is_open(f)]


def _is_open(finding: dict[str, Any]) -> bool:
    """Whether a finding is a problem left (not fixed, and not a mere note)."""
    return not finding["fixed"] and finding["kind"] != "foreign-name"


def _public(finding: dict[str, Any]) -> dict[str, Any]:
    """A finding as ``--json`` prints it: without its private keys."""
    return {k: v for k, v in finding.items() if not k.startswith("_")}


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
        _check_and_fix(args, root, _checkable(agent, problem), modes, found)
    except (OSError, HybridCommsError) as exc:
        found.append({"agent": shown, "kind": "unopenable", "where": "", "detail": str(exc), "fixed": False})
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        found.append({"agent": shown, "kind": "check-failed", "where": "", "detail": detail, "fixed": False})
    return found


def _checkable(agent: str | None, problem: str | None) -> str:
    """The agent id of an entry to check; `UnsafePathError` for one that cannot be opened as a mailbox."""
    if agent is None or problem is not None:
        raise UnsafePathError(problem or "not a safe agent id")
    return agent


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
    if any(f["fixed"] for f in found):
        _fix_through_writer(root, agent, modes, found)


def _fix_through_writer(root: Path, agent: str, modes: tuple[int, int], found: list[dict[str, Any]]) -> None:
    """The repairs, through the mailbox opened for writing; if that fails, nothing is said fixed."""
    dir_mode, file_mode = modes
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
        print(_fs.printable(f"{_mark(f):<8} {f['agent']}: {f['kind']}: {f['where']}: {f['detail']}"))
    print(_verdict(args, open_problems))


def _mark(finding: dict[str, Any]) -> str:
    """How a finding's line starts: fixed, a note (a foreign name), or a problem."""
    return "fixed" if finding["fixed"] else ("note" if finding["kind"] == "foreign-name" else "PROBLEM")


def _verdict(args: argparse.Namespace, open_problems: int) -> str:
    """The last line: healthy, or how many problems are left and what to do."""
    if not open_problems:
        return "healthy"
    if args.fix:
        return f"{open_problems} problem(s) left that --fix did not repair (see above)"
    return f"{open_problems} problem(s); run 'hybridcomms doctor --fix'"


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
