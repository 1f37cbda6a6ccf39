"""The calling user."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response, status

from aimms_portal.aio import run_blocking
from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, client_ip
from aimms_portal.api.lean import EncodedJSON, lean_get
from aimms_portal.api.schemas import MeOut, PasswordChange
from aimms_portal.db import session_scope
from aimms_portal.models import User
from aimms_portal.services import accounts
from aimms_portal.services.auth import Caller

router = APIRouter(prefix=f"{API_PREFIX}/me", tags=["me"])


@lean_get(router, "", response_model=MeOut)
async def read_me(caller: CallerDep) -> Response:
    """The calling user, their groups and how they authenticated."""
    # the same for every request of a cached log-on, until its rows or groups change
    body = caller.memo.get("me") if caller.memo is not None else None
    if body is None:
        groups = accounts.cached_group_names(user=caller.user)
        if groups is None:
            groups = await run_blocking(_group_names_of, caller.user)
        body = _me(caller, groups)
        if caller.memo is not None:
            caller.memo["me"] = body
    return EncodedJSON(body)


def _me(caller: Caller, groups: tuple[str, ...]) -> bytes:
    user = caller.user
    return (
        MeOut(
            id=user.id or 0,
            username=user.username,
            email=user.email,
            full_name=user.full_name,
            role=user.role,
            is_active=user.is_active,
            created_at=user.created_at,
            last_login_at=user.last_login_at,
            groups=list(groups),
            auth="cookie" if caller.via_cookie else "token",
            scopes=sorted(caller.scopes) if caller.scopes is not None else None,
        )
        .model_dump_json()
        .encode()
    )


def _group_names_of(user: User) -> tuple[str, ...]:
    with session_scope() as session:
        return accounts.group_names_of(session, user=user)


@router.post("/password", status_code=status.HTTP_204_NO_CONTENT)
def change_password(body: PasswordChange, caller: CallerDep, request: Request) -> None:
    """Change your own password (the current one is required)."""
    with session_scope() as session:
        accounts.change_own_password(
            session,
            actor=caller.user,
            current_password=body.current_password,
            new_password=body.new_password,
            source_ip=client_ip(request),
        )
