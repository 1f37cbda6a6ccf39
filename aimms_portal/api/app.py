"""The REST API: a FastAPI app under ``/api/v1`` plus the operations routes.

The Reflex app mounts itself inside this app (``rx.App(api_transformer=...)``), so the
routes here win and everything else falls through to the UI. Every error leaves as
``{"error": {"code": ..., "message": ...}}``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.routing import APIRoute
from prometheus_client import Counter, Histogram
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute, Match
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from aimms_portal.api import API_PREFIX, proxy
from aimms_portal.api.lean import LeanRoute, LeanRouter
from aimms_portal.api.routes import (
    apps,
    audit,
    auth,
    cases,
    groups,
    jobs,
    me,
    ops,
    runner,
    runtimes,
    sessions,
    signing_keys,
    tokens,
    users,
)
from aimms_portal.api.schemas import ErrorBody
from aimms_portal.db import REPO_ROOT
from aimms_portal.errors import (
    Conflict,
    Gone,
    InvalidInput,
    NotAuthenticated,
    NotFound,
    PermissionDenied,
    PortalError,
    TooLarge,
    TooManyRequests,
    Unavailable,
)

logger = logging.getLogger(__name__)

_STATUS: list[tuple[type[PortalError], int]] = [
    (NotAuthenticated, 401),
    (PermissionDenied, 403),
    (NotFound, 404),
    (Conflict, 409),
    (Gone, 410),
    (TooLarge, 413),
    (InvalidInput, 422),
    (TooManyRequests, 429),
    (Unavailable, 503),
]

HTTP_REQUESTS = Counter(
    "aimms_portal_http_requests_total",
    "HTTP requests answered, by route template and status.",
    ["method", "route", "status"],
)
HTTP_LATENCY = Histogram(
    "aimms_portal_http_request_duration_seconds",
    "Time to answer HTTP requests, by route template.",
    ["method", "route"],
)


def error_response(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    """A response in the API's one error shape."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


def _status_of(exc: PortalError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 400


async def _portal_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, PortalError)
    status = _status_of(exc)
    if status >= 500:
        logger.warning(
            "%s %s: %s (%s)", request.method, request.url.path, exc.message, exc.log_detail
        )
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else {}
    if isinstance(exc, TooManyRequests):
        headers["Retry-After"] = str(exc.retry_after)
    return error_response(status, exc.code, exc.message, **headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed", 415: "unsupported_media_type"}.get(
        exc.status_code, "http_error"
    )
    return error_response(exc.status_code, code, str(exc.detail))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors = exc.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "malformed_json", "The request body is not valid JSON.")
    parts = []
    for error in errors[:5]:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body")
        parts.append(f"{where or 'body'}: {error.get('msg', 'invalid')}")
    return error_response(422, "invalid_request", "; ".join(parts))


async def _unexpected_error(request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error on %s %s", request.method, request.url.path)
    return error_response(500, "internal", "Something went wrong on the server; it was logged.")


def _methods_for(routers: list[APIRouter], path: str) -> set[str]:
    """Methods of the API routes whose path matches ``path`` (for 405 answers)."""
    methods: set[str] = set()
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and route.path_regex.match(path):
                methods |= (route.methods or set()) - {"HEAD"}
    return methods


#: Paths of the REST API's app outside :data:`API_PREFIX`.
_OPERATIONS_PATHS = frozenset({"/healthz", "/readyz", "/metrics"})


class ApiFront:
    """ASGI front: HTTP requests for the REST API's paths go straight to ``api``,
    everything else (the UI, its WebSocket, lifespan) to ``app``.

    Reflex serves the API app inside its own Starlette app, behind its context, CORS and
    mount layers, which the API does not use (the API app has CORS of its own) and which
    cost about as much per request as a cached API answer itself. The answer is the same
    either way: ``api`` is the app Reflex serves, with Reflex's UI mounted at its end.

    A ``GET`` of a lean route (:mod:`aimms_portal.api.lean`) skips the API app's own
    layers too (error, telemetry, body size, the session proxy: none has work to do for
    it) and meets only the metrics and the lean router, which applies the app's
    exception handlers; what no handler takes gets the app's answer to an unexpected
    error here, as the error layer would give it.
    """

    def __init__(self, app: ASGIApp, *, api: FastAPI) -> None:
        self.app = app
        self.api = api
        self._prefix = API_PREFIX + "/"
        self._lean_paths = frozenset(
            route.path for route in api.router.routes if isinstance(route, LeanRoute)
        )
        self._lean = MetricsMiddleware(LeanRouter(api, api=api))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path in self._lean_paths and scope["method"] == "GET" and not scope.get("root_path"):
                await self._lean_route(scope, receive, send)
                return
            if path.startswith(self._prefix) or path in _OPERATIONS_PATHS:
                await self.api(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _lean_route(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._lean(scope, receive, send)
        except Exception as exc:
            # a lean route sends nothing before its whole answer is made
            response = await _unexpected_error(Request(scope, receive), exc)
            await response(scope, receive, send)


class MetricsMiddleware:
    """Counts and times every request by its route template (not its raw path).

    The labelled children of the two metrics are kept per (method, template, status):
    ``labels()`` validates its arguments and takes a lock on every call, which cost
    more than the rest of this middleware.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def _metrics_of(self, method: str, template: str, status: int) -> tuple[Any, Any]:
        key = (method, template, status)
        children = self._children.get(key)
        if children is None:
            # route templates and methods are few, and so are statuses: this stays small
            children = (
                HTTP_REQUESTS.labels(method, template, str(status)),
                HTTP_LATENCY.labels(method, template),
            )
            self._children[key] = children
        return children

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "other"
            counter, latency = self._metrics_of(scope.get("method", ""), template, status)
            counter.inc()
            latency.observe(time.perf_counter() - started)


def _add_docs(api: FastAPI) -> None:
    """Interactive API docs at /api/v1/docs, from local files where scripts/setup put them.

    A portal often runs where the browser cannot reach a CDN; without the local copy the
    page falls back to FastAPI's default CDN address.
    """
    assets = REPO_ROOT / ".tools" / "node_modules" / "swagger-ui-dist"
    urls: dict[str, Any] = {}
    if (assets / "swagger-ui-bundle.js").is_file():
        api.mount(f"{API_PREFIX}/docs/assets", StaticFiles(directory=assets), name="docs-assets")
        urls = {
            "swagger_js_url": f"{API_PREFIX}/docs/assets/swagger-ui-bundle.js",
            "swagger_css_url": f"{API_PREFIX}/docs/assets/swagger-ui.css",
            "swagger_favicon_url": f"{API_PREFIX}/docs/assets/favicon-32x32.png",
        }

    @api.get(f"{API_PREFIX}/docs", include_in_schema=False)
    def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url=f"{API_PREFIX}/openapi.json", title="aimms_portal API", **urls
        )  # type: ignore[arg-type]


#: What the API says about itself in its OpenAPI document.
_DESCRIPTION: dict[str, Any] = {
    "title": "aimms_portal",
    "version": "1",
    "description": "REST API of the aimms_portal: accounts, groups, tokens and the audit log.",
    "openapi_url": f"{API_PREFIX}/openapi.json",
    "responses": {
        400: {"model": ErrorBody},
        401: {"model": ErrorBody},
        403: {"model": ErrorBody},
        404: {"model": ErrorBody},
        422: {"model": ErrorBody},
        503: {"model": ErrorBody},
    },
}


def _resource_routers() -> list[APIRouter]:
    routers = [
        module.router
        for module in (
            auth,
            me,
            users,
            groups,
            tokens,
            audit,
            signing_keys,
            runtimes,
            apps,
            cases,
            jobs,
            sessions,
            runner,
        )
    ]
    routers.append(signing_keys.portal_key_router)
    return routers


def _openapi_document() -> dict[str, Any]:
    """The OpenAPI document, made by a FastAPI app that includes the routers as usual.

    The serving app holds the routes flat (see :func:`create_api`), which would leave
    out what ``include_router`` adds to each route's description (the error responses
    shared by all routes); this app describes the same route objects the usual way and
    is never served.
    """
    described = FastAPI(docs_url=None, redoc_url=None, **_DESCRIPTION)
    for router in [ops.router, *_resource_routers(), proxy.router]:
        described.include_router(router)
    return described.openapi()


def _match_lean_routes_first(routes: list[BaseRoute]) -> None:
    """Move the lean routes (the hot reads, see ``api/lean.py``) to the front of ``routes``.

    Then :class:`LeanRouter` may answer them ahead of the router: it gives a request the
    route the router would have given it. Moving one is safe only if no route before it
    matches its path, which is checked here (an error at start-up otherwise).
    """
    lean = [route for route in routes if isinstance(route, LeanRoute)]
    for route in lean:
        index = routes.index(route)
        probe = {"type": "http", "path": route.path_format, "root_path": "", "method": "GET"}
        if "{" in route.path_format:
            raise ValueError(f"lean route {route.path} has path parameters; keep it in place")
        for earlier in routes[:index]:
            if earlier.matches(probe)[0] is not Match.NONE:
                raise ValueError(f"{earlier} would answer {route.path} before its lean route")
    routes[:] = lean + [route for route in routes if not isinstance(route, LeanRoute)]


def create_api() -> FastAPI:
    """The REST API with the operations routes, error handlers and metrics."""

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        # runs where the API is served by itself (the backend); inside the Reflex app
        # the portal's own lifespan task closes the proxy's connections
        yield
        await proxy.close_clients()

    api = FastAPI(
        lifespan=lifespan,
        # the portal exports Prometheus metrics (below), not OpenTelemetry; left on, FastAPI
        # asks OpenTelemetry's global providers on every request whether anyone listens
        telemetry={"tracing": False, "metrics": False, "logs": False},
        docs_url=None,
        redoc_url=None,
        **_DESCRIPTION,
    )
    routers = _resource_routers()
    # The routes themselves join the app's router, not their routers: FastAPI matches
    # the routes of an included router through several layers per route, which made
    # finding a route late in the list cost more than answering it (~0.4 ms for
    # /healthz behind ~80 routes, measured in process). The routers carry no options
    # of their own (prefix and tags are already in each route); the OpenAPI document
    # comes from an app that includes them as usual. /healthz is matched first: load
    # balancers call it often.
    api.router.routes.extend(ops.router.routes)
    for router in routers:
        api.router.routes.extend(router.routes)
    api.router.routes.extend(proxy.router.routes)
    _match_lean_routes_first(api.router.routes)
    api.openapi = functools.cache(_openapi_document)  # type: ignore[method-assign]
    _add_docs(api)

    @api.api_route(
        f"{API_PREFIX}/{{path:path}}",
        include_in_schema=False,
        methods=["GET", "POST", "PUT", "PATCH", "DELETE"],
    )
    def unknown_route(path: str, request: Request) -> JSONResponse:
        # without this, unknown API paths would fall through to the UI's HTML
        allowed = _methods_for(routers, request.url.path)
        if allowed:
            return error_response(
                405,
                "method_not_allowed",
                f"{request.method} is not allowed here; use {', '.join(sorted(allowed))}.",
                Allow=", ".join(sorted(allowed)),
            )
        return error_response(404, "not_found", f"No API route {API_PREFIX}/{path}.")

    api.add_exception_handler(PortalError, _portal_error)
    api.add_exception_handler(StarletteHTTPException, _http_error)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(Exception, _unexpected_error)
    api.add_middleware(LeanRouter, api=api)
    api.add_middleware(MetricsMiddleware)
    # the outermost: the proxy's requests pass no other layer (it counts them itself)
    api.add_middleware(proxy.SessionProxy)
    return api
