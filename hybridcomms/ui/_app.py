"""The dashboard's web application: routes, templates, the guard around them.

`create_app` builds it over a `Source`; `hybridcomms.ui.run` serves it with uvicorn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import jinja2
import orjson
from markupsafe import Markup
from starlette.applications import Starlette
from starlette.datastructures import Headers
from starlette.requests import Request
from starlette.responses import PlainTextResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ._fleet import RATE_KINDS, Fleet, Row
from ._graph import Flows
from ._listing import HeadCache, Item, lookup_key, page_of
from ._live import Live
from ._payload import clipped, payload_text, reason_shown
from ._security import COOKIE, HEADERS, Guard
from ._source import STATES, HybridCommsError, Source, State, check_agent_id, json_text, printable, shown

_HERE = Path(__file__).parent
#: The most of a payload the message page shows (characters of pretty-printed JSON).
PAYLOAD_LIMIT = 256 * 1024
#: The longest line of producer text shown in a cell or a field.
TEXT_LIMIT = 2000


class Block(str):
    """Text shown as a block (pre-formatted JSON, already inert: `json_text`); other text is one line."""


def _finalize(value: Any) -> Any:
    """Applied to everything a template prints, before it is HTML-escaped: producer text as one
    printable line (controls, bidi marks, lone surrogates written as escapes); None as nothing."""
    if value is None:
        return ""
    if isinstance(value, Block):
        return shown(str(value))
    if isinstance(value, str) and not isinstance(value, Markup):
        return printable(value, TEXT_LIMIT)
    return value


#: Ages beyond this (about 1,000 years) are shown as such, not as a 300-digit number.
AGE_CAP = 1000 * 365.25 * 86400.0


def human_age(seconds: float | None) -> str:
    if seconds is None or not math.isfinite(seconds):
        return "-"
    if seconds > AGE_CAP:
        return "over 1000 years"
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"


def iso(ts: float | None) -> str:
    if ts is None:
        return "-"
    try:
        return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return f"{ts!r}"


def spark(series: list[float], height: float = 18.0, width: float = 90.0) -> str:
    """SVG polyline points for a small chart of ``series`` (scaled to its own maximum)."""
    top = max(max(series, default=0.0), 1.0)
    step = width / max(len(series) - 1, 1)
    return " ".join(
        f"{i * step:.1f},{height - (v / top) * (height - 2) - 1:.1f}" for i, v in enumerate(series)
    )


def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_HERE / "templates"),
        autoescape=True,
        finalize=_finalize,
        undefined=jinja2.StrictUndefined,
    )
    env.filters.update(age=human_age, iso=iso, spark=spark, q=lambda s: quote(str(s), safe=""))
    return env


class App:
    """The state behind the routes."""

    def __init__(
        self, source: Source, guard: Guard, *, live: bool = True, poll: float = 5.0, bus: bool = True
    ) -> None:
        self.source = source
        self.guard = guard
        self.heads = HeadCache()
        self.fleet = Fleet(source)
        self.flows = Flows()
        self.live = Live(self.fleet, self.flows, self.heads, poll=poll)
        self.start_live = live
        self.bus = bus
        self.templates = Jinja2Templates(env=_environment())

    def page(self, request: Request, name: str, status: int = 200, **context: Any) -> Response:
        context.update(
            where=self.source.shown_where,
            backend=self.source.kind,
            actions=self.guard.allow_actions,
            csrf=self.guard.csrf,
            base=self.guard.prefix,
            rate_kinds=RATE_KINDS,
        )
        return self.templates.TemplateResponse(request, name, context, status_code=status)

    def error(self, request: Request, status: int, text: str) -> Response:
        return self.page(request, "error.html", status, title=f"{status}", text=text)

    # -- views --------------------------------------------------------------------------------------

    async def fleet_page(self, request: Request) -> Response:
        try:
            rows = await _in_thread(self.fleet.rows)
        except (OSError, HybridCommsError, ValueError) as exc:
            return self.error(request, 502, f"cannot list the mailboxes: {type(exc).__name__}: {exc}")
        charts = {r.key: self.fleet.rates(r.key) for r in rows}
        return self.page(request, "fleet.html", title="fleet", rows=rows, charts=charts, State=State)

    async def fleet_json(self, request: Request) -> Response:
        try:
            return _json(await _in_thread(self.live.snapshot))
        except (OSError, HybridCommsError, ValueError) as exc:
            return _json({"error": f"{type(exc).__name__}: {exc}"}, 502)

    async def graph_page(self, request: Request) -> Response:
        return self.page(request, "graph.html", title="who talks to whom")

    async def graph_json(self, request: Request) -> Response:
        entries = await _in_thread(self.fleet.entries)
        agents = frozenset(e.agent for e in entries if e.agent is not None and e.kind != "broken")
        graph = await _in_thread(lambda: self.flows.graph(agents=agents))  # never on the event loop
        return _json(graph)

    def _agent(self, request: Request) -> str | None:
        try:
            return check_agent_id(request.path_params["agent"])
        except ValueError:
            return None

    async def mailbox_page(self, request: Request) -> Response:
        agent = self._agent(request)
        if agent is None:
            return self.error(request, 404, "not an agent id")
        q = request.query_params
        try:
            state = State(q.get("state") or "new")
            number = int(q.get("page") or 1)
        except ValueError:
            return self.error(request, 400, "state is one of new, processing, done, dead; page a number")
        if state not in STATES or not 1 <= number <= 10**9:
            return self.error(request, 400, "state is one of new, processing, done, dead")
        topic = (q.get("topic") or "").strip()[:500]

        def build() -> Any:
            with self.source.reading(agent) as mb:
                return mb.stats(), page_of(mb, state, self.heads, page=number, topic=topic or None)

        try:
            stats, page = await _in_thread(build)
        except KeyError:
            return self.error(request, 404, f"no mailbox for {agent}")
        except (OSError, HybridCommsError, ValueError) as exc:
            return self.error(request, 502, f"{type(exc).__name__}: {exc}")

        def link(**change: Any) -> str:
            params = {"state": state.value, "topic": topic, "page": str(number), **change}
            return f"{self.guard.prefix}/a/{quote(agent)}?" + urlencode(
                {k: v for k, v in params.items() if v}
            )

        return self.page(
            request,
            "mailbox.html",
            title=agent,
            agent=agent,
            stats=stats,
            state=state,
            states=STATES,
            topic=topic,
            page=page,
            link=link,
            now=time.time(),
        )

    async def message_page(self, request: Request) -> Response:
        agent = self._agent(request)
        key = lookup_key(request.path_params["key"])
        if agent is None or key is None:
            return self.error(request, 404, "no such message")

        def build() -> Any:
            with self.source.reading(agent) as mb:
                info = mb.get(key)
                if info is None:
                    return None
                try:
                    message = mb.read(info)
                    return info, message, None
                except (OSError, HybridCommsError, KeyError, ValueError) as exc:
                    return info, None, f"{type(exc).__name__}: {exc}"

        try:
            got = await _in_thread(build)
        except KeyError:
            return self.error(request, 404, f"no mailbox for {agent}")
        except (OSError, HybridCommsError, ValueError) as exc:
            return self.error(request, 502, f"{type(exc).__name__}: {exc}")
        if got is None:
            return self.error(request, 404, "no such message (it may have moved on)")
        info, message, unreadable = got
        info = dataclasses.replace(info, reason=reason_shown(info.reason))  # cut by depth: never a 500
        payload = envelope = None
        if message is not None:
            body = message.to_dict()
            text = payload_text(body.pop("payload"))
            if len(text) > PAYLOAD_LIMIT:
                text = text[:PAYLOAD_LIMIT] + f"\n… ({len(text) - PAYLOAD_LIMIT} more characters)"
            payload, envelope = (
                Block(text),
                {k: clipped(v, 8)[0] if isinstance(v, (list, dict)) else v for k, v in body.items()},
            )
        return self.page(
            request,
            "message.html",
            title=f"{agent}: message",
            agent=agent,
            info=info,
            item=Item(info, _no_head(), request.path_params["key"], max(time.time() - info.changed_at, 0.0)),
            envelope=envelope,
            payload=payload,
            unreadable=unreadable,
            reason=info.reason,
            location=str(info.path) if info.path is not None else f"{info.state.value} entry {info.name}",
        )

    # -- live ---------------------------------------------------------------------------------------

    async def events(self, request: Request) -> Response:
        from sse_starlette.sse import EventSourceResponse

        queue = self.live.subscribe()

        async def stream() -> AsyncIterator[dict[str, str]]:
            try:
                while True:
                    update = await queue.get()
                    yield {"event": "fleet", "data": orjson.dumps(update).decode()}
            finally:
                self.live.unsubscribe(queue)

        return EventSourceResponse(stream(), ping=15)

    # -- actions ------------------------------------------------------------------------------------

    async def action(self, request: Request) -> Response:
        agent = self._agent(request)
        if not self.guard.allow_actions:
            return self.error(request, 403, "read-only: start the dashboard with --allow-actions to repair")
        if agent is None:
            return self.error(request, 404, "not an agent id")
        headers = request.headers
        if not self.guard.same_origin(
            headers.get("origin"), headers.get("sec-fetch-site"), headers.get("host")
        ):
            return self.error(request, 403, "a cross-site request: refused")
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return self.error(request, 415, "a form is expected")
        body = await request.body()
        if len(body) > 16 * 1024:
            return self.error(request, 413, "too large")
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        if not self.guard.csrf_ok(form.get("csrf")):
            return self.error(request, 403, "the form's token is missing or wrong: reload the page")
        what = request.path_params["what"]
        if what not in ("requeue", "requeue-dead", "purge"):
            return self.error(request, 404, "no such action")
        try:
            state, older = _purge_args(form) if what == "purge" else (State.DEAD, 0.0)
        except ValueError as exc:
            return self.error(request, 400, str(exc))
        key = lookup_key(form.get("key", "")) if what == "requeue" else ""
        if key is None:
            return self.error(request, 400, "not a message key")
        if form.get("confirm") != "yes":
            return self.page(
                request,
                "confirm.html",
                title="confirm",
                agent=agent,
                what=what,
                form={k: v for k, v in form.items() if k in ("key", "state", "older_than")},
                state=state,
                older=older,
            )

        def run() -> str:
            if what == "requeue":
                moved = self.source.requeue(agent, key)
                return f"{len(moved)} message(s) requeued to new" if moved else "not in dead (any more)"
            if what == "requeue-dead":
                return f"{self.source.requeue_all_dead(agent)} dead message(s) requeued to new"
            return f"{self.source.purge(agent, state, older)} message(s) deleted from {state.value}"

        try:
            said = await _in_thread(run)
        except KeyError:
            return self.error(request, 404, f"no mailbox for {agent}")
        except (OSError, HybridCommsError, ValueError) as exc:
            return self.error(request, 502, f"{type(exc).__name__}: {exc}")
        self.fleet.mark(agent)
        return self.page(request, "done.html", title="done", agent=agent, said=said)

    # -- the application ----------------------------------------------------------------------------

    def routes(self) -> list[Route | Mount]:
        return [
            Route("/", self.fleet_page),
            Route("/graph", self.graph_page),
            Route("/api/fleet", self.fleet_json),
            Route("/api/graph", self.graph_json),
            Route("/events", self.events),
            Route("/a/{agent}", self.mailbox_page),
            Route("/a/{agent}/m/{key}", self.message_page),
            Route("/a/{agent}/{what}", self.action, methods=["POST"]),
            Mount("/static", StaticFiles(directory=_HERE / "static"), name="static"),
        ]

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Starlette) -> AsyncIterator[None]:
        if self.start_live:
            await _in_thread(lambda: self.live.start(bus=self.bus))
        try:
            yield
        finally:
            if self.start_live:
                await _in_thread(self.live.close)


def _no_head() -> Any:
    from ._listing import Head

    return Head(None, None, None, None)


def _purge_args(form: dict[str, str]) -> tuple[State, float]:
    try:
        state = State(form.get("state", ""))
        older = float(form.get("older_than", ""))
    except ValueError:
        raise ValueError(
            "purge takes a state (done or dead) and an age in seconds (at most 1000 years)"
        ) from None
    if state not in (State.DONE, State.DEAD) or not (math.isfinite(older) and 0 <= older <= AGE_CAP):
        raise ValueError("purge takes a state (done or dead) and an age in seconds (at most 1000 years)")
    return state, older


async def _in_thread(fn: Callable[[], Any]) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn)


def _json(value: Any, status: int = 200) -> Response:
    return Response(json_text(value), status, media_type="application/json")


class Guarded:
    """The guard in front of every request (`hybridcomms.ui._security`)."""

    def __init__(self, app: ASGIApp, guard: Guard) -> None:
        self.app = app
        self.guard = guard

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        response = self._refusal(scope, headers)
        send_guarded = _with_headers(send)
        if response is not None:
            await response(scope, receive, send_guarded)
            return
        await self.app({**scope, "root_path": self.guard.prefix}, receive, send_guarded)

    def _refusal(self, scope: Scope, headers: Headers) -> Response | None:
        guard = self.guard
        if not guard.host_ok(headers.get("host")):
            return PlainTextResponse(
                "unknown Host header (this dashboard answers for this machine only)", 421
            )
        path: str = scope["path"]
        if not guard.in_prefix(path):  # the secret prefix is part of the credential: nothing outside it
            return PlainTextResponse(
                "hybridcomms ui: open the address it printed when it started (with ?token=...)", 404
            )
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        given = next((v for k, v in query if k == "token"), None)
        if given is not None and guard.token_ok(given):
            rest = urlencode([(k, v) for k, v in query if k != "token"])
            redirect = RedirectResponse(guard.local_target(path, rest), 303)
            redirect.set_cookie(
                COOKIE, guard.session, httponly=True, samesite="strict", path=guard.prefix + "/"
            )
            return redirect
        if path == guard.prefix:
            return RedirectResponse(guard.prefix + "/", 307)
        if path.startswith(guard.prefix + "/static/"):
            return None
        cookies = _cookies(headers.get("cookie", ""))
        if guard.session_ok(cookies.get(COOKIE)):
            return None
        if path.startswith((guard.prefix + "/api/", guard.prefix + "/events")):
            return PlainTextResponse("the dashboard's token is needed", 403)
        return PlainTextResponse(
            "hybridcomms ui: open the address it printed when it started (with ?token=...)", 403
        )


def _cookies(header: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in header.split(";"):
        name, eq, value = part.strip().partition("=")
        if eq:
            out.setdefault(name, value)
    return out


def _relative(location: bytes) -> bytes:
    """A redirect's target as a path only (Starlette's trailing-slash redirect names the scheme, the
    host and the port of the request's Host header: a path cannot send the browser elsewhere)."""
    parts = urlsplit(location.decode("latin-1"))
    path = "/" + parts.path.lstrip("/\\")
    return (path + (f"?{parts.query}" if parts.query else "")).encode("latin-1")


def _with_headers(send: Send) -> Callable[[Message], Awaitable[None]]:
    async def wrapped(message: Message) -> None:
        if message["type"] == "http.response.start":
            raw = [
                (k, _relative(v) if k.lower() == b"location" else v)
                for k, v in message.get("headers", [])
                if k.decode().lower() not in HEADERS
            ]
            raw += [(k.encode(), v.encode()) for k, v in HEADERS.items()]
            message = {**message, "headers": raw}
        await send(message)

    return wrapped


def create_app(
    source: Source, guard: Guard, *, live: bool = True, poll: float = 5.0, bus: bool = True
) -> tuple[ASGIApp, App]:
    """The dashboard over ``source``, behind ``guard``; and its state (for tests and the server).
    ``live``: follow notifications (or poll a Redis every ``poll`` s); ``bus``: the bus events too."""
    state = App(source, guard, live=live, poll=poll, bus=bus)
    starlette = Starlette(routes=state.routes(), lifespan=state.lifespan)
    return Guarded(starlette, guard), state


__all__ = ["App", "Block", "Row", "create_app"]
