"""The authenticated proxy in front of WebUI sessions: ``/s/<session id>/...``.

Every request (HTTP and WebSocket) is checked before anything reaches the app: the
caller must be logged on (the browser's log-on cookie, or an API token) and must own
the session or be an admin; anyone else gets the same "no such session" answer for an
existing id as for a made-up one. Requests are forwarded unchanged in path and body,
streamed both ways, to the address the session's runner reported; the app serves its
pages under its base path ``/s/<id>/``.

What never crosses: the portal's own cookies and the caller's ``Authorization`` header
(so neither the log-on nor a token ever reaches the app), hop-by-hop headers, and
``Set-Cookie`` headers from the app for the portal's cookie names. The session's own
token stays in the session's environment. Proxied traffic and open WebSockets count as
activity (the idle timeout).

A session that has ended answers with a page that says why and offers to launch the
app again (410); one still starting with a page that reloads itself (503).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import html
import logging
import re
import time
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

import aiohttp
import websockets
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.background import BackgroundTask
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from aimms_portal.aio import run_blocking
from aimms_portal.api.deps import CSRF_COOKIE, SESSION_COOKIE
from aimms_portal.auth.tokens import API_TOKEN_PREFIX
from aimms_portal.db import session_scope
from aimms_portal.errors import Conflict, Gone, NotAuthenticated, NotFound, PortalError
from aimms_portal.models import AppSession, User
from aimms_portal.services import auth, sessions

logger = logging.getLogger(__name__)

router = APIRouter(include_in_schema=False)

#: Headers that describe one connection, not the message: never forwarded.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
    }
)
PORTAL_COOKIES = frozenset({SESSION_COOKIE, CSRF_COOKIE})
METHODS = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]
#: How often an open WebSocket counts as activity, in seconds.
WEBSOCKET_ACTIVITY = 30.0

_clients: dict[int, aiohttp.ClientSession] = {}


def _client() -> aiohttp.ClientSession:
    """One pooled client per event loop (a portal process may run several loops).

    aiohttp rather than httpx here: the proxy forwards every request of every page, and
    httpx's connection pool checks all its idle connections on each request, which made
    it the proxy's largest cost (measured with py-spy under ``bench/webui_latency.py``).
    """
    loop = id(asyncio.get_running_loop())
    client = _clients.get(loop)
    if client is None or client.closed:
        client = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=200, limit_per_host=100, keepalive_timeout=30),
            timeout=aiohttp.ClientTimeout(total=None, connect=5.0, sock_connect=5.0),
            auto_decompress=False,  # bytes pass through as the app sent them
            trust_env=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )
        _clients[loop] = client
    return client


async def close_clients() -> None:
    """Close this process's pooled connections to apps (at shutdown)."""
    for client in list(_clients.values()):
        await client.close()
    _clients.clear()


# -- who may pass -------------------------------------------------------------------------


def _caller(cookies: dict[str, str], authorization: str | None) -> User:
    """The user behind the request's log-on cookie or API token.

    The portal's CSRF check does not apply: the app behind the proxy answers for its own
    requests, and the SameSite=Lax cookie never rides on another site's changes.
    """
    with session_scope() as session:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            if scheme.lower() == "bearer" and token.strip().startswith(API_TOKEN_PREFIX):
                return auth.caller_from_token(session, token.strip()).user
        secret = cookies.get(SESSION_COOKIE)
        if not secret:
            raise NotAuthenticated("Please log on.")
        return auth.caller_from_session(session, secret).user


def _target(cookies: dict[str, str], authorization: str | None, session_id: int) -> AppSession:
    user = _caller(cookies, authorization)
    with session_scope() as session:
        return sessions.proxy_target(session, actor=user, session_id=session_id)


class _Passes:
    """Who was let through to which session, for :data:`PASS_SECONDS`.

    A browser fetches a page's every script, style and image through the proxy; asking
    the database each time (the log-on, the session, the activity) would make the proxy
    the slowest part of every app. So a positive answer is kept briefly, per process:
    a log-off, a terminated session or a revoked right takes effect within that time
    (at once for sessions this process ended). Refusals are never kept.
    """

    def __init__(self, limit: int = 10_000) -> None:
        self._passes: collections.OrderedDict[tuple[str, int], tuple[float, str]] = (
            collections.OrderedDict()
        )
        self._limit = limit

    @staticmethod
    def key(cookies: dict[str, str], authorization: str | None, session_id: int) -> tuple[str, int]:
        credential = (authorization or "") + "|" + cookies.get(SESSION_COOKIE, "")
        return hashlib.sha256(credential.encode()).hexdigest(), session_id

    def get(self, key: tuple[str, int]) -> str | None:
        entry = self._passes.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: tuple[str, int], address: str) -> None:
        self._passes[key] = (time.monotonic() + PASS_SECONDS, address)
        self._passes.move_to_end(key)
        while len(self._passes) > self._limit:
            self._passes.popitem(last=False)

    def forget_session(self, session_id: int) -> None:
        for key in [k for k in self._passes if k[1] == session_id]:
            self._passes.pop(key, None)


#: How long a pass through the proxy is kept (see :class:`_Passes`), in seconds.
PASS_SECONDS = 2.0
_passes = _Passes()


def forget_session(session_id: int) -> None:
    """Let nobody through to ``session_id`` on a kept pass any more (it was ended here)."""
    _passes.forget_session(session_id)


async def _address(cookies: dict[str, str], authorization: str | None, session_id: int) -> str:
    """Where the session's app answers, if the caller may go there (see :class:`_Passes`).

    Raises:
        PortalError: the caller may not, or the session is not ready.
    """
    key = _Passes.key(cookies, authorization, session_id)
    address = _passes.get(key)
    if address is None:
        try:
            target = await run_blocking(_target, cookies, authorization, session_id)
        except PortalError:
            _passes.forget_session(session_id)
            raise
        address = target.address
        _passes.put(key, address)
    return address


def _relaunch_app(
    cookies: dict[str, str], authorization: str | None, session_id: int
) -> str | None:
    try:
        user = _caller(cookies, authorization)
    except PortalError:
        return None
    with session_scope() as session:
        return sessions.relaunch_target(session, actor=user, session_id=session_id)


# -- refusals -----------------------------------------------------------------------------


def _wants_html(request: Request) -> bool:
    return "text/html" in request.headers.get("accept", "")


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>{refresh}
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem}}
a.button{{display:inline-block;padding:.5rem 1rem;border-radius:.4rem;background:#2563eb;
color:#fff;text-decoration:none}}</style></head>
<body><h1>{title}</h1><p id="session-message">{message}</p>{action}</body></html>"""


async def _refusal(request: Request, session_id: int, exc: PortalError) -> Response:
    """The answer for a request that may not (or cannot) reach the session's app."""
    status = {NotAuthenticated: 401, NotFound: 404, Gone: 410, Conflict: 503}.get(type(exc), 400)
    if not _wants_html(request):
        return JSONResponse({"error": {"code": exc.code, "message": exc.message}}, status)
    if isinstance(exc, NotAuthenticated):
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
    refresh, action = "", '<p><a class="button" href="/sessions">Your sessions</a></p>'
    title = "No such session"
    if isinstance(exc, Gone):
        title = "This session has ended"
        app = await run_blocking(
            _relaunch_app, dict(request.cookies), request.headers.get("authorization"), session_id
        )
        if app:
            action = (
                f'<p><a class="button" id="session-relaunch" href="/launch/{quote(app)}">'
                f"Launch {html.escape(app)} again</a></p>"
            )
    elif isinstance(exc, Conflict):
        title, refresh = "This session is starting", '<meta http-equiv="refresh" content="2">'
        action = ""
    page = _PAGE.format(
        title=title, refresh=refresh, message=html.escape(exc.message), action=action
    )
    return HTMLResponse(page, status_code=status)


# -- HTTP ----------------------------------------------------------------------------------


def _forward_headers(headers: Any, client_host: str, scheme: str) -> dict[str, str]:
    forwarded: dict[str, str] = {}
    for name, value in headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower == "authorization" or lower.startswith("x-forwarded-"):
            continue
        if lower == "cookie":
            value = _without_portal_cookies(value)
            if not value:
                continue
        forwarded[name] = value
    forwarded["X-Forwarded-For"] = client_host
    forwarded["X-Forwarded-Proto"] = scheme
    if "host" in headers:
        forwarded["X-Forwarded-Host"] = headers["host"]
    return forwarded


def _without_portal_cookies(header: str) -> str:
    kept = []
    for part in header.split(";"):
        name = part.split("=", 1)[0].strip()
        if name and name not in PORTAL_COOKIES:
            kept.append(part.strip())
    return "; ".join(kept)


def _answer_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    kept = []
    for name, value in headers:
        lower = name.lower()
        if lower in HOP_BY_HOP:
            continue
        if lower == "set-cookie" and value.split("=", 1)[0].strip() in PORTAL_COOKIES:
            continue  # an app may not set (or clear) the portal's log-on
        kept.append((name, value))
    return kept


@router.api_route("/s/{session_id}", methods=METHODS)
async def session_root(session_id: int) -> RedirectResponse:
    """The session's pages live under its base path, with the slash."""
    return RedirectResponse(sessions.proxy_path(session_id), status_code=307)


@router.api_route("/s/{session_id}/{path:path}", methods=METHODS)
async def proxy_http(session_id: int, path: str, request: Request) -> Response:
    """Forward one HTTP request to the session's app (streamed both ways).

    Requests of this form are served by :class:`SessionProxy` ahead of the router; the
    route is here for the route table (metrics label the requests with its template).
    """
    return await _forward(session_id, request)


async def _forward(session_id: int, request: Request) -> Response:
    try:
        address = await _address(
            dict(request.cookies), request.headers.get("authorization"), session_id
        )
    except PortalError as exc:
        return await _refusal(request, session_id, exc)
    url = f"http://{address}{request.url.path}"
    if request.url.query:
        url += f"?{request.url.query}"
    headers = _forward_headers(
        request.headers, request.client.host if request.client else "", request.url.scheme
    )
    body = None if request.method in ("GET", "HEAD") else request.stream()
    try:
        answer = await _client().request(
            request.method, url, headers=headers, data=body, allow_redirects=False
        )
        # a small answer of known length goes out in one piece: no streaming task
        whole = answer.content_length is not None and answer.content_length <= WHOLE_ANSWER
        content = await answer.read() if whole else b""
    except (aiohttp.ClientError, OSError) as exc:
        _passes.forget_session(session_id)
        logger.info("session %s does not answer: %s", session_id, type(exc).__name__)
        problem = Conflict("The app of this session does not answer right now.", code="app_down")
        response = await _refusal(request, session_id, problem)
        response.status_code = 502
        return response
    if whole:
        response = Response(content, status_code=answer.status)
    else:
        response = StreamingResponse(
            answer.content.iter_any(),
            status_code=answer.status,
            background=BackgroundTask(answer.release),
        )
    # several headers of one name (Set-Cookie) must stay apart: set the raw list
    response.raw_headers = [
        (name.lower().encode("latin-1"), value.encode("latin-1"))
        for name, value in _answer_headers(answer.headers.items())
    ]
    return response


#: Answers up to this many bytes (with a Content-Length) are read whole, then sent.
WHOLE_ANSWER = 256 * 1024
_SESSION_PATH = re.compile(r"/s/(\d+)/")


class SessionProxy:
    """ASGI middleware: HTTP requests under ``/s/<id>/`` go to :func:`_forward` directly.

    Why ahead of the router: matching a request against every API route and passing it
    through FastAPI's request layers cost more than forwarding it (0.7 of 1.1 ms per
    request, measured with ``bench/webui_latency.py``), and an app's every page, script
    and image comes this way. Everything else, WebSockets included, goes on to ``app``.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.route = next(
            route for route in router.routes if getattr(route, "endpoint", None) is proxy_http
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _SESSION_PATH.match(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        scope["route"] = self.route  # what the router would have set (metrics read it)
        response = await _forward(int(match[1]), Request(scope, receive))
        await response(scope, receive, send)


# -- WebSockets ------------------------------------------------------------------------------


@router.websocket("/s/{session_id}/{path:path}")
async def proxy_websocket(websocket: WebSocket, session_id: int, path: str) -> None:
    """Relay one WebSocket between the browser and the session's app."""
    try:
        target = await run_blocking(
            _target, dict(websocket.cookies), websocket.headers.get("authorization"), session_id
        )
    except PortalError as exc:
        # refused before the upgrade: the browser sees the handshake fail at once
        logger.info("websocket to session %s refused: %s", session_id, exc.code)
        await websocket.close(code=1008)
        return
    url = f"ws://{target.address}{websocket.url.path}"
    if websocket.url.query:
        url += f"?{websocket.url.query}"
    protocols = [
        p.strip()
        for p in websocket.headers.get("sec-websocket-protocol", "").split(",")
        if p.strip()
    ]
    cookie = _without_portal_cookies(websocket.headers.get("cookie", ""))
    try:
        upstream = await websockets.connect(
            url,
            subprotocols=protocols or None,  # type: ignore[arg-type]
            additional_headers={"Cookie": cookie} if cookie else None,
            open_timeout=10,
            max_size=None,
        )
    except (OSError, websockets.WebSocketException, TimeoutError) as exc:
        logger.info("websocket to session %s: the app refused (%s)", session_id, exc)
        await websocket.close(code=1011)
        return
    await websocket.accept(subprotocol=upstream.subprotocol)
    try:
        await _relay(websocket, upstream, target)
    finally:
        await upstream.close()
        with contextlib.suppress(RuntimeError):
            await websocket.close()


async def _relay(websocket: WebSocket, upstream: Any, target: AppSession) -> None:
    async def to_app() -> None:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("bytes") is not None:
                await upstream.send(message["bytes"])
            elif message.get("text") is not None:
                await upstream.send(message["text"])

    async def to_browser() -> None:
        async for message in upstream:
            if isinstance(message, bytes):
                await websocket.send_bytes(message)
            else:
                await websocket.send_text(message)

    async def keep_active() -> None:
        interval = min(WEBSOCKET_ACTIVITY, sessions.activity_interval().total_seconds())
        while True:
            await asyncio.sleep(interval)
            await run_blocking(_touch, target.id or 0)

    tasks = [asyncio.create_task(t()) for t in (to_app, to_browser, keep_active)]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(BaseException):
                await task


def _touch(session_id: int) -> None:
    with session_scope() as session:
        row = session.get(AppSession, session_id)
        if row is not None:
            sessions.touch(session, row)
