"""Solve jobs: submit, list, show, cancel, delete (one or in bulk), read the log."""

from __future__ import annotations

import json
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, PageDep, client_ip
from aimms_portal.api.schemas import (
    JobCreate,
    JobLogOut,
    JobPublic,
    JobsDelete,
    JobsDeleted,
    LogChunkPublic,
    PageOut,
)
from aimms_portal.db import session_scope
from aimms_portal.models import FINISHED_STATES
from aimms_portal.services import jobs
from aimms_portal.services.jobs import JobView

router = APIRouter(prefix=f"{API_PREFIX}/jobs", tags=["jobs"])

_FINISHED = {s.value for s in FINISHED_STATES}


def public(view: JobView) -> JobPublic:
    """The REST form of a job (the UI shows the same fields)."""
    job = view.job
    return JobPublic(
        id=job.id or 0,
        app=view.app_name,
        version=job.version,
        procedure=job.procedure,
        owner=view.owner_name,
        state=job.state,
        priority=job.priority,
        attempt=job.attempt,
        max_attempts=job.max_attempts,
        time_limit_s=job.time_limit_s,
        start_at=job.start_at,
        input_case_id=job.input_case_id,
        output_case_id=job.output_case_id,
        arguments=json.loads(job.arguments),
        exit_code=job.exit_code,
        reason=job.reason,
        cancel_requested=job.cancel_requested,
        hook_url=job.hook_url,
        hook_secret=view.hook_secret,
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        updated_at=job.updated_at,
    )


@router.post("", response_model=JobPublic, status_code=status.HTTP_201_CREATED)
def submit_job(body: JobCreate, caller: CallerDep) -> JobPublic:
    """Queue a job: run one procedure of an app on an input case."""
    with session_scope() as session:
        view = jobs.submit_job(session, actor=caller.user, **body.model_dump())
        return public(view)


@router.get("", response_model=PageOut[JobPublic])
def list_jobs(
    caller: CallerDep,
    page: PageDep,
    state: Annotated[str | None, Query(max_length=16)] = None,
    app: Annotated[str | None, Query(max_length=64)] = None,
    all: bool = False,
) -> PageOut[JobPublic]:
    """Your jobs, newest first (`all=true`: everyone's, for admins); `state` may also be
    `active` or `finished`."""
    with session_scope() as session:
        result = jobs.list_jobs(
            session,
            actor=caller.user,
            limit=page.limit,
            offset=page.offset,
            state=state,
            app=app,
            all_users=all,
        )
        items = [public(v) for v in result.items]
    return PageOut(items=items, total=result.total, limit=result.limit, offset=result.offset)


@router.post("/delete", response_model=JobsDeleted)
def delete_jobs(body: JobsDelete, caller: CallerDep, request: Request) -> JobsDeleted:
    """Delete finished jobs in bulk (the given ids, or all finished ones that match)."""
    with session_scope() as session:
        deleted = jobs.delete_jobs(
            session,
            actor=caller.user,
            job_ids=body.ids,
            state=body.state,
            app=body.app,
            all_users=body.all,
            source_ip=client_ip(request),
        )
    return JobsDeleted(deleted=deleted)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: int, caller: CallerDep) -> JobPublic:
    """One job."""
    with session_scope() as session:
        return public(jobs.get_job(session, actor=caller.user, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: int, caller: CallerDep, request: Request) -> JobPublic:
    """Cancel a job (a running one stops within about a second)."""
    with session_scope() as session:
        view = jobs.cancel_job(
            session, actor=caller.user, job_id=job_id, source_ip=client_ip(request)
        )
        return public(view)


@router.delete("/{job_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_job(job_id: int, caller: CallerDep, request: Request) -> Response:
    """Delete a finished job with its log and cases."""
    with session_scope() as session:
        jobs.delete_job(session, actor=caller.user, job_id=job_id, source_ip=client_ip(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get("/{job_id}/log", response_model=JobLogOut)
def job_log(
    job_id: int,
    caller: CallerDep,
    after: Annotated[int, Query(ge=0)] = 0,
    limit: Annotated[int, Query(ge=1, le=jobs.LOG_PAGE)] = jobs.LOG_PAGE,
) -> JobLogOut:
    """The job's log after chunk `after` (all attempts, the portal's own notes too)."""
    with session_scope() as session:
        chunks = jobs.job_log(session, actor=caller.user, job_id=job_id, after=after, limit=limit)
        state = jobs.get_job(session, actor=caller.user, job_id=job_id).job.state
        return JobLogOut(
            chunks=[
                LogChunkPublic(
                    id=c.id or 0, attempt=c.attempt, stream=c.stream, text=c.text, at=c.at
                )
                for c in chunks
            ],
            state=state,
            finished=state in _FINISHED,
        )
