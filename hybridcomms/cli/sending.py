"""``hybridcomms send``: one message into an agent's mailbox, routed by the policy.

Delivery follows the recipient: an agent still reading a legacy Dream.OS layout gets the message there
(`hybridcomms.cli.dreamos`), a policy rule's backend gets it where the rule says, any other agent in
its mailbox (files under the root, or ``--url``). ``--id`` makes a resend idempotent.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from .._fs import shown
from .._urls import shown_url
from ..backends import Mailbox, file_root, in_one_process, put_once, put_reporting_file
from ..backends.base import MessageInfo, check_agent_id
from ..message import DEFAULT_MAX_MESSAGE_SIZE, Message, Priority
from ..policy import Decision, Policy
from ..states import State
from . import dreamos
from .common import EXIT_OK, Parents, open_existing, parse_age, print_json, resolve_policy, usage_error

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["register"]

_PRIORITY_WORDS = {"LOW", "MEDIUM", "HIGH", "CRITICAL", "NORMAL", "INFO", "0", "1", "2", "3"}


def _priority(text: str) -> Priority:
    """A priority the CLI knows (a name, a Dream.OS spelling, 0-3); anything else is an error."""
    if text.strip().upper() not in _PRIORITY_WORDS:
        raise argparse.ArgumentTypeError(
            f"unknown priority {text!r}: use LOW, MEDIUM, HIGH or CRITICAL (also NORMAL, INFO, or 0-3)"
        )
    return Priority.parse(text)


def _read_raw(spec: str, limit: int) -> tuple[bytes, str]:
    """The bytes of ``--payload`` (at most ``limit`` + 1) and where they came from."""
    if spec == "-":
        return sys.stdin.buffer.read(limit + 1), "stdin"
    if not spec.startswith("@"):
        return os.fsencode(spec), "--payload"  # argv holds undecodable bytes as surrogates
    try:
        with open(spec[1:], "rb") as f:
            return f.read(limit + 1), spec[1:]
    except OSError as exc:
        raise SystemExit(f"hybridcomms send: cannot read --payload {spec}: {exc.strerror}") from None


def _read_payload(spec: str, limit: int) -> Any:
    """``--payload``: JSON text, ``-`` (read stdin) or ``@FILE``; at most ``limit`` bytes."""
    raw, where = _read_raw(spec, limit)
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
            usage_error(f"hybridcomms send: --header wants KEY=VALUE, not {pair!r}")
        out[key] = value
    return out


def _decide(args: argparse.Namespace, policy: Policy) -> Decision:
    """The route of the topic; an ephemeral one is refused (a command cannot reach a bus)."""
    decision = policy.decide(args.topic, priority=args.priority, addressed=True, override=args.route)
    if not decision.route.durable:
        raise SystemExit(
            f"hybridcomms send: {args.topic} is {decision.route.value} under the routing policy "
            f"({decision.reason}): an ephemeral event lives on a process's in-memory bus, which a command "
            "cannot reach; send it from the agent, or give --route durable to deliver it to the mailbox"
        )
    return decision


def _message(args: argparse.Namespace, payload: Any) -> Message:
    options: dict[str, Any] = {}
    if args.id:
        options["id"] = args.id  # the same id again: a resend, not a new message
    return Message(
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


def cmd_send(args: argparse.Namespace, root: Path) -> int:
    payload = _read_payload(args.payload, DEFAULT_MAX_MESSAGE_SIZE)
    policy = resolve_policy(getattr(args, "policy", None))
    decision = _decide(args, policy)
    message = _message(args, payload)
    url = args.url_resolved
    if decision.backend is not None:  # the rule sends its durable copies elsewhere, as Comms does
        root, url = _rule_backend(decision.backend, args.topic, root)
    if _reads_legacy(args, policy, root, url):
        return _send_legacy(args, root, message, decision)
    with open_existing(root, args.to, "send", True, url, fsync=args.fsync) as mb:
        existing, written = _put(args, mb, message)
        backend = mb.kind
        if existing is not None:  # an idempotent resend: the message is there already
            return _already_there(args, message, decision, existing, backend, url)
        path = _path_reported(args, mb, message, written)
        _report_sent(args, message, decision, backend=backend, path=path, url=url, state=State.NEW)
    return EXIT_OK


def _path_reported(
    args: argparse.Namespace, mb: Mailbox, message: Message, written: Path | None
) -> Path | None:
    """The file ``send`` reports: the one written; for ``--json`` of a put by id, the one it is stored in."""
    if written is None and mb.folder is not None and args.json:
        return _stored_at(mb, message.id)
    return written


def _reads_legacy(args: argparse.Namespace, policy: Policy, root: Path, url: str | None) -> bool:
    """Whether the recipient, not adopted (--adopt, the policy), still reads a legacy Dream.OS layout
    under the root."""
    if args.adopt or policy.adopts(args.to) or url:
        return False
    return dreamos.legacy_status(root, check_agent_id(args.to)) is not None


def _stored_at(mb: Mailbox, message_id: str) -> Path | None:
    """The file a message put by id (`put_once`) was stored in (None if it is gone already)."""
    info = mb.get(message_id)
    return info.path if info is not None else None


def _put(args: argparse.Namespace, mb: Mailbox, message: Message) -> tuple[MessageInfo | None, Path | None]:
    """Put the message: (where it already was, for a resend of an id; the file it was written to)."""
    if args.id:
        return put_once(mb, message, delay=args.delay), None
    return None, put_reporting_file(mb, message, delay=args.delay)


def _send_legacy(args: argparse.Namespace, root: Path, message: Message, decision: Decision) -> int:
    """A Dream.OS agent still reading its legacy files gets the message there, in the form it reads;
    its mailbox is not created behind its back."""
    if args.delay or args.ttl is not None:
        raise SystemExit(
            f"hybridcomms send: {args.to} reads the legacy Dream.OS layout, whose readers know no "
            "--delay or --ttl; send with --adopt to put it into a hybridcomms mailbox "
            "(or run 'hybridcomms migrate')"
        )
    where = dreamos.deliver(root, args.to, message)
    _report_sent(args, message, decision, backend="file", path=where, legacy=True)
    print(
        f"hybridcomms send: {args.to} reads the legacy Dream.OS layout: written to "
        f"{where.relative_to(root)}; to move it to hybridcomms run 'hybridcomms migrate' "
        "(or send with 'hybridcomms send --adopt')",
        file=sys.stderr,
    )
    return EXIT_OK


def _already_there(
    args: argparse.Namespace,
    message: Message,
    decision: Decision,
    existing: MessageInfo,
    backend: str,
    url: str | None,
) -> int:
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


def _rule_backend(backend: str, topic: str, root: Path) -> tuple[Path, str | None]:
    """(root, url) of the backend a policy rule names for ``topic``'s durable copies."""
    if in_one_process(backend):
        raise SystemExit(
            f"hybridcomms send: the routing policy sends {topic} to {shown_url(backend)}, a mailbox that "
            "lives inside one process; a command cannot reach it"
        )
    files = file_root(backend)
    return (Path(files), None) if files is not None else (root, backend)


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
    print_json(
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


def register(sub: Subparsers, parents: Parents) -> None:
    s = sub.add_parser(
        "send", parents=[parents.mailboxes], help="put one message into an agent's mailbox; prints its id"
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
    s.set_defaults(func=cmd_send)
