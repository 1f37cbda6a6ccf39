"""Routes that FastAPI describes but that answer without FastAPI's per-request engine.

For every request FastAPI solves the endpoint's parameters and dependencies through a
general engine and then validates and encodes what the endpoint returned: about 70 µs
of CPU for a route with one dependency, and as much again for five query parameters,
measured in process (``bench/asgi_overhead.py``). For the API's hottest read routes,
answered from a cache, that was most of their time. A :class:`LeanRoute` is declared
like any other route (its parameters and response model make the OpenAPI document), but
a small handler made once per route provides the endpoint's parameters, and supports
only what those routes need:

- ``Annotated[T, Depends(fn)]`` where ``fn`` is ``async def fn(request: Request)``;
- ``Annotated[M, Query()]`` where ``M`` is a frozen pydantic model: checked with
  ``M.model_validate`` against the query string (the models of recent query strings
  are kept); a failure raises the same :class:`RequestValidationError` (locations
  ``("query", field)``) as FastAPI would;
- the :class:`Request` itself.

The endpoint must be a coroutine that returns a :class:`Response`, i.e. encodes its own
body from a pydantic model. Anything else is refused when the route is created, so a
parameter is never silently left out.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Awaitable, Callable, Coroutine
from typing import Annotated, Any, TypeVar

from fastapi import APIRouter, params
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import request_response

Provider = Callable[[Request], Awaitable[Any]]
E = TypeVar("E", bound=Callable[..., Any])

#: Query strings whose parsed model each lean route keeps.
QUERY_CACHE_SIZE = 256


class LeanRoute(APIRoute):
    """An :class:`APIRoute` served by :func:`lean_handler` (use as ``route_class``)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        # Starlette's wrapper: FastAPI's adds two exit stacks per request for
        # dependencies with ``yield``, which a lean route does not have
        self.app = request_response(self.get_route_handler())

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        return lean_handler(self.endpoint)


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

    async def handler(request: Request) -> Response:
        values = {name: await provide(request) for name, provide in providers.items()}
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
