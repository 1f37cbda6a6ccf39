"""The authenticated proxy in front of WebUI sessions: ``/s/<session id>/...``.

Every request (HTTP and WebSocket) is checked before anything reaches the app: the
caller must be logged on (the browser's log-on cookie, or an API token) and must own
the session or be an admin; anyone else gets the same "no such session" answer for an
existing id as for a made-up one. Requests are forwarded unchanged in path and body,
streamed both ways, to the address the session's runner reported; the app serves its
pages under its base path ``/s/<id>/``.

What never crosses: the portal's own cookies and the caller's ``Authorization`` header
(so neither the log-on nor a token ever reaches the app), hop-by-hop headers,
``X-Forwarded-*`` headers the caller made up (the proxy sets its own), and
``Set-Cookie`` headers from the app for the portal's cookie names. The session's own
token stays in the session's environment. Proxied traffic and open WebSockets count as
activity (the idle timeout), written at most every :func:`sessions.activity_interval`.

Credentials: the log-on cookie, or an ``Authorization: Bearer`` header with an API token.
A request that carries an ``Authorization`` header is judged by it alone: anything but a
valid API token there (a session token, a forged or garbled one) is refused with 401 and
says why, whatever cookie came along.

HTTP goes to the app over pooled keep-alive connections (:mod:`aimms_portal.api.upstream`),
and :class:`SessionProxy` serves it ahead of every other layer of the portal.

A session that has ended answers with a page that says why and offers to launch the
app again (410); one still starting with a page that reloads itself (503); one whose app
does not answer with a page that says so, why, the last lines of its log, and offers to
try again or to end the session (502). A refused WebSocket upgrade gets the same status
and error body as an HTTP denial response (the ASGI ``websocket.http.response``
extension, which uvicorn and Granian both offer), or, on a server without it, a close
with the message as its reason.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hashlib
import html
import logging
import re
import threading
import time
from collections.abc import AsyncIterator, Iterable
from typing import Any
from urllib.parse import quote

import websockets
from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse, Response
from starlette.background import BackgroundTask
from starlette.requests import ClientDisconnect, cookie_parser
from starlette.responses import StreamingResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from aimms_portal.aio import run_blocking
from aimms_portal.api.deps import (
    CSRF_COOKIE,
    CSRF_HEADER,
    SAFE_METHODS,
    SESSION_COOKIE,
    client_address,
)
from aimms_portal.api.upstream import Answer, Upstream, UpstreamError
from aimms_portal.auth.tokens import API_TOKEN_PREFIX
from aimms_portal.db import session_scope
from aimms_portal.errors import (
    Conflict,
    Gone,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    PortalError,
)
from aimms_portal.models import AppSession, User
from aimms_portal.scheduler.lifecycle import SESSION_TOKEN_PREFIX
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
#: Lines of the session's log the "does not answer" page shows its owner.
APP_DOWN_LOG_LINES = 20


class _LoopState:
    """What the proxy keeps per event loop (a portal process may run several loops)."""

    def __init__(self) -> None:
        self.loop = asyncio.get_running_loop()
        self.upstream = Upstream()
        #: pass checks under way, so that concurrent requests wait for one check
        self.checks: dict[tuple[bytes, int], asyncio.Future[str]] = {}


_states: dict[int, _LoopState] = {}
_last: _LoopState | None = None  # the one asked for last: almost always the one wanted


def _state() -> _LoopState:
    global _last
    loop = asyncio.get_running_loop()
    state = _last
    if state is not None and state.loop is loop and not state.upstream.closed:
        return state
    state = _states.get(id(loop))
    if state is None or state.loop is not loop or state.upstream.closed:
        state = _states[id(loop)] = _LoopState()
    _last = state
    return state


async def close_clients() -> None:
    """Close this process's pooled connections to apps (at shutdown)."""
    for state in list(_states.values()):
        if state.loop is asyncio.get_running_loop():
            state.upstream.close()
        else:
            with contextlib.suppress(RuntimeError):  # that loop is closed already
                state.loop.call_soon_threadsafe(state.upstream.close)
    _states.clear()


# -- who may pass -------------------------------------------------------------------------


def _caller(cookies: dict[str, str], authorization: str | None, *, changes: bool = False) -> User:
    """The user behind the request's API token or, without an ``Authorization`` header,
    its log-on cookie, with the rights the credentials carry.

    The portal's CSRF check does not apply: the app behind the proxy answers for its own
    requests, and the SameSite=Lax cookie never rides on another site's changes. An API
    token's scopes apply as on the REST API: ``read`` to pass at all, ``write`` for a
    request that may change something (``changes``: not GET, HEAD or OPTIONS, or a
    WebSocket), and an admin's token without ``admin`` opens only the admin's own
    sessions.

    Raises:
        NotAuthenticated: no credentials, or ones that are not valid (the message says
            what was wrong); code ``invalid_token`` for an ``Authorization`` header that
            holds no API token at all.
        PermissionDenied: ``insufficient_scope``: the token lacks the scope needed.
    """
    with session_scope() as session:
        if authorization:
            scheme, _, token = authorization.partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise NotAuthenticated(
                    "The Authorization header holds no API token: send 'Bearer apt_...', "
                    "or log on in the browser.",
                    code="invalid_token",
                )
            if token.startswith(SESSION_TOKEN_PREFIX):
                raise NotAuthenticated(
                    "A session token does not open a session through the proxy: it is for "
                    "the app's own calls to the portal's API. Log on, or send an API token.",
                    code="invalid_token",
                )
            if not token.startswith(API_TOKEN_PREFIX):
                raise NotAuthenticated("The API token is not valid.", code="invalid_token")
            caller = auth.caller_from_token(session, token)
            needed = "write" if changes else "read"
            if caller.scopes is not None and needed not in caller.scopes:
                raise PermissionDenied(
                    f"This API token lacks the {needed!r} scope.", code="insufficient_scope"
                )
            return auth.effective_user(caller)
        secret = cookies.get(SESSION_COOKIE)
        if not secret:
            raise NotAuthenticated("Please log on.")
        return auth.caller_from_session(session, secret).user


def _target(
    cookies: dict[str, str], authorization: str | None, session_id: int, *, changes: bool
) -> AppSession:
    user = _caller(cookies, authorization, changes=changes)
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
        self._passes: collections.OrderedDict[tuple[bytes, int], tuple[float, str]] = (
            collections.OrderedDict()
        )
        self._limit = limit
        #: raised whenever a session is forgotten (see :meth:`put`)
        self.epoch = 0
        # put and forget_session may run in different threads (a UI event ends a session
        # in a worker thread); get is one dictionary look-up and needs no lock
        self._lock = threading.Lock()

    @staticmethod
    def key(
        secret: bytes, authorization: bytes, session_id: int, changes: bool
    ) -> tuple[bytes, int]:
        """The key of a pass: the credentials presented (hashed), whether the request
        may change something (a token's scopes tell those apart) and the session."""
        kind = b"w" if changes and authorization else b"r"
        return hashlib.sha256(b"%b|%b|%b" % (kind, authorization, secret)).digest(), session_id

    def get(self, key: tuple[bytes, int]) -> str | None:
        entry = self._passes.get(key)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, key: tuple[bytes, int], address: str, epoch: int) -> None:
        """Keep a pass, unless a session was forgotten since its check began (``epoch``):
        a check that ran while its session ended must not let anyone in afterwards."""
        with self._lock:
            if epoch != self.epoch:
                return
            self._passes[key] = (time.monotonic() + PASS_SECONDS, address)
            self._passes.move_to_end(key)
            while len(self._passes) > self._limit:
                self._passes.popitem(last=False)

    def forget_session(self, session_id: int) -> None:
        with self._lock:
            self.epoch += 1
            for key in [k for k in self._passes if k[1] == session_id]:
                self._passes.pop(key, None)


#: How long a pass through the proxy is kept (see :class:`_Passes`), in seconds.
PASS_SECONDS = 2.0
_passes = _Passes()


def forget_session(session_id: int) -> None:
    """Let nobody through to ``session_id`` on a kept pass any more (it was ended here)."""
    _passes.forget_session(session_id)
    _activity.forget(session_id)


class _Activity:
    """When each session's activity is next written, per process.

    A request let through on a kept pass asks the database nothing, yet it is activity:
    the first such request after :func:`sessions.activity_interval` writes it (in a
    worker thread; the request does not wait), so a session in use never looks idle.
    """

    def __init__(self) -> None:
        self._due: dict[int, float] = {}
        self._writes: set[asyncio.Future[None]] = set()

    def written(self, session_id: int) -> None:
        """Activity of ``session_id`` was just written (by a pass check)."""
        self._due[session_id] = time.monotonic() + _interval()

    def note(self, session_id: int) -> None:
        """A request of ``session_id`` went through: write that, if it is due."""
        now = time.monotonic()
        due = self._due.get(session_id)
        if due is not None and now < due:
            return
        if len(self._due) > 10_000:  # ids of long-ended sessions: forget them all
            self._due.clear()
        self._due[session_id] = now + _interval()
        write = asyncio.ensure_future(run_blocking(_touch, session_id))
        self._writes.add(write)  # kept until done: a task nobody holds may vanish
        write.add_done_callback(self._done)

    def _done(self, write: asyncio.Future[None]) -> None:
        self._writes.discard(write)
        if not write.cancelled() and write.exception() is not None:
            logger.warning("session activity not written: %s", write.exception())

    def forget(self, session_id: int) -> None:
        self._due.pop(session_id, None)


def _interval() -> float:
    return sessions.activity_interval().total_seconds()


_activity = _Activity()
# whichever part of this process ends a session (REST, UI), nobody passes on a kept pass
sessions.on_ending(forget_session)


async def _address(secret: bytes, authorization: bytes, session_id: int, changes: bool) -> str:
    """Where the session's app answers, if the caller may go there (see :class:`_Passes`).

    ``secret`` is the log-on cookie's value, ``authorization`` the header's (empty for
    none; both as the request carried them); ``changes``: not a safe method. Concurrent
    requests with the same credentials for the same session share one check: a page's
    many requests, or all of them when a pass expires under load, ask the database once,
    not once each.

    Raises:
        PortalError: the caller may not, or the session is not ready.
    """
    key = _Passes.key(secret, authorization, session_id, changes)
    address = _passes.get(key)
    if address is not None:
        return address
    checks = _state().checks
    check = checks.get(key)
    if check is None:
        check = asyncio.ensure_future(_check(key, secret, authorization, session_id, changes))
        checks[key] = check
        check.add_done_callback(lambda _: checks.pop(key, None))
    # shielded: one caller going away does not cancel the check the others wait for
    return await asyncio.shield(check)


async def _check(
    key: tuple[bytes, int], secret: bytes, authorization: bytes, sid: int, changes: bool
) -> str:
    epoch = _passes.epoch
    cookies = {SESSION_COOKIE: secret.decode("latin-1")} if secret else {}
    header = authorization.decode("latin-1") or None
    try:
        target = await run_blocking(_target, cookies, header, sid, changes=changes)
    except (Gone, Conflict):
        _passes.forget_session(sid)  # ended or restarting: nobody else passes either
        raise
    address = target.address or ""
    _activity.written(sid)  # the check noted the activity (proxy_target)
    _passes.put(key, address, epoch)
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


#: The code of the refusal for a session whose app does not answer (502).
APP_DOWN = "app_down"
_STATUS = {NotAuthenticated: 401, PermissionDenied: 403, NotFound: 404, Gone: 410, Conflict: 503}


def _status(exc: PortalError) -> int:
    """The HTTP status of a refusal (WebSocket upgrades get the same)."""
    return 502 if exc.code == APP_DOWN else _STATUS.get(type(exc), 400)


def _app_down(reason: str) -> Conflict:
    return Conflict(f"The app of this session does not answer: {reason}.", code=APP_DOWN)


def _error_body(exc: PortalError) -> dict[str, dict[str, str]]:
    return {"error": {"code": exc.code, "message": exc.message}}


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>{refresh}
<style>body{{font-family:system-ui,sans-serif;max-width:40rem;margin:4rem auto;padding:0 1rem}}
a.button,button{{display:inline-block;padding:.5rem 1rem;border-radius:.4rem;border:0;
background:#2563eb;color:#fff;text-decoration:none;font:inherit;cursor:pointer}}
button.quiet{{background:#e5e7eb;color:#111}}
pre{{background:#f3f4f6;padding:.75rem;overflow-x:auto;white-space:pre-wrap}}</style></head>
<body><h1>{title}</h1><p id="session-message">{message}</p>{details}</body></html>"""

#: Ends the session from the "does not answer" page with the portal's REST API (the
#: log-on cookie rides along; the CSRF token comes from its readable cookie), then shows
#: the page the session's address answers with next: "This session has ended".
_TERMINATE_SCRIPT = """<script>
document.getElementById("session-terminate").addEventListener("click", async () => {{
  const csrf = document.cookie.split("; ").find((c) => c.startsWith("{csrf}="));
  const answer = await fetch("/api/v1/sessions/{session_id}", {{
    method: "DELETE", credentials: "same-origin",
    headers: {{"{header}": csrf ? decodeURIComponent(csrf.split("=")[1]) : ""}},
  }});
  if (answer.ok || answer.status === 409) {{ location.reload(); return; }}
  const body = await answer.json().catch(() => null);
  document.getElementById("session-message").textContent =
    (body && body.error && body.error.message) || "The session could not be ended.";
}});
</script>"""


async def _refusal(request: Request, session_id: int, exc: PortalError) -> Response:
    """The answer for a request that may not (or cannot) reach the session's app."""
    status = _status(exc)
    if not _wants_html(request):
        return JSONResponse(_error_body(exc), status)
    credentials = request.headers.get("authorization")
    if isinstance(exc, NotAuthenticated) and not credentials:
        # a browser without (or with an ended) log-on: the log-on page, then back here
        return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
    refresh, details = "", '<p><a class="button" href="/sessions">Your sessions</a></p>'
    title = "No such session"
    if isinstance(exc, NotAuthenticated):
        title, details = "Not logged on", ""
    elif isinstance(exc, PermissionDenied):
        title, details = "Not allowed", ""
    elif isinstance(exc, Gone):
        title = "This session has ended"
        app = await run_blocking(_relaunch_app, dict(request.cookies), credentials, session_id)
        if app:
            details = (
                f'<p><a class="button" id="session-relaunch" href="/launch/{quote(app)}">'
                f"Launch {html.escape(app)} again</a></p>"
            )
    elif exc.code == APP_DOWN:
        title = "The app does not answer"
        lines = await run_blocking(_log_lines, dict(request.cookies), credentials, session_id)
        details = _app_down_details(request, session_id, lines)
    elif isinstance(exc, Conflict):
        title, refresh = "This session is starting", '<meta http-equiv="refresh" content="2">'
        details = ""
    page = _PAGE.format(
        title=title, refresh=refresh, message=html.escape(exc.message), details=details
    )
    return HTMLResponse(page, status_code=status)


def _log_lines(cookies: dict[str, str], authorization: str | None, session_id: int) -> list[str]:
    """The last lines of the session's log, if the caller may read it (else none)."""
    try:
        user = _caller(cookies, authorization)
        return sessions.session_log(actor=user, session_id=session_id, tail=APP_DOWN_LOG_LINES)
    except PortalError:
        return []


def _app_down_details(request: Request, session_id: int, lines: list[str]) -> str:
    log = ""
    if lines:
        log = (
            "<p>The last lines of its log:</p>"
            f'<pre id="session-log">{html.escape(chr(10).join(lines))}</pre>'
        )
    again = html.escape(request.url.path + (f"?{request.url.query}" if request.url.query else ""))
    actions = (
        f'<p><a class="button" id="session-retry" href="{again}">Try again</a> '
        '<button class="quiet" id="session-terminate" type="button">End this session</button> '
        '<a href="/sessions">Your sessions</a></p>'
    )
    script = _TERMINATE_SCRIPT.format(csrf=CSRF_COOKIE, header=CSRF_HEADER, session_id=session_id)
    return log + actions + script


# -- HTTP ----------------------------------------------------------------------------------

#: Request headers never forwarded (besides the hop-by-hop ones): the caller's credential
#: and forwarding headers the caller may have made up (the proxy sets its own).
_DROPPED = frozenset(name.encode() for name in HOP_BY_HOP | {"authorization"})
_FORWARDED_PREFIX = b"x-forwarded-"
_ANSWER_DROPPED = frozenset(name.encode() for name in HOP_BY_HOP)
_PORTAL_COOKIE_NAMES = frozenset(name.encode() for name in PORTAL_COOKIES)


def _without_portal_cookies(header: str) -> str:
    kept = []
    for part in header.split(";"):
        name = part.split("=", 1)[0].strip()
        if name and name not in PORTAL_COOKIES:
            kept.append(part.strip())
    return "; ".join(kept)


_SESSION_COOKIE = SESSION_COOKIE.encode()


def _split_cookies(header: bytes) -> tuple[bytes, bytes]:
    """(the log-on cookie's value, the header without the portal's cookies): the same
    cookies as Starlette's parser reads (the last of one name wins), in one pass."""
    secret = b""
    kept = []
    for part in header.split(b";"):
        name, _, value = part.partition(b"=")
        name = name.strip()
        if name in _PORTAL_COOKIE_NAMES:
            if name == _SESSION_COOKIE:
                secret = value.strip()
        elif name:
            kept.append(part.strip())
    if secret.startswith(b'"'):  # a quoted value: rare, so Starlette's parser unquotes it
        secret = cookie_parser(header.decode("latin-1")).get(SESSION_COOKIE, "").encode("latin-1")
    return secret, b"; ".join(kept)


def _answer_headers(headers: Iterable[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The app's answer headers that go on to the browser (names lower-case)."""
    kept = []
    for name, value in headers:
        if name in _ANSWER_DROPPED:
            continue
        if name == b"set-cookie" and value.split(b"=", 1)[0].strip() in _PORTAL_COOKIE_NAMES:
            continue  # an app may not set (or clear) the portal's log-on
        kept.append((name, value))
    return kept


@router.api_route("/s/{session_id}", methods=METHODS)
async def session_root(session_id: int) -> RedirectResponse:
    """The session's pages live under its base path, with the slash."""
    return RedirectResponse(sessions.proxy_path(session_id), status_code=307)


@router.api_route("/s/{session_id}/{path:path}", methods=METHODS)
async def proxy_http(session_id: int, path: str, request: Request) -> RedirectResponse:
    """Requests under ``/s/<digits>/`` are served by :class:`SessionProxy` ahead of the
    router (which labels them in the metrics with this route's template); an id spelled
    otherwise that still reads as a number (``+7``) is sent to its usual spelling."""
    target = sessions.proxy_path(session_id) + quote(path)
    if request.url.query:
        target += f"?{request.url.query}"
    return RedirectResponse(target, status_code=307)


class _Request:
    """What the proxy reads from a request's scope, in one pass over its headers: the
    credentials for the pass check, and the head that goes to the app (:meth:`head`)."""

    __slots__ = ("authorization", "body", "chunked", "lines", "method", "secret", "target")

    def __init__(self, scope: Scope) -> None:
        self.method: str = scope["method"]
        self.secret = b""  # the portal's log-on cookie
        self.authorization = b""
        host = b""
        forwarded = b""
        length: bytes | None = None
        chunked = False
        lines = [b""]  # the request line goes first
        for name, value in scope["headers"]:
            if name in _DROPPED or name.startswith(_FORWARDED_PREFIX):
                if name == b"authorization":
                    self.authorization = value
                elif name == b"host":
                    host = value
                elif name == b"transfer-encoding":
                    chunked = b"chunked" in value.lower()
                elif name == b"x-forwarded-for":
                    forwarded += (b"," if forwarded else b"") + value
                continue
            if name == b"cookie":
                secret, value = _split_cookies(value)
                self.secret = secret or self.secret
                if not value:
                    continue
            elif name == b"content-length":
                length = value
            lines.append(b"%b: %b\r\n" % (name, value))

        # HTTP/1.1 says what has a body: a length or chunks; HTTP/2 need not say
        if length is None and not chunked and scope.get("http_version") == "2":
            chunked = self.method not in ("GET", "HEAD")
        self.chunked = chunked
        self.body = chunked or (length is not None and length.strip() != b"0")
        if chunked:
            lines.append(b"transfer-encoding: chunked\r\n")

        target = scope.get("raw_path") or quote(scope["path"]).encode()
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        self.target = target
        client = scope.get("client")
        # the client's address as the portal sees it (behind a trusted proxy: its
        # X-Forwarded-For), never what the caller claims
        address = client_address(client[0] if client else "", forwarded.decode("latin-1"))
        lines.append(b"x-forwarded-for: %b\r\n" % address.encode())
        lines.append(b"x-forwarded-proto: %b\r\n" % scope.get("scheme", "http").encode())
        if host:
            lines.append(b"x-forwarded-host: %b\r\n" % host)
        lines.append(b"\r\n")
        self.lines = lines

    def head(self, address: str) -> bytes:
        """The request's head for the app at ``address``."""
        self.lines[0] = b"%b %b HTTP/1.1\r\nhost: %b\r\n" % (
            self.method.encode(),
            self.target,
            address.encode(),
        )
        return b"".join(self.lines)


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        yield message.get("body", b"")
        if not message.get("more_body", False):
            return


async def _forward(session_id: int, scope: Scope, receive: Receive, send: Send) -> int:
    """Forward one HTTP request to the session's app; returns the status sent.

    Answers of known length up to :data:`WHOLE_ANSWER` bytes are read whole and sent in
    one piece; longer ones, and those of unknown length, are streamed as they come.
    """
    request = _Request(scope)
    try:
        changes = request.method not in SAFE_METHODS
        address = await _address(request.secret, request.authorization, session_id, changes)
    except PortalError as exc:
        response = await _refusal(Request(scope, receive), session_id, exc)
        await response(scope, receive, send)
        return response.status_code
    _activity.note(session_id)

    answer: Answer | None = None
    try:
        answer = await _state().upstream.request(
            address,
            request.head(address),
            _request_body(receive) if request.body else None,
            chunked=request.chunked,
            head_only=request.method == "HEAD",
        )
        length = answer.content_length
        whole = answer.complete or (length is not None and length <= WHOLE_ANSWER)
        if not whole:
            body = b""
        elif answer.complete:
            body = answer.take()  # it came with the head: the usual case for small answers
        else:
            body = await answer.read()
    except UpstreamError as exc:
        if answer is not None:
            answer.release()
        _passes.forget_session(session_id)
        logger.info("session %s does not answer: %s", session_id, exc)
        response = await _refusal(Request(scope, receive), session_id, _app_down(str(exc)))
        await response(scope, receive, send)
        return response.status_code
    except ClientDisconnect:
        if answer is not None:
            answer.release()
        return 499  # the caller went away while sending the body: nobody to answer
    except BaseException:
        if answer is not None:
            answer.release()
        raise

    headers = _answer_headers(answer.headers)
    if whole:
        answer.release()
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        return answer.status
    streamed = StreamingResponse(
        answer.chunks(), status_code=answer.status, background=BackgroundTask(answer.release)
    )
    streamed.raw_headers = headers  # several of one name (Set-Cookie) stay apart
    try:
        await streamed(scope, receive, send)
    finally:
        answer.release()
    return answer.status


#: Answers up to this many bytes (with a Content-Length) are read whole, then sent.
WHOLE_ANSWER = 256 * 1024
_SESSION_PATH = re.compile(r"/s/(\d+)/")


class SessionProxy:
    """ASGI middleware: HTTP requests under ``/s/<id>/`` go to :func:`_forward` directly.

    Why ahead of everything else: matching a request against every API route and passing
    it through FastAPI's and Reflex's layers cost more than forwarding it (measured with
    ``bench/webui_latency.py``), and an app's every page, script and image comes this
    way. So it is the outermost layer of :func:`~aimms_portal.api.app.create_api`, and the
    servers put one more in front of the whole ASGI app (the portal's Reflex app, the
    backend's API); whichever sees a request first serves it. Everything else,
    WebSockets included, goes on to ``app``.

    It counts and times the requests it serves itself, in the API's metrics, labelled
    with the proxy's route template (``/s/{session_id}/{path:path}``).

    Known limit: one portal process forwards about 8,000 requests/s on 2 CPUs
    (``bench/webui_latency.py``), so an app that answers in tens of microseconds is slowed
    down several times; the README's limits say so too.
    """

    def __init__(self, app: ASGIApp) -> None:
        # imported here: the API's module imports this one
        from aimms_portal.api.app import HTTP_LATENCY, HTTP_REQUESTS

        self.app = app
        self._requests = HTTP_REQUESTS
        self._latency = HTTP_LATENCY
        self._template: str = next(
            getattr(route, "path", "")
            for route in router.routes
            if getattr(route, "endpoint", None) is proxy_http
        )
        # the labelled metrics per (method, status): looking them up costs more than
        # the rest of the bookkeeping
        self._metrics: dict[tuple[str, int], tuple[Any, Any]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = _SESSION_PATH.match(scope["path"]) if scope["type"] == "http" else None
        if match is None:
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500
        try:
            status = await _forward(int(match[1]), scope, receive, send)
        finally:
            self._count(scope["method"], status, time.perf_counter() - started)

    def _count(self, method: str, status: int, seconds: float) -> None:
        metrics = self._metrics.get((method, status))
        if metrics is None:
            metrics = (
                self._requests.labels(method, self._template, str(status)),
                self._latency.labels(method, self._template),
            )
            if len(self._metrics) < 256:  # methods are the client's to choose
                self._metrics[(method, status)] = metrics
        metrics[0].inc()
        metrics[1].observe(seconds)


# -- WebSockets ------------------------------------------------------------------------------


@router.websocket("/s/{session_id}/{path:path}")
async def proxy_websocket(websocket: WebSocket, session_id: int, path: str) -> None:
    """Relay one WebSocket between the browser and the session's app."""
    try:
        # a WebSocket carries changes as readily as a POST
        target = await run_blocking(
            _target,
            dict(websocket.cookies),
            websocket.headers.get("authorization"),
            session_id,
            changes=True,
        )
    except PortalError as exc:
        # refused before the upgrade: the browser sees the handshake fail at once
        logger.info("websocket to session %s refused: %s", session_id, exc.code)
        await _refuse_websocket(websocket, exc)
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
        await _refuse_websocket(websocket, _app_down(f"it refused the WebSocket ({exc})"))
        return
    await websocket.accept(subprotocol=upstream.subprotocol)
    try:
        await _relay(websocket, upstream, target)
    finally:
        await upstream.close()
        with contextlib.suppress(RuntimeError):
            await websocket.close()


#: The longest close reason a WebSocket close frame carries, in bytes.
_CLOSE_REASON_BYTES = 123


async def _refuse_websocket(websocket: WebSocket, exc: PortalError) -> None:
    """Refuse an upgrade with the status and error body an HTTP request would get, where
    the server lets the app answer the handshake (the ``websocket.http.response``
    extension); else close it (policy violation) with the message as its reason."""
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(JSONResponse(_error_body(exc), _status(exc)))
        return
    reason = exc.message.encode()[:_CLOSE_REASON_BYTES].decode(errors="ignore")
    await websocket.close(code=1008, reason=reason)


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
        # an open WebSocket is activity even when nothing goes through it
        while True:
            await asyncio.sleep(_interval())
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
