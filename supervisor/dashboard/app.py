"""The dashboard's Starlette app: pages, live fragments, server-sent events and the actions.

Security model (README "Dashboard"):

- Without a token the server listens on loopback only (server.make_options refuses anything
  else) and answers only requests whose Host header names loopback, so a web page on another
  site cannot reach it through DNS rebinding.
- With a token every request must carry it: ``Authorization: Bearer``, the
  ``X-Agent-Manager-Token`` header, or the cookie set when a page is first opened with
  ``?token=`` (HttpOnly, SameSite=Strict; the token is then dropped from the address). Missing:
  401; wrong: 403.
- Actions are POSTs that must carry this process's CSRF secret both in the form and in a
  SameSite=Strict cookie, and a foreign ``Origin`` is refused; each calls the queue verb the CLI
  calls (FeatureQueue.answer, decide_permission, retry, request_control).
- Agent text is escaped by the templates; the Content-Security-Policy allows scripts and styles
  from this server's /static only, so markup that slipped through still could not run.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlencode, urlsplit

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.changes import ChangeWatcher
from api.database import Database
from api.errors import AgentManagerError, InputError, NotFoundError
from api.queue import FeatureQueue
from api.records import Decision
from supervisor.dashboard import data, rendering
from supervisor.dashboard.board import BoardCache
from supervisor.dashboard.options import DashboardOptions, is_local
from supervisor.dashboard.rendering import PageContext

STATIC = Path(__file__).resolve().parent / "static"
TICK_S = 5.0  # an event stream says "tick" this often without changes: running sessions move on
POLL_S = 0.5  # SQLite: how often the watcher reads the newest event id (PostgreSQL listens)
MAX_FORM_BYTES = 64 * 1024  # an answer may hold 20,000 characters
EVENT_INTERVAL_S = 0.5  # at most two `change` events a second: each makes every open page refetch
SECURITY_HEADERS = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
        b"form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    # same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on a form post.
    (b"referrer-policy", b"same-origin"),
    (b"x-frame-options", b"DENY"),
]


class ChangeHub:
    """One ChangeWatcher for every open page: ``generation`` grows by one per change it sees.

    Lives on the server's event loop: ``start()`` in the app's lifespan, ``close()`` when the
    server begins to shut down (the event streams end), ``stop()`` at the end of the lifespan.
    """

    def __init__(self, db: Database, poll_seconds: float = POLL_S) -> None:
        self._db = db
        self._poll_seconds = poll_seconds
        self.generation = 0
        self.closed = False
        self._event = asyncio.Event()
        self._watcher: ChangeWatcher | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # The constructor blocks: it reads the baseline and, on PostgreSQL, connects and LISTENs.
        self._watcher = await asyncio.to_thread(ChangeWatcher, self._db, poll_seconds=self._poll_seconds)
        self._task = asyncio.create_task(self._watch(), name="dashboard-changes")

    async def _watch(self) -> None:
        assert self._watcher is not None
        while not self.closed:
            if await self._watcher.wait(TICK_S):
                self.generation += 1
                self._wake()
                # A busy run changes the queue many times a second (PostgreSQL notifies each one):
                # what changes meanwhile is reported at the end of the pause, as one change.
                await asyncio.sleep(EVENT_INTERVAL_S)

    def _wake(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def next(self, seen: int, timeout: float) -> int:  # noqa: ASYNC109 - a timeout is part of the answer
        """The generation once it is past ``seen`` (or the hub closed, or ``timeout`` passed)."""
        if self.generation == seen and not self.closed:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._event.wait(), timeout)
        return self.generation

    def close(self) -> None:
        """End every event stream; call on the hub's loop."""
        self.closed = True
        self._wake()

    async def stop(self) -> None:
        self.close()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._watcher is not None:
            await asyncio.to_thread(self._watcher.close)


@dataclass
class Dashboard:
    """The ASGI app and the hub its server must close on shutdown."""

    asgi: ASGIApp
    changes: ChangeHub


def create_app(
    queue: FeatureQueue, options: DashboardOptions, *, project_dir: Path, link: data.RunLink | None = None
) -> Dashboard:
    """The dashboard for ``queue``; ``link``: the supervisor of this process (serve --dashboard)."""
    csrf = secrets.token_urlsafe(32)  # per process: a page from an earlier run cannot post here
    hub = ChangeHub(queue.db)

    def context(request: Request, path: str | None = None, flash: dict[str, str] | None = None) -> PageContext:
        flash = flash or {}
        return PageContext(
            project=str(project_dir),
            csrf=csrf,
            path=path or request.url.path,
            notice=flash.get("notice", ""),
            error=flash.get("error", ""),
        )

    def read() -> data.Board:
        return data.read_board(queue, link, options.budget_usd)

    boards = BoardCache(read, PageContext(project=str(project_dir), csrf=csrf, path="/"))

    async def index(request: Request) -> Response:
        snapshot = await run_in_threadpool(boards.snapshot, hub.generation)
        html = rendering.board_page(snapshot, context(request, "/", _flash(request)))
        return _page(request, html, csrf)

    async def board_fragment(request: Request) -> Response:
        snapshot = await run_in_threadpool(boards.snapshot, hub.generation)
        have = request.query_params.get("v", "")
        changed = boards.changed_since(snapshot, int(have)) if have.isdigit() else None
        html = rendering.board_live(snapshot, context(request, "/"), changed)
        return HTMLResponse(html, headers={"cache-control": "no-store"})

    async def dag_fragment(request: Request) -> Response:
        snapshot = await run_in_threadpool(boards.snapshot, hub.generation)
        return HTMLResponse(rendering.dag(snapshot.board), headers={"cache-control": "no-store"})

    def feature_path(request: Request) -> tuple[int, int | None, str]:
        fid = int(request.path_params["feature_id"])
        raw = request.query_params.get("attempt")
        if raw is not None and not raw.isdigit():
            raise _Refused(400, "Bad request", f"attempt must be a number, got {raw!r}")
        attempt = int(raw) if raw is not None else None
        return fid, attempt, f"/feature/{fid}" + (f"?attempt={attempt}" if attempt is not None else "")

    async def feature(request: Request) -> Response:
        fid, attempt, path = feature_path(request)
        ctx = context(request, path, _flash(request))
        page = await run_in_threadpool(data.read_feature, queue, fid, attempt, link)
        return _page(request, rendering.feature_page(page, ctx), csrf)

    async def feature_fragment(request: Request) -> Response:
        fid, attempt, path = feature_path(request)
        ctx = context(request, path)
        page = await run_in_threadpool(data.read_feature, queue, fid, attempt, link)
        return HTMLResponse(rendering.feature_live(page, ctx), headers={"cache-control": "no-store"})

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[str]:
            seen = hub.generation
            yield "retry: 2000\n: connected\n\n"
            while not hub.closed:
                generation = await hub.next(seen, TICK_S)
                if hub.closed:
                    return
                if generation != seen:
                    seen = generation
                    yield f"event: change\ndata: {generation}\n\n"
                else:
                    yield "event: tick\ndata: \n\n"

        headers = {"cache-control": "no-store", "x-accel-buffering": "no"}
        return StreamingResponse(stream(), media_type="text/event-stream", headers=headers)

    # -- actions: each calls the queue verb the CLI calls -----------------------------------

    def action(verb: Callable[[Request, dict[str, str]], str]) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            fields = await _checked_form(request, csrf)
            target = _local_path(fields.get("next", "/"))
            try:
                flash = {"notice": await run_in_threadpool(verb, request, fields)}
            except AgentManagerError as exc:
                flash = {"error": exc.message}
            response = RedirectResponse(target, status_code=303)
            _set_flash(response, request, flash)
            return response

        return endpoint

    def answer(request: Request, fields: dict[str, str]) -> str:
        fid = int(request.path_params["feature_id"])
        answered = queue.answer(fid, fields.get("text", ""), by=_who(request))
        return f"answered #{fid} ({answered.feature_name}): its session resumes with the answer"

    def decide(request: Request, fields: dict[str, str]) -> str:
        rid = int(request.path_params["request_id"])
        choice = fields.get("decision")
        if choice not in ("allow", "deny"):
            raise _Refused(400, "Bad request", "decision must be allow or deny")
        reason = fields.get("reason", "").strip() or None
        decided = queue.decide_permission(rid, choice == "allow", reason, by=_who(request))
        verb = "approved" if decided.decision is Decision.ALLOW else "denied"
        return f"{verb} request {rid}: {decided.summary} (feature #{decided.feature_id})"

    def retry(request: Request, fields: dict[str, str]) -> str:
        fid = int(request.path_params["feature_id"])
        queue.retry(fid)
        return f"feature #{fid} is pending again with a fresh attempt budget"

    def stop(request: Request, fields: dict[str, str]) -> str:
        fid = int(request.path_params["feature_id"])
        requeue = fields.get("requeue") == "1"
        reason = fields.get("reason", "").strip() or "stopped from the dashboard"
        control = queue.request_control(fid, "stop", reason, requeue=requeue, by=_who(request))
        if control.handled_at is not None:  # it was waiting for an answer: stopped at once
            return f"feature #{fid}: stopped ({control.result})"
        return f"stop of feature #{fid} requested: the supervisor running it acts within seconds"

    def nudge(request: Request, fields: dict[str, str]) -> str:
        fid = int(request.path_params["feature_id"])
        queue.request_control(fid, "nudge", fields.get("text", ""), by=_who(request))
        return f"told the agent of feature #{fid}: it reads the message at its next turn"

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        await hub.start()
        try:
            yield
        finally:
            await hub.stop()

    routes = [
        Route("/", index),
        Route("/feature/{feature_id:int}", feature),
        Route("/fragment/board", board_fragment),
        Route("/fragment/dag", dag_fragment),
        Route("/fragment/feature/{feature_id:int}", feature_fragment),
        Route("/events", events),
        Route("/answer/{feature_id:int}", action(answer), methods=["POST"]),
        Route("/permission/{request_id:int}", action(decide), methods=["POST"]),
        Route("/retry/{feature_id:int}", action(retry), methods=["POST"]),
        Route("/stop/{feature_id:int}", action(stop), methods=["POST"]),
        Route("/nudge/{feature_id:int}", action(nudge), methods=["POST"]),
        Mount("/static", StaticFiles(directory=STATIC), name="static"),
    ]

    async def refused(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, _Refused)
        return _message(request, exc.status, exc.title, exc.text)

    async def not_found(request: Request, exc: Exception) -> Response:
        text = exc.message if isinstance(exc, AgentManagerError) else "no such page"
        return _message(request, 404, "Not found", text)

    async def bad_input(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, AgentManagerError)
        return _message(request, 400, "Bad request", exc.message)

    async def unavailable(request: Request, exc: Exception) -> Response:
        # The database is down or refused a read: say so, rather than a bare 500.
        assert isinstance(exc, AgentManagerError)
        return _message(request, 503, "The queue cannot be read", exc.message)

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={
            _Refused: refused,
            NotFoundError: not_found,
            404: not_found,
            InputError: bad_input,
            AgentManagerError: unavailable,
        },
    )
    return Dashboard(asgi=Guard(app, options.token), changes=hub)


# -- the guard: host, token, headers ---------------------------------------------------------


class Guard:
    """ASGI middleware in front of every request: the Host check (no token) or the token check,
    and the security headers on every response."""

    def __init__(self, app: ASGIApp, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)  # the lifespan
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        request = Request(scope)
        refusal = self._refusal(request)
        if refusal is not None:
            await refusal(scope, receive, with_headers)
            return
        given = request.query_params.get("token")
        if self.token is not None and given is not None and request.method == "GET":
            # Keep the token out of the address bar, the history and any Referer from now on.
            query = urlencode([(k, v) for k, v in request.query_params.multi_items() if k != "token"])
            response = RedirectResponse(request.url.path + (f"?{query}" if query else ""), status_code=303)
            response.set_cookie(_cookie(request, "token"), given, httponly=True, samesite="strict", path="/")
            await response(scope, receive, with_headers)
            return
        await self.app(scope, receive, with_headers)

    def _refusal(self, request: Request) -> Response | None:
        if self.token is None:
            host = (request.url.hostname or "").strip("[]")
            if not host or not is_local(host):
                # The server listens on loopback only; another Host means a page elsewhere is
                # reaching it through a name it rebinds to 127.0.0.1.
                return _message(request, 403, "Forbidden", "this dashboard answers at localhost / 127.0.0.1 only")
            return None
        given = (
            request.query_params.get("token")
            or _bearer(request.headers.get("authorization", ""))
            or request.headers.get("x-agent-manager-token")
            or request.cookies.get(_cookie(request, "token"))
        )
        if not given:
            hint = "open this address with ?token=YOUR_TOKEN (the --token it was started with)"
            return _message(request, 401, "Token required", hint)
        if not hmac.compare_digest(given.encode(), self.token.encode()):
            return _message(request, 403, "Forbidden", "wrong token")
        return None


def _bearer(header: str) -> str | None:
    scheme, _, value = header.partition(" ")
    return value.strip() or None if scheme.lower() == "bearer" else None


def _cookie(request: Request, name: str) -> str:
    # Cookies are per host, not per port: two dashboards on one machine must not share them.
    port = (request.scope.get("server") or ("", 0))[1]
    return f"agent_manager_{name}_{port}"


# -- forms, flashes, pages -------------------------------------------------------------------


class _Refused(Exception):
    """A request the dashboard will not serve: its status and the sentence that says why."""

    def __init__(self, status: int, title: str, text: str) -> None:
        super().__init__(text)
        self.status, self.title, self.text = status, title, text


async def _checked_form(request: Request, csrf: str) -> dict[str, str]:
    """The urlencoded fields of an action, once its origin and CSRF token check out. Raises _Refused."""
    origin = request.headers.get("origin")
    if origin is not None and (origin == "null" or urlsplit(origin).netloc != request.headers.get("host")):
        raise _Refused(403, "Forbidden", "this action came from another site")
    if request.headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
        raise _Refused(415, "Unsupported form", "send the form as application/x-www-form-urlencoded")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise _Refused(413, "Too large", f"a form may hold {MAX_FORM_BYTES // 1024} KiB")
    pairs = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True, max_num_fields=20)
    fields = {key: values[0] for key, values in pairs.items()}
    given = fields.get("csrf") or request.headers.get("x-csrf-token") or ""
    cookie = request.cookies.get(_cookie(request, "csrf"), "")
    if not (hmac.compare_digest(given.encode(), csrf.encode()) and hmac.compare_digest(cookie.encode(), csrf.encode())):
        raise _Refused(403, "Forbidden", "the form's security token is missing or stale: reload the page and try again")
    return fields


def _local_path(target: str) -> str:
    """Where an action returns to: a path on this server only, never another site."""
    parts = urlsplit(target)
    if parts.scheme or parts.netloc or not parts.path.startswith("/") or parts.path.startswith("//"):
        return "/"
    return parts.path + (f"?{parts.query}" if parts.query else "")


def _who(request: Request) -> str:
    return f"dashboard ({request.client.host if request.client else 'unknown'})"


def _set_flash(response: Response, request: Request, flash: dict[str, str]) -> None:
    value = base64.urlsafe_b64encode(json.dumps(flash).encode()).decode()
    response.set_cookie(_cookie(request, "flash"), value, max_age=60, httponly=True, samesite="strict", path="/")


def _flash(request: Request) -> dict[str, str]:
    raw = request.cookies.get(_cookie(request, "flash"))
    if not raw:
        return {}
    try:
        decoded = json.loads(base64.urlsafe_b64decode(raw.encode()))
    except (ValueError, TypeError):
        return {}
    if not isinstance(decoded, dict):
        return {}
    return {k: str(v)[:2000] for k, v in decoded.items() if k in ("notice", "error")}


def _page(request: Request, html: str, csrf: str) -> Response:
    response = HTMLResponse(html, headers={"cache-control": "no-store"})
    response.set_cookie(_cookie(request, "csrf"), csrf, httponly=True, samesite="strict", path="/")
    if request.cookies.get(_cookie(request, "flash")):
        response.delete_cookie(_cookie(request, "flash"), path="/", httponly=True, samesite="strict")
    return response


def _message(request: Request, status: int, title: str, text: str) -> Response:
    ctx = PageContext(project="", csrf="", path=request.url.path)
    return HTMLResponse(rendering.message(ctx, title, text), status_code=status, headers={"cache-control": "no-store"})
