"""Runtime versions: upload a signed package (streamed), list, show, delete."""

from __future__ import annotations

import base64
import binascii
from typing import Annotated

from fastapi import APIRouter, Header, Request, status

from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, client_ip
from aimms_portal.api.schemas import DeletedOut, RuntimePublic
from aimms_portal.api.uploads import with_request_body
from aimms_portal.db import session_scope
from aimms_portal.errors import InvalidInput
from aimms_portal.models import RuntimeVersion
from aimms_portal.services import runtimes

router = APIRouter(prefix=f"{API_PREFIX}/runtimes", tags=["runtimes"])

SIGNATURE_HEADER = "X-Runtime-Signature"


def _public(runtime: RuntimeVersion, releases: int = 0) -> RuntimePublic:
    return RuntimePublic.model_validate(runtime).model_copy(update={"releases": releases})


@router.get("", response_model=list[RuntimePublic])
def list_runtimes(caller: CallerDep) -> list[RuntimePublic]:
    """Every runtime version with the number of releases that run on it."""
    with session_scope() as session:
        usage = runtimes.list_runtimes(session, actor=caller.user)
        return [_public(u.runtime, u.releases) for u in usage]


@router.post(
    "",
    response_model=RuntimePublic,
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
async def upload_runtime(
    request: Request,
    caller: CallerDep,
    signature: Annotated[
        str,
        Header(
            alias=SIGNATURE_HEADER,
            max_length=8192,
            description="The package's .sig file, base64-encoded (unsigned packages are refused).",
        ),
    ] = "",
) -> RuntimePublic:
    """Upload a runtime package as the request body; its signature goes in a header."""
    if not signature.strip():
        # refused like any unsigned package (code `unsigned`), not as a malformed request,
        # and before a byte of the body is read
        raise InvalidInput(
            f"The package is not signed: send its .sig file, base64-encoded, in the "
            f"{SIGNATURE_HEADER} header.",
            code="unsigned",
        )
    try:
        signature_json = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidInput(
            f"{SIGNATURE_HEADER} must hold the .sig file in base64.", code="invalid_signature"
        ) from exc
    runtime = await with_request_body(
        request,
        runtimes.upload_runtime,
        actor=caller.user,
        signature=signature_json,
        source_ip=client_ip(request),
    )
    return _public(runtime)


@router.get("/{name}/{version}", response_model=RuntimePublic)
def read_runtime(name: str, version: str, caller: CallerDep) -> RuntimePublic:
    """One runtime version with the number of releases that run on it."""
    with session_scope() as session:
        usage = runtimes.show_runtime(session, actor=caller.user, name=name, version=version)
        return _public(usage.runtime, usage.releases)


@router.delete("/{name}/{version}", status_code=status.HTTP_204_NO_CONTENT)
def delete_runtime(name: str, version: str, caller: CallerDep, request: Request) -> None:
    """Delete a runtime version no release uses (409 names the releases otherwise)."""
    with session_scope() as session:
        runtimes.delete_runtime(
            session,
            actor=caller.user,
            name=name,
            version=version,
            source_ip=client_ip(request),
        )


@router.post("/delete-unused", response_model=DeletedOut)
def delete_unused(caller: CallerDep, request: Request) -> DeletedOut:
    """Delete every runtime version that no release uses."""
    with session_scope() as session:
        deleted = runtimes.delete_unused_runtimes(
            session, actor=caller.user, source_ip=client_ip(request)
        )
    return DeletedOut(deleted=deleted)
