"""``hybridcomms ui``: a local web dashboard over the mailboxes of a root or a Redis (docs/ui.md).

The top layer, beside the CLI: it reaches the core only through `hybridcomms.ui._source`. Nothing
here imports the web stack until the command runs, so the CLI works without the ``ui`` extra.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

__all__ = ["register", "run"]

DEFAULT_PORT = 8765


def register(sub: Any, parents: Any) -> None:
    """Add the ``ui`` command to the CLI's subparsers (``parents``: the CLI's common option sets)."""
    ui: argparse.ArgumentParser = sub.add_parser(
        "ui",
        parents=[parents.mailboxes],
        help="a local web dashboard: the fleet, who talks to whom, mailboxes, messages (live)",
        description="Serves a web dashboard of the mailboxes under --root (or on --url) on 127.0.0.1, "
        "and prints its address with a random token (needed for every page). Read-only unless "
        "--allow-actions (requeue, purge: POST forms with a confirmation). Needs the 'ui' extra: "
        "pip install 'hybridcomms[ui]'. See docs/ui.md.",
    )
    ui.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine)")
    ui.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT}; 0: any)")
    ui.add_argument(
        "--allow-actions",
        action="store_true",
        help="allow requeue and purge from the pages (with the token, by POST, with a confirmation)",
    )
    ui.add_argument("--poll", type=float, default=5.0, help="on Redis: seconds between counts (default 5)")
    ui.add_argument("--no-bus", action="store_true", help="do not follow the bus events of the root")
    ui.add_argument(
        "--max-connections",
        type=int,
        default=512,
        help="open connections at most (default 512; past it the oldest one still waiting for its request "
        "is closed)",
    )
    ui.add_argument(
        "--request-timeout",
        type=float,
        default=5.0,
        help="seconds a connection has to send a complete request before it is closed (default 5)",
    )
    ui.set_defaults(func=run)


def run(args: argparse.Namespace, root: Path) -> int:
    """Serve the dashboard until interrupted."""
    try:
        import uvicorn

        from ._app import create_app
        from ._security import Guard, new_token
        from ._server import MAX_HEAD, protocol
        from ._source import Source
    except ImportError as exc:
        print(
            f"hybridcomms ui: needs the 'ui' extra ({exc.name} is missing): pip install 'hybridcomms[ui]'",
            file=sys.stderr,
        )
        return 1
    url = getattr(args, "url_resolved", None)
    if _no_root(url, root):
        print(
            f"hybridcomms ui: no mailbox root at {root} (check --root or $HYBRIDCOMMS_ROOT)", file=sys.stderr
        )
        return 1
    source = Source(url or str(root))
    source.entries()  # a backend out of reach is one line and exit 69 (the CLI's), before any port is bound
    if not _limits_ok(args):
        print(
            "hybridcomms ui: --max-connections is 8 or more, --request-timeout 0 to 3600 s", file=sys.stderr
        )
        return 2
    hosts = {"127.0.0.1", "localhost", "::1", args.host}
    guard = Guard(new_token(), hosts, args.allow_actions)
    app, _ = create_app(source, guard, poll=args.poll, bus=not args.no_bus)
    config = uvicorn.Config(
        app,
        host=args.host,
        port=args.port,
        log_level="warning",
        lifespan="on",
        http=protocol(args.request_timeout, args.max_connections),
        h11_max_incomplete_event_size=MAX_HEAD,
        timeout_keep_alive=5,
        backlog=128,
    )
    server = uvicorn.Server(config)
    return serve(server, args.host, guard, source.shown_where, args.allow_actions)


def _no_root(url: str | None, root: Path) -> bool:
    """Whether the dashboard has nothing to read: no URL given and no mailbox root folder."""
    return url is None and not root.is_dir()


def _limits_ok(args: argparse.Namespace) -> bool:
    """Whether the connection limits asked for are ones the server can keep."""
    connections: int = args.max_connections
    timeout: float = args.request_timeout
    return connections >= 8 and 0 < timeout <= 3600


def serve(server: Any, host: str, guard: Any, where: str, actions: bool) -> int:
    """Run ``server`` (uvicorn), printing the address (the secret prefix, the token: `Guard.start_url`)
    once it listens."""
    import asyncio

    async def main() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                await task
                return
            await asyncio.sleep(0.05)
        port = next(s.getsockname()[1] for srv in server.servers for s in srv.sockets)
        shown_host = f"[{host}]" if ":" in host else host
        mode = "actions allowed" if actions else "read-only"
        print(f"hybridcomms ui: {where} ({mode})", file=sys.stderr)
        print(f"  {guard.start_url(f'http://{shown_host}:{port}')}", flush=True)
        await task

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        return 130
    return 0 if server.started else 1
