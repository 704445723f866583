"""``hybridcomms policy explain|show``: the routing policy in use, a topic's route and the rule that
chose it. Nothing is opened: any mailbox URL may be named (``memory://`` too)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import _env, _fs
from .._text import printable
from .._urls import shown_url, url_from_environ
from ..backends import file_root, served
from ..message import Priority
from ..policy import Decision, Policy, Route
from .common import EXIT_OK, Parents, print_json, resolve_policy, usage_error

if TYPE_CHECKING:
    from .common import Subparsers

__all__ = ["durable_target", "register"]


def durable_target(decision: Decision, url: str | None, root: Path) -> str | None:
    """Where the durable copy of a message goes, as a URL: the rule's backend, else the agent's own
    (``url``, else files under ``root``: ``file://<root>``); None when the route has no durable copy.
    Shown without a password."""
    if not decision.route.durable:
        return None
    return _target_url(decision.backend or url, root)


def _target_url(where: str | None, root: Path) -> str:
    """A backend as the URL ``explain`` shows: files (``where``, else the root) as an absolute
    ``file://`` URL, another without its password."""
    if where is None:
        return f"file://{root.absolute()}"
    files = file_root(where)
    return f"file://{Path(files).absolute()}" if files is not None else shown_url(where)


def explained_url(arg: str | None) -> str | None:
    """``--url`` (else the environment's) as a URL to explain, not to open: any scheme a mailbox has."""
    url = arg or url_from_environ()
    if url and _unknown_scheme(url):
        usage_error(
            f"hybridcomms: --url {shown_url(url)}: use redis://, rediss://, unix://, file:// or memory://"
        )
    return url


def _unknown_scheme(url: str) -> bool:
    """Whether ``url`` names no backend a mailbox can have."""
    return "://" not in url or not served(url)


def cmd_explain(args: argparse.Namespace, root: Path) -> int:
    policy = resolve_policy(args.policy)
    priority = Priority.parse(args.priority)
    d = policy.decide(args.topic, priority=priority, addressed=not args.broadcast, override=args.route)
    target = _shown_target(durable_target(d, args.url_resolved, root))
    if args.json:
        print_json(_explained(args, policy, priority, d, target))
    else:
        _print_explained(args, policy, priority, d, target)
    return EXIT_OK


def _shown_target(target: str | None) -> str | None:
    """Where the durable copy goes, as printable text (None: nowhere)."""
    return None if target is None else _fs.shown(target)


def _explained(
    args: argparse.Namespace, policy: Policy, priority: Priority, d: Decision, target: str | None
) -> dict[str, Any]:
    """``policy explain --json``: the decision, the rule that made it, where the copy goes, the policy."""
    return {
        "topic": _fs.shown(args.topic),
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


def _print_explained(
    args: argparse.Namespace, policy: Policy, priority: Priority, d: Decision, target: str | None
) -> None:
    """``policy explain`` for people: the route, what it was asked, why, where the copy goes."""
    who = "a broadcast" if args.broadcast else "a message to one agent"
    print(f"{d.route.value}")
    print(printable(f"  {_fs.shown(args.topic)} as {who}, priority {priority.name}"))
    print(printable(f"  chosen by: {d.reason}"))
    print(_durable_line(args, d, target))
    print(printable(f"  policy from {policy.provenance}"))


def _durable_line(args: argparse.Namespace, d: Decision, target: str | None) -> str:
    """Where the durable copy goes and why (and whether an event goes on the bus too)."""
    if target is None:
        return "  durable copy: none (an event on the bus only)"
    also = "; and an event on the bus" if d.route is Route.BOTH else ""
    return f"  durable copy to: {target} ({_backend_from(d, args)}){also}"


def _backend_from(decision: Decision, args: argparse.Namespace) -> str:
    """Why the durable copy goes where `durable_target` says."""
    if decision.backend is not None:
        return "the rule's backend"
    if args.url_resolved:
        return _url_from(args)
    return "the mailbox root"


def _url_from(args: argparse.Namespace) -> str:
    """Where the URL came from: --url, else $HYBRIDCOMMS_URL, else the file $HYBRIDCOMMS_URL_FILE names."""
    if getattr(args, "url", None):
        return "--url"
    return "$HYBRIDCOMMS_URL" if _env.value(_env.URL) else "$HYBRIDCOMMS_URL_FILE"


def cmd_show(args: argparse.Namespace, root: Path) -> int:
    print(resolve_policy(args.policy).describe())
    return EXIT_OK


def register(sub: Subparsers, parents: Parents) -> None:
    pol = sub.add_parser(
        "policy",
        parents=[parents.mailboxes],
        help="the routing policy: explain a topic, or show every rule",
        description="The routing policy decides whether a topic goes durable (the mailbox), ephemeral (the "
        "in-memory bus) or both. It is --policy FILE, else $HYBRIDCOMMS_POLICY, else ./hybridcomms.toml, "
        "else [tool.hybridcomms.policy] in ./pyproject.toml, else the built-in rules.",
    )
    pol.set_defaults(mailbox_url=explained_url)  # explained, not opened: any mailbox URL may be named
    pol_sub = pol.add_subparsers(dest="policy_command", required=True, metavar="explain|show")
    ex = pol_sub.add_parser(
        "explain",
        parents=[parents.mailboxes],
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
    ex.set_defaults(func=cmd_explain)
    sh = pol_sub.add_parser(
        "show",
        parents=[parents.mailboxes],
        help="every rule, in order",
        description="Prints every rule of the policy in use, in the order they are tried, and the "
        "defaults that apply when none matches.",
    )
    sh.set_defaults(func=cmd_show)
