"""The runner's API: what a session's runner calls with its session-scoped token.

Not for people: the runner inside every session container uses these routes to fetch its
runtime, bundle and job input, to heartbeat, to stream the job's log and to report the
result. Every job route names the attempt (fencing number) it works on; a stale one
gets 409 ``stale_attempt``. A session asked to stop gets 410 from ``next`` and
``heartbeat`` tells it too.
"""

from __future__ import annotations

import base64
import time
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from aimms_portal.aio import run_blocking
from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import RunnerDep
from aimms_portal.api.uploads import with_request_body
from aimms_portal.db import session_scope
from aimms_portal.scheduler import signals
from aimms_portal.services import cases, runner_ops
from aimms_portal.storage import get_storage

router = APIRouter(prefix=f"{API_PREFIX}/runner", tags=["runner"])

#: Longest a ``next`` call waits for work, in seconds.
MAX_WAIT = 30.0


class AttemptIn(BaseModel):
    attempt: int = Field(ge=1)


class LogIn(AttemptIn):
    #: ``[stream, text]`` pairs; text keeps its line ends.
    lines: list[tuple[str, str]] = Field(max_length=runner_ops.MAX_LOG_LINES)


class FinishIn(AttemptIn):
    outcome: str = Field(max_length=16)
    exit_code: int | None = None
    reason: str = Field(default="", max_length=500)


class ReadyIn(BaseModel):
    #: ``host:port`` where a WebUI session's app answers.
    address: str = Field(default="", max_length=255)


class EndedIn(BaseModel):
    reason: str = Field(min_length=1, max_length=500)
    #: The last lines of the session's log, shown with the reason.
    log: list[str] = Field(default_factory=list, max_length=200)


def _in_session(fn: Any, **kwargs: Any) -> Any:
    with session_scope() as session:
        return fn(session, **kwargs)


def _with_document(fn: Any) -> Any:
    """``fn`` (which returns a job or None) returning the job's document instead."""

    def call(session: Any, **kwargs: Any) -> dict[str, Any] | None:
        job = fn(session, **kwargs)
        return None if job is None else runner_ops.job_document(session, job)

    return call


def _object_response(key: str, size: int) -> StreamingResponse:
    return StreamingResponse(
        get_storage().iter_chunks(key),
        media_type="application/octet-stream",
        headers={"Content-Length": str(size)},
    )


@router.get("/session")
def session_info(runner: RunnerDep) -> dict[str, Any]:
    """The session's release, manifest and the digests of its runtime and bundle."""
    return _in_session(runner_ops.session_info, runner=runner)  # type: ignore[no-any-return]


@router.get("/runtime")
def runtime_package(runner: RunnerDep) -> StreamingResponse:
    """The session's runtime package (verify it against the digest and signature)."""
    key, size = _in_session(runner_ops.runtime_object, runner=runner)
    return _object_response(key, size)


@router.get("/bundle")
def bundle(runner: RunnerDep) -> StreamingResponse:
    """The session's bundle as stored (still encrypted if it is; see ``bundle-key``)."""
    key, size = _in_session(runner_ops.bundle_object, runner=runner)
    return _object_response(key, size)


@router.get("/bundle-key")
def bundle_key(runner: RunnerDep) -> dict[str, str | None]:
    """The data key of the session's encrypted bundle (base64), or null."""
    key = _in_session(runner_ops.bundle_key, runner=runner)
    return {"key": base64.b64encode(key).decode("ascii") if key else None}


@router.post("/ready", status_code=status.HTTP_204_NO_CONTENT)
def ready(runner: RunnerDep, body: ReadyIn | None = None) -> Response:
    """The runner has prepared the session (a WebUI's app answers at ``address``)."""
    _in_session(runner_ops.mark_ready, runner=runner, address=body.address if body else "")
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/failed", status_code=status.HTTP_204_NO_CONTENT)
def failed(body: EndedIn, runner: RunnerDep) -> Response:
    """The runner gives up on the session; ``reason`` says why (shown to its user)."""
    _in_session(runner_ops.session_failed, runner=runner, reason=body.reason, log=body.log)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/stopped", status_code=status.HTTP_204_NO_CONTENT)
def stopped(body: EndedIn, runner: RunnerDep) -> Response:
    """The session ended by itself as it should (its app was closed)."""
    _in_session(runner_ops.session_stopped, runner=runner, reason=body.reason)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/heartbeat")
def heartbeat(runner: RunnerDep) -> dict[str, bool]:
    """The session lives; ``stop`` says whether it should end."""
    return {"stop": _in_session(runner_ops.session_heartbeat, runner=runner)}


@router.post("/next", responses={204: {"description": "no job yet"}, 410: {}})
async def next_job(
    runner: RunnerDep, request: Request, wait: Annotated[float, Query(ge=0, le=MAX_WAIT)] = 0
) -> Any:
    """The job to run now; waits up to ``wait`` seconds for one. 204: none yet, ask
    again; 410: the session is to stop."""
    deadline = time.monotonic() + wait
    channel = signals.session_channel(runner.app_session.id or 0)
    while True:
        job = await run_blocking(_in_session, _with_document(runner_ops.next_job), runner=runner)
        if job is not None:
            return {"job": job}
        left = deadline - time.monotonic()
        if left <= 0:
            return Response(status_code=status.HTTP_204_NO_CONTENT)
        # the wake-up is a hint; the next look at the database decides
        await signals.wait_async(channel, min(left, 1.0))
        # a runner that is gone (killed, its session stopped) asks no more: stop polling
        # for it, which also lets the server shut down without waiting out the poll
        if await request.is_disconnected():
            return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/jobs/{job_id}/input")
def job_input(
    job_id: int, runner: RunnerDep, attempt: Annotated[int, Query(ge=1)]
) -> StreamingResponse:
    """The input case of the job (uncompressed), for its current attempt."""
    case = _in_session(runner_ops.job_input, runner=runner, job_id=job_id, attempt=attempt)
    return StreamingResponse(
        cases.iter_case_content(case),
        media_type="application/octet-stream",
        headers={"Content-Length": str(case.size), "X-Content-SHA256": case.sha256},
    )


@router.post("/jobs/{job_id}/started", status_code=status.HTTP_204_NO_CONTENT)
def job_started(job_id: int, body: AttemptIn, runner: RunnerDep) -> Response:
    """The procedure runs."""
    _in_session(runner_ops.job_started, runner=runner, job_id=job_id, attempt=body.attempt)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/jobs/{job_id}/heartbeat")
def job_heartbeat(job_id: int, body: AttemptIn, runner: RunnerDep) -> dict[str, bool]:
    """Renew the attempt's lease; ``cancel`` says whether to stop the procedure."""
    cancel = _in_session(
        runner_ops.job_heartbeat, runner=runner, job_id=job_id, attempt=body.attempt
    )
    return {"cancel": cancel}


@router.post("/jobs/{job_id}/log")
def job_log(job_id: int, body: LogIn, runner: RunnerDep) -> dict[str, int]:
    """Add lines to the attempt's log."""
    kept = _in_session(
        runner_ops.append_log, runner=runner, job_id=job_id, attempt=body.attempt, lines=body.lines
    )
    return {"kept": kept}


@router.put("/jobs/{job_id}/output", status_code=status.HTTP_201_CREATED)
async def job_output(
    job_id: int,
    request: Request,
    runner: RunnerDep,
    attempt: Annotated[int, Query(ge=1)],
    name: Annotated[str, Query(min_length=1, max_length=128)] = "output",
) -> dict[str, Any]:
    """The attempt's output case, streamed in the body."""
    case = await with_request_body(
        request, runner_ops.store_output, runner=runner, job_id=job_id, attempt=attempt, name=name
    )
    return {"id": case.id, "size": case.size, "sha256": case.sha256}


@router.post("/jobs/{job_id}/finish")
def job_finish(job_id: int, body: FinishIn, runner: RunnerDep) -> dict[str, Any]:
    """Record how the attempt ended; ``next`` is the session's next job, if any."""
    nxt = _in_session(
        _with_document(runner_ops.finish_job),
        runner=runner,
        job_id=job_id,
        attempt=body.attempt,
        outcome=body.outcome,
        exit_code=body.exit_code,
        reason=body.reason,
    )
    return {"next": nxt}
