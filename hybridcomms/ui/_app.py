"""The dashboard's web application: routes, templates, the guard around them.

`create_app` builds it over a `Source`; `hybridcomms.ui.run` serves it with uvicorn.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, TypeVar
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
from starlette.types import ASGIApp, Receive, Scope, Send
from starlette.types import Message as ASGIMessage

from ._fleet import RATE_KINDS, Fleet, Row
from ._graph import Flows
from ._listing import HeadCache, Item, Page, lookup_key, page_of
from ._live import Live
from ._payload import clipped, payload_text, reason_shown
from ._security import COOKIE, HEADERS, Guard
from ._source import (
    STATES,
    HybridCommsError,
    MailboxStats,
    Message,
    MessageInfo,
    Source,
    State,
    check_agent_id,
    json_text,
    printable,
    shown,
)

_HERE = Path(__file__).parent
_T = TypeVar("_T")
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
    return _age_in_units(seconds)


def _age_in_units(seconds: float) -> str:
    """A known age in its largest whole unit (days, hours, minutes, seconds), or its cap."""
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
        try:
            agent = self._agent_or_404(request)
            wanted = _listing_query(request.query_params)
            stats, page = await _on_mailbox(agent, lambda: self._listing(agent, wanted))
        except _Refused as refused:
            return self.error(request, refused.status, refused.text)
        return self.page(
            request,
            "mailbox.html",
            title=agent,
            agent=agent,
            stats=stats,
            state=wanted.state,
            states=STATES,
            topic=wanted.topic,
            page=page,
            link=self._linker(agent, wanted),
            now=time.time(),
        )

    def _agent_or_404(self, request: Request) -> str:
        """The agent a route names; a 404 for a path segment that is not an agent id."""
        agent = self._agent(request)
        if agent is None:
            raise _Refused(404, "not an agent id")
        return agent

    def _listing(self, agent: str, wanted: _Listing) -> tuple[MailboxStats, Page]:
        """The counts of ``agent``'s mailbox and the page of it asked for (in a worker thread)."""
        with self.source.reading(agent) as mb:
            topic = wanted.topic or None
            return mb.stats(), page_of(mb, wanted.state, self.heads, page=wanted.number, topic=topic)

    def _linker(self, agent: str, wanted: _Listing) -> Callable[..., str]:
        """The template's ``link``: the address of this listing with some of its parameters changed."""

        def link(**change: Any) -> str:
            params = {
                "state": wanted.state.value,
                "topic": wanted.topic,
                "page": str(wanted.number),
                **change,
            }
            return f"{self.guard.prefix}/a/{quote(agent)}?" + urlencode(_given(params))

        return link

    async def message_page(self, request: Request) -> Response:
        agent = self._agent(request)
        key = lookup_key(request.path_params["key"])
        if agent is None or key is None:
            return self.error(request, 404, "no such message")
        try:
            got = await _on_mailbox(agent, lambda: self._message(agent, key))
        except _Refused as refused:
            return self.error(request, refused.status, refused.text)
        if got is None:
            return self.error(request, 404, "no such message (it may have moved on)")
        info, message, unreadable = got
        info = dataclasses.replace(info, reason=reason_shown(info.reason))  # cut by depth: never a 500
        payload, envelope = _message_shown(message)
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
            location=_location(info),
        )

    def _message(self, agent: str, key: str) -> tuple[MessageInfo, Message | None, str | None] | None:
        """The message ``key`` of ``agent``'s mailbox (in a worker thread): its info, its content (or
        why it cannot be read); None when it is not there."""
        with self.source.reading(agent) as mb:
            info = mb.get(key)
            if info is None:
                return None
            try:
                message = mb.read(info)
                return info, message, None
            except (OSError, HybridCommsError, KeyError, ValueError) as exc:
                return info, None, f"{type(exc).__name__}: {exc}"

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
        try:
            agent = self._action_allowed(request)
            form = await self._action_form(request)
            act = _action_asked(request.path_params["what"], form)
            if form.get("confirm") != "yes":
                return self._confirm_page(request, agent, act, form)
            said = await _on_mailbox(agent, lambda: self._perform(agent, act))
        except _Refused as refused:
            return self.error(request, refused.status, refused.text)
        self.fleet.mark(agent)
        return self.page(request, "done.html", title="done", agent=agent, said=said)

    def _action_allowed(self, request: Request) -> str:
        """The agent an action is asked for, once the dashboard allows actions and the request comes
        from one of its own pages."""
        if not self.guard.allow_actions:
            raise _Refused(403, "read-only: start the dashboard with --allow-actions to repair")
        agent = self._agent_or_404(request)
        headers = request.headers
        if not self.guard.same_origin(
            headers.get("origin"), headers.get("sec-fetch-site"), headers.get("host")
        ):
            raise _Refused(403, "a cross-site request: refused")
        return agent

    async def _action_form(self, request: Request) -> dict[str, str]:
        """The action's form: a small url-encoded body that carries the page's CSRF token."""
        if not request.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            raise _Refused(415, "a form is expected")
        body = await request.body()
        if len(body) > 16 * 1024:
            raise _Refused(413, "too large")
        form = dict(parse_qsl(body.decode("utf-8", "replace")))
        if not self.guard.csrf_ok(form.get("csrf")):
            raise _Refused(403, "the form's token is missing or wrong: reload the page")
        return form

    def _confirm_page(self, request: Request, agent: str, act: _Action, form: dict[str, str]) -> Response:
        """The page that asks a person to confirm ``act`` (the form posted again, with confirm=yes)."""
        return self.page(
            request,
            "confirm.html",
            title="confirm",
            agent=agent,
            what=act.what,
            form={k: v for k, v in form.items() if k in ("key", "state", "older_than")},
            state=act.state,
            older=act.older,
        )

    def _perform(self, agent: str, act: _Action) -> str:
        """Does ``act`` on ``agent``'s mailbox (in a worker thread); what it did, in a sentence."""
        if act.what == "requeue":
            moved = self.source.requeue(agent, act.key)
            return f"{len(moved)} message(s) requeued to new" if moved else "not in dead (any more)"
        if act.what == "requeue-dead":
            return f"{self.source.requeue_all_dead(agent)} dead message(s) requeued to new"
        return f"{self.source.purge(agent, act.state, act.older)} message(s) deleted from {act.state.value}"

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


class _Refused(Exception):
    """A request a route answers with an error page: its status and its text."""

    def __init__(self, status: int, text: str) -> None:
        super().__init__(text)
        self.status = status
        self.text = text


async def _on_mailbox(agent: str, fn: Callable[[], _T]) -> _T:
    """``fn`` (which opens ``agent``'s mailbox) run in a worker thread: no such mailbox is a 404, a
    backend that fails a 502."""
    try:
        result: _T = await _in_thread(fn)
    except KeyError:
        raise _Refused(404, f"no mailbox for {agent}") from None
    except (OSError, HybridCommsError, ValueError) as exc:
        raise _Refused(502, f"{type(exc).__name__}: {exc}") from None
    return result


@dataclasses.dataclass(frozen=True)
class _Listing:
    """What a mailbox page lists: a state, a page number, a topic pattern ("" for every topic)."""

    state: State
    number: int
    topic: str


def _listing_query(query: Mapping[str, str]) -> _Listing:
    """The listing a mailbox page's query asks for; a 400 for a state or a page that cannot be."""
    try:
        state = State(_param(query, "state", "new"))
        number = int(_param(query, "page", "1"))
    except ValueError:
        raise _Refused(400, "state is one of new, processing, done, dead; page a number") from None
    if state not in STATES or not 1 <= number <= 10**9:
        raise _Refused(400, "state is one of new, processing, done, dead")
    return _Listing(state, number, _param(query, "topic", "").strip()[:500])


def _param(query: Mapping[str, str], name: str, default: str) -> str:
    """A query parameter; ``default`` when it is missing or empty."""
    return query.get(name) or default


def _given(params: dict[str, str]) -> dict[str, str]:
    """The parameters that have a value (a link leaves the empty ones out)."""
    return {k: v for k, v in params.items() if v}


def _message_shown(message: Message | None) -> tuple[Block | None, dict[str, Any] | None]:
    """What the message page shows of a message read: its payload as a block of JSON (cut at
    `PAYLOAD_LIMIT`) and its other fields (cut by depth); nothing for a message not read."""
    if message is None:
        return None, None
    body = message.to_dict()
    text = _payload_cut(payload_text(body.pop("payload")))
    return Block(text), {k: clipped(v, 8)[0] if isinstance(v, (list, dict)) else v for k, v in body.items()}


def _payload_cut(text: str) -> str:
    """``text`` cut at `PAYLOAD_LIMIT` characters, saying how many more there were."""
    if len(text) > PAYLOAD_LIMIT:
        return text[:PAYLOAD_LIMIT] + f"\n… ({len(text) - PAYLOAD_LIMIT} more characters)"
    return text


def _location(info: MessageInfo) -> str:
    """Where a message lies: its file, or (a backend without files) its state and entry name."""
    return str(info.path) if info.path is not None else f"{info.state.value} entry {info.name}"


@dataclasses.dataclass(frozen=True)
class _Action:
    """A repair asked from a page: requeue one dead message (``key``), requeue every dead one, or
    purge the messages of ``state`` older than ``older`` seconds."""

    what: str
    state: State
    older: float
    key: str


def _action_asked(what: str, form: dict[str, str]) -> _Action:
    """The repair a posted form asks for; a 404 for an unknown action, a 400 for bad arguments."""
    if what not in ("requeue", "requeue-dead", "purge"):
        raise _Refused(404, "no such action")
    state, older = _action_scope(what, form)
    key = lookup_key(form.get("key", "")) if what == "requeue" else ""
    if key is None:
        raise _Refused(400, "not a message key")
    return _Action(what, state, older, key)


def _action_scope(what: str, form: dict[str, str]) -> tuple[State, float]:
    """The state and the age an action covers: a purge's from its form (a 400 when they cannot be),
    the dead letters for a requeue."""
    try:
        return _purge_args(form) if what == "purge" else (State.DEAD, 0.0)
    except ValueError as exc:
        raise _Refused(400, str(exc)) from None


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
    if not _purgeable(state, older):
        raise ValueError("purge takes a state (done or dead) and an age in seconds (at most 1000 years)")
    return state, older


def _purgeable(state: State, older: float) -> bool:
    """Whether a purge may take these: done or dead messages, older than a real age (at most `AGE_CAP`)."""
    return state in (State.DONE, State.DEAD) and math.isfinite(older) and 0 <= older <= AGE_CAP


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
        """The answer to a request the guard stops, in the order of its checks; None: let it through."""
        path: str = scope["path"]
        answer = self._foreign(path, headers)
        if answer is None:
            answer = self._token_login(path, scope)
        if answer is None:
            answer = self._unauthenticated(path, headers)
        return answer

    def _foreign(self, path: str, headers: Headers) -> Response | None:
        """A request for another host, or outside the secret prefix."""
        if not self.guard.host_ok(headers.get("host")):
            return PlainTextResponse(
                "unknown Host header (this dashboard answers for this machine only)", 421
            )
        if not self.guard.in_prefix(path):  # the secret prefix is part of the credential: nothing outside it
            return PlainTextResponse(
                "hybridcomms ui: open the address it printed when it started (with ?token=...)", 404
            )
        return None

    def _token_login(self, path: str, scope: Scope) -> Response | None:
        """A request that gives the right token: redirected to the same page without it, with the
        session cookie set."""
        guard = self.guard
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        if not guard.token_ok(_given_token(query)):
            return None
        rest = urlencode([(k, v) for k, v in query if k != "token"])
        redirect = RedirectResponse(guard.local_target(path, rest), 303)
        redirect.set_cookie(COOKIE, guard.session, httponly=True, samesite="strict", path=guard.prefix + "/")
        return redirect

    def _unauthenticated(self, path: str, headers: Headers) -> Response | None:
        """A request without the session cookie, except for the static files (the prefix alone is
        sent to its folder)."""
        guard = self.guard
        if path == guard.prefix:
            return RedirectResponse(guard.prefix + "/", 307)
        if path.startswith(guard.prefix + "/static/"):
            return None
        if guard.session_ok(_cookies(headers.get("cookie", "")).get(COOKIE)):
            return None
        if path.startswith((guard.prefix + "/api/", guard.prefix + "/events")):
            return PlainTextResponse("the dashboard's token is needed", 403)
        return PlainTextResponse(
            "hybridcomms ui: open the address it printed when it started (with ?token=...)", 403
        )


def _given_token(query: list[tuple[str, str]]) -> str | None:
    """The first ``token`` of a query (None when there is none)."""
    return next((v for k, v in query if k == "token"), None)


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


def _with_headers(send: Send) -> Callable[[ASGIMessage], Awaitable[None]]:
    async def wrapped(message: ASGIMessage) -> None:
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
