"""The ``hybridcomms`` command.

    hybridcomms [--root R] send --to AGENT --topic T --payload JSON [--priority P] [--from SENDER]
                                [--id ID] [--delay AGE] [--ttl AGE] [--adopt] [--json]
    hybridcomms [--root R] recv AGENT [--timeout S] [--adopt]
    hybridcomms [--root R] stats [AGENT ...] [--json]
    hybridcomms [--root R] recover [AGENT ...] [--json]
    hybridcomms [--root R] demo
    hybridcomms [--root R] work AGENT [--concurrency N] [--timeout S] [--grace S] [--json] -- CMD [ARGS...]
    hybridcomms systemd-unit watch|work
    hybridcomms [--root R] watch [--json] [--exec CMD] [--exec-jobs N] [--exec-queue N] [--grace S]
                                     [--recover-every S] [--rescan-every S]
    hybridcomms [--policy FILE] policy explain TOPIC [--priority P] [--broadcast] [--route R] [--json]
    hybridcomms [--policy FILE] policy show
    hybridcomms [--root R] migrate [--dry-run] [--no-backup] [--group] [--json]
    hybridcomms completion bash|zsh|fish

The mailbox root is ``--root``, else ``$HYBRIDCOMMS_ROOT``, else
``runtime/agent_comms/agent_mailboxes`` under the current directory (the Dream.OS location).

The routing policy is found as every part finds it (`hybridcomms.policy.find_policy`): ``--policy FILE``,
else ``$HYBRIDCOMMS_POLICY``, else ``./hybridcomms.toml``, else ``[tool.hybridcomms.policy]`` in
``./pyproject.toml``, else the shipped defaults. ``policy explain`` and ``policy show`` say which.

Exit codes: 0 done (also when the reader of the output stopped early: ``ls A | head -1``); 1 an
error (one line on stderr says what; ``HYBRIDCOMMS_DEBUG=1`` adds the traceback); 2 bad usage (also
``top`` without a terminal); 3 ``recv`` found no message; 69 the backend cannot be reached
(``--url``'s Redis refused, timed out, refused the credentials, or its host does not resolve); 70
``work``: a consumer thread died; 78 ``work``: its command cannot be started; 130 interrupted. See
`hybridcomms._cli_errors`.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, NoReturn

import orjson

from . import __version__, _fs, _log
from ._cli_errors import run_command, usage_error
from ._fs import shown
from ._outage import one_line, reason, unreachable
from ._text import json_text, printable
from ._urls import URL_ENV, backend_of, shown_url, url_from_environ
from .backend import Mailbox
from .errors import HybridCommsError
from .mailbox import DEFAULT_ROOT, FileMailbox, check_agent_id, list_agents
from .message import Message, Priority
from .policy import Decision, Policy, Route, find_policy
from .recovery import RecoveryReport
from .states import State

__all__ = ["main", "resolve_policy", "resolve_root"]

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_EMPTY = 0, 1, 2, 3
#: The systemd units shipped in the package (``hybridcomms/systemd/``) that ``systemd-unit`` prints.
SYSTEMD_UNITS = {"watch": "hybridcomms-watch.service", "work": "hybridcomms-work@.service"}


def resolve_root(arg: str | None, environ: dict[str, str] | None = None) -> Path:
    """``--root``, else ``$HYBRIDCOMMS_ROOT``, else the Dream.OS default under the current directory."""
    env = os.environ if environ is None else environ
    return Path(arg or env.get("HYBRIDCOMMS_ROOT") or DEFAULT_ROOT)


def resolve_policy(arg: str | None, environ: dict[str, str] | None = None, cwd: Path | None = None) -> Policy:
    """The policy the CLI uses: `find_policy`, the one order every part uses, with ``--policy`` as its
    argument."""
    policy = find_policy(arg or None, environ=environ, cwd=cwd)
    return replace(policy, found_by="--policy") if arg else policy


def durable_target(decision: Decision, url: str | None, root: Path) -> str | None:
    """Where the durable copy of a message goes, as a URL: the rule's backend, else the agent's own
    (``url``, else files under ``root``: ``file://<root>``); None when the route has no durable copy.
    Shown without a password."""
    if not decision.route.durable:
        return None
    where = decision.backend or url
    if where is None:
        return f"file://{root.absolute()}"
    if backend_of(where) == "file":
        return f"file://{Path(where.removeprefix('file://')).absolute()}"
    return shown_url(where)


def _print_json(obj: Any) -> None:
    sys.stdout.write(json_text(obj, indent=True) + "\n")


_PRIORITY_WORDS = {"LOW", "MEDIUM", "HIGH", "CRITICAL", "NORMAL", "INFO", "0", "1", "2", "3"}


def _priority(text: str) -> Priority:
    """A priority the CLI knows (a name, a Dream.OS spelling, 0-3); anything else is an error."""
    if text.strip().upper() not in _PRIORITY_WORDS:
        raise argparse.ArgumentTypeError(
            f"unknown priority {text!r}: use LOW, MEDIUM, HIGH or CRITICAL (also NORMAL, INFO, or 0-3)"
        )
    return Priority.parse(text)


def _read_payload(spec: str, limit: int) -> Any:
    """``--payload``: JSON text, ``-`` (read stdin) or ``@FILE``; at most ``limit`` bytes."""
    if spec == "-":
        raw = sys.stdin.buffer.read(limit + 1)
        where = "stdin"
    elif spec.startswith("@"):
        where = spec[1:]
        try:
            with open(where, "rb") as f:
                raw = f.read(limit + 1)
        except OSError as exc:
            raise SystemExit(f"hybridcomms send: cannot read --payload {spec}: {exc.strerror}") from None
    else:
        raw, where = os.fsencode(spec), "--payload"  # argv holds undecodable bytes as surrogates
    if len(raw) > limit:
        raise SystemExit(f"hybridcomms send: the payload from {where} is over the limit of {limit} bytes")
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise SystemExit(f"hybridcomms send: the payload from {where} is not valid JSON: {exc}") from None


def _headers(pairs: list[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise SystemExit(f"hybridcomms send: --header wants KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


def _cmd_send(args: argparse.Namespace, root: Path) -> int:
    from .message import DEFAULT_MAX_MESSAGE_SIZE

    payload = _read_payload(args.payload, DEFAULT_MAX_MESSAGE_SIZE)
    policy = resolve_policy(getattr(args, "policy", None))
    decision = policy.decide(args.topic, priority=args.priority, addressed=True, override=args.route)
    if not decision.route.durable:
        raise SystemExit(
            f"hybridcomms send: {args.topic} is {decision.route.value} under the routing policy "
            f"({decision.reason}): an ephemeral event lives on a process's in-memory bus, which a command "
            "cannot reach; send it from the agent, or give --route durable to deliver it to the mailbox"
        )
    options: dict[str, Any] = {}
    if args.id:
        options["id"] = args.id  # the same id again: a resend, not a new message
    message = Message(
        topic=args.topic,
        payload=payload,
        sender=args.sender,
        recipient=args.to,
        priority=args.priority,
        correlation_id=args.correlation_id,
        reply_to=args.reply_to,
        headers=_headers(args.header),
        ttl=args.ttl,
        **options,
    )
    url = args.url_resolved
    if decision.backend is not None:  # the rule sends its durable copies elsewhere, as Comms does
        root, url = _rule_backend(decision.backend, args.topic, root)
    adopt = args.adopt or policy.adopts(args.to)
    legacy = None if adopt or url else _legacy_status(root, check_agent_id(args.to))
    if legacy is not None and (args.delay or args.ttl is not None):
        raise SystemExit(
            f"hybridcomms send: {args.to} reads the legacy Dream.OS layout, whose readers know no "
            "--delay or --ttl; send with --adopt to put it into a hybridcomms mailbox "
            "(or run 'hybridcomms migrate')"
        )
    if legacy is not None:
        # Delivery follows the recipient: a Dream.OS agent still reading its legacy files gets the
        # message there, in the form it reads; its mailbox is not created behind its back.
        from .compat.dreamos._delivery import deliver
        from .compat.dreamos.legacy import to_legacy_dict

        where = deliver(root, args.to, to_legacy_dict(message))
        _report_sent(args, message, decision, backend="file", path=where, legacy=True)
        print(
            f"hybridcomms send: {args.to} reads the legacy Dream.OS layout: written to "
            f"{where.relative_to(root)}; to move it to hybridcomms run 'hybridcomms migrate' "
            "(or send with 'hybridcomms send --adopt')",
            file=sys.stderr,
        )
        return EXIT_OK
    from .backend import put_once

    with _open_existing(root, args.to, "send", True, url, fsync=args.fsync) as mb:
        written: Path | None = None
        if args.id:
            existing = put_once(mb, message, delay=args.delay)
        elif isinstance(mb, FileMailbox):
            existing = None
            written = mb.path / State.NEW.folder / mb.put_file(message, delay=args.delay)
        else:
            existing = None
            mb.put(message, delay=args.delay)
        backend = "file" if isinstance(mb, FileMailbox) else "redis"
        if existing is not None:  # an idempotent resend: the message is there already
            _report_sent(
                args,
                message,
                decision,
                backend=backend,
                path=existing.path,
                url=url,
                state=existing.state,
                sent=False,
            )
            print(
                f"hybridcomms send: {message.id} is already in {args.to}'s mailbox "
                f"({existing.state.value}/); not sent again",
                file=sys.stderr,
            )
            return EXIT_OK
        if written is None and isinstance(mb, FileMailbox) and args.json:
            info = mb.get(message.id)  # put_once stored it: where?
            written = info.path if info is not None else None
        _report_sent(args, message, decision, backend=backend, path=written, url=url, state=State.NEW)
    return EXIT_OK


def _rule_backend(backend: str, topic: str, root: Path) -> tuple[Path, str | None]:
    """(root, url) of the backend a policy rule names for ``topic``'s durable copies."""
    kind = backend_of(backend)
    if kind == "memory":
        raise SystemExit(
            f"hybridcomms send: the routing policy sends {topic} to {shown_url(backend)}, a mailbox that "
            "lives inside one process; a command cannot reach it"
        )
    if kind == "file":
        return Path(backend.removeprefix("file://")), None
    return root, backend


def _report_sent(
    args: argparse.Namespace,
    message: Message,
    decision: Decision,
    *,
    backend: str,
    path: Path | None = None,
    url: str | None = None,
    legacy: bool = False,
    state: State | None = None,
    sent: bool = True,
) -> None:
    """What ``send`` prints on stdout: the id, or with ``--json`` one document saying where it went."""
    if not args.json:
        print(message.id)
        return
    _print_json(
        {
            "id": message.id,
            "agent": args.to,
            "topic": message.topic,
            "route": decision.route.value,  # durable or both (an ephemeral topic is refused)
            "reason": decision.reason,  # the policy rule that chose the route
            "backend": backend,  # "file" or "redis"
            "path": shown(str(path.absolute())) if path is not None else None,  # the file it is in
            "url": shown_url(url) if url else None,  # the Redis, its password hidden
            "legacy": legacy,  # written to a legacy Dream.OS layout (inbox.json or inbox/), not new/
            "sent": sent,  # false: an id sent before and still there; nothing was written
            "state": state.value if state is not None else None,  # where it is now (null: legacy)
        }
    )


def _legacy_status(root: Path, agent: str) -> dict[str, Any] | None:
    """The legacy layout an agent still reads (None if it has a hybridcomms mailbox or no legacy files)."""
    agent_dir = root / agent
    if not (agent_dir / "inbox.json").exists() and not (agent_dir / "inbox").exists():
        return None  # the common case: no Dream.OS files, no compat import
    from .compat.dreamos.legacy import legacy_status

    return legacy_status(root, agent)


def _legacy_refusal(command: str, status: dict[str, Any]) -> str:
    agent = status["agent"]
    return (
        f"hybridcomms {command}: {agent} is on the legacy Dream.OS layout ({status['layout']}, "
        f"{status['waiting']} message(s) waiting there) and has no hybridcomms mailbox yet; adopt it "
        "explicitly: 'hybridcomms migrate' (while its legacy reader is stopped), a policy 'adopt' entry, "
        f"or 'hybridcomms recv {agent} --adopt'"
    )


def _need_root(root: Path, command: str, create: bool) -> None:
    """A command that reads: a missing root is an error (a typo must not "succeed"), unless --create."""
    if not create and not root.is_dir():
        raise SystemExit(
            f"hybridcomms {command}: no mailbox root at {root} (check --root or $HYBRIDCOMMS_ROOT; "
            "a first 'hybridcomms send', 'hybridcomms recv AGENT --create' or 'hybridcomms watch --create' "
            "makes it)"
        )


def resolve_url(arg: str | None, environ: dict[str, str] | None = None) -> str | None:
    """``--url``, else ``$HYBRIDCOMMS_URL``, else the file ``$HYBRIDCOMMS_URL_FILE`` names; None for
    files under the root."""
    try:
        url = arg or url_from_environ(environ)
    except ValueError as exc:
        raise SystemExit(f"hybridcomms: {exc}") from None
    if url is None:
        return None
    kind = backend_of(url)
    if kind == "memory":
        usage_error("hybridcomms: --url memory://…: a memory mailbox lives in one process, out of reach")
    if kind not in ("redis", "file") or "://" not in url:
        usage_error(f"hybridcomms: --url {shown_url(url)}: use redis://, rediss://, unix:// or file://")
    return url


def _open_existing(
    root: Path, agent: str, command: str, create: bool, url: str | None = None, **options: Any
) -> Mailbox:
    if url is not None:
        from .backend import open_mailbox

        file_only = ("fsync", "read_only")
        return open_mailbox(
            url, agent, create=create, **{k: v for k, v in options.items() if k not in file_only}
        )
    _need_root(root, command, create)
    if not create:
        _need_mailbox(root, agent, command)
    return FileMailbox(root, agent, create=create, **options)


def _need_mailbox(root: Path, agent: str, command: str) -> None:
    """An agent named to a command that reads must have a mailbox: its ``new/`` folder (all it takes,
    for one adopted by hand; the other folders are made by the first command that writes)."""
    if not (root / check_agent_id(agent) / "new").is_dir():
        raise SystemExit(
            f"hybridcomms {command}: no mailbox for {agent} under {root} ('hybridcomms send --to {agent} …' "
            f"or 'hybridcomms recv {agent} --create' makes it)"
        )


def _message_json(message: Message, **extra: Any) -> dict[str, Any]:
    out = message.to_dict()
    out.update(extra)
    return out


def _cmd_recv(args: argparse.Namespace, root: Path) -> int:
    url = args.url_resolved
    legacy = None if url else _legacy_status(root, check_agent_id(args.agent))
    if legacy is not None and not args.adopt and not resolve_policy(args.policy).adopts(args.agent):
        print(_legacy_refusal("recv", legacy), file=sys.stderr)
        return EXIT_ERROR
    if args.count < 1:
        raise SystemExit("hybridcomms recv: --count must be at least 1")
    create = args.create or legacy is not None
    with _open_existing(root, args.agent, "recv", create, url, fsync=args.fsync) as mb:
        if legacy is not None:  # adopted now, explicitly: take what its legacy writers dropped
            from .compat.dreamos.legacy import ingest

            ingest(mb)
        lines = args.count > 1 or args.follow
        if args.peek:
            return _peek(mb, args, lines)
        stop = _stop_on_signals(mb) if args.follow else None
        got = 0
        while args.follow or got < args.count:
            timeout = 1.0 if args.follow else (args.timeout if got == 0 else 0)
            delivery = mb.claim(timeout=timeout, cancel=stop)
            if delivery is None:
                if args.follow and not (stop is not None and stop.is_set()):
                    continue
                break
            out = _message_json(delivery.message, attempt=delivery.attempt)
            try:
                if lines:
                    sys.stdout.write(json_text(out) + "\n")
                else:
                    _print_json(out)
                sys.stdout.flush()  # written out before it is settled
            except BrokenPipeError:  # the reader is gone: the message goes back, due now
                delivery.nack(delay=0, error="recv: its output was closed before the message was written")
                raise
            # Settled only once it is written out: acked, or with --no-ack given back for later.
            if args.no_ack:
                delivery.nack(delay=args.lease, error="recv --no-ack: printed, not acknowledged")
            else:
                delivery.ack()
            got += 1
        if got == 0 and not args.follow:
            print(f"hybridcomms recv: no message for {args.agent}", file=sys.stderr)
            return EXIT_EMPTY
    return EXIT_OK


def _peek(mb: Mailbox, args: argparse.Namespace, lines: bool) -> int:
    """The next messages in claim order, without claiming them (nothing changes)."""
    infos = sorted(mb.list(State.NEW), key=lambda i: i.name)
    shown = 0
    for info in infos:
        if shown >= args.count:
            break
        try:
            message = mb.read(info)
        except (OSError, HybridCommsError, KeyError):
            continue  # claimed meanwhile, or undecodable (the next claim dead-letters it)
        out = _message_json(message, state="new", file=info.name)
        if lines:
            sys.stdout.write(json_text(out) + "\n")
        else:
            _print_json(out)
        shown += 1
    if shown == 0:
        print(f"hybridcomms recv: no message for {mb.agent_id}", file=sys.stderr)
        return EXIT_EMPTY
    return EXIT_OK


def _stop_on_signals(mb: Mailbox) -> threading.Event:
    stop = threading.Event()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set()
        mb.wake()

    for s in (signal.SIGTERM, signal.SIGINT):
        signal.signal(s, on_signal)
    return stop


def _agents(args: argparse.Namespace, root: Path) -> list[str]:
    if args.agents:
        return [check_agent_id(a) for a in args.agents]
    if args.url_resolved:
        from .redis_mailbox import redis_agents

        return redis_agents(args.url_resolved)
    return list_agents(root)


_COND_RE = re.compile(r"\s*(new|processing|done|dead|delayed|oldest)\s*(>=|<=|>|<|==)\s*(\S+)\s*\Z")


def _failing(conditions: list[str], rows: list[dict[str, Any]]) -> list[str]:
    """The conditions (``dead>0``, ``oldest>10m``) that hold for some mailbox, said as text."""
    from ._inspect_commands import parse_age

    out: list[str] = []
    for cond in conditions:
        m = _COND_RE.match(cond)
        if m is None:
            raise SystemExit(f"hybridcomms stats: --fail-if {cond!r}: use e.g. dead>0, new>1000, oldest>10m")
        what, op, raw = m.groups()
        limit = parse_age(raw) if what == "oldest" else float(raw)
        for r in rows:
            if what == "oldest":
                value = r["new"]["oldest_age"] or 0.0
            elif what == "delayed":
                value = r["delayed"]
            else:
                value = r[what]["count"]
            holds = {
                ">": value > limit,
                "<": value < limit,
                ">=": value >= limit,
                "<=": value <= limit,
                "==": value == limit,
            }[op]
            if holds:
                out.append(f"{r['agent']}: {cond} ({what} is {value:g})")
    return out


def _cmd_stats(args: argparse.Namespace, root: Path) -> int:
    url = args.url_resolved
    if url:
        return _stats_rows(args, shown_url(url), [], _remote_rows(args, url))
    _need_root(root, "stats", False)
    if args.prometheus:
        from .metrics import registry_for, write_textfile

        write_textfile(args.prometheus, registry_for(root))
    rows: list[dict[str, Any]] = []
    legacy_rows = []
    entries: list[tuple[str, str | None, str, str | None]]
    if args.agents:
        entries = [(a, a, "named", None) for a in _agents(args, root)]
    else:
        from .inspection import survey_root

        entries = [(e.name, e.agent, e.kind, e.problem) for e in survey_root(root)]
    for name_shown, agent, kind, problem in entries:
        status = _legacy_status(root, agent) if agent is not None and kind != "broken" else None
        if status is not None:
            legacy_rows.append(status)
            continue
        if kind == "named":
            _need_mailbox(root, name_shown, "stats")  # an agent named that has no mailbox: a typo, an error
        elif agent is None or kind != "mailbox":
            if kind == "broken":  # one broken agent is its own row; the others are still counted
                rows.append({"agent": name_shown, "error": problem})
            continue
        assert agent is not None
        try:
            with FileMailbox(root, agent, read_only=True, fsync="never") as mb:
                rows.append(mb.stats().to_dict())
        except (OSError, HybridCommsError) as exc:
            rows.append({"agent": name_shown, "error": str(exc)})
    from .fanout import bus_peers

    peers = bus_peers(root)
    bus = {
        "processes": sum(1 for p in peers if p["alive"]),
        "dead": sum(1 for p in peers if not p["alive"]),
        "dropped": sum(p["dropped"] for p in peers),
    }
    return _stats_rows(args, str(root), legacy_rows, rows, bus)


def _remote_rows(args: argparse.Namespace, url: str) -> list[dict[str, Any]]:
    if args.prometheus:
        raise SystemExit(
            "hybridcomms stats: --prometheus reads mailbox files; with --url use the Redis exporter"
        )
    rows = []
    for agent in _agents(args, Path()):
        with _open_existing(Path(), agent, "stats", False, url) as mb:
            rows.append(mb.stats().to_dict())
    return rows


def _stats_rows(
    args: argparse.Namespace,
    where: str,
    legacy_rows: list[dict[str, Any]],
    rows: list[dict[str, Any]],
    bus: dict[str, int] | None = None,
) -> int:
    broken = [r for r in rows if "error" in r]
    counted = [r for r in rows if "error" not in r]
    failing = _failing(args.fail_if, counted)
    for line in failing:
        print(f"hybridcomms stats: failing: {line}", file=sys.stderr)
    if broken:
        print(
            f"hybridcomms stats: {len(broken)} mailbox(es) could not be read: "
            + ", ".join(_fs.printable(r["agent"]) for r in broken[:5])
            + (", …" if len(broken) > 5 else "")
            + " (see their rows)",
            file=sys.stderr,
        )
    code = EXIT_ERROR if failing or broken else EXIT_OK
    if args.json:
        extra = {"bus": bus} if bus is not None else {}
        _print_json({"root": where, "agents": rows, "legacy": legacy_rows, **extra})
        return code
    for status in legacy_rows:
        print(
            f"{status['agent']}: legacy Dream.OS layout ({status['layout']}), {status['waiting']} waiting; "
            "not adopted (adopt with 'hybridcomms migrate')"
        )
    if not rows:
        if not legacy_rows:
            print(f"no mailboxes under {where}")
        return code
    from ._inspect_commands import human_age

    cols = [s.value for s in (State.NEW, State.PROCESSING, State.DONE, State.DEAD)]
    names = {id(r): _fs.printable(r["agent"]) for r in rows}
    width = max(len("agent"), *(len(n) for n in names.values()))
    print(f"{'agent':<{width}}  " + "  ".join(f"{c:>10}" for c in cols) + f"  {'delayed':>8}  oldest new")
    for r in rows:
        if "error" in r:
            print(f"{names[id(r)]:<{width}}  error: {_fs.printable(str(r['error']))}")
            continue
        print(
            f"{names[id(r)]:<{width}}  "
            + "  ".join(f"{r[c]['count']:>10}" for c in cols)
            + f"  {r['delayed']:>8}  {human_age(r['new']['oldest_age'])}"
        )
    if bus and (bus["processes"] or bus["dead"]):
        print(
            f"bus: {bus['processes']} process(es) share ephemeral events"
            + (f", {bus['dead']} dead not yet pruned" if bus["dead"] else "")
            + f"; {bus['dropped']} event(s) dropped for subscribers that did not keep up"
        )
    return code


def _cmd_recover(args: argparse.Namespace, root: Path) -> int:
    """Every mailbox is tried, whatever happens to one of them; the exit is non-zero if any failed."""
    url = args.url_resolved
    if not url:
        _need_root(root, "recover", False)
    failed = 0
    rows: list[dict[str, Any]] = []
    for agent in _agents(args, root):
        try:
            with _open_existing(root, agent, "recover", False, url) as mb:
                rep = mb.recover()
        except Exception as exc:
            if unreachable(exc) is not None:
                raise  # the backend is down: no other mailbox will do better (one line, exit 69)
            failed += 1
            error = f"{type(exc).__name__}: {reason(exc)}"
            print(f"hybridcomms recover: {agent}: {error}", file=sys.stderr)
            rows.append(_recovery_row(agent, RecoveryReport(), error))
            continue
        rows.append(_recovery_row(agent, rep))
        if args.json:
            continue
        if rep.busy:
            print(f"{agent}: another recovery is running on it; skipped")
            continue
        print(
            f"{agent}: returned {len(rep.returned)}, expired {len(rep.expired)}, "
            f"dead {len(rep.dead)}, tmp removed {len(rep.tmp_removed)}"
            + (f", {len(rep.errors)} entries left in place" if rep.errors else "")
        )
        for entry, why in rep.errors:
            print(f"  left {entry}: {why}")
    if args.json:
        _print_json({"root": shown_url(url) if url else str(root), "agents": rows, "failed": failed})
    return EXIT_ERROR if failed else EXIT_OK


def _recovery_row(agent: str, rep: RecoveryReport, error: str | None = None) -> dict[str, Any]:
    """One mailbox's recovery for ``recover --json``: lists of message ids (or file names), and the
    error if the mailbox failed (then the lists are empty)."""
    return {
        "agent": agent,
        "busy": rep.busy,  # another pass was running on it: this one did nothing
        "returned": [shown(i) for i in rep.returned],  # its consumer died: back to new/
        "expired": [shown(i) for i in rep.expired],  # its lease ran out: back to new/
        "dead": [shown(i) for i in rep.dead],  # out of attempts, or not a message: to dead/
        "tmp_removed": [shown(n) for n in rep.tmp_removed],
        "left": [{"entry": shown(e), "why": shown(w)} for e, w in rep.errors],
        "error": shown(error) if error is not None else None,
    }


def _cmd_policy_explain(args: argparse.Namespace, root: Path) -> int:
    policy = resolve_policy(args.policy)
    priority = Priority.parse(args.priority)
    d = policy.decide(args.topic, priority=priority, addressed=not args.broadcast, override=args.route)
    target = durable_target(d, args.url_resolved, root)
    target = None if target is None else _fs.shown(target)
    topic = _fs.shown(args.topic)
    if args.json:
        _print_json(
            {
                "topic": topic,
                "addressed": not args.broadcast,
                "priority": priority.name,
                "route": d.route.value,
                "reason": d.reason,
                "rule": d.rule.name if d.rule is not None else None,
                "pattern": d.pattern,
                "backend": target,
                "backend_from": _backend_from(d, args) if target is not None else None,
                "source": _fs.shown(policy.source),
                "found_by": _fs.shown(policy.found_by),
            }
        )
        return EXIT_OK
    who = "a broadcast" if args.broadcast else "a message to one agent"
    print(f"{d.route.value}")
    print(printable(f"  {topic} as {who}, priority {priority.name}"))
    print(printable(f"  chosen by: {d.reason}"))
    if target is None:
        print("  durable copy: none (an event on the bus only)")
    else:
        also = "; and an event on the bus" if d.route is Route.BOTH else ""
        print(f"  durable copy to: {target} ({_backend_from(d, args)}){also}")
    print(printable(f"  policy from {policy.provenance}"))
    return EXIT_OK


def _backend_from(decision: Decision, args: argparse.Namespace) -> str:
    """Why the durable copy goes where `durable_target` says."""
    if decision.backend is not None:
        return "the rule's backend"
    if args.url_resolved:
        if getattr(args, "url", None):
            return "--url"
        return "$HYBRIDCOMMS_URL" if os.environ.get(URL_ENV) else "$HYBRIDCOMMS_URL_FILE"
    return "the mailbox root"


def _cmd_policy_show(args: argparse.Namespace, root: Path) -> int:
    print(resolve_policy(args.policy).describe())
    return EXIT_OK


def _cmd_inspect(args: argparse.Namespace, root: Path) -> int:
    from . import _inspect_commands as ic

    url = args.url_resolved
    if url:
        if args.command in ("doctor", "tail", "top"):
            raise SystemExit(f"hybridcomms {args.command}: reads mailbox files; not available with --url")
        if args.command == "show":
            return int(ic.cmd_show(args, root, url))
        with _open_existing(root, args.agent, args.command, False, url) as remote:
            per = {"ls": ic.cmd_ls, "requeue": ic.cmd_requeue, "purge": ic.cmd_purge}[args.command]
            return int(per(args, remote))
    _need_root(root, args.command, False)
    if args.command in ("show", "doctor", "tail", "top"):
        fn = {"show": ic.cmd_show, "doctor": ic.cmd_doctor, "tail": ic.cmd_tail, "top": ic.cmd_top}[
            args.command
        ]
        for agent in getattr(args, "agents", None) or []:
            if args.command == "doctor":  # a named mailbox must exist; what is wrong with it is a finding
                _need_mailbox(root, agent, args.command)
            else:
                _open_existing(root, agent, args.command, False, read_only=True).close()
        return int(fn(args, root))
    # What only reads opens the mailbox read-only: nothing is created, not even a folder it lacks.
    read_only = args.command == "ls" or (args.command == "purge" and args.dry_run)
    with _open_existing(root, args.agent, args.command, False, fsync=args.fsync, read_only=read_only) as mb:
        per_agent = {"ls": ic.cmd_ls, "requeue": ic.cmd_requeue, "purge": ic.cmd_purge}[args.command]
        return int(per_agent(args, mb))


def _cmd_work(args: argparse.Namespace, root: Path) -> int:
    from ._work_command import run_work

    return run_work(args, root)


def _cmd_systemd_unit(args: argparse.Namespace, root: Path) -> int:
    from importlib.resources import files

    sys.stdout.write((files("hybridcomms") / "systemd" / SYSTEMD_UNITS[args.service]).read_text())
    return EXIT_OK


def _cmd_completion(args: argparse.Namespace, root: Path) -> int:
    from ._completion import script

    sys.stdout.write(script(args.shell))
    return EXIT_OK


def _cmd_watch(args: argparse.Namespace, root: Path) -> int:
    from ._watch_command import run_watch

    return run_watch(args, root)


def _cmd_migrate(args: argparse.Namespace, root: Path) -> int:
    from ._progress import Phases, Progress
    from .compat.dreamos.migrate import migrate

    dir_mode, file_mode = (0o770, 0o660) if args.group else (0o700, 0o600)
    # On a terminal: the backup copy's size, then the messages converted, redrawn on stderr.
    progress = Phases(
        backup=Progress("backup", sizes=True), messages=Progress("migrate", unit="messages converted")
    )
    try:
        result = migrate(
            root,
            dry_run=args.dry_run,
            backup=not args.no_backup,
            fsync=args.fsync or "always",
            dir_mode=dir_mode,
            file_mode=file_mode,
            progress=progress,
        )
    finally:
        progress.end()
    if args.json:
        print(json_text(result.to_dict(), indent=True))
    else:
        print(result.describe())
    return EXIT_OK


def _demo_files(root: Path) -> int:
    """How many messages an earlier demo left in ``Demo-Agent``; SystemExit if any of them is not the
    demo's own (a real message sent there is never deleted by running the demo)."""
    try:
        with FileMailbox(root, "Demo-Agent", read_only=True, fsync="never") as mb:
            infos = [i for state in State for i in mb.list(state)]
            foreign = 0
            for info in infos:
                try:
                    sender = mb.read(info).sender
                except (OSError, HybridCommsError):
                    sender = None
                foreign += sender != "Demo-Sender"
    except (OSError, HybridCommsError) as exc:
        raise SystemExit(
            f"hybridcomms demo: cannot look at the Demo-Agent mailbox under {root}: {exc}"
        ) from None
    if foreign:
        raise SystemExit(
            f"hybridcomms demo: the Demo-Agent mailbox under {root} holds {foreign} message(s) the demo did "
            "not write; the demo starts from an empty Demo-Agent mailbox and will not delete them: move "
            "them (hybridcomms ls Demo-Agent) or run the demo under another --root"
        )
    return len(infos)


def _cmd_demo(args: argparse.Namespace, root: Path) -> int:
    """A short tour: priorities, a retry, a dead letter, and what is left on disk.

    Each run starts from an empty ``Demo-Agent`` mailbox (the previous run's is cleared), so the table
    it prints is the same every time."""
    logger = _log.get("hybridcomms")
    level = logger.level
    logger.setLevel(logging.ERROR)  # the table says it all; no log lines
    try:
        return _demo(root)
    finally:  # main() may run inside a program (or a test) that keeps on logging
        logger.setLevel(level)


def _demo(root: Path) -> int:
    import shutil

    from .retry import Backoff, attempts_used_up

    demo = root / "Demo-Agent"
    cleared = 0
    if demo.is_dir() and not demo.is_symlink():
        cleared = _demo_files(root)  # refuses a mailbox that holds messages the demo did not write
        shutil.rmtree(demo)  # only the demo's own mailbox
    print(f"mailbox root: {root.resolve()}")
    if cleared:
        print(f"cleared the previous demo's Demo-Agent mailbox ({cleared} messages)")
    rows: list[tuple[str, str, str, int, str]] = []
    with FileMailbox(root, "Demo-Agent", max_attempts=2, backoff=Backoff(initial=0.05, jitter=0)) as mb:
        mb.put(
            Message("status.note", {"text": "low priority, sent first"}, sender="Demo-Sender", priority="LOW")
        )
        mb.put(Message("task.command", {"do": "build"}, sender="Demo-Sender", priority="HIGH"))
        mb.put(Message("task.command", {"do": "explode"}, sender="Demo-Sender", priority="MEDIUM"))
        print("put 3 messages (LOW first, then HIGH, then MEDIUM); claimed in priority order:\n")
        while (d := mb.claim(timeout=0.5)) is not None:
            payload = d.message.payload
            name, topic, attempt = d.message.priority.name, d.message.topic, d.attempt
            try:
                with d:
                    if payload.get("do") == "explode":
                        raise RuntimeError("the handler failed (on purpose)")
                rows.append(("acked", name, topic, attempt, "done/"))
            except RuntimeError:
                last = attempts_used_up(attempt, mb.max_attempts)
                rows.append(
                    ("failed", name, topic, attempt, "dead/ (no attempts left)" if last else "new/ (retry)")
                )
        print(f"  {'outcome':<8} {'priority':<9} {'topic':<13} {'attempt':>7}  now in")
        for outcome, name, topic, attempt, where in rows:
            print(f"  {outcome:<8} {name:<9} {topic:<13} {attempt:>7}  {where}")
        st = mb.stats().to_dict()
        print("\n  " + "   ".join(f"{k}/: {st[k]['count']}" for k in ("new", "processing", "done", "dead")))
        for info in mb.list(State.DEAD):
            reason = info.reason or {}
            print(f"\n  dead/{info.name}\n    reason:     {reason.get('reason')}")
            print(f"    last error: {reason.get('last_error')}")
    print(f"\ninspect it yourself: ls -R {root / 'Demo-Agent'}")
    return EXIT_OK


def _add_common(parser: argparse.ArgumentParser, default: object, url: bool = True) -> None:
    """--root, --url, --policy and --fsync, accepted before or after the command (``hybridcomms watch
    --root R``). Without ``url`` (the commands that work on mailbox files only) --url is still accepted,
    to be refused in one line that says why, but not offered in the help."""
    parser.add_argument(
        "--root",
        default=default,
        help="mailbox root (default: $HYBRIDCOMMS_ROOT or ./runtime/agent_comms/agent_mailboxes)",
    )
    parser.add_argument(
        "--url",
        default=default,
        help="mailboxes elsewhere: redis://[:PASSWORD@]HOST[:PORT][/DB] or rediss://… (Redis Streams); "
        "default: $HYBRIDCOMMS_URL, else files under --root"
        if url
        else argparse.SUPPRESS,
    )
    parser.add_argument(
        "--policy",
        default=default,
        help="routing policy file (TOML, or a pyproject.toml); default: $HYBRIDCOMMS_POLICY, else "
        "./hybridcomms.toml, else [tool.hybridcomms.policy] in ./pyproject.toml, else the shipped rules",
    )
    parser.add_argument(
        "--fsync",
        choices=["always", "batch", "never"],
        default="always" if default is None else default,
        help="durability of writes (default: always)",
    )


def _add_bus_option(parser: argparse.ArgumentParser) -> None:
    """``--bus PATTERN`` of `watch` and `tail` (`hybridcomms.fanout`)."""
    parser.add_argument(
        "--bus",
        action="append",
        default=[],
        metavar="PATTERN",
        help="also show the ephemeral bus events of every process sharing the root whose topic matches "
        "(e.g. 'dreamos.agent.status.*', or '*'); repeatable",
    )


class _Parser(argparse.ArgumentParser):
    """Usage errors in one line (the full usage is in ``--help``), exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, one_line(f"{self.prog}: {message} (see '{self.prog} --help')") + "\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="hybridcomms",
        description="Durable agent mailboxes: send, receive, inspect, repair, watch and consume them, from "
        "the shell. The mailbox root is --root, else $HYBRIDCOMMS_ROOT, else "
        "./runtime/agent_comms/agent_mailboxes; --url redis://... works on a Redis instead.",
        epilog="'hybridcomms COMMAND --help' describes a command. Exit codes: 0 done, 1 an error (stderr "
        "says what), 2 bad usage, 3 recv found no message, 69 the backend cannot be reached, 70 a "
        "work consumer thread died, 78 work's command cannot be started, 130 interrupted. Shell "
        "completion: 'hybridcomms completion bash|zsh|fish' prints the script (docs/cli.md says where "
        "to put it).",
    )
    p.add_argument("--version", action="version", version=f"hybridcomms {__version__}")
    _add_common(p, None)
    common = _Parser(add_help=False)
    _add_common(common, argparse.SUPPRESS)  # after the command: only overrides what is given
    files = _Parser(add_help=False)  # the commands that work on mailbox files only
    _add_common(files, argparse.SUPPRESS, url=False)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser(
        "send", parents=[common], help="put one message into an agent's mailbox; prints its id"
    )
    s.description = (
        "Delivers one message durably into AGENT's mailbox. The routing policy (--policy) decides the route "
        "of the topic: a durable or 'both' topic is delivered; an ephemeral one is refused (a command "
        "cannot reach an agent's in-memory bus) unless --route durable says to deliver it anyway."
    )
    s.add_argument("--to", required=True, help="recipient agent id")
    s.add_argument("--topic", required=True, help="topic / message type")
    s.add_argument(
        "--payload",
        default="null",
        help="payload: JSON text, '-' to read it from stdin, or @FILE (at most 1 MiB; default: null)",
    )
    s.add_argument(
        "--priority",
        type=_priority,
        default=Priority.MEDIUM,
        help="LOW, MEDIUM (default), HIGH or CRITICAL (also NORMAL, INFO, or 0-3); anything else is an error",
    )
    s.add_argument("--from", dest="sender", default=None, help="sender agent id")
    s.add_argument(
        "--id", default=None, help="message id (send again with the same id: one message, not two)"
    )
    from ._inspect_commands import parse_age

    s.add_argument(
        "--delay",
        type=parse_age,
        default=None,
        metavar="AGE",
        help="not claimable before this long from now (30s, 10m, 2h, 1d)",
    )
    s.add_argument(
        "--ttl",
        type=parse_age,
        default=None,
        metavar="AGE",
        help="expires this long after it is sent: dead-lettered as 'expired' instead of delivered after that",
    )
    s.add_argument("--correlation-id", default=None, help="the id of the message this one answers or follows")
    s.add_argument("--reply-to", default=None, help="agent that should get the reply (makes it a request)")
    s.add_argument(
        "--header", action="append", default=[], metavar="KEY=VALUE", help="a header (repeat for more)"
    )
    s.add_argument(
        "--route",
        choices=["durable", "both", "ephemeral"],
        default=None,
        help="override the policy's route for this message",
    )
    s.add_argument(
        "--adopt",
        action="store_true",
        help="put it into a hybridcomms mailbox even if the agent still reads a legacy Dream.OS layout",
    )
    s.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: id, agent, route and why, backend, file path or URL, legacy, sent",
    )
    s.set_defaults(func=_cmd_send)

    r = sub.add_parser("recv", parents=[common], help="claim one message, print it as JSON, ack it")
    r.description = (
        "Claims the next message, prints it as JSON (with its attempt) and acks it once printed. Without "
        "--timeout it does not wait: if nothing is due it exits 3 at once."
    )
    r.add_argument("agent")
    r.add_argument(
        "--timeout",
        type=float,
        default=None,
        help="seconds to wait for a message to arrive (default: none: exit 3 at once if nothing is due)",
    )
    r.add_argument("--count", type=int, default=1, help="up to N messages, as JSON lines (default 1)")
    r.add_argument(
        "--follow",
        action="store_true",
        help="keep receiving until SIGTERM/Ctrl-C: one JSON line per message, each acked after it is written",
    )
    r.add_argument(
        "--no-ack",
        action="store_true",
        help="print, then give the message back, due again after --lease seconds (it counts as an attempt)",
    )
    r.add_argument("--lease", type=float, default=60.0, help="with --no-ack: seconds until it is due again")
    r.add_argument("--peek", action="store_true", help="show the next messages without claiming them")
    r.add_argument("--create", action="store_true", help="create the mailbox if it does not exist")
    r.add_argument(
        "--adopt",
        action="store_true",
        help="adopt an agent still on a legacy Dream.OS layout (its legacy messages are taken in first)",
    )
    r.set_defaults(func=_cmd_recv)

    st = sub.add_parser(
        "stats",
        parents=[common],
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
    st.set_defaults(func=_cmd_stats)

    rc = sub.add_parser(
        "recover",
        parents=[common],
        help="give back messages held by dead consumers; sweep tmp/",
        description="Returns to new/ the messages held by consumers that died (their lock is free) or "
        "hung past their lease, dead-letters those whose attempts are used up, and removes half-written "
        "files abandoned in tmp/. Safe at any time, from any process, as often as you like (the watch "
        "service runs it periodically). Every mailbox is tried even when one fails (then the exit is 1); "
        "entries it cannot handle are left in place and listed.",
    )
    rc.add_argument("agents", nargs="*", help="only these agents (default: every mailbox)")
    rc.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: per mailbox the ids returned, expired, dead-lettered, the tmp/ files "
        "removed, the entries left in place, and the error if it failed",
    )
    rc.set_defaults(func=_cmd_recover)

    d = sub.add_parser(
        "demo",
        parents=[files],
        help="a short tour in a Demo-Agent mailbox under the root",
        description="A short tour in a Demo-Agent mailbox under the root (emptied first, so every run "
        "prints the same table): three messages claimed in priority order, one whose handler fails, is "
        "retried and then dead-lettered with its reason. The files stay there for you to look at.",
    )
    d.set_defaults(func=_cmd_demo)

    w = sub.add_parser(
        "watch",
        parents=[files],
        help="watch every mailbox: print events, run --exec, recover periodically",
        description="The watch service: watches every mailbox under the root (agents created later too) "
        "and prints one line per thing that happens to a message (delivered, claimed, acked, recovered, "
        "dead-lettered...; --json: one object per line), after one 'waiting' line per message already "
        "in new/ when it starts. It runs recovery every --recover-every seconds and lists every new/ "
        "every --rescan-every seconds to catch what notifications missed. --exec runs a shell command "
        "per delivered, recovered or waiting message: it notifies, it does not consume (use 'work' for "
        "that). SIGTERM or Ctrl-C stop it cleanly.",
    )
    w.add_argument("--json", action="store_true", help="one JSON object per line")
    w.add_argument(
        "--exec",
        default=None,
        help="shell command run per delivered, recovered or waiting message (env: HYBRIDCOMMS_*)",
    )
    w.add_argument(
        "--exec-jobs",
        type=int,
        default=4,
        help="at most this many --exec commands at once (default: %(default)s)",
    )
    w.add_argument(
        "--exec-queue",
        type=int,
        default=1000,
        help="at most this many files wait for --exec, then the watcher waits (default: %(default)s)",
    )
    w.add_argument(
        "--grace",
        type=float,
        default=5.0,
        help="on SIGTERM, seconds running --exec commands get before they are killed (default: %(default)s)",
    )
    w.add_argument(
        "--recover-every",
        type=float,
        default=30.0,
        help="seconds between recovery passes, 0: never (default: %(default)s)",
    )
    w.add_argument(
        "--rescan-every",
        type=float,
        default=10.0,
        help="seconds between full listings of new/ (default: %(default)s)",
    )
    w.add_argument("--polling", action="store_true", help="poll instead of using inotify")
    w.add_argument("--create", action="store_true", help="create the mailbox root if it does not exist")
    _add_bus_option(w)
    w.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port (/metrics)"
    )
    w.add_argument(
        "--metrics-addr", default="127.0.0.1", help="address to serve the metrics on (default 127.0.0.1)"
    )
    w.add_argument(
        "--legacy",
        action="store_true",
        default=None,
        help="take Dream.OS legacy drops (inbox.json, inbox/) of adopted agents into new/ "
        "(also on with HYBRIDCOMMS_LEGACY_INTAKE=1 or a policy adopt entry)",
    )
    w.set_defaults(func=_cmd_watch)

    from ._inspect_commands import parse_age

    ls = sub.add_parser(
        "ls",
        parents=[common],
        help="list an agent's messages: state, age, attempt, id, topic",
        description="Lists one mailbox's messages, state by state: how long each has been in its state, "
        "its attempt, id and topic, and for a dead-lettered one why it died. --state, --topic and "
        "--older-than narrow the list; --json gives ages in seconds.",
    )
    ls.add_argument("agent")
    ls.add_argument("--state", choices=["new", "processing", "done", "dead"], help="only this state")
    ls.add_argument("--topic", help="only topics matching this pattern (shell-style: 'dreamos.task.*')")
    ls.add_argument(
        "--older-than", type=parse_age, help="only what entered its state this long ago (3m, 2h, 7d)"
    )
    ls.add_argument("--json", action="store_true", help="a JSON list (ages in seconds)")
    ls.set_defaults(func=_cmd_inspect)

    sh = sub.add_parser(
        "show",
        parents=[common],
        help="one message by id: content, state, attempt, errors",
        description="Finds one message by id (or file name) in every mailbox, or in --agent's, and prints "
        "where it is (state, file, attempt, age), its content, and for a dead-lettered one the reason "
        "and the last error. Exit 1 if no mailbox has it.",
    )
    sh.add_argument("id", help="message id (or file name)")
    sh.add_argument("--agent", help="look only in this agent's mailbox (default: every mailbox)")
    sh.add_argument("--json", action="store_true", help="print JSON (ages in seconds)")
    sh.set_defaults(func=_cmd_inspect)

    rq = sub.add_parser(
        "requeue",
        parents=[common],
        help="move dead-lettered messages back to new/",
        description="Moves dead-lettered messages (the ids given, or --all-dead) from dead/ back to new/, "
        "due now, keeping their attempt count unless --reset-attempts. Exit 1 if an id given was not in "
        "dead/.",
    )
    rq.add_argument("agent")
    rq.add_argument("ids", nargs="*", help="message ids to requeue")
    rq.add_argument("--all-dead", action="store_true", help="every message in dead/")
    rq.add_argument(
        "--reset-attempts", action="store_true", help="start their attempt count again (default: keep it)"
    )
    rq.add_argument("--json", action="store_true", help="print JSON (ages in seconds)")
    rq.set_defaults(func=_cmd_inspect)

    pg = sub.add_parser(
        "purge",
        parents=[common],
        help="delete old messages from done/ or dead/",
        description="Deletes the messages that entered done/ or dead/ (--state) longer ago than "
        "--older-than (with their reason files). --dry-run says what would go and deletes nothing. "
        "new/ and processing/ are never touched.",
    )
    pg.add_argument("agent")
    pg.add_argument("--state", required=True, choices=["done", "dead"], help="which folder")
    pg.add_argument("--older-than", required=True, type=parse_age, help="age (e.g. 7d) past which to delete")
    pg.add_argument("--dry-run", action="store_true", help="say what would go; delete nothing")
    pg.add_argument("--json", action="store_true", help="print JSON (ages in seconds)")
    pg.set_defaults(func=_cmd_inspect)

    tl = sub.add_parser(
        "tail",
        parents=[files],
        help="follow what happens in the mailboxes from now on (until Ctrl-C)",
        description="Prints what happens to the messages of every mailbox (or of the agents named) as it "
        "happens, one line per event, until SIGTERM or Ctrl-C: like 'watch' without its recovery or "
        "--exec. --bus also follows the ephemeral bus events of the processes sharing the root.",
    )
    tl.add_argument("agents", nargs="*", help="only these agents")
    tl.add_argument("--json", action="store_true", help="JSON lines")
    tl.add_argument(
        "--waiting",
        action="store_true",
        help="first list what already waits in new/ (kind 'waiting', at the time each arrived); "
        "by default tail shows what happens from now on",
    )
    _add_bus_option(tl)
    tl.set_defaults(func=_cmd_inspect)

    tp = sub.add_parser(
        "top",
        parents=[files],
        help="a live view of every mailbox (depth, in flight, delayed, dead, oldest, acks/s); q quits",
        description="A live view of every mailbox in the terminal, refreshed every --interval seconds: "
        "messages waiting, in flight, delayed, dead and done, the oldest waiting, and acks per second. "
        "q quits. Needs a terminal.",
    )
    tp.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes (1)")
    tp.set_defaults(func=_cmd_inspect)

    dr = sub.add_parser(
        "doctor",
        parents=[files],
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
    dr.set_defaults(func=_cmd_inspect)

    wk = sub.add_parser(
        "work",
        parents=[common],
        help="run a command for each message of AGENT's mailbox: exit 0 acks, 75 retries, other fails",
        usage="%(prog)s AGENT [options] -- CMD [ARGS...]",
        epilog="CMD [ARGS...] (after '--') is run as it is, never through a shell: "
        "hybridcomms work Agent-1 --concurrency 2 -- ./handle-message --verbose",
        description="Claims AGENT's messages and runs CMD (not through a shell) for each: the message's JSON "
        "on stdin, HYBRIDCOMMS_ID, _TOPIC, _SENDER, _ATTEMPT, _MAX_ATTEMPTS, _PRIORITY, _CORRELATION_ID, "
        "_REPLY_TO, _AGENT in the environment. Exit 0 acks (stdout is the reply to a request); exit 75 "
        "(EX_TEMPFAIL) retries after the backoff; any other exit retries, and dead-letters on the last "
        "attempt with the exit status and the end of stderr. SIGTERM stops it cleanly.",
    )
    wk.add_argument("agent", help="the agent whose mailbox to consume")
    wk.add_argument("--concurrency", type=int, default=1, help="messages handled at once (default 1)")
    wk.add_argument(
        "--timeout", type=float, default=None, help="seconds a command may run; then it is killed and retried"
    )
    wk.add_argument(
        "--grace",
        type=float,
        default=30.0,
        help="on SIGTERM, seconds running commands get to finish before they are killed (default 30)",
    )
    wk.add_argument(
        "--max-messages", type=int, default=0, help="stop after handling this many messages (0: never)"
    )
    wk.add_argument("--json", action="store_true", help="one JSON line per handled message on stdout")
    wk.add_argument("--create", action="store_true", help="create the mailbox if it does not exist")
    wk.add_argument(
        "--max-attempts", type=int, default=5, help="deliveries before a failing message is dead-lettered (5)"
    )
    wk.add_argument(
        "--retry-delay",
        type=float,
        default=1.0,
        help="seconds before the first retry; each further retry waits twice as long, at most 300 (1)",
    )
    wk.add_argument(
        "--lease",
        type=float,
        default=300.0,
        help="seconds a claim stays ours without a heartbeat; renewed every third of it while CMD runs (300)",
    )
    wk.add_argument(
        "--metrics-port", type=int, default=None, help="serve Prometheus metrics on this port (/metrics)"
    )
    wk.add_argument("--metrics-addr", default="127.0.0.1", help="address for the metrics (127.0.0.1)")
    wk.set_defaults(func=_cmd_work, cmd=[])

    su = sub.add_parser(
        "systemd-unit",
        help="print a systemd unit for the watch service or a work consumer (to adjust)",
        description="Prints one of the systemd units shipped in the package (hybridcomms/systemd/): "
        "'watch' the watch service, 'work' the template of a work consumer per agent "
        "(hybridcomms-work@AGENT). Adjust User, WorkingDirectory and the paths, then install it: "
        "hybridcomms systemd-unit watch > /etc/systemd/system/hybridcomms-watch.service",
    )
    su.add_argument("service", choices=list(SYSTEMD_UNITS), help="which unit")
    su.set_defaults(func=_cmd_systemd_unit)

    mg = sub.add_parser(
        "migrate",
        parents=[files],
        help="convert a Dream.OS mailbox root (inbox.json, inbox/, archive/, flat files) to this layout",
        description="Converts a Dream.OS mailbox root to this layout, once: inbox.json entries, inbox/ "
        "and flat files go to new/, archive/ and processed/ to done/, what cannot be converted to dead/ "
        "with a reason; anything else (notes, links, FIFOs) is left in place and listed. The root is first "
        "copied to <root>.backup-<time> (unless --no-backup). Safe to run again. On a terminal it shows "
        "the backup's size and the messages converted as it goes, on stderr.",
    )
    mg.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
    mg.add_argument("--no-backup", action="store_true", help="do not copy the root to <root>.backup-<time>")
    mg.add_argument("--json", action="store_true", help="print JSON (ages in seconds)")
    mg.add_argument(
        "--group",
        action="store_true",
        help="group-shared modes (folders 0770, files 0660) for agents running as different users",
    )
    mg.set_defaults(func=_cmd_migrate)

    pol = sub.add_parser(
        "policy",
        parents=[common],
        help="the routing policy: explain a topic, or show every rule",
        description="The routing policy decides whether a topic goes durable (the mailbox), ephemeral (the "
        "in-memory bus) or both. It is --policy FILE, else $HYBRIDCOMMS_POLICY, else ./hybridcomms.toml, "
        "else [tool.hybridcomms.policy] in ./pyproject.toml, else the built-in rules.",
    )
    pol_sub = pol.add_subparsers(dest="policy_command", required=True, metavar="explain|show")
    ex = pol_sub.add_parser(
        "explain",
        parents=[common],
        help="which route a topic takes, and the rule that chose it",
        description="Prints the route TOPIC takes under the policy in use (durable, ephemeral or both), "
        "the rule that chose it, and the file the policy came from. --broadcast asks for a publish to "
        "subscribers instead of a send to one agent; --route tries a per-message override.",
    )
    ex.add_argument("topic")
    ex.add_argument("--priority", default="MEDIUM", help="LOW, MEDIUM, HIGH or CRITICAL")
    ex.add_argument(
        "--broadcast", action="store_true", help="a publish to subscribers, not a send to one agent"
    )
    ex.add_argument("--route", default=None, help="an explicit per-message override to try")
    ex.add_argument(
        "--json",
        action="store_true",
        help="print JSON: route, reason, rule, pattern, backend (where the durable copy goes), source",
    )
    ex.set_defaults(func=_cmd_policy_explain)
    sh = pol_sub.add_parser(
        "show",
        parents=[common],
        help="every rule, in order",
        description="Prints every rule of the policy in use, in the order they are tried, and the "
        "defaults that apply when none matches.",
    )
    sh.set_defaults(func=_cmd_policy_show)

    from ._completion import SHELLS

    cp = sub.add_parser(
        "completion",
        help="print the shell completion script for bash, zsh or fish",
        description="Prints the script that makes TAB complete hybridcomms commands and options in bash, "
        "zsh or fish, generated from this parser by the argcomplete library. Install it once, e.g. "
        "'hybridcomms completion bash > ~/.local/share/bash-completion/completions/hybridcomms' "
        "(docs/cli.md gives the line for each shell), then open a new shell.",
    )
    cp.add_argument("shell", choices=SHELLS, help="the shell to print the script for")
    cp.set_defaults(func=_cmd_completion)

    from .ui import register as register_ui  # the dashboard (its web stack is imported when it runs)

    register_ui(sub, [common])
    return p


def main(argv: Sequence[str] | None = None) -> int:
    words = list(sys.argv[1:] if argv is None else argv)
    command: list[str] = []
    if "work" in words and "--" in words[words.index("work") :]:
        # ``work AGENT [OPTIONS] -- CMD [ARGS...]``: everything after "--" is the command, as it is
        cut = words.index("--", words.index("work"))
        words, command = words[:cut], words[cut + 1 :]
    parser = _parser()
    from ._completion import complete_if_asked

    complete_if_asked(parser)  # when the shell asks for TAB completions: print them and exit
    args = parser.parse_args(words)
    if command:
        args.cmd = command
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="hybridcomms: %(levelname)s: %(message)s")
    url = getattr(args, "url", None)

    def run() -> int:
        root = resolve_root(args.root)
        if args.command == "policy":  # explained, not opened: any mailbox URL may be named
            args.url_resolved = url or url_from_environ()
            if args.url_resolved and ("://" not in args.url_resolved or not backend_of(args.url_resolved)):
                usage_error(
                    f"hybridcomms: --url {shown_url(args.url_resolved)}: use redis://, rediss://, unix://, "
                    "file:// or memory://"
                )
        else:
            args.url_resolved = resolve_url(url)
        if args.url_resolved and args.url_resolved.startswith("file://"):
            root, args.url_resolved = Path(args.url_resolved[len("file://") :]), None
        if args.url_resolved and args.command in ("watch", "migrate", "demo"):
            raise SystemExit(f"hybridcomms {args.command}: works on mailbox files; not available with --url")
        code: int = args.func(args, root)
        return code

    # Errors as one line (69: the backend cannot be reached), a closed output as no error: _cli_errors.
    return run_command(args.command, url or os.environ.get(URL_ENV) or None, run)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
