"""Groups and their members (read: admins and publishers; change: admins)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Request, status

from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, PageDep, client_ip
from aimms_portal.api.schemas import (
    GroupCreate,
    GroupPublic,
    GroupUpdate,
    MemberAdd,
    PageOut,
    UserPublic,
)
from aimms_portal.db import session_scope
from aimms_portal.services import accounts

router = APIRouter(prefix=f"{API_PREFIX}/groups", tags=["groups"])


@router.get("", response_model=PageOut[GroupPublic])
def list_groups(
    caller: CallerDep, page: PageDep, q: Annotated[str, Query(max_length=64)] = ""
) -> PageOut[GroupPublic]:
    """Groups by name."""
    with session_scope() as session:
        result = accounts.list_groups(
            session, actor=caller.user, query=q, limit=page.limit, offset=page.offset
        )
        items = [GroupPublic.model_validate(g) for g in result.items]
    return PageOut(items=items, total=result.total, limit=result.limit, offset=result.offset)


@router.post("", response_model=GroupPublic, status_code=status.HTTP_201_CREATED)
def create_group(body: GroupCreate, caller: CallerDep, request: Request) -> GroupPublic:
    """Create a group."""
    with session_scope() as session:
        group = accounts.create_group(
            session,
            actor=caller.user,
            name=body.name,
            description=body.description,
            source_ip=client_ip(request),
        )
        return GroupPublic.model_validate(group)


@router.get("/{group_id}", response_model=GroupPublic)
def read_group(group_id: int, caller: CallerDep) -> GroupPublic:
    """One group."""
    with session_scope() as session:
        return GroupPublic.model_validate(
            accounts.get_group(session, actor=caller.user, group_id=group_id)
        )


@router.patch("/{group_id}", response_model=GroupPublic)
def update_group(
    group_id: int, body: GroupUpdate, caller: CallerDep, request: Request
) -> GroupPublic:
    """Change a group's description."""
    with session_scope() as session:
        group = accounts.update_group(
            session,
            actor=caller.user,
            group_id=group_id,
            description=body.description,
            source_ip=client_ip(request),
        )
        return GroupPublic.model_validate(group)


@router.delete("/{group_id}", status_code=status.HTTP_204_NO_CONTENT)
def delete_group(group_id: int, caller: CallerDep, request: Request) -> None:
    """Delete a group (not a built-in one)."""
    with session_scope() as session:
        accounts.delete_group(
            session, actor=caller.user, group_id=group_id, source_ip=client_ip(request)
        )


@router.get("/{group_id}/members", response_model=PageOut[UserPublic])
def list_members(group_id: int, caller: CallerDep, page: PageDep) -> PageOut[UserPublic]:
    """Members of a group by name."""
    with session_scope() as session:
        result = accounts.list_members(
            session,
            actor=caller.user,
            group_id=group_id,
            limit=page.limit,
            offset=page.offset,
        )
        items = [UserPublic.model_validate(u) for u in result.items]
    return PageOut(items=items, total=result.total, limit=result.limit, offset=result.offset)


@router.post("/{group_id}/members", status_code=status.HTTP_204_NO_CONTENT)
def add_member(group_id: int, body: MemberAdd, caller: CallerDep, request: Request) -> None:
    """Add a user to a group."""
    with session_scope() as session:
        accounts.add_member(
            session,
            actor=caller.user,
            group_id=group_id,
            user_id=body.user_id,
            source_ip=client_ip(request),
        )


@router.delete("/{group_id}/members/{user_id}", status_code=status.HTTP_204_NO_CONTENT)
def remove_member(group_id: int, user_id: int, caller: CallerDep, request: Request) -> None:
    """Remove a user from a group."""
    with session_scope() as session:
        accounts.remove_member(
            session,
            actor=caller.user,
            group_id=group_id,
            user_id=user_id,
            source_ip=client_ip(request),
        )
