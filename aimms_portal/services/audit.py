"""Recording and reading the audit log."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

from sqlmodel import Session, col, delete, select

from aimms_portal.auth.access import Action, require
from aimms_portal.models import AuditEvent, User, utcnow
from aimms_portal.services.pagination import DEFAULT_LIMIT, Page, paginate

logger = logging.getLogger(__name__)

#: How table rows are named in the audit log where the class name would read oddly.
_TARGET_TYPES = {"ApiToken": "token", "BrowserSession": "log-on"}


def record(
    session: Session,
    *,
    action: str,
    actor: User | None = None,
    actor_name: str = "",
    target: object | None = None,
    target_type: str = "",
    target_id: str | int = "",
    target_name: str = "",
    outcome: str = "success",
    source_ip: str = "",
    detail: str = "",
) -> AuditEvent:
    """Add one audit event to the unit of work ``session``.

    The event commits with the change it describes; a failure that must be recorded
    even though the change is rolled back is committed by the caller before it raises.
    ``target`` may be any table row with ``id`` and ``name`` or ``username``.
    """
    if target is not None:
        kind = type(target).__name__
        target_type = target_type or _TARGET_TYPES.get(kind, kind.lower())
        target_id = target_id or getattr(target, "id", "") or ""
        target_name = target_name or str(
            getattr(target, "username", None) or getattr(target, "name", "")
        )
    event = AuditEvent(
        action=action,
        actor_id=actor.id if actor else None,
        actor_name=(actor.username if actor else actor_name)[:64],
        target_type=target_type[:32],
        target_id=str(target_id)[:64],
        target_name=str(target_name)[:128],
        outcome=outcome,
        source_ip=source_ip[:45],
        detail=detail[:1000],
    )
    session.add(event)
    logger.info(
        "audit %s %s by %s on %s:%s",
        action,
        outcome,
        event.actor_name or "-",
        event.target_type or "-",
        event.target_id or "-",
    )
    return event


def list_events(
    session: Session,
    *,
    actor: User,
    action: str | None = None,
    actor_name: str | None = None,
    outcome: str | None = None,
    target_type: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    limit: int = DEFAULT_LIMIT,
    offset: int = 0,
) -> Page[AuditEvent]:
    """Audit events, newest first, filtered by the given fields (admins only).

    ``action`` matches a prefix, so ``auth.`` gives every log-on event.
    """
    require(actor, Action.read_audit)
    since, until = _as_utc(since), _as_utc(until)
    statement = select(AuditEvent)
    if action:
        statement = statement.where(col(AuditEvent.action).startswith(action, autoescape=True))
    if actor_name:
        statement = statement.where(AuditEvent.actor_name == actor_name)
    if outcome:
        statement = statement.where(AuditEvent.outcome == outcome)
    if target_type:
        statement = statement.where(AuditEvent.target_type == target_type)
    if since:
        statement = statement.where(AuditEvent.created_at >= since)
    if until:
        statement = statement.where(AuditEvent.created_at < until)
    statement = statement.order_by(col(AuditEvent.created_at).desc(), col(AuditEvent.id).desc())
    return paginate(session, statement, limit=limit, offset=offset)


def _as_utc(moment: datetime | None) -> datetime | None:
    # a time given without a zone is read as UTC
    if moment is not None and moment.tzinfo is None:
        return moment.replace(tzinfo=UTC)
    return moment


def purge_expired(session: Session, *, retention_days: int) -> int:
    """Delete audit events older than the retention period; returns how many went."""
    cutoff = utcnow() - timedelta(days=retention_days)
    result = session.exec(delete(AuditEvent).where(col(AuditEvent.created_at) < cutoff))
    removed = result.rowcount or 0
    if removed:
        logger.info("audit: purged %d events older than %d days", removed, retention_days)
    return removed
