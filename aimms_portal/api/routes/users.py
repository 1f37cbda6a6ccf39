"""Users (admins only)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, Response, status

from aimms_portal.aio import run_blocking
from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, client_ip
from aimms_portal.api.lean import EncodedJSON, lean_get
from aimms_portal.api.schemas import (
    PageOut,
    PasswordReset,
    UserCreate,
    UserListQuery,
    UserPublic,
    UserUpdate,
)
from aimms_portal.auth.access import Action, require
from aimms_portal.cache import ExactCache
from aimms_portal.db import session_scope
from aimms_portal.models import User
from aimms_portal.services import accounts

router = APIRouter(prefix=f"{API_PREFIX}/users", tags=["users"])


#: Encoded pages of ``GET /users`` by their query (the same for every admin).
_pages: ExactCache[UserListQuery, bytes] = ExactCache("user pages", tables=("users",), maxsize=256)


@lean_get(router, "", response_model=PageOut[UserPublic])
async def list_users(caller: CallerDep, query: Annotated[UserListQuery, Query()]) -> Response:
    """Users by name; `q` searches name, full name and e-mail."""
    require(caller.user, Action.manage_users)  # on every request, before the cache
    # a caller with a memo came from the log-on cache: the feed caught up for this request
    body = _pages.get(query, caught_up=caller.memo is not None)
    if body is None:
        body = await run_blocking(_page_of_users, caller.user, query)
    return EncodedJSON(body)


def _page_of_users(actor: User, query: UserListQuery) -> bytes:
    with session_scope() as session:
        stamp = _pages.stamp()
        result = accounts.list_users(
            session,
            actor=actor,
            query=query.q,
            role=query.role,
            active=query.active,
            limit=query.limit,
            offset=query.offset,
        )
        page = PageOut[UserPublic](
            items=[UserPublic.model_validate(u) for u in result.items],
            total=result.total,
            limit=result.limit,
            offset=result.offset,
        )
        body = page.model_dump_json().encode()
        _pages.put_after_commit(session, query, body, stamp)
    return body


@router.post("", response_model=UserPublic, status_code=status.HTTP_201_CREATED)
def create_user(body: UserCreate, caller: CallerDep, request: Request) -> UserPublic:
    """Create a user with a password that meets the policy."""
    with session_scope() as session:
        user = accounts.create_user(
            session,
            actor=caller.user,
            username=body.username,
            password=body.password,
            role=body.role,
            email=body.email,
            full_name=body.full_name,
            source_ip=client_ip(request),
        )
        return UserPublic.model_validate(user)


@router.get("/{user_id}", response_model=UserPublic)
def read_user(user_id: int, caller: CallerDep) -> UserPublic:
    """One user."""
    with session_scope() as session:
        return UserPublic.model_validate(
            accounts.get_user(session, actor=caller.user, user_id=user_id)
        )


@router.patch("/{user_id}", response_model=UserPublic)
def update_user(user_id: int, body: UserUpdate, caller: CallerDep, request: Request) -> UserPublic:
    """Change profile, role or active flag; disabling ends the user's log-ons and tokens."""
    with session_scope() as session:
        user = accounts.update_user(
            session,
            actor=caller.user,
            user_id=user_id,
            email=body.email,
            full_name=body.full_name,
            role=body.role,
            is_active=body.is_active,
            source_ip=client_ip(request),
        )
        return UserPublic.model_validate(user)


@router.post("/{user_id}/password", status_code=status.HTTP_204_NO_CONTENT)
def reset_password(user_id: int, body: PasswordReset, caller: CallerDep, request: Request) -> None:
    """Set a new password for a user; ends their browser log-ons."""
    with session_scope() as session:
        accounts.reset_password(
            session,
            actor=caller.user,
            user_id=user_id,
            new_password=body.password,
            source_ip=client_ip(request),
        )
