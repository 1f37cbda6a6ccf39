"""Lean routes (aimms_portal/api/lean.py): declared like FastAPI routes, answered ahead
of FastAPI's router, with the same answers, errors and documentation."""

from __future__ import annotations

from typing import Annotated, Any

import pytest
from fastapi import APIRouter, Depends, FastAPI, Query, Request, Response
from fastapi.testclient import TestClient
from pydantic import BaseModel, ConfigDict, Field

from aimms_portal.api import app as api_app
from aimms_portal.api.lean import LeanRoute, LeanRouter, lean_get
from aimms_portal.errors import NotAuthenticated
from aimms_portal.services import auth as auth_service
from tests.api.support import API, error, quick_user
from tests.helpers import bearer

pytestmark = pytest.mark.sqlite


class Paging(BaseModel):
    model_config = ConfigDict(frozen=True)

    limit: int = Field(10, ge=1, le=100)
    word: str = Field("", max_length=5)


class Mutable(BaseModel):
    limit: int = 1


async def who(request: Request) -> str:
    name = request.headers.get("x-name")
    if not name:
        raise NotAuthenticated("Say who you are.", code="who")
    if name == "boom":
        raise RuntimeError("a bug")
    return name


def small_api() -> FastAPI:
    """An app like the portal's: its error handlers, a lean route, a LeanRouter."""
    api = FastAPI()
    router = APIRouter()

    @lean_get(router, "/hello", response_model=dict[str, str])
    async def hello(name: Annotated[str, Depends(who)], paging: Annotated[Paging, Query()]):
        return Response(
            f'{{"hello":"{name}","limit":"{paging.limit}"}}', media_type="application/json"
        )

    api.router.routes.extend(router.routes)
    api.add_exception_handler(NotAuthenticated, api_app._portal_error)
    api.add_exception_handler(Exception, api_app._unexpected_error)
    from fastapi.exceptions import RequestValidationError

    api.add_exception_handler(RequestValidationError, api_app._validation_error)
    api.add_middleware(LeanRouter, api=api)
    return api


def test_the_lean_router_and_fastapis_router_give_the_same_answers():
    api = small_api()
    with TestClient(api) as direct, TestClient(api, root_path="/mounted") as routed:
        # under a root path the lean router steps aside and FastAPI's router serves
        for client in (direct, routed):
            answer = client.get("/hello?limit=3&limit=4", headers={"x-name": "ann"})
            assert answer.status_code == 200
            assert answer.json() == {"hello": "ann", "limit": "4"}  # the last value wins
            error(client.get("/hello"), 401, "who")
            message = error(client.get("/hello?limit=0", headers={"x-name": "a"}), 422)
            assert message.startswith("query.limit:")
            error(client.get("/hello?word=toolong", headers={"x-name": "a"}), 422)
    with TestClient(api, raise_server_exceptions=False) as client:
        error(client.get("/hello", headers={"x-name": "boom"}), 500, "internal")

    # the lean router answered ahead of FastAPI's: without the router's routes it still does
    api.router.routes.clear()
    with TestClient(api) as direct, TestClient(api, root_path="/mounted") as routed:
        assert direct.get("/hello", headers={"x-name": "ann"}).status_code == 200
        assert routed.get("/hello", headers={"x-name": "ann"}).status_code == 404


def test_a_lean_route_is_documented_like_any_other():
    parameters = small_api().openapi()["paths"]["/hello"]["get"]["parameters"]
    assert {p["name"] for p in parameters} == {"limit", "word"}


def test_what_a_lean_route_cannot_provide_is_refused_when_it_is_declared():
    router = APIRouter()

    async def path_parameter(user_id: int) -> Response:
        return Response()

    def not_async() -> Response:
        return Response()

    async def mutable_query(query: Annotated[Mutable, Query()]) -> Response:
        return Response()

    for endpoint in (path_parameter, not_async, mutable_query):
        with pytest.raises(TypeError):
            router.add_api_route("/x", endpoint, route_class_override=LeanRoute)


def test_a_lean_route_that_another_route_would_shadow_is_refused(monkeypatch):
    shadow = APIRouter()

    @shadow.get(f"{API}/{{anything}}")
    def catch_all(anything: str) -> dict[str, str]:
        return {}

    monkeypatch.setattr(api_app, "_resource_routers", lambda: [shadow, *real_routers()])
    with pytest.raises(ValueError, match="before its lean route"):
        api_app.create_api()


def real_routers() -> list[APIRouter]:
    from aimms_portal.api.routes import auth, me, users

    return [auth.router, me.router, users.router]


def test_the_portals_lean_routes_answer_as_fastapi_would(client, db):
    ann = bearer(quick_user("ann"), "read")
    lean = client.get(f"{API}/me", headers=ann)
    with TestClient(api_app.create_api(), root_path="/portal") as routed:
        through_router = routed.get(f"{API}/me", headers=ann)
    assert lean.status_code == through_router.status_code == 200
    assert lean.json() == through_router.json()
    assert lean.headers["content-type"] == through_router.headers["content-type"]


def _ui(tag: bytes) -> Any:
    """An ASGI app standing for Reflex's: answers every HTTP request with ``tag``."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":  # the front leaves the lifespan to the UI's app
            while (await receive())["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        await Response(tag, media_type="text/plain")(scope, receive, send)

    return app


def test_the_front_sends_the_apis_paths_to_the_api_and_the_rest_to_the_ui(db):
    ann = bearer(quick_user("ann"), "read")
    api = api_app.create_api()
    front = api_app.ApiFront(_ui(b"ui"), api=api)
    with TestClient(front) as client, TestClient(api) as direct:
        assert client.get("/").text == "ui" and client.get("/apps/transport").text == "ui"
        assert client.get("/api/v1x").text == "ui"
        # the lean routes (by their own lane), any other route, unknown API paths
        for path in (f"{API}/me", f"{API}/users", f"{API}/tokens", f"{API}/nothing", "/healthz"):
            through_front, straight = client.get(path, headers=ann), direct.get(path, headers=ann)
            assert through_front.status_code == straight.status_code, path
            assert through_front.content == straight.content, path
        # not the lean lane: the API answers as ever
        assert client.head(f"{API}/me", headers=ann).status_code == (
            direct.head(f"{API}/me", headers=ann).status_code
        )
        error(client.get(f"{API}/me"), 401, "not_authenticated")

        metrics = client.get("/metrics").text
        counted = [
            line
            for line in metrics.splitlines()
            if line.startswith("aimms_portal_http_requests_total")
            and 'route="/api/v1/me"' in line
            and 'status="401"' in line
        ]
        assert counted and float(counted[0].split()[-1]) >= 1


def test_an_unexpected_error_in_the_lean_lane_is_a_500_in_the_apis_shape(db, monkeypatch):
    ann = bearer(quick_user("ann"), "read")

    def broken(**_: Any) -> None:
        raise RuntimeError("a bug")

    api = api_app.create_api()
    monkeypatch.setattr(auth_service, "cached_caller", broken)
    with TestClient(api_app.ApiFront(_ui(b"ui"), api=api)) as client:
        error(client.get(f"{API}/me", headers=ann), 500, "internal")
