"""Liveness, readiness and metrics for load balancers and monitoring (no log-on)."""

from __future__ import annotations

import os

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)

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


@router.get("/metrics")
def metrics() -> Response:
    """Prometheus metrics of this portal (all workers when PROMETHEUS_MULTIPROC_DIR is set)."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
