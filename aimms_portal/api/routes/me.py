"""The calling user."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, client_ip
from aimms_portal.api.schemas import MeOut, PasswordChange, UserPublic
from aimms_portal.db import session_scope
from aimms_portal.services import accounts

router = APIRouter(prefix=f"{API_PREFIX}/me", tags=["me"])


@router.get("", response_model=MeOut)
def read_me(caller: CallerDep) -> MeOut:
    """The calling user, their groups and how they authenticated."""
    with session_scope() as session:
        groups = [g.name for g in accounts.groups_of(session, user=caller.user)]
    return MeOut(
        **UserPublic.model_validate(caller.user).model_dump(),
        groups=groups,
        auth="cookie" if caller.via_cookie else "token",
        scopes=sorted(caller.scopes) if caller.scopes is not None else None,
    )


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
