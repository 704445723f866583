"""The inspect-and-repair commands of the CLI: ``ls``, ``show``, ``requeue``, ``purge``, ``tail``, ``doctor``.

They read the folders (one listing per folder) and the names; a message body is read only when its
topic or content is asked for (``ls`` shows topics, ``show`` the message). Ages are shown as ``3m``,
``2h``, ``5d`` for people and as seconds in ``--json``. Long operations show progress on stderr when it is
a terminal, and stay quiet when piped.
"""

from __future__ import annotations

import argparse
import fnmatch
import os
import re
import stat
import sys
import time
from collections.abc import Iterable, Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, NamedTuple

from .. import _fs, _last_errors, _log, inspection
from .._locking import drop, try_lock
from .._names import REASON_SUFFIX, parse_name
from .._text import json_text, printable
from .._urls import shown_url
from ..backend import Mailbox
from ..errors import HybridCommsError, UnsafePathError
from ..inspection import MessageInfo
from ..mailbox import FileMailbox, check_agent_id, list_agents
from ..message import Message, iso_utc
from ..states import State
from .common import LineWriter
from .progress import Progress

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2
_AGE_RE = re.compile(r"(\d+(?:\.\d+)?)([smhdw]?)\Z")
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_age(text: str) -> float:
    """``90``, ``90s``, ``3m``, ``2h``, ``7d``, ``1w`` -> seconds (argparse type)."""
    m = _AGE_RE.match(text.strip().lower())
    if m is None:
        raise argparse.ArgumentTypeError(f"not an age: {text!r} (use e.g. 90s, 3m, 2h, 7d)")
    return float(m.group(1)) * _UNITS[m.group(2)]


def human_age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


#: Characters that would act on a terminal rather than show: C0/C1 controls, bidi and invisible marks.
def one_line(text: object, limit: int = 500) -> str:
    """Text another agent wrote (an error, a reason) as one printable line of at most ``limit``
    characters (`hybridcomms._text.printable`)."""
    return printable(str(text), limit)


def _iso(ts: float) -> str:
    """A POSIX time as the native form (``2026-11-26T11:24:03.123456Z``)."""
    try:
        return iso_utc(datetime.fromtimestamp(ts, timezone.utc))
    except (OverflowError, OSError, ValueError):
        return f"{ts:.0f}"


def _when(ts: float, now: float) -> str:
    """``2026-11-26T11:24:03.123456Z (in 4m)`` (or ``(3m ago)``)."""
    delta = ts - now
    return f"{_iso(ts)} (in {human_age(delta)})" if delta >= 0.5 else f"{_iso(ts)} ({human_age(-delta)} ago)"


def _print_json(value: Any) -> None:
    sys.stdout.write(json_text(value, indent=True) + "\n")


def _topic_of(mb: Mailbox, info: MessageInfo) -> str | None:
    try:
        return mb.read(info).topic
    except (OSError, HybridCommsError, KeyError):
        return None


def _row(mb: Mailbox, info: MessageInfo, now: float, topic: str | None) -> dict[str, Any]:
    row: dict[str, Any] = {
        "agent": mb.agent_id,
        "state": info.state.value,
        "id": info.id,
        "file": _fs.shown(info.name),
        "attempt": info.attempt,
        "age": round(now - info.changed_at, 3),
        "size": info.size,
        "topic": topic,
    }
    if info.reason is not None:
        row["reason"] = info.reason.get("reason")
        row["last_error"] = info.reason.get("last_error")
    elif info.last_error is not None:
        row["last_error"] = info.last_error.error
    return row


def cmd_ls(args: argparse.Namespace, mb: Mailbox) -> int:
    states = [State(args.state)] if args.state else [State.NEW, State.PROCESSING, State.DONE, State.DEAD]
    now = time.time()
    rows = []
    for state in states:
        for info in mb.list(state):
            if args.older_than is not None and now - info.changed_at < args.older_than:
                continue
            topic = _topic_of(mb, info)
            if args.topic and not (topic is not None and fnmatch.fnmatchcase(topic, args.topic)):
                continue
            rows.append(_row(mb, info, now, topic))
    if args.json:
        _print_json(rows)
        return EXIT_OK
    if not rows:
        print(f"no messages for {mb.agent_id}" + (f" in {args.state}/" if args.state else ""))
        return EXIT_OK
    print(f"{'state':<10} {'age':>5} {'try':>3}  {'id':<36} topic")
    for r in rows:
        if r.get("reason"):
            extra = f"  ({one_line(r['reason'], 200)})"
        elif r.get("last_error"):
            extra = f"  (last error: {one_line(r['last_error'], 200)})"
        else:
            extra = ""
        print(
            f"{r['state']:<10} {human_age(r['age']):>5} {r['attempt']:>3}  "
            f"{r['id'] or _fs.printable(r['file'])!s:<36} {r['topic'] or '?'}{extra}"
        )
    return EXIT_OK


def _mailboxes(root: Path, agents: Iterable[str] | None, url: str | None = None) -> Iterator[Mailbox]:
    if url is not None:
        from ..backend import open_mailbox
        from ..redis_mailbox import redis_agents

        for agent in agents or redis_agents(url):
            with open_mailbox(url, check_agent_id(agent), create=False) as remote:
                yield remote
        return
    if agents:
        for agent in agents:
            with FileMailbox(root, check_agent_id(agent), read_only=True, fsync="never") as mb:
                yield mb
        return
    for agent in list_agents(root):  # every mailbox: one that cannot be opened is passed over
        try:
            mb = FileMailbox(root, agent, read_only=True, fsync="never")
        except (OSError, HybridCommsError):
            continue
        with mb:
            yield mb


def cmd_show(args: argparse.Namespace, root: Path, url: str | None = None) -> int:
    for mb in _mailboxes(root, [args.agent] if args.agent else None, url):
        info = mb.get(args.id)
        if info is None:
            continue
        now = time.time()
        out: dict[str, Any] = {
            "agent": mb.agent_id,
            "state": info.state.value,
            "file": _fs.shown(info.name),
            "attempt": info.attempt,
            "age": round(now - info.changed_at, 3),
        }
        expires: float | None = None
        try:
            message = mb.read(info)
            out["message"] = message.to_dict()
            expires = None if message.expires is None else message.expires.timestamp()
        except (OSError, HybridCommsError, KeyError) as exc:
            out["message"] = None
            out["unreadable"] = str(exc)
        due = info.due_at if info.state is State.NEW else None
        if due is not None:  # when it may be claimed (after a failure: when it is retried)
            out["due"] = _iso(due)
            out["due_in"] = round(max(due - now, 0.0), 3)
        if expires is not None:
            out["expires_in"] = round(expires - now, 3)
        if info.reason is not None:
            out["dead_reason"] = info.reason.get("reason")
            out["last_error"] = info.reason.get("last_error")
            out["dead_at"] = info.reason.get("dead_at")
        elif info.last_error is not None:  # waiting for a retry: why the last attempt failed
            out["last_error"] = info.last_error.error
            out["failed_attempt"] = info.last_error.attempt
            out["failed_at"] = _iso(info.last_error.failed_at)
        if args.json:
            _print_json(out)
        else:
            print(
                f"{out['agent']}: {out['state']}/{out['file']} "
                f"(attempt {out['attempt']}, {human_age(out['age'])})"
            )
            if "dead_reason" in out:
                print(
                    f"dead: {one_line(out['dead_reason'])}"
                    + (f"; last error: {one_line(out['last_error'])}" if out["last_error"] else "")
                )
            elif info.last_error is not None:
                failed = info.last_error
                ago = human_age(max(now - failed.failed_at, 0.0))
                print(f"last error: attempt {failed.attempt} failed {ago} ago: {one_line(failed.error)}")
            if due is not None and (due > now or info.last_error is not None):
                print(f"due: {_when(due, now)}")
            if expires is not None:
                print(f"expires: {_when(expires, now)}")
            if out["message"] is None:  # a poison file (claiming it would dead-letter it): why
                print(f"unreadable: {one_line(out['unreadable'])}")
            else:
                _print_json(out["message"])
        return EXIT_OK
    where = shown_url(url) if url else root
    print(f"hybridcomms show: no message {args.id!r} under {where}", file=sys.stderr)
    return EXIT_ERROR


def cmd_requeue(args: argparse.Namespace, mb: Mailbox) -> int:
    if bool(args.ids) == bool(args.all_dead):
        raise SystemExit("hybridcomms requeue: give message ids or --all-dead (not both)")
    moved: list[str] = []
    missing: list[str] = []
    if args.all_dead and isinstance(mb, FileMailbox):
        dead = mb.list(State.DEAD)  # one listing for all of them
        progress = Progress("requeue", len(dead))
        moved = inspection.requeue_infos(mb, dead, State.DEAD, args.reset_attempts, progress.step)
        progress.end()
    elif args.all_dead:
        for key in dict.fromkeys(i.id or i.name for i in mb.list(State.DEAD)):
            moved += mb.requeue(key, reset_attempts=args.reset_attempts)
    else:
        for key in args.ids:
            names = mb.requeue(key, reset_attempts=args.reset_attempts)
            if not names:
                missing.append(key)
            moved += names
    if args.json:
        _print_json({"agent": mb.agent_id, "requeued": moved, "not_found": missing})
    else:
        print(
            f"{mb.agent_id}: {len(moved)} requeued to new/"
            + (f"; not in dead/: {', '.join(missing)}" if missing else "")
        )
    return EXIT_ERROR if missing else EXIT_OK


def cmd_purge(args: argparse.Namespace, mb: Mailbox) -> int:
    state = State(args.state)
    if not isinstance(mb, FileMailbox):
        return _purge_elsewhere(args, mb, state)
    victims = inspection.older(mb, state, args.older_than)
    if args.dry_run:
        if args.json:
            names = [_fs.shown(i.name) for i in victims]
            _print_json({"agent": mb.agent_id, "state": state.value, "would_delete": names})
        else:
            print(
                f"{mb.agent_id}: would delete {len(victims)} from {state.value}/ "
                f"(older than {human_age(args.older_than)})"
            )
        return EXIT_OK
    progress = Progress("purge", len(victims))
    skipped: list[str] = []
    removed = inspection.remove(mb, state, victims, progress.step, skipped)
    progress.end()
    if args.json:
        _print_json(
            {
                "agent": mb.agent_id,
                "state": state.value,
                "deleted": removed,
                "skipped": [_fs.shown(n) for n in skipped],
            }
        )
    else:
        print(f"{mb.agent_id}: deleted {removed} from {state.value}/")
    for name in skipped:
        print(
            _fs.printable(
                f"hybridcomms purge: {mb.agent_id}: left {state.value}/{_fs.shown(name)}: not a file it "
                "can remove (a folder someone made there?); look at it by hand"
            ),
            file=sys.stderr,
        )
    return EXIT_OK


def _purge_elsewhere(args: argparse.Namespace, mb: Mailbox, state: State) -> int:
    """``purge`` on a backend without files: its own `purge` (or a count, with --dry-run)."""
    if state not in (State.DONE, State.DEAD):
        raise ValueError(f"purge only empties done/ or dead/, not {state.value}/")
    if args.dry_run:
        cutoff = time.time() - args.older_than
        names = [i.name for i in mb.list(state) if i.changed_at <= cutoff]
        if args.json:
            _print_json({"agent": mb.agent_id, "state": state.value, "would_delete": names})
        else:
            print(
                f"{mb.agent_id}: would delete {len(names)} from {state.value}/ "
                f"(older than {human_age(args.older_than)})"
            )
        return EXIT_OK
    removed = mb.purge(state, args.older_than)
    if args.json:
        _print_json({"agent": mb.agent_id, "state": state.value, "deleted": removed})
    else:
        print(f"{mb.agent_id}: deleted {removed} from {state.value}/")
    return EXIT_OK


# -- doctor -------------------------------------------------------------------------------------


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
        for name, folder in _last_errors.leftovers(mb, now):
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
    try:
        from ..compat.dreamos.legacy import has_legacy_drops

        if has_legacy_drops(mb.root, mb.agent_id):
            found("legacy-drops", "inbox.json / inbox/", "Dream.OS messages waiting to be ingested", fix)
    except ImportError:  # pragma: no cover
        pass
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
                    mb._reject(name, f"found by doctor: {f['detail']}")
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
            fd = mb._errors_folder(create=False)
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
    from ..compat.dreamos.legacy import ingest

    finding = next(f for f in findings if f["kind"] == "legacy-drops")
    try:
        report = ingest(mb)
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
    entries: list[tuple[str, str | None, str | None]]
    if args.agents:
        entries = [(a, a, None) for a in args.agents]
    else:
        entries = [(e.name, e.agent, e.problem) for e in inspection.survey_root(root) if e.kind != "legacy"]
    progress = Progress("doctor", len(entries))
    findings: list[dict[str, Any]] = []
    # The modes every mailbox should have: a group setup when the root is group-writable.
    group = stat.S_IMODE(os.stat(root).st_mode) & 0o070 == 0o070
    dir_mode, file_mode = (0o770, 0o660) if group else (0o700, 0o600)
    for n, (shown, agent, problem) in enumerate(entries, 1):
        try:
            if agent is None or problem is not None:
                raise UnsafePathError(problem or "not a safe agent id")
            with FileMailbox(
                root, agent, read_only=True, fsync="never", dir_mode=dir_mode, file_mode=file_mode
            ) as mb:
                found = _doctor_one(mb, args.fix, args.deep)
            try:
                if any(f["fixed"] for f in found):
                    try:  # opened for writing: this makes the state folders it lacks
                        with FileMailbox(
                            root, agent, create=False, fsync="never", dir_mode=dir_mode, file_mode=file_mode
                        ) as mb:
                            _doctor_fix(mb, found)  # (it may add findings: what it refused)
                    except Exception:
                        for f in found:
                            f["fixed"] = False
                        raise
            finally:
                findings += found
        except (OSError, HybridCommsError) as exc:
            findings.append(
                {"agent": shown, "kind": "unopenable", "where": "", "detail": str(exc), "fixed": False}
            )
        except Exception as exc:  # whatever one agent's files make go wrong: its finding; the rest go on
            detail = f"{type(exc).__name__}: {exc}"
            findings.append(
                {"agent": shown, "kind": "check-failed", "where": "", "detail": detail, "fixed": False}
            )
        progress.step(n)
    progress.end()
    open_problems = [f for f in findings if not f["fixed"] and f["kind"] != "foreign-name"]
    public = [{k: v for k, v in f.items() if not k.startswith("_")} for f in findings]
    if args.json:
        _print_json({"root": str(root), "healthy": not open_problems, "findings": public})
    else:
        for f in findings:
            mark = "fixed" if f["fixed"] else ("note" if f["kind"] == "foreign-name" else "PROBLEM")
            print(_fs.printable(f"{mark:<8} {f['agent']}: {f['kind']}: {f['where']}: {f['detail']}"))
        if not open_problems:
            print("healthy")
        elif args.fix:
            print(f"{len(open_problems)} problem(s) left that --fix did not repair (see above)")
        else:
            print(f"{len(open_problems)} problem(s); run 'hybridcomms doctor --fix'")
    return EXIT_OK if not open_problems else EXIT_ERROR


def _clock(at: float) -> str:
    """``HH:MM:SS`` for a time of today, with the date before it for another day."""
    local = time.localtime(at)
    today = time.localtime()
    same_day = (local.tm_year, local.tm_yday) == (today.tm_year, today.tm_yday)
    return time.strftime("%H:%M:%S" if same_day else "%Y-%m-%d %H:%M:%S", local)


def cmd_tail(args: argparse.Namespace, root: Path) -> int:
    """Events of every mailbox (or the ones named) from now on, until SIGTERM or Ctrl-C; with
    ``--waiting``, what is already waiting in ``new/`` first (kind ``waiting``, at the time it arrived)."""
    import signal
    import threading

    from ..watcher import MailboxEvent, MailboxWatcher

    wanted = set(args.agents or ())
    stop = threading.Event()
    write = LineWriter(on_close=stop.set)  # `tail | head -1`: stops once the reader is gone

    def on_event(ev: MailboxEvent) -> None:
        if wanted and ev.agent not in wanted:
            return
        write(
            json_text(ev.for_json())  # a name that is not UTF-8 as \xNN text
            if args.json
            else f"{_clock(ev.time)} {ev.kind:<9} {ev.agent} {ev.id or _fs.printable(ev.name)}"
        )

    from .watch import watch_bus

    def on_signal(signum: int, frame: object) -> None:
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    release_bus = None
    try:
        if getattr(args, "bus", None):
            release_bus = watch_bus(root, args.bus, args.json, write)
        waiting = "waiting" if args.waiting else "skip"
        with MailboxWatcher(  # it only looks: no recovery, no legacy intake
            root, on_event=on_event, recover_every=0, rescan_every=10, waiting=waiting, ingest_legacy=False
        ):
            print(f"hybridcomms tail: following {root}", file=sys.stderr, flush=True)
            while not stop.wait(0.2):
                pass
    finally:
        if release_bus is not None:
            release_bus()
        for s, handler in previous.items():  # as they were (a caller in this process has its own)
            signal.signal(s, handler)
    return EXIT_OK


# -- top ----------------------------------------------------------------------------------------


def _snapshot(root: Path, since: float | None = None) -> dict[str, dict[str, Any]]:
    """Every mailbox's `stats`; with ``since`` (a wall-clock time) also ``acked_since``: the files that
    entered ``done/`` since then (a count that trimming, ``done_retention``, does not disturb)."""
    rows: dict[str, dict[str, Any]] = {}
    for agent in list_agents(root):
        try:
            with FileMailbox(root, agent, read_only=True, fsync="never") as mb:
                rows[agent] = mb.stats().to_dict()
                if since is not None and mb.folders.has(State.DONE):
                    rows[agent]["acked_since"] = _entered_since(mb.folders.fd(State.DONE), since)
        except (OSError, HybridCommsError):
            continue
    return rows


def _entered_since(fd: int, since: float) -> int:
    """How many entries of the folder ``fd`` entered it (their change time) at ``since`` or later."""
    count = 0
    for name in _fs.listdir_at(fd):
        try:
            if os.stat(name, dir_fd=fd, follow_symlinks=False).st_ctime >= since:
                count += 1
        except FileNotFoundError:
            continue
    return count


def top_lines(before: dict[str, dict[str, Any]], now: dict[str, dict[str, Any]], dt: float) -> list[str]:
    """The screen of ``top``: one line per mailbox, rates from the change since ``before``."""
    head = (
        f"{'agent':<24} {'depth':>7} {'flight':>7} {'delayed':>7} {'dead':>6} {'done':>8} "
        f"{'oldest':>7} {'acks/s':>7}"
    )
    lines = [head]
    for agent, r in sorted(now.items()):
        prev = before.get(agent)
        if prev is None or dt <= 0:
            rate = 0.0
        elif r.get("acked_since") is not None:  # what entered done/: right while done/ is trimmed too
            rate = r["acked_since"] / dt
        else:
            rate = (r["done"]["count"] - prev["done"]["count"]) / dt
        lines.append(
            f"{agent[:24]:<24} {r['new']['count']:>7} {r['processing']['count']:>7} {r['delayed']:>7} "
            f"{r['dead']['count']:>6} {r['done']['count']:>8} {human_age(r['new']['oldest_age']):>7} "
            f"{max(rate, 0.0):>7.1f}"
        )
    if not now:
        lines.append("(no mailboxes yet)")
    return lines


def cmd_top(args: argparse.Namespace, root: Path) -> int:
    """A live view of every mailbox, refreshed in place every ``--interval`` seconds; ``q`` quits.
    Without a terminal (stdin and stdout), or on one curses cannot drive, one line and exit 2."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        print(
            "hybridcomms top: needs a terminal on stdin and stdout; for a snapshot in a pipe or a script "
            "use 'hybridcomms stats' (or 'hybridcomms stats --json')",
            file=sys.stderr,
        )
        return EXIT_USAGE
    import curses

    def run(screen: Any) -> None:
        curses.curs_set(0)
        screen.timeout(int(args.interval * 1000))
        wall = time.time()
        before = _snapshot(root)
        t_before = time.monotonic()
        now, t_now = before, t_before
        while True:
            screen.erase()
            height, width = screen.getmaxyx()
            title = f"hybridcomms top: {root}  {time.strftime('%H:%M:%S')}  (q quits)"
            screen.addnstr(0, 0, title, width - 1, curses.A_BOLD)
            for y, line in enumerate(top_lines(before, now, t_now - t_before), start=2):
                if y >= height - 1:
                    break
                screen.addnstr(y, 0, line, width - 1)
            screen.refresh()
            key = screen.getch()
            if key in (ord("q"), ord("Q")):
                return
            before, t_before = now, t_now
            since, wall = wall, time.time()
            now, t_now = _snapshot(root, since), time.monotonic()

    try:
        curses.wrapper(run)
    except curses.error as exc:  # TERM unknown or unset, a terminal too small to draw on
        term = os.environ.get("TERM") or "(unset)"
        print(f"hybridcomms top: cannot draw on this terminal (TERM={term}): {exc}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK
