"""Routes that FastAPI describes but that answer without FastAPI's per-request engine.

For the API's hottest read routes, answered from caches (``GET /me``, ``GET /users``),
FastAPI's own work per request was most of their time: matching the path against the
route list, the layers of its middleware stack, solving the endpoint's parameters and
dependencies through its general engine (about 70 µs of CPU for a route with one
dependency, as much again for five query parameters) and validating and encoding what
the endpoint returned (measured in process, ``bench/asgi_overhead.py``).

A :class:`LeanRoute` is declared like any other route, so its parameters and response
model make the OpenAPI document, but:

- a small handler made once per route provides the endpoint's parameters, and supports
  only what those routes need: ``Annotated[T, Depends(fn)]`` where ``fn`` is
  ``async def fn(request: Request)``; ``Annotated[M, Query()]`` where ``M`` is a frozen
  pydantic model, checked with ``M.model_validate`` against the query string (the
  models of recent query strings are kept), a failure raising the same
  :class:`RequestValidationError` (locations ``("query", field)``) as FastAPI would;
  and the :class:`Request` itself. The endpoint must be a coroutine that returns a
  :class:`Response`, i.e. encodes its own body. Anything else is refused when the route
  is created, so a parameter is never silently left out;
- :class:`LeanRouter`, a middleware in front of FastAPI's router (as the proxy's
  ``SessionProxy`` is), sends a ``GET`` for a lean route's exact path straight to it,
  under the app's own exception handlers. Everything else, a ``HEAD`` for the same
  path included, goes through the router, which serves the same route the usual way.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, FastAPI, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import QueryParams
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response
from starlette.types import ASGIApp, Receive, Scope, Send

Provider = Callable[[Request], Awaitable[Any]]
E = TypeVar("E", bound=Callable[..., Any])

#: Query strings whose parsed model each lean route keeps.
QUERY_CACHE_SIZE = 256


class EncodedJSON(Response):
    """A 200 answer of JSON encoded already (a cached answer), its headers made without
    Starlette's general header building, which costs more than the rest of the answer."""

    media_type = "application/json"

    def __init__(self, body: bytes) -> None:
        self.status_code = 200
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
        ]


class LeanRoute(APIRoute):
    """An :class:`APIRoute` served by :func:`lean_handler` (use as ``route_class``)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        #: The endpoint's answer to a request (raises what the endpoint raises).
        self.respond = self.get_route_handler()
        # through the router: Starlette's wrapper (FastAPI's adds two exit stacks per
        # request for dependencies with ``yield``, which a lean route does not have)
        self.app = request_response(self.respond)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return lean_handler(self.endpoint)


class LeanRouter:
    """ASGI middleware: ``GET`` requests for a lean route's exact path go straight to it.

    It answers only what FastAPI's router would have given the same route: the lean
    routes come first in the app's route list (``create_api`` checks that no route before
    them matches their paths), and a request under a ``root_path`` goes on to the router.
    An exception from the endpoint meets the app's exception handlers, looked up as
    Starlette's exception middleware looks them up (a handler for the status of an
    :class:`HTTPException`, then one for the exception's class or a base); what no handler
    takes propagates to the app's error middleware outside. The endpoint has built the
    whole answer before anything is sent, so an error answer never follows part of another.
    """

    def __init__(self, app: ASGIApp, *, api: FastAPI) -> None:
        self.app = app
        # built at the first request, when every route and handler is in place
        self._routes = {
            route.path: route for route in api.router.routes if isinstance(route, LeanRoute)
        }
        # as FastAPI splits them: 500 and Exception go to the error middleware outside
        self._handlers = {
            key: handler
            for key, handler in api.exception_handlers.items()
            if key not in (500, Exception)
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and not scope.get("root_path"):
            route = self._routes.get(scope["path"])
            if route is not None:
                # what the router would have set (the metrics read "route")
                scope.update(route=route, endpoint=route.endpoint, path_params={})
                request = Request(scope, receive, send)
                try:
                    response = await route.respond(request)
                except Exception as exc:
                    response = await self._handle(request, exc)
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)

    async def _handle(self, request: Request, exc: Exception) -> Response:
        handler = None
        if isinstance(exc, StarletteHTTPException):
            handler = self._handlers.get(exc.status_code)
        if handler is None:
            handler = next(
                (self._handlers[cls] for cls in type(exc).__mro__ if cls in self._handlers), None
            )
        if handler is None:
            raise exc
        if inspect.iscoroutinefunction(handler):
            response = await handler(request, exc)
        else:
            response = await run_in_threadpool(handler, request, exc)
        assert isinstance(response, Response)
        return response


def lean_handler(
    endpoint: Callable[..., Any],
) -> Callable[[Request], Coroutine[Any, Any, Response]]:
    """The handler of a :class:`LeanRoute` whose endpoint is ``endpoint``.

    Raises:
        TypeError: the endpoint is not a coroutine, or has a parameter of a kind this
            module does not provide.
    """
    if not inspect.iscoroutinefunction(endpoint):
        raise TypeError(f"{endpoint.__qualname__}: a lean route's endpoint must be async")
    hints = typing.get_type_hints(endpoint, include_extras=True)
    providers = {
        name: _provider(endpoint, name, hints.get(name))
        for name in inspect.signature(endpoint).parameters
    }

    provided = list(providers.items())

    async def handler(request: Request) -> Response:
        # a plain loop: a comprehension with ``await`` is a coroutine of its own
        values = {}
        for name, provide in provided:
            values[name] = await provide(request)
        response = await endpoint(**values)
        if not isinstance(response, Response):
            raise TypeError(f"{endpoint.__qualname__} must return a Response")
        return response

    return handler


async def _the_request(request: Request) -> Request:
    return request


def _provider(endpoint: Callable[..., Any], name: str, hint: Any) -> Provider:
    if hint is Request:
        return _the_request
    if typing.get_origin(hint) is Annotated:
        base, *extras = typing.get_args(hint)
        for marker in extras:
            if isinstance(marker, params.Depends) and _takes_only_a_request(marker.dependency):
                return marker.dependency  # type: ignore[return-value]
            if isinstance(marker, params.Query) and _is_model(base):
                return _query_model(base)
    raise TypeError(
        f"{endpoint.__qualname__}: parameter {name!r} ({hint!r}) is none of what a lean "
        "route provides: the Request, an async dependency on the Request, a query model"
    )


def _takes_only_a_request(dependency: Any) -> bool:
    if dependency is None or not inspect.iscoroutinefunction(dependency):
        return False
    hints = typing.get_type_hints(dependency)
    names = list(inspect.signature(dependency).parameters)
    return len(names) == 1 and hints.get(names[0]) is Request


def _is_model(base: Any) -> bool:
    return isinstance(base, type) and issubclass(base, BaseModel)


def _query_model(model: type[BaseModel]) -> Provider:
    if not model.model_config.get("frozen"):
        raise TypeError(f"{model.__qualname__}: a lean route's query model must be frozen")

    # Clients repeat the same few query strings, and parsing and checking one cost more
    # than the rest of a cached answer: the models of the last few are kept (they are
    # frozen, so sharing them is safe). Failures are not kept.
    @functools.lru_cache(maxsize=QUERY_CACHE_SIZE)
    def parse(query_string: bytes) -> BaseModel:
        try:
            # the last value of a repeated name wins, as in FastAPI's query models
            return model.model_validate(dict(QueryParams(query_string)))
        except ValidationError as exc:
            errors = [
                {**error, "loc": ("query", *error["loc"])}
                for error in exc.errors(include_url=False)
            ]
            raise RequestValidationError(errors) from None

    async def provide(request: Request) -> BaseModel:
        return parse(request.scope["query_string"])

    return provide


def lean_get(router: APIRouter, path: str, **kwargs: Any) -> Callable[[E], E]:
    """Declare ``GET path`` on ``router`` as a :class:`LeanRoute` (decorator);
    ``kwargs`` are those of ``router.get`` (``response_model``, ``summary``, ...)."""

    def register(endpoint: E) -> E:
        router.add_api_route(
            path, endpoint, methods=["GET"], route_class_override=LeanRoute, **kwargs
        )
        return endpoint

    return register
