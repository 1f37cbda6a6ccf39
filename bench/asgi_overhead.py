"""Per-request cost of the layers under the REST API, without network or database.

Calls ``GET /healthz`` 5,000 times straight through the ASGI interface of four apps and
prints microseconds per request: a bare Starlette route, the same route in an empty
FastAPI app, that app with the portal's metrics middleware, and the portal's REST API
(``create_api()``). It shows the floor any API route stands on.

    .venv/bin/python bench/asgi_overhead.py
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from fastapi import FastAPI  # noqa: E402
from starlette.applications import Starlette  # noqa: E402
from starlette.requests import Request  # noqa: E402
from starlette.responses import JSONResponse  # noqa: E402
from starlette.routing import Route  # noqa: E402

from aimms_portal.api.app import MetricsMiddleware, create_api  # noqa: E402

CALLS = 5000


async def _bare(request: Request) -> JSONResponse:
    return JSONResponse({"status": "ok"})


def _fastapi(with_metrics: bool) -> FastAPI:
    app = FastAPI()

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    if with_metrics:
        app.add_middleware(MetricsMiddleware)
    return app


async def per_request_us(app: Any, calls: int) -> float:
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/healthz",
        "raw_path": b"/healthz",
        "query_string": b"",
        "headers": [],
        "http_version": "1.1",
        "scheme": "http",
        "server": ("127.0.0.1", 80),
        "client": ("127.0.0.1", 1),
        "root_path": "",
    }

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        return None

    started = time.perf_counter()
    for _ in range(calls):
        await app(dict(scope), receive, send)
    return (time.perf_counter() - started) / calls * 1e6


async def main() -> None:
    apps = [
        ("bare Starlette route", Starlette(routes=[Route("/healthz", _bare)])),
        ("empty FastAPI app", _fastapi(with_metrics=False)),
        ("FastAPI + metrics middleware", _fastapi(with_metrics=True)),
        ("portal REST API (create_api)", create_api()),
    ]
    print("| app | µs per request |\n|---|---:|")
    for name, app in apps:
        await per_request_us(app, 500)  # warm-up
        print(f"| {name} | {await per_request_us(app, CALLS):.0f} |")


if __name__ == "__main__":
    asyncio.run(main())
