"""Solve jobs, app sessions, cases, job logs, state hooks and the leader lease.

A job and the session it runs in point at each other (``jobs.session_id`` and
``app_sessions.job_id``), as do a case and the job it belongs to; the second key of
each pair is added after both tables exist (``use_alter``).
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Column, ForeignKey, Index, Integer, Text, UniqueConstraint, text
from sqlmodel import Field, SQLModel

from aimms_portal.models.base import UTCDateTime, utcnow


class JobState(StrEnum):
    """Where a job is in its lifecycle (see DESIGN.md)."""

    scheduled = "scheduled"  # waits for its start time
    queued = "queued"  # waits for a solve session
    starting = "starting"  # handed to a session that is fetching its input
    running = "running"  # the procedure runs
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    timed_out = "timed_out"


#: States a job never leaves.
FINISHED_STATES = frozenset(
    {JobState.succeeded, JobState.failed, JobState.cancelled, JobState.timed_out}
)
#: States in which a job holds a solve session (and counts against capacity).
ACTIVE_STATES = frozenset({JobState.starting, JobState.running})


class SessionKind(StrEnum):
    webui = "webui"
    desktop = "desktop"
    solve = "solve"


class SessionState(StrEnum):
    """Where a session is in its lifecycle (see DESIGN.md)."""

    pending = "pending"  # recorded; the launcher has not started it yet
    starting = "starting"  # the launcher started it; the runner prepares
    ready = "ready"  # the runner is up (a solve session takes jobs)
    stopping = "stopping"
    stopped = "stopped"
    failed = "failed"


#: States a session never leaves.
ENDED_SESSION_STATES = frozenset({SessionState.stopped, SessionState.failed})


class CaseKind(StrEnum):
    input = "input"  # uploaded to be a job's input
    output = "output"  # written by a job
    saved = "saved"  # a user's saved data


class Case(SQLModel, table=True):
    """An immutable, compressed data snapshot kept in storage under ``storage_key``."""

    __tablename__ = "cases"

    id: int | None = Field(default=None, primary_key=True)
    owner_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    app_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("apps.id", ondelete="SET NULL"), nullable=True, index=True
        ),
    )
    job_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer,
            ForeignKey("jobs.id", ondelete="SET NULL", use_alter=True, name="fk_cases_job"),
            nullable=True,
            index=True,
        ),
    )
    #: The attempt of ``job_id`` that wrote an output case (fencing number).
    attempt: int | None = Field(default=None)
    kind: str = Field(max_length=8)
    name: str = Field(max_length=128)
    storage_key: str = Field(max_length=255)
    #: Bytes in storage (compressed).
    stored_size: int
    #: Bytes of the content as uploaded (uncompressed).
    size: int
    #: SHA-256 of the content as uploaded.
    sha256: str = Field(max_length=64)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Job(SQLModel, table=True):
    """A request to run one named procedure of a release on an input case."""

    __tablename__ = "jobs"

    id: int | None = Field(default=None, primary_key=True)
    owner_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    app_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    # a release in use cannot be deleted (services/apps.py); finished jobs outlive it
    release_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("releases.id", ondelete="SET NULL"), nullable=True, index=True
        ),
    )
    #: The release's version, kept for the record when the release is deleted.
    version: str = Field(default="", max_length=64)
    procedure: str = Field(max_length=64)
    input_case_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("cases.id", ondelete="SET NULL"), nullable=True),
    )
    output_case_id: int | None = Field(
        default=None,
        sa_column=Column(Integer, ForeignKey("cases.id", ondelete="SET NULL"), nullable=True),
    )
    #: The job's arguments: a JSON object as text.
    arguments: str = Field(default="{}", sa_column=Column(Text, nullable=False))
    priority: int = Field(default=0)
    time_limit_s: int
    #: Not to start before this time (the job is ``scheduled`` until then).
    start_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    state: str = Field(max_length=16)
    #: How many times the job was handed to a session; also its fencing number: only
    #: the session holding the current attempt may report progress or results.
    attempt: int = Field(default=0)
    max_attempts: int = Field(default=3)
    session_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("app_sessions.id", ondelete="SET NULL"), nullable=True, index=True
        ),
    )
    #: The running attempt must heartbeat before this time, or the job counts as lost.
    lease_expires_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    cancel_requested: bool = Field(default=False)
    exit_code: int | None = Field(default=None)
    #: Why the job ended the way it did (or why it went back to the queue).
    reason: str = Field(default="", max_length=500)
    hook_url: str = Field(default="", max_length=2000)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    started_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    updated_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


def _partial(where: str) -> dict[str, Any]:
    """The keyword arguments of an index over the rows matching ``where`` only."""
    return {"postgresql_where": text(where), "sqlite_where": text(where)}


_jobs = Job.__table__.c  # type: ignore[attr-defined]
# Partial indexes: each holds only the few rows a hot query looks for, so a job's state
# changes touch small indexes and the queries never step over the finished jobs.
# the queue's order (priority high to low, then oldest first) read straight off an index
Index("ix_jobs_queue", _jobs.priority.desc(), _jobs.id, **_partial("state = 'queued'"))
# jobs in progress, counted per user and per app for the capacity limits (and scanned
# by the reaper for lapsed leases and time limits)
Index(
    "ix_jobs_active", _jobs.owner_id, _jobs.app_id, **_partial("state IN ('starting', 'running')")
)
# scheduled jobs by start time
Index("ix_jobs_scheduled", _jobs.start_at, **_partial("state = 'scheduled'"))


class AppSession(SQLModel, table=True):
    """A running instance of an app for one user: ``webui``, ``desktop`` or ``solve``.

    The session's runner authenticates with a random token of which only the SHA-256
    is kept; it stops working when the session ends or at ``token_expires_at``.
    """

    __tablename__ = "app_sessions"

    id: int | None = Field(default=None, primary_key=True)
    kind: str = Field(max_length=8, index=True)
    owner_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("users.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    app_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("apps.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    release_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer, ForeignKey("releases.id", ondelete="SET NULL"), nullable=True, index=True
        ),
    )
    version: str = Field(default="", max_length=64)
    state: str = Field(max_length=16, index=True)
    #: The launcher kind that runs it (``desktop``: the user's own computer), and the
    #: launcher's own name for it.
    launcher: str = Field(max_length=16)
    handle: str = Field(default="", max_length=255)
    #: ``host:port`` where a WebUI session's app answers (the proxy's target).
    address: str = Field(default="", max_length=255)
    #: The last lines of the session's log, kept when it ended (its log is gone then).
    log_tail: str = Field(default="", sa_column=Column(Text, nullable=False, server_default=""))
    token_hash: str = Field(max_length=64, unique=True, index=True)
    token_expires_at: datetime = Field(sa_type=UTCDateTime)
    #: The job a solve session runs right now.
    job_id: int | None = Field(
        default=None,
        sa_column=Column(
            Integer,
            ForeignKey("jobs.id", ondelete="SET NULL", use_alter=True, name="fk_sessions_job"),
            nullable=True,
        ),
    )
    #: Set while a ready solve session waits for its next job (a warm session).
    idle_since: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_heartbeat_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_activity_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    reason: str = Field(default="", max_length=500)
    peak_memory_bytes: int | None = Field(default=None)
    cpu_seconds: float | None = Field(default=None)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    ready_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    ended_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class SessionEvent(SQLModel, table=True):
    """One state change of a session: its timeline."""

    __tablename__ = "session_events"

    id: int | None = Field(default=None, primary_key=True)
    session_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("app_sessions.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    state: str = Field(max_length=16)
    detail: str = Field(default="", max_length=500)
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class JobLogChunk(SQLModel, table=True):
    """A run of lines a job's procedure printed, in order of ``id``."""

    __tablename__ = "job_log_chunks"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    attempt: int
    #: ``stdout``, ``stderr`` or ``portal`` (what the portal itself notes in the log).
    stream: str = Field(max_length=8)
    text: str = Field(sa_column=Column(Text, nullable=False))
    at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class HookDelivery(SQLModel, table=True):
    """A state-hook POST still to be delivered (an outbox: it survives a restart)."""

    __tablename__ = "hook_deliveries"

    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(
        sa_column=Column(
            Integer, ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False, index=True
        )
    )
    url: str = Field(max_length=2000)
    #: The JSON body, exactly as signed.
    body: str = Field(sa_column=Column(Text, nullable=False))
    tries: int = Field(default=0)
    next_try_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime, index=True)
    delivered_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str = Field(default="", max_length=500)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class LeaderLease(SQLModel, table=True):
    """Who runs the work that must run once (dispatch, reaping), and until when."""

    __tablename__ = "leader_leases"
    __table_args__ = (UniqueConstraint("name", name="uq_leader_lease_name"),)

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=32)
    holder: str = Field(max_length=128)
    expires_at: datetime = Field(sa_type=UTCDateTime)
