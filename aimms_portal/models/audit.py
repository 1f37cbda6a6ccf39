"""The audit log: one row per security-relevant action, kept for the retention period."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, text
from sqlmodel import Field, SQLModel

from aimms_portal.models.base import UTCDateTime, utcnow


class AuditEvent(SQLModel, table=True):
    """Who did what to which object, when, from where, and whether it worked.

    Actor and target are copied by value (no foreign keys) so the history survives
    the objects it talks about.
    """

    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    actor_id: int | None = Field(default=None, index=True)
    actor_name: str = Field(default="", max_length=64)
    action: str = Field(max_length=64, index=True)
    target_type: str = Field(default="", max_length=32)
    target_id: str = Field(default="", max_length=64)
    target_name: str = Field(default="", max_length=128)
    outcome: str = Field(default="success", max_length=16)
    source_ip: str = Field(default="", max_length=45)
    #: Free text with further detail; never a secret.
    detail: str = Field(default="", max_length=1000)


_FAILED_LOG_ON = "action = 'auth.login' AND outcome = 'failure'"
_events = AuditEvent.__table__.c  # type: ignore[attr-defined]
# the failed log-ons of an address, newest first: what the log-on throttle counts
Index(
    "ix_audit_failed_logons",
    _events.source_ip,
    _events.created_at,
    postgresql_where=text(_FAILED_LOG_ON),
    sqlite_where=text(_FAILED_LOG_ON),
)
