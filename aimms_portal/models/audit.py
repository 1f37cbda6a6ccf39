"""The audit log: one row per security-relevant action, kept for the retention period."""

from __future__ import annotations

from datetime import datetime

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
