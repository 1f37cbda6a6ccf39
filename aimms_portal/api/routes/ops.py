"""Liveness, readiness and metrics for load balancers and monitoring (no log-on; the
metrics may ask for a token of their own, ``AIMMS_PORTAL_METRICS_TOKEN``)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

from aimms_portal.auth.tokens import same_secret
from aimms_portal.config import get_settings
from aimms_portal.errors import NotAuthenticated
from aimms_portal.services.health import readiness_problems

router = APIRouter(tags=["operations"])


@router.get("/healthz")
async def healthz() -> dict[str, str]:
    """The process is alive (says nothing about the database or storage)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "Not ready; the body says why."}})
def readyz() -> JSONResponse:
    """Database and storage are reachable; 503 with the reasons otherwise."""
    problems = readiness_problems()
    if problems:
        reason = "; ".join(f"{k}: {v}" for k, v in problems.items())
        return JSONResponse(
            {
                "status": "unavailable",
                "problems": problems,
                "error": {"code": "unavailable", "message": reason},
            },
            status_code=503,
        )
    return JSONResponse({"status": "ok"})


@router.get("/metrics", responses={401: {"description": "The metrics token is missing or wrong."}})
def metrics(request: Request) -> Response:
    """Prometheus metrics of this portal (all workers when PROMETHEUS_MULTIPROC_DIR is set);
    with ``AIMMS_PORTAL_METRICS_TOKEN`` set, only for a request that sends it."""
    token = get_settings().metrics_token
    if token is not None:
        scheme, _, sent = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not same_secret(sent.strip(), token.get_secret_value()):
            raise NotAuthenticated(
                "Send the metrics token as 'Authorization: Bearer <token>'.",
                code="metrics_token",
            )
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
