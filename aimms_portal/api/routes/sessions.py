"""App sessions: launch (WebUI or desktop), list, export, show, terminate, log, timeline."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import Response

from aimms_portal.aio import run_blocking
from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, PageDep, client_ip
from aimms_portal.api.schemas import (
    PageOut,
    SessionCreate,
    SessionEventPublic,
    SessionLaunched,
    SessionLogOut,
    SessionPublic,
)
from aimms_portal.db import session_scope
from aimms_portal.services import sessions
from aimms_portal.services.sessions import SessionView

router = APIRouter(prefix=f"{API_PREFIX}/sessions", tags=["sessions"])


def public(view: SessionView) -> SessionPublic:
    """The REST form of a session (the UI shows the same fields)."""
    s = view.session
    return SessionPublic(
        id=s.id or 0,
        kind=s.kind,
        app=view.app_name,
        version=s.version,
        owner=view.owner_name,
        state=s.state,
        reason=s.reason,
        url=view.url,
        created_at=s.created_at,
        ready_at=s.ready_at,
        ended_at=s.ended_at,
        last_activity_at=s.last_activity_at,
        last_heartbeat_at=s.last_heartbeat_at,
        peak_memory_bytes=s.peak_memory_bytes,
        cpu_seconds=s.cpu_seconds,
        job_id=s.job_id,
    )


@router.post("", response_model=SessionLaunched, status_code=status.HTTP_201_CREATED)
async def launch_session(body: SessionCreate, caller: CallerDep) -> SessionLaunched:
    """Launch a WebUI session (then follow it until `ready` and open its `url`), or
    register a desktop session (its `token` is shown once)."""
    view, token = await run_blocking(
        sessions.launch_session,
        actor=caller.user,
        app=body.app,
        version=body.version,
        kind=body.kind,
    )
    return SessionLaunched(**public(view).model_dump(), token=token)


@router.get("", response_model=PageOut[SessionPublic])
def list_sessions(
    caller: CallerDep,
    page: PageDep,
    kind: Annotated[str | None, Query(max_length=8)] = None,
    state: Annotated[str | None, Query(max_length=16)] = None,
    all: bool = False,
) -> PageOut[SessionPublic]:
    """Your sessions, newest first (`all=true`: everyone's, for admins); `state` may be
    `live` or `ended`."""
    with session_scope() as session:
        result = sessions.list_sessions(
            session,
            actor=caller.user,
            limit=page.limit,
            offset=page.offset,
            kind=kind,
            state=state,
            all_users=all,
        )
        items = [public(v) for v in result.items]
    return PageOut(items=items, total=result.total, limit=result.limit, offset=result.offset)


@router.get("/export.csv", response_class=Response)
def export_sessions(
    caller: CallerDep, kind: Annotated[str | None, Query(max_length=8)] = None, all: bool = False
) -> Response:
    """Your sessions (everyone's for admins asking for all) as a CSV file."""
    with session_scope() as session:
        body = sessions.sessions_csv(session, actor=caller.user, kind=kind, all_users=all)
    return Response(
        body,
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="sessions.csv"'},
    )


@router.get("/{session_id}", response_model=SessionPublic)
def get_session(session_id: int, caller: CallerDep) -> SessionPublic:
    """One session."""
    with session_scope() as session:
        return public(sessions.get_session(session, actor=caller.user, session_id=session_id))


@router.delete("/{session_id}", response_model=SessionPublic)
async def terminate_session(session_id: int, caller: CallerDep, request: Request) -> SessionPublic:
    """End a session now; its seat is free at once, and the proxy lets nobody through."""
    view = await run_blocking(
        sessions.terminate_session,
        actor=caller.user,
        session_id=session_id,
        source_ip=client_ip(request),
    )
    return public(view)


@router.get("/{session_id}/log", response_model=SessionLogOut)
async def session_log(
    session_id: int, caller: CallerDep, tail: Annotated[int, Query(ge=1, le=2000)] = 200
) -> SessionLogOut:
    """The last lines of the session's log (kept after it ended)."""
    lines = await run_blocking(
        sessions.session_log, actor=caller.user, session_id=session_id, tail=tail
    )
    return SessionLogOut(lines=lines)


@router.get("/{session_id}/events", response_model=list[SessionEventPublic])
def session_events(session_id: int, caller: CallerDep) -> list[SessionEventPublic]:
    """The session's timeline: every state change with its time."""
    with session_scope() as session:
        events = sessions.timeline(session, actor=caller.user, session_id=session_id)
        return [SessionEventPublic(state=e.state, detail=e.detail, at=e.at) for e in events]
