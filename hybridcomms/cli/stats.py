"""``hybridcomms stats``: counts per state for every mailbox (or the ones named), the agents still on a
legacy Dream.OS layout, the shared bus; ``--fail-if`` for health checks, ``--prometheus`` for
node_exporter."""

from __future__ import annotations

import argparse
import operator
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeGuard

from .. import _fs
from .._urls import shown_url
from ..backends.file import FileMailbox
from ..errors import HybridCommsError
from ..states import State
from . import dreamos
from .common import (
    EXIT_ERROR,
    EXIT_OK,
    Parents,
    agents_of,
    human_age,
    need_mailbox,
    need_root,
    open_existing,
    parse_age,
    print_json,
    usage_error,
)

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["register"]

Row = dict[str, Any]

_COND_RE = re.compile(r"\s*(new|processing|done|dead|delayed|oldest)\s*(>=|<=|>|<|==)\s*(\S+)\s*\Z")
_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
    "==": operator.eq,
}


def _condition(cond: str) -> tuple[str, str, float]:
    """``dead>0`` -> (what, operator, limit); a condition it cannot read ends the command."""
    m = _COND_RE.match(cond)
    try:
        if m is None:
            raise ValueError(cond)
        what, op, raw = m.groups()
        return what, op, parse_age(raw) if what == "oldest" else float(raw)
    except (ValueError, argparse.ArgumentTypeError):  # a typo is bad usage (2), never "it held" (1)
        usage_error(f"hybridcomms stats: --fail-if {cond!r}: use e.g. dead>0, new>1000, oldest>10m")


def _value(row: Row, what: str) -> float:
    if what == "oldest":
        return float(row["new"]["oldest_age"] or 0.0)
    if what == "delayed":
        return float(row["delayed"])
    return float(row[what]["count"])


def _failing(conditions: list[str], rows: list[Row]) -> list[str]:
    """The conditions (``dead>0``, ``oldest>10m``) that hold for some mailbox, said as text."""
    out: list[str] = []
    for cond in conditions:
        what, op, limit = _condition(cond)
        for r in rows:
            value = _value(r, what)
            if _OPS[op](value, limit):
                out.append(f"{r['agent']}: {cond} ({what} is {value:g})")
    return out


def cmd_stats(args: argparse.Namespace, root: Path) -> int:
    url = args.url_resolved
    if url:
        return _report(args, shown_url(url), [], _remote_rows(args, url))
    need_root(root, "stats", False)
    if args.prometheus:
        from ..metrics import registry_for, write_textfile

        write_textfile(args.prometheus, registry_for(root))
    rows, legacy_rows = _file_rows(args, root)
    return _report(args, str(root), legacy_rows, rows, _bus(root))


def _entries(args: argparse.Namespace, root: Path) -> list[tuple[str, str | None, str, str | None]]:
    """(name shown, agent id or None, kind, problem) of the agents named, else of every entry of the root."""
    if args.agents:
        return [(a, a, "named", None) for a in agents_of(args, root)]
    from ..backends.file.inspection import survey_root

    return [(e.name, e.agent, e.kind, e.problem) for e in survey_root(root)]


def _file_rows(args: argparse.Namespace, root: Path) -> tuple[list[Row], list[Row]]:
    """The rows of the mailboxes under ``root``, and those of the agents on a legacy layout."""
    rows: list[Row] = []
    legacy_rows: list[Row] = []
    for name_shown, agent, kind, problem in _entries(args, root):
        status = _legacy_of(root, agent, kind)
        if status is not None:
            legacy_rows.append(status)
            continue
        row = _row(root, name_shown, agent, kind, problem)
        if row is not None:
            rows.append(row)
    return rows, legacy_rows


def _legacy_of(root: Path, agent: str | None, kind: str) -> Row | None:
    """The legacy Dream.OS layout an entry's agent still reads (None: none, or not an agent)."""
    return dreamos.legacy_status(root, agent) if agent is not None and kind != "broken" else None


def _row(root: Path, name_shown: str, agent: str | None, kind: str, problem: str | None) -> Row | None:
    """One entry's row: its counts, an error (one broken agent is its own row; the others are still
    counted), or None for what is not a mailbox."""
    if kind == "broken":
        return {"agent": name_shown, "error": problem}
    if kind == "named":
        need_mailbox(root, name_shown, "stats")  # an agent named that has no mailbox: a typo, an error
    counted = agent if kind in ("named", "mailbox") else None
    if counted is None:
        return None
    return _counts(root, name_shown, counted)


def _counts(root: Path, name_shown: str, agent: str) -> Row:
    """A mailbox's counts, opened read-only; its error as a row when it cannot be read."""
    try:
        with FileMailbox(root, agent, read_only=True, fsync="never") as mb:
            return mb.stats().to_dict()
    except (OSError, HybridCommsError) as exc:
        return {"agent": name_shown, "error": str(exc)}


def _bus(root: Path) -> dict[str, int]:
    """The processes sharing ephemeral events under the root (`hybridcomms.fanout`)."""
    from ..bus.fanout import bus_peers

    peers = bus_peers(root)
    alive = sum(1 for p in peers if p["alive"])
    return {"processes": alive, "dead": len(peers) - alive, "dropped": sum(p["dropped"] for p in peers)}


def _remote_rows(args: argparse.Namespace, url: str) -> list[Row]:
    if args.prometheus:
        raise SystemExit(
            "hybridcomms stats: --prometheus reads mailbox files; with --url use the Redis exporter"
        )
    rows = []
    for agent in agents_of(args, Path()):
        with open_existing(Path(), agent, "stats", False, url) as mb:
            rows.append(mb.stats().to_dict())
    return rows


def _report(
    args: argparse.Namespace,
    where: str,
    legacy_rows: list[Row],
    rows: list[Row],
    bus: dict[str, int] | None = None,
) -> int:
    """Print the rows (a table, or with --json one document); exit 1 if a --fail-if condition holds or
    a mailbox could not be read."""
    counted, broken = _split_broken(rows)
    failing = _failing(args.fail_if, counted)
    _say_problems(failing, broken)
    if args.json:
        _print_json_report(where, legacy_rows, rows, bus)
    else:
        _print_report(where, legacy_rows, rows, bus)
    return EXIT_ERROR if failing or broken else EXIT_OK


def _split_broken(rows: list[Row]) -> tuple[list[Row], list[Row]]:
    """The rows with counts, and those of mailboxes that could not be read."""
    counted: list[Row] = []
    broken: list[Row] = []
    for r in rows:
        (broken if "error" in r else counted).append(r)
    return counted, broken


def _print_json_report(
    where: str, legacy_rows: list[Row], rows: list[Row], bus: dict[str, int] | None
) -> None:
    """The ``--json`` document (the bus only under a root)."""
    extra = {"bus": bus} if bus is not None else {}
    print_json({"root": where, "agents": rows, "legacy": legacy_rows, **extra})


def _print_report(where: str, legacy_rows: list[Row], rows: list[Row], bus: dict[str, int] | None) -> None:
    """The report for people: the agents on a legacy layout, the table, the shared bus."""
    _print_legacy(legacy_rows)
    if not rows:
        if not legacy_rows:
            print(f"no mailboxes under {where}")
        return
    _print_table(rows)
    _print_bus(bus)


def _say_problems(failing: list[str], broken: list[Row]) -> None:
    for line in failing:
        print(f"hybridcomms stats: failing: {line}", file=sys.stderr)
    if broken:
        print(_broken_line(broken), file=sys.stderr)


def _broken_line(broken: list[Row]) -> str:
    """The mailboxes that could not be read, in one line: how many, the first five."""
    return (
        f"hybridcomms stats: {len(broken)} mailbox(es) could not be read: "
        + ", ".join(_fs.printable(r["agent"]) for r in broken[:5])
        + (", …" if len(broken) > 5 else "")
        + " (see their rows)"
    )


def _print_legacy(legacy_rows: list[Row]) -> None:
    for status in legacy_rows:
        print(
            f"{status['agent']}: legacy Dream.OS layout ({status['layout']}), {status['waiting']} waiting; "
            "not adopted (adopt with 'hybridcomms migrate')"
        )


_COLUMNS = [s.value for s in (State.NEW, State.PROCESSING, State.DONE, State.DEAD)]


def _print_table(rows: list[Row]) -> None:
    names = {id(r): _fs.printable(r["agent"]) for r in rows}
    width = max(len("agent"), *(len(n) for n in names.values()))
    print(_header(width))
    for r in rows:
        print(_table_line(r, names[id(r)], width))


def _header(width: int) -> str:
    """The table's first line: the agent column ``width`` wide, then the counts."""
    return f"{'agent':<{width}}  " + "  ".join(f"{c:>10}" for c in _COLUMNS) + f"  {'delayed':>8}  oldest new"


def _table_line(r: Row, name: str, width: int) -> str:
    """One mailbox's line: its counts, or why it could not be read."""
    if "error" in r:
        return f"{name:<{width}}  error: {_fs.printable(str(r['error']))}"
    return (
        f"{name:<{width}}  "
        + "  ".join(f"{r[c]['count']:>10}" for c in _COLUMNS)
        + f"  {r['delayed']:>8}  {human_age(r['new']['oldest_age'])}"
    )


def _print_bus(bus: dict[str, int] | None) -> None:
    if _bus_in_use(bus):
        print(
            f"bus: {bus['processes']} process(es) share ephemeral events"
            + (f", {bus['dead']} dead not yet pruned" if bus["dead"] else "")
            + f"; {bus['dropped']} event(s) dropped for subscribers that did not keep up"
        )


def _bus_in_use(bus: dict[str, int] | None) -> TypeGuard[dict[str, int]]:
    """Whether the bus has processes to report (alive, or dead and not yet pruned)."""
    return bool(bus and (bus["processes"] or bus["dead"]))


def register(sub: Subparsers, parents: Parents) -> None:
    st = sub.add_parser(
        "stats",
        parents=[parents.mailboxes],
        help="counts per state for every mailbox (or the ones named)",
        description="Counts the messages of every mailbox under the root (or of the agents named) in each "
        "state (new, processing, done, dead), the delayed ones (backing off in new/) and the age of the "
        "oldest waiting. Agents still on a legacy Dream.OS layout are listed with how many messages wait "
        "there. --fail-if exits 1 when a condition holds for some mailbox (cron, health checks); "
        "--prometheus writes the metrics for node_exporter's textfile collector.",
    )
    st.add_argument("agents", nargs="*", help="only these agents (default: every mailbox)")
    st.add_argument(
        "--prometheus",
        metavar="FILE",
        help="write the metrics to FILE in the Prometheus text format (node_exporter's textfile collector)",
    )
    st.add_argument(
        "--fail-if",
        action="append",
        default=[],
        metavar="COND",
        help="exit 1 if a condition holds for any mailbox, e.g. 'dead>0', 'new>1000', 'oldest>10m' "
        "(states: new, processing, done, dead, delayed; oldest: age of the oldest waiting)",
    )
    st.add_argument("--json", action="store_true", help="print JSON (ages in seconds)")
    st.set_defaults(func=cmd_stats)
