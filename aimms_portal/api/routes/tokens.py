"""Personal API tokens of the caller."""

from __future__ import annotations

from fastapi import APIRouter, Request, status

from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, PageDep, client_ip
from aimms_portal.api.schemas import PageOut, TokenCreate, TokenCreated, TokenPublic
from aimms_portal.db import session_scope
from aimms_portal.services import tokens

router = APIRouter(prefix=f"{API_PREFIX}/tokens", tags=["tokens"])


@router.get("", response_model=PageOut[TokenPublic])
def list_tokens(
    caller: CallerDep, page: PageDep, user_id: int | None = None, include_revoked: bool = False
) -> PageOut[TokenPublic]:
    """Your tokens, newest first (admins may pass `user_id`)."""
    with session_scope() as session:
        result = tokens.list_tokens(
            session,
            actor=caller.user,
            user_id=user_id,
            include_revoked=include_revoked,
            limit=page.limit,
            offset=page.offset,
        )
        items = [TokenPublic.model_validate(t) for t in result.items]
    return PageOut(items=items, total=result.total, limit=result.limit, offset=result.offset)


@router.post("", response_model=TokenCreated, status_code=status.HTTP_201_CREATED)
def create_token(body: TokenCreate, caller: CallerDep, request: Request) -> TokenCreated:
    """Create a token; the response holds it in clear, this one time."""
    with session_scope() as session:
        row, secret = tokens.create_token(
            session,
            actor=caller.user,
            name=body.name,
            scopes=body.scopes,
            expires_in_days=body.expires_in_days,
            source_ip=client_ip(request),
        )
        return TokenCreated(**TokenPublic.model_validate(row).model_dump(), token=secret)


@router.delete("/{token_id}", status_code=status.HTTP_204_NO_CONTENT)
def revoke_token(token_id: int, caller: CallerDep, request: Request) -> None:
    """Revoke a token at once."""
    with session_scope() as session:
        tokens.revoke_token(
            session, actor=caller.user, token_id=token_id, source_ip=client_ip(request)
        )
