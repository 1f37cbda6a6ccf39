"""The audit log (admins only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from aimms_portal.api import API_PREFIX
from aimms_portal.api.deps import CallerDep, PageDep
from aimms_portal.api.schemas import AuditEventPublic, PageOut
from aimms_portal.db import session_scope
from aimms_portal.services import audit

router = APIRouter(prefix=f"{API_PREFIX}/audit", tags=["audit"])


@router.get("", response_model=PageOut[AuditEventPublic])
def list_audit_events(
    caller: CallerDep,
    page: PageDep,
    action: Annotated[str | None, Query(max_length=64, description="Prefix, e.g. `auth.`")] = None,
    actor: Annotated[str | None, Query(max_length=64)] = None,
    outcome: Annotated[str | None, Query(pattern="^(success|failure|refused)$")] = None,
    target_type: Annotated[str | None, Query(max_length=32)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> PageOut[AuditEventPublic]:
    """Audit events, newest first, with filters."""
    with session_scope() as session:
        result = audit.list_events(
            session,
            actor=caller.user,
            action=action,
            actor_name=actor,
            outcome=outcome,
            target_type=target_type,
            since=since,
            until=until,
            limit=page.limit,
            offset=page.offset,
        )
        items = [AuditEventPublic.model_validate(e) for e in result.items]
    return PageOut(items=items, total=result.total, limit=result.limit, offset=result.offset)
