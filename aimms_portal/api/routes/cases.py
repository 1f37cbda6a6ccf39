"""Cases: upload (streamed), list, show, download (streamed, uncompressed), delete."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Query, Request, status
from fastapi.responses import StreamingResponse

from aimms_portal.aio import run_blocking
from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, PageDep, client_ip
from aimms_portal.api.schemas import CaseOut, PageOut
from aimms_portal.api.uploads import with_request_body
from aimms_portal.db import session_scope
from aimms_portal.models import Case, User
from aimms_portal.services import cases

router = APIRouter(prefix=f"{API_PREFIX}/cases", tags=["cases"])

#: The response header that carries the content's SHA-256, so clients can check it too.
SHA256_HEADER = "X-Case-SHA256"
#: Case content is whatever its owner uploaded: never let a browser run or sniff it.
DOWNLOAD_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": "default-src 'none'; sandbox",
    "Cache-Control": "private, no-store",
}


def _out(view: cases.CaseView) -> CaseOut:
    case = view.case
    return CaseOut(
        id=case.id or 0,
        name=case.name,
        kind=case.kind,
        owner=view.owner_name,
        app=view.app_name,
        job_id=case.job_id,
        attempt=case.attempt,
        size=case.size,
        stored_size=case.stored_size,
        sha256=case.sha256,
        created_at=case.created_at,
        content_url=f"{API_PREFIX}/cases/{case.id}/content",
    )


def content_disposition(name: str) -> str:
    """``attachment`` with ``name`` as the file name, quoted so no name can break out.

    An ASCII fallback for old clients, and the exact name in RFC 5987 form.
    """
    fallback = "".join(
        c if c.isascii() and c.isprintable() and c not in '"\\%' else "_" for c in name
    )
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


def _receive(*, source: Any, actor: User, **kwargs: Any) -> CaseOut:
    with session_scope() as session:
        case = cases.upload_case(session, actor=actor, source=source, **kwargs)
        return _out(cases.case_views(session, [case])[0])


@router.post(
    "",
    response_model=CaseOut,
    status_code=status.HTTP_201_CREATED,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
        }
    },
)
async def upload_case(
    request: Request,
    caller: CallerDep,
    name: Annotated[str, Query(description="The case's name; also its download file name.")],
    app: Annotated[str | None, Query(max_length=64, description="The app it is for.")] = None,
    kind: Annotated[str, Query(description="`input` or `saved`.")] = "input",
) -> CaseOut:
    """Upload a case as the raw request body (compressed on the way into storage)."""
    return await with_request_body(
        request, _receive, actor=caller.user, name=name, app=app or None, kind=kind
    )


@router.get("", response_model=PageOut[CaseOut])
def list_cases(
    caller: CallerDep,
    page: PageDep,
    app: Annotated[str | None, Query(max_length=64)] = None,
    kind: Annotated[str | None, Query(max_length=16)] = None,
    all_users: Annotated[bool, Query(alias="all", description="Everyone's (admins).")] = False,
) -> PageOut[CaseOut]:
    """Your cases, newest first; `app` and `kind` filter, `all=true` lists everyone's."""
    with session_scope() as session:
        result = cases.list_cases(
            session,
            actor=caller.user,
            app=app,
            kind=kind,
            all_users=all_users,
            limit=page.limit,
            offset=page.offset,
        )
        items = [_out(v) for v in cases.case_views(session, result.items)]
    return PageOut(items=items, total=result.total, limit=result.limit, offset=result.offset)


@router.get("/{case_id}", response_model=CaseOut)
def read_case(case_id: int, caller: CallerDep) -> CaseOut:
    """One of your cases (admins: anyone's)."""
    with session_scope() as session:
        case = cases.get_case(session, actor=caller.user, case_id=case_id)
        return _out(cases.case_views(session, [case])[0])


def _get(actor: User, case_id: int) -> Case:
    with session_scope() as session:
        return cases.get_case(session, actor=actor, case_id=case_id)


@router.get(
    "/{case_id}/content",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
async def download_case(case_id: int, caller: CallerDep) -> StreamingResponse:
    """The content of a case, uncompressed, as a file download."""
    case = await run_blocking(_get, caller.user, case_id)
    chunks = cases.iter_case_content(case)
    # the first chunk before the answer starts: a missing or damaged object (all of a
    # small case is checked by then) still gets an error status instead of a cut-off body
    first = await run_blocking(next, chunks, b"")

    def body() -> Iterator[bytes]:
        if first:
            yield first
        yield from chunks

    headers = DOWNLOAD_HEADERS | {
        "Content-Disposition": content_disposition(case.name),
        "Content-Length": str(case.size),
        SHA256_HEADER: case.sha256,
    }
    return StreamingResponse(body(), media_type="application/octet-stream", headers=headers)


@router.delete("/{case_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_case(case_id: int, caller: CallerDep, request: Request) -> None:
    """Delete one of your cases (admins: anyone's) with its stored data."""
    with session_scope() as session:
        cases.delete_case(session, actor=caller.user, case_id=case_id, source_ip=client_ip(request))
