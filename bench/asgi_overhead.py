"""Per-request cost of the layers under the REST API, without network or database.

Calls each app straight through the ASGI interface and prints microseconds of CPU per
request (process time, best of several rounds, so that other work on the machine
weighs little): a bare Starlette route; the same answer from a FastAPI route, from a
FastAPI route with one dependency, from a lean route (``aimms_portal/api/lean.py``)
with the same dependency, and from a lean route in the portal's REST API
(``create_api()``, mounted like the portal mounts it, with its metrics and its error
handling); and ``/healthz`` of the portal's REST API (an ordinary FastAPI route). It
shows the floor every API route stands on.

    .venv/bin/python bench/asgi_overhead.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Annotated, Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fastapi import Depends, FastAPI, Request  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.responses import JSONResponse, Response  # noqa: E402
from starlette.routing import Mount, Route  # noqa: E402

from aimms_portal.api.app import create_api  # noqa: E402
from aimms_portal.api.lean import LeanRoute, LeanRouter  # noqa: E402

CALLS = 2000
ROUNDS = 7
BODY = b'{"status":"ok"}'


async def _bare(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


async def _who(request: Request) -> str:
    return request.headers.get("x-name", "")


async def _answer() -> Response:
    return Response(BODY, media_type="application/json")


async def _answer_who(name: Annotated[str, Depends(_who)]) -> Response:
    return Response(BODY, media_type="application/json")


def _fastapi(*, dependency: bool) -> FastAPI:
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
    if dependency:

        @app.get("/x")
        async def with_dependency(name: Annotated[str, Depends(_who)]) -> dict[str, str]:
            return {"status": "ok"}

    else:

        @app.get("/x")
        async def plain() -> dict[str, str]:
            return {"status": "ok"}

    return app


def _lean() -> FastAPI:
    app = FastAPI(telemetry={"tracing": False, "metrics": False, "logs": False})
    app.router.routes.append(LeanRoute("/x", _answer_who, methods=["GET"]))
    app.add_middleware(LeanRouter, api=app)
    return app


def _portal_lean() -> Starlette:
    api = create_api()
    # one more lean route, first in the list as the portal's own are
    api.router.routes.insert(0, LeanRoute("/x", _answer, methods=["GET"]))
    return Starlette(routes=[Route("/bare", _bare), Mount("", app=api)])


async def per_request_us(app: Any, path: str, calls: int) -> float:
    scope = {
        "type": "http",
        "method": "GET",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "headers": [(b"host", b"bench"), (b"x-name", b"ann")],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start" and message["status"] != 200:
            raise RuntimeError(f"{path}: HTTP {message['status']}")

    started = time.process_time()
    for _ in range(calls):
        await app(dict(scope), receive, send)
    return (time.process_time() - started) / calls * 1e6


async def main() -> None:
    apps = [
        ("bare Starlette route", Starlette(routes=[Route("/x", _bare)]), "/x"),
        ("FastAPI route", _fastapi(dependency=False), "/x"),
        ("FastAPI route, one dependency", _fastapi(dependency=True), "/x"),
        ("lean route, one dependency", _lean(), "/x"),
        ("lean route in the portal's REST API (mounted)", _portal_lean(), "/x"),
        ("portal REST API `/healthz` (FastAPI route, mounted)", _portal_lean(), "/healthz"),
    ]
    best = {name: float("inf") for name, _, _ in apps}
    for _name, app, path in apps:
        await per_request_us(app, path, 300)  # warm-up
    for _ in range(ROUNDS):
        for name, app, path in apps:
            best[name] = min(best[name], await per_request_us(app, path, CALLS))
    print("| app | µs of CPU per request |\n|---|---:|")
    for name, _, _ in apps:
        print(f"| {name} | {best[name]:.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
