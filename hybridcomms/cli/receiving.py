"""``hybridcomms recv``: claim messages, print them as JSON, settle each once it is written out."""

from __future__ import annotations

import argparse
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._text import json_text
from ..backends import Mailbox, MailboxDelivery, files_of
from ..backends.base import check_agent_id
from ..errors import HybridCommsError
from ..states import State
from . import dreamos
from .common import (
    EXIT_EMPTY,
    EXIT_ERROR,
    EXIT_OK,
    Parents,
    message_json,
    on_stop_signals,
    open_existing,
    print_json,
    resolve_policy,
    usage_error,
)

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["register"]


def cmd_recv(args: argparse.Namespace, root: Path) -> int:
    url = args.url_resolved
    legacy = _legacy_layout(args, root)
    if legacy is not None and not _adopted(args):
        print(dreamos.legacy_refusal("recv", legacy), file=sys.stderr)
        return EXIT_ERROR
    if args.count < 1:
        usage_error("hybridcomms recv: --count must be at least 1")
    create = args.create or legacy is not None
    with open_existing(root, args.agent, "recv", create, url, fsync=args.fsync) as mb:
        _take_in(mb, legacy)
        return _read_out(mb, args)


def _legacy_layout(args: argparse.Namespace, root: Path) -> dict[str, Any] | None:
    """The legacy Dream.OS layout the agent still reads (None: none, or a mailbox on a URL)."""
    return None if args.url_resolved else dreamos.legacy_status(root, check_agent_id(args.agent))


def _take_in(mb: Mailbox, legacy: dict[str, Any] | None) -> None:
    """An agent on a legacy layout (``legacy``: its status) adopted now, explicitly: what its legacy
    writers dropped is taken in."""
    files = files_of(mb) if legacy is not None else None
    if files is not None:
        dreamos.ingest(files)


def _read_out(mb: Mailbox, args: argparse.Namespace) -> int:
    """The messages printed: peeked at, or claimed and settled (JSON lines for more than one)."""
    lines = args.count > 1 or args.follow
    if args.peek:
        return _peek(mb, args, lines)
    return _receive(mb, args, lines)


def _adopted(args: argparse.Namespace) -> bool:
    """Whether an agent on a legacy layout is adopted: by --adopt, or by the policy's adopt list."""
    return bool(args.adopt) or resolve_policy(args.policy).adopts(args.agent)


def _receive(mb: Mailbox, args: argparse.Namespace, lines: bool) -> int:
    """Claim, print and settle up to ``--count`` messages (with ``--follow``: until a signal)."""
    stop = _stop_on_signals(mb) if args.follow else None
    got = _received(mb, args, lines, stop)
    if got == 0 and not args.follow:
        print(f"hybridcomms recv: no message for {args.agent}", file=sys.stderr)
        return EXIT_EMPTY
    return EXIT_OK


def _received(mb: Mailbox, args: argparse.Namespace, lines: bool, stop: threading.Event | None) -> int:
    """How many messages were claimed, written out and settled, one at a time."""
    got = 0
    while _wants_more(args, got):
        delivery = mb.claim(timeout=_claim_timeout(args, got), cancel=stop)
        if delivery is None:
            if _following(args, stop):
                continue
            break
        _write_out(delivery, lines)
        _settle(delivery, args)
        got += 1
    return got


def _wants_more(args: argparse.Namespace, got: int) -> bool:
    """Whether to claim another message: always with --follow, else up to --count."""
    return bool(args.follow) or got < args.count


def _claim_timeout(args: argparse.Namespace, got: int) -> float | None:
    """How long one claim waits: a second at a time with --follow, else --timeout for the first message
    (None: not at all) and nothing for the next ones."""
    if args.follow:
        return 1.0
    timeout: float | None = args.timeout if got == 0 else 0
    return timeout


def _following(args: argparse.Namespace, stop: threading.Event | None) -> bool:
    """Whether ``--follow`` goes on waiting (no signal came)."""
    return bool(args.follow) and not (stop is not None and stop.is_set())


def _write(out: dict[str, Any], lines: bool) -> None:
    if lines:
        sys.stdout.write(json_text(out) + "\n")
    else:
        print_json(out)


def _write_out(delivery: MailboxDelivery, lines: bool) -> None:
    """The message on stdout, flushed before it is settled; if the reader is gone, it goes back."""
    try:
        _write(message_json(delivery.message, attempt=delivery.attempt), lines)
        sys.stdout.flush()
    except BrokenPipeError:  # the reader is gone: the message goes back, due now
        delivery.nack(delay=0, error="recv: its output was closed before the message was written")
        raise


def _settle(delivery: MailboxDelivery, args: argparse.Namespace) -> None:
    """Settled only once it is written out: acked, or with --no-ack given back for later."""
    if args.no_ack:
        delivery.nack(delay=args.lease, error="recv --no-ack: printed, not acknowledged")
    else:
        delivery.ack()


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
        _write(message_json(message, state="new", file=info.name), lines)
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

    on_stop_signals(on_signal)
    return stop


def register(sub: Subparsers, parents: Parents) -> None:
    r = sub.add_parser(
        "recv", parents=[parents.mailboxes], help="claim one message, print it as JSON, ack it"
    )
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
    r.set_defaults(func=cmd_recv)
