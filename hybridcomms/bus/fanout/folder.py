"""The bus folder, ``<root>/.bus/``, where the processes that share a root's bus events register
(`hybridcomms.bus.fanout`): opening it (checked as a mailbox folder is), the shape of a registration, writing
this process's own (bounded) and reading the others' (as hostile files), and `bus_peers` for
``hybridcomms stats``. Every agent of the group can write this folder: whatever is found there is read
with limits and never followed."""

from __future__ import annotations

import contextlib
import errno
import os
import re
import socket
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from ... import _fs
from ...errors import UnsafePathError
from ..core import pattern_matches
from .transport import HOST
from .wire import MAX_TOPIC

__all__ = [
    "BUS_FOLDER",
    "HOST",
    "Peer",
    "alive",
    "bound",
    "bus_peers",
    "effective_patterns",
    "fits_registration",
    "open_bus_folder",
    "registration_body",
    "registrations",
    "scan",
    "well_formed",
    "write_registration",
]

BUS_FOLDER = ".bus"
#: A registration is read up to this size (a bigger one is not one); this process's own stays under.
MAX_REGISTRATION = 64 * 1024
#: Registrations held as peers at most by a publisher, and listed at most by `bus_peers`. Only names
#: that can be registrations count (`scan`: a ``.json`` whose ``.sock`` is there and may be a socket):
#: files placed without a socket never take a place.
MAX_REGISTRATIONS = 4096
#: A registration's patterns: past this many, or this many bytes in all (as JSON), they stand for
#: ``["*"]``, for the process that writes them (it registers ``["*"]``) and for every reader (it takes
#: ``["*"]``: the process gets every event, its bus keeps what it subscribes to). ``dropped_to``
#: names `DROPPED_TO_KEEP` peers at most (the others summed under ``"others"``).
MAX_PATTERNS = 256
PATTERNS_BYTES = 32 * 1024
DROPPED_TO_KEEP = 32
STAR = ("*",)
#: What `bus_peers` (``hybridcomms stats``) reads at most: registrations' bytes in all (64 at
#: `MAX_REGISTRATION`, thousands of ordinary ones), the smallest first; the others are ``unread``.
SURVEY_BYTES = 4 << 20
#: What a registration's name looks like: ``<pid>-<random hex>`` (anything else is not ours).
NAME = re.compile(r"[0-9]{1,10}-[0-9a-f]{1,32}")
#: Linux pids are below 2**22; anything outside a C int would make os.kill raise.
PID_MAX = 1 << 30


@dataclass(frozen=True, slots=True)
class Peer:
    name: str
    pid: int
    host: str
    patterns: tuple[str, ...]

    def wants(self, topic: str) -> bool:
        return any(pattern_matches(p, topic) for p in self.patterns)


def _heads(topic: str) -> Iterator[str]:
    """The proper dotted prefixes of ``topic`` (``a``, ``a.b`` for ``a.b.c``)."""
    end = topic.find(".")
    while end != -1:
        yield topic[:end]
        end = topic.find(".", end + 1)


def normalized(patterns: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """``patterns`` without repeats and without those another of them covers (``a.b`` and ``a.b.*``
    under ``a.*``; everything under ``*``): each topic is then matched by at most one of them."""
    if "*" in patterns:
        return STAR
    heads = _prefix_heads(patterns)
    return tuple(p for p in dict.fromkeys(patterns) if not _covered(p, heads))


def _prefix_heads(patterns: list[str] | tuple[str, ...]) -> set[str]:
    """The heads of the prefix patterns among ``patterns`` (``a.b`` for ``a.b.*``)."""
    return {p[:-2] for p in patterns if p.endswith(".*")}


def _covered(pattern: str, heads: set[str]) -> bool:
    """Whether a prefix pattern (its head in ``heads``) covers ``pattern``: ``a.b`` under ``a.b.*``,
    ``a.b`` and ``a.b.*`` under ``a.*``."""
    prefix = pattern.endswith(".*")
    base = pattern[:-2] if prefix else pattern
    return (not prefix and pattern in heads) or any(h in heads for h in _heads(base))


def effective_patterns(patterns: Any) -> tuple[str, ...] | None:
    """What a registration's ``patterns`` stand for, as every reader takes them: ``("*",)`` past
    `MAX_PATTERNS` of them (whatever they are) or `PATTERNS_BYTES` in all (what a writer registers
    then); else None if they are not a list of patterns a topic can match (strings of 1-`MAX_TOPIC`
    characters), or `normalized`. It looks at `MAX_PATTERNS` of them at most."""
    if type(patterns) is not list:
        return None
    if len(patterns) > MAX_PATTERNS:
        return STAR  # (what is in them is not looked at: they stand for everything)
    if not _matchable(patterns):
        return None
    if len(orjson.dumps(patterns)) > PATTERNS_BYTES:
        return STAR
    return normalized(patterns)


def _matchable(patterns: list[Any]) -> bool:
    """Whether every pattern is one a topic can match (a string of 1-`MAX_TOPIC` characters)."""
    return all(type(p) is str and 0 < len(p) <= MAX_TOPIC for p in patterns)


def open_bus_folder(root: Path, allowed: bool) -> tuple[int, int, int]:
    """(descriptor, folder mode, file mode) of ``<root>/.bus``, made if missing. A group root (0o770)
    gets group modes (0o770/0o660), else 0o700/0o600, set exactly whatever the umask, a setgid bit
    kept. An existing folder is checked as a mailbox folder is (`_fs.check_owner`): another user's is
    refused unless allowed; one of ours gets the modes above; another user's (allowed) is refused if
    its modes grant more than the root's do (others could then register and get every event)."""
    shown = str(root / BUS_FOLDER)
    fd, made, dir_mode, file_mode = _open_or_make(root, shown)
    try:
        if not made:
            _fs.check_owner(fd, shown, "a bus folder", "share_bus(..., allow_other_owner=True)", allowed)
        _settle_modes(fd, shown, dir_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd, dir_mode, file_mode


def _open_or_make(root: Path, shown: str) -> tuple[int, bool, int, int]:
    """(descriptor, whether made now, folder mode, file mode) of ``<root>/.bus``, made with the modes
    the root calls for (`_modes_of`) if missing."""
    root_fd = os.open(root, _fs.O_DIR)  # the root as given (a link a person chose is followed)
    try:
        dir_mode, file_mode = _modes_of(root_fd)
        made = False
        with contextlib.suppress(FileExistsError):
            os.mkdir(BUS_FOLDER, dir_mode, dir_fd=root_fd)
            made = True
        return _open_real_folder(root_fd, shown), made, dir_mode, file_mode
    finally:
        os.close(root_fd)


def _modes_of(root_fd: int) -> tuple[int, int]:
    """(folder mode, file mode): group modes under a group root (0o770), else private ones."""
    group = stat.S_IMODE(os.fstat(root_fd).st_mode) & 0o070 == 0o070
    return (0o770, 0o660) if group else (0o700, 0o600)


def _open_real_folder(root_fd: int, shown: str) -> int:
    """A descriptor of the bus folder under ``root_fd``, refused (`UnsafePathError`) if it is a link
    or not a folder."""
    try:
        return _fs.open_dir(BUS_FOLDER, dir_fd=root_fd)
    except OSError as exc:
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            raise UnsafePathError(
                f"{shown} is a symlink or not a folder; the bus folder must be a real folder"
            ) from None
        raise


def _settle_modes(fd: int, shown: str, dir_mode: int) -> None:
    """Our own bus folder gets ``dir_mode`` (a setgid bit kept); another user's is refused if its
    modes grant more than ``dir_mode`` does."""
    st = os.fstat(fd)
    mode = stat.S_IMODE(st.st_mode)
    if st.st_uid == os.geteuid():
        want = dir_mode | (mode & stat.S_ISGID)
        if mode != want:
            os.fchmod(fd, want)
    elif mode & 0o777 & ~dir_mode:
        raise UnsafePathError(
            f"{shown} (mode {mode:o}, of uid {st.st_uid}) grants more than its root's modes: others "
            "could register there and receive every event"
        )


def write_registration(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    """Replace ``name`` with ``data`` (mode exactly ``mode``), atomically and not committed (a
    registration matters only while its writer runs): `_fs.replace_atomically_at`, whose temporary
    name no one can guess (a co-tenant who makes one first cannot block the update)."""
    _fs.replace_atomically_at(dir_fd, name, data, mode, sync=False)


def registration_body(pid: int, patterns: list[str], drops: dict[str, int], others: int) -> bytes:
    """A registration, bounded whatever it records: patterns longer than a topic can be are left out
    (they match nothing that crosses), those another covers too (`normalized`), patterns past
    `MAX_PATTERNS` or `PATTERNS_BYTES` in all become ``["*"]`` (the process then gets every event,
    and its bus keeps what it subscribes to), and ``dropped_to`` names
    the `DROPPED_TO_KEEP` peers with the most drops, ``others`` and the rest summed under
    ``"others"``. So it always fits under `MAX_REGISTRATION`, which others read."""
    kept = list(normalized(_crossing(patterns)))
    if kept != ["*"] and _past_caps(kept):
        kept = ["*"]
    body = {"pid": pid, "host": HOST, "patterns": kept, "dropped_to": _dropped_to(drops, others)}
    return orjson.dumps(body)


def _past_caps(patterns: list[str]) -> bool:
    """Whether ``patterns`` are more than `MAX_PATTERNS`, or more than `PATTERNS_BYTES` as JSON."""
    return len(patterns) > MAX_PATTERNS or len(orjson.dumps(patterns)) > PATTERNS_BYTES


def _crossing(patterns: list[str]) -> list[str]:
    """The patterns that can match a topic that crosses: those longer than a topic can be left out,
    and ``["*"]`` if one of them is a prefix (``.*``) that matches topics as long as they can be."""
    kept: list[str] = []
    for p in patterns:
        if len(p) > MAX_TOPIC:
            if _matches_longest(p):
                return ["*"]  # it matches topics as long as they can be: only "*" says so
            continue
        if _encodable(p):  # (not a lone surrogate: no topic that crosses is one)
            kept.append(p)
    return kept


def _matches_longest(pattern: str) -> bool:
    """Whether ``pattern`` (longer than a topic) is a prefix (``.*``) that matches the longest topics."""
    return pattern.endswith(".*") and len(pattern) - 2 <= MAX_TOPIC


def _encodable(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _dropped_to(drops: dict[str, int], others: int) -> dict[str, int]:
    """The `DROPPED_TO_KEEP` peers with the most drops, ``others`` and the rest summed as ``others``."""
    ranked = sorted(drops.items(), key=lambda kv: -kv[1])
    dropped_to = dict(ranked[:DROPPED_TO_KEEP])
    others += sum(n for _, n in ranked[DROPPED_TO_KEEP:])
    if others:
        dropped_to["others"] = others
    return dropped_to


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: alive
    return True


def well_formed(body: Any) -> bool:
    """Whether a registration's body has the shape of one (a pid, a host, patterns)."""
    return (
        type(body) is dict
        and _is_pid(body.get("pid"))
        and _is_host(body.get("host"))
        and effective_patterns(body.get("patterns")) is not None
    )


def _is_pid(pid: Any) -> bool:
    """Whether a registration's ``pid`` is one a process can have."""
    return type(pid) is int and 0 < pid < PID_MAX


def _is_host(host: Any) -> bool:
    """Whether a registration's ``host`` is a host name (a string of 255 characters at most)."""
    return type(host) is str and len(host) <= 255


def scan(dir_fd: int) -> tuple[dict[str, int], list[tuple[str, int]]]:
    """One listing of the bus folder, by the types the listing gives (``d_type``: no call per entry):
    (*candidates*: the names ``<pid>-<hex>`` whose ``.json`` is a regular file and whose ``.sock`` is
    there and neither a regular file, a folder nor a link (a socket, or a FIFO: told apart when it is
    read), with their ``.json``'s inode; *orphans*: those whose ``.json`` is a regular file and whose
    ``.sock`` is missing or one of those, with the same). A process makes its socket before its
    registration and removes it after: an orphan is nobody's registration. Listed through a
    descriptor of its own (`_fs.listdir_at`). Where the filesystem gives no type, each is an ``lstat``."""
    jsons, socks = _listing(dir_fd)
    found: dict[str, int] = {}
    orphans: list[tuple[str, int]] = []
    match = NAME.fullmatch
    for stem, ino in jsons.items():
        if not match(stem):
            continue
        if stem in socks:
            found[stem] = ino
        else:
            orphans.append((stem, ino))
    return found, orphans


def _listing(dir_fd: int) -> tuple[dict[str, int], set[str]]:
    """(the stems of the ``.json`` regular files with their inodes, the stems of the ``.sock``
    entries that may be sockets) in the folder ``dir_fd``."""
    jsons: dict[str, int] = {}
    socks: set[str] = set()
    fd = os.open(".", _fs.O_DIR, dir_fd=dir_fd)
    try:
        with os.scandir(fd) as it:
            for entry in it:
                _note_entry(entry, jsons, socks)
    finally:
        os.close(fd)
    return jsons, socks


def _note_entry(entry: os.DirEntry[str], jsons: dict[str, int], socks: set[str]) -> None:
    """Add ``entry`` to ``jsons`` (a ``.json`` regular file: its stem and inode) or to ``socks``
    (a ``.sock`` that may be a socket: its stem); anything else is left out."""
    name = entry.name
    if name.endswith(".json"):
        if entry.is_file(follow_symlinks=False):
            jsons[name[:-5]] = entry.inode()
    elif name.endswith(".sock") and _may_be_socket(entry):
        socks.add(name[:-5])


def _may_be_socket(entry: os.DirEntry[str]) -> bool:
    """Neither a regular file, a folder nor a link (a socket, or a FIFO)."""
    return not (
        entry.is_file(follow_symlinks=False) or entry.is_dir(follow_symlinks=False) or entry.is_symlink()
    )


def registrations(dir_fd: int, budget: list[int] | None = None) -> Iterator[tuple[str, dict[str, Any]]]:
    """(name, body) of the well-formed registrations in the folder, its ``patterns`` as readers take
    them (`effective_patterns`); anything else is skipped. Only the names that can be registrations
    are looked at (`scan`: a ``.json`` beside something that may be a socket), as publishers do:
    files placed without a socket take no place. Past `MAX_REGISTRATIONS` of them, the newest
    (``mtime``) are kept. The folder is shared: a FIFO, a link, a giant file or a body of the wrong
    shape is passed over. ``budget``: ``[bytes, unread]``: the smallest registrations are read
    first, while ``bytes`` (decreased by each size) lasts; those left (and those past
    `MAX_REGISTRATIONS`) are counted in ``unread``."""
    for entry in _names_to_read(dir_fd, budget):
        if _spent(budget):
            continue
        body = _read_registration(dir_fd, entry, budget)
        if well_formed(body):
            body["patterns"] = list(effective_patterns(body["patterns"]) or ())
            yield entry[: -len(".json")], body


def _names_to_read(dir_fd: int, budget: list[int] | None) -> list[str]:
    """The file names of the registrations to read (`scan`), in reading order if there is a budget
    or more of them than `MAX_REGISTRATIONS` (`_in_reading_order`)."""
    found, _ = scan(dir_fd)
    names = [stem + ".json" for stem in found]
    if budget is not None or len(names) > MAX_REGISTRATIONS:
        names = _in_reading_order(dir_fd, names, budget)
    return names


def _spent(budget: list[int] | None) -> bool:
    """Whether the budget's bytes are used up; if so, the registration not read is counted."""
    if budget is None or budget[0] > 0:
        return False
    budget[1] += 1
    return True


def _sized(dir_fd: int, names: list[str]) -> list[tuple[int, int, str]]:
    """(size, -mtime, name) of the registrations ``names`` that are regular files of
    `MAX_REGISTRATION` at most (the others, and those gone, left out)."""
    sized = []
    for entry in names:
        item = _sized_entry(dir_fd, entry)
        if item is not None:
            sized.append(item)
    return sized


def _sized_entry(dir_fd: int, entry: str) -> tuple[int, int, str] | None:
    """(size, -mtime, name) of the registration file ``entry`` if it may be one (`fits_registration`)."""
    try:
        st = os.stat(entry, dir_fd=dir_fd, follow_symlinks=False)
    except OSError:
        return None
    return (st.st_size, -st.st_mtime_ns, entry) if fits_registration(st) else None


def fits_registration(st: os.stat_result) -> bool:
    """Whether a file (its ``lstat``) may be a registration: a regular file of `MAX_REGISTRATION` at most."""
    return stat.S_ISREG(st.st_mode) and st.st_size <= MAX_REGISTRATION


def _in_reading_order(dir_fd: int, names: list[str], budget: list[int] | None) -> list[str]:
    """The registrations ``names`` that are regular files of `MAX_REGISTRATION` at most, the newest
    `MAX_REGISTRATIONS` of them (those left out counted in ``budget[1]``), the smallest first if
    there is a ``budget``."""
    sized = _sized(dir_fd, names)
    if len(sized) > MAX_REGISTRATIONS:
        _keep_newest(sized, budget)
    if budget is not None:
        sized.sort()
    return [entry for _, _, entry in sized]


def _keep_newest(sized: list[tuple[int, int, str]], budget: list[int] | None) -> None:
    """Keep the newest `MAX_REGISTRATIONS` of ``sized`` (size, -mtime, name); those left out are
    counted in ``budget[1]``."""
    sized.sort(key=lambda item: item[1])  # the newest first
    if budget is not None:
        budget[1] += len(sized) - MAX_REGISTRATIONS
    del sized[MAX_REGISTRATIONS:]


def _read_registration(dir_fd: int, entry: str, budget: list[int] | None) -> Any:
    """The decoded body of the registration file ``entry`` (None if unreadable or not JSON); its
    bytes taken from ``budget[0]``."""
    try:
        data = _fs.read_regular(entry, MAX_REGISTRATION, dir_fd=dir_fd)
        if budget is not None:
            budget[0] -= len(data)
        return orjson.loads(data)
    except (OSError, orjson.JSONDecodeError):
        return None


def bound(dir_fd: int, name: str) -> bool:
    """Whether ``<name>.sock`` is a socket someone has bound (a connect to it is taken), looked at
    without following a link."""
    try:
        fd = os.open(name + ".sock", os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return False
    try:
        if not stat.S_ISSOCK(os.fstat(fd).st_mode):
            return False
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as probe:
            probe.connect(f"/proc/self/fd/{fd}")
        return True
    except OSError:
        return False
    finally:
        os.close(fd)


def bus_peers(root: str | os.PathLike[str], survey: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """The processes registered under ``root`` (for ``hybridcomms stats``): pid, host, patterns (as
    readers take them), whether alive, and the events dropped for peers they reported. A registration
    is anyone's to write: its drops are counted (``counted``, ``dropped``) only if it is one of a live
    process of this host whose socket is bound; ``dropped`` is 0 for the others (``reported`` keeps
    what they say). Bounded: at most `SURVEY_BYTES` of registrations are read, the smallest first (a
    process's own is small; giant ones are a co-tenant's); ``survey``, if given, gets ``unread``: how
    many were not."""
    folder = Path(root) / BUS_FOLDER
    if survey is not None:
        survey["unread"] = 0
    try:
        dir_fd = _fs.open_dir(str(folder))
    except OSError:
        return []
    try:
        return _surveyed(dir_fd, survey)
    finally:
        os.close(dir_fd)


def _surveyed(dir_fd: int, survey: dict[str, int] | None) -> list[dict[str, Any]]:
    """The rows of `bus_peers` for the folder ``dir_fd``, `SURVEY_BYTES` of registrations read at
    most; how many were not put in ``survey`` (``unread``)."""
    budget = [SURVEY_BYTES, 0]
    out = [_peer_row(dir_fd, name, body) for name, body in registrations(dir_fd, budget)]
    if survey is not None:
        survey["unread"] = budget[1]
    return out


def _reported_drops(body: dict[str, Any]) -> int:
    """The drops a registration says its process counted (whatever it says: positive ints summed)."""
    dropped = body.get("dropped_to")
    if type(dropped) is not dict:
        return 0
    return sum(v for v in dropped.values() if type(v) is int and v > 0)


def _liveness(dir_fd: int, name: str, body: dict[str, Any]) -> tuple[bool, bool]:
    """(whether the process of registration ``name`` may be alive: one of another host is taken
    as alive; whether its drops count: a live process of this host whose socket is bound)."""
    local = body["host"] == HOST
    live = not local or alive(body["pid"])
    return live, local and live and bound(dir_fd, name)


def _peer_row(dir_fd: int, name: str, body: dict[str, Any]) -> dict[str, Any]:
    """One row of `bus_peers`: its drops counted only for a live process of this host whose socket
    is bound."""
    reported = _reported_drops(body)
    live, counted = _liveness(dir_fd, name, body)
    return {
        "name": name,
        "pid": body["pid"],
        "host": body["host"],
        "patterns": body["patterns"],
        "alive": live,
        "counted": counted,
        "dropped": reported if counted else 0,
        "reported": reported,
    }
