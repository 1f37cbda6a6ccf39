"""SQLModel tables of the administrative database.

Importing this package registers every table on ``SQLModel.metadata``, which Alembic
compares against the migrations.
"""

from aimms_portal.models.accounts import EVERYONE, Group, Membership, Role, User
from aimms_portal.models.audit import AuditEvent
from aimms_portal.models.auth import ApiToken, BrowserSession
from aimms_portal.models.base import utcnow
from aimms_portal.models.jobs import (
    ACTIVE_STATES,
    ENDED_SESSION_STATES,
    FINISHED_STATES,
    AppSession,
    Case,
    CaseKind,
    HookDelivery,
    Job,
    JobLogChunk,
    JobState,
    LeaderLease,
    SessionEvent,
    SessionKind,
    SessionState,
)
from aimms_portal.models.publishing import (
    App,
    AppGrant,
    AppRight,
    PortalKey,
    Release,
    RuntimeVersion,
    SigningKey,
)

__all__ = [
    "ACTIVE_STATES",
    "ENDED_SESSION_STATES",
    "FINISHED_STATES",
    "AppSession",
    "Case",
    "CaseKind",
    "HookDelivery",
    "Job",
    "JobLogChunk",
    "JobState",
    "LeaderLease",
    "SessionEvent",
    "SessionKind",
    "SessionState",
    "EVERYONE",
    "ApiToken",
    "App",
    "AppGrant",
    "AppRight",
    "PortalKey",
    "Release",
    "RuntimeVersion",
    "SigningKey",
    "AuditEvent",
    "BrowserSession",
    "Group",
    "Membership",
    "Role",
    "User",
    "utcnow",
]
