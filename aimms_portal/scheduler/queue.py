"""The job queue: order, capacity, and handing a job to a session.

Order: higher ``priority`` first, then first in, first out (``id``). No preemption: a
running job is never taken back for a more urgent one.

Claims lock the candidate rows with ``FOR UPDATE SKIP LOCKED`` on PostgreSQL, so two
claimers (two dispatchers during a leader hand-over, a dispatcher and a session asking
for its next job) never take the same job, and neither waits for the other. SQLite
runs one unit of work at a time (see :mod:`aimms_portal.db`), which gives the same
guarantee by serializing.

Capacity: the limits per user and per app are checked by counting the jobs in progress.
So that two claimers at once cannot both see room for the last job a limit allows, a
claim first holds PostgreSQL advisory locks of its user and its app (until its unit of
work ends) and counts after that: claims for different users and apps still run side
by side; claims that share either wait for each other (see :func:`hold_claims`).

Known shortcoming: throughput is about half of procrastinate's on the same database
(issue 4 asks for five times): each job takes three fenced changes in two units of work
(docs/benchmarks.md).
"""

from __future__ import annotations

import functools
import logging
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, text, update
from sqlmodel import Session, col, select

from aimms_portal.config import Settings
from aimms_portal.db import is_sqlite
from aimms_portal.models import (
    ACTIVE_STATES,
    ENDED_SESSION_STATES,
    AppSession,
    Job,
    JobState,
    SessionKind,
    SessionState,
    utcnow,
)
from aimms_portal.scheduler import lifecycle, signals

logger = logging.getLogger(__name__)

#: How many queued jobs one dispatch round looks at (and locks).
CANDIDATES = 200
#: How many a session asking for its next job looks at: the head is nearly always it.
SESSION_CANDIDATES = 20

_ACTIVE = [s.value for s in ACTIVE_STATES]

#: The classes of the two-key advisory locks that serialize claims per user and per app
#: (any numbers: PostgreSQL keeps two-key locks apart from the one-key locks elsewhere).
_USER_LOCK, _APP_LOCK = 4711, 4712


@functools.cache
def _lock_statement(user: bool, app: bool, wait: bool) -> Any:
    calls = [
        f"pg_{'' if wait else 'try_'}advisory_xact_lock({cls}, :{key})"
        for cls, key, wanted in ((_USER_LOCK, "u", user), (_APP_LOCK, "a", app))
        if wanted
    ]
    # one call after the other, left to right: the user's lock first
    return text("SELECT " + (", " if wait else " AND ").join(calls))


def hold_claims(
    session: Session, *, owner_id: int, app_id: int, limits: Limits, wait: bool = True
) -> bool:
    """Hold the claim locks of a user and an app until ``session``'s unit of work ends;
    whether they are held.

    Count the jobs in progress only after this: another claimer of the same user or app
    has committed by then (its jobs count) or waits for this one. Blocking claimers
    (``wait``: the sessions taking their next job) lock the user first, then the app,
    so they never wait for each other in a circle; the dispatcher, which takes the
    locks of many users and apps in one round, never waits (``wait=False``) and skips a
    job whose locks another claimer holds.

    A limit that is not below the number of solve sessions can never be reached (every
    job in progress has a session of its own), so it needs no lock: with the default
    limits only claims of the same user wait for each other, and with limits as high as
    the sessions' none do. SQLite runs one unit of work at a time and needs no locks.
    """
    user = limits.per_user < limits.sessions
    app = limits.per_app < limits.sessions
    if not (user or app) or is_sqlite(session):
        return True
    held = session.execute(_lock_statement(user, app, wait), {"u": owner_id, "a": app_id}).scalar()
    return wait or bool(held)


def active_jobs(session: Session, *, owner_id: int | None = None, app_id: int | None = None) -> int:
    """How many jobs are in progress for a user or an app (as this statement sees it)."""
    statement = select(func.count()).select_from(Job).where(col(Job.state).in_(_ACTIVE))
    if owner_id is not None:
        statement = statement.where(Job.owner_id == owner_id)
    if app_id is not None:
        statement = statement.where(Job.app_id == app_id)
    return int(session.exec(statement).one())


@dataclass(frozen=True)
class Limits:
    """How much may be in progress at once."""

    sessions: int
    per_user: int
    per_app: int

    @classmethod
    def from_settings(cls, settings: Settings) -> Limits:
        return cls(
            sessions=settings.max_solve_sessions,
            per_user=settings.max_jobs_per_user,
            per_app=settings.max_jobs_per_app,
        )


@dataclass
class Load:
    """What is in progress now: jobs by user and by app, and live solve sessions."""

    by_user: Counter[int]
    by_app: Counter[int]
    live_sessions: int

    def allows(self, job: Job, limits: Limits) -> bool:
        return (
            self.by_user[job.owner_id] < limits.per_user
            and self.by_app[job.app_id] < limits.per_app
        )

    def take(self, job: Job) -> None:
        self.by_user[job.owner_id] += 1
        self.by_app[job.app_id] += 1


def current_load(session: Session) -> Load:
    active = [s.value for s in ACTIVE_STATES]
    by_user: Counter[int] = Counter()
    by_app: Counter[int] = Counter()
    for owner_id, app_id, count in session.exec(
        select(Job.owner_id, Job.app_id, func.count())
        .where(col(Job.state).in_(active))
        .group_by(Job.owner_id, Job.app_id)  # type: ignore[arg-type]
    ).all():
        by_user[owner_id] += count
        by_app[app_id] += count
    live = session.exec(
        select(func.count())
        .select_from(AppSession)
        .where(
            AppSession.kind == SessionKind.solve.value,
            col(AppSession.state).not_in([s.value for s in ENDED_SESSION_STATES]),
        )
    ).one()
    return Load(by_user=by_user, by_app=by_app, live_sessions=live)


def promote_due(session: Session, now: datetime | None = None) -> int:
    """Move scheduled jobs whose start time has come into the queue; how many."""
    now = now or utcnow()
    due = session.exec(
        select(Job)
        .where(Job.state == JobState.scheduled.value, col(Job.start_at) <= now)
        .with_for_update(skip_locked=True)
    ).all()
    for job in due:
        lifecycle.move_job(session, job, JobState.queued)
    return len(due)


def queued_candidates(session: Session, limit: int = CANDIDATES, *, lock: bool = True) -> list[Job]:
    """The head of the queue, in order; locked for this unit of work unless ``lock`` is
    False (then lock each job taken with :func:`lock_queued`)."""
    statement = (
        select(Job)
        .where(Job.state == JobState.queued.value)
        .order_by(col(Job.priority).desc(), col(Job.id))
        .limit(limit)
    )
    if lock:
        statement = statement.with_for_update(skip_locked=True)
    return list(session.exec(statement).all())


def lock_queued(session: Session, job_id: int) -> Job | None:
    """The job, locked, if it is still queued and nobody else holds it."""
    return session.exec(
        select(Job)
        .where(Job.id == job_id, Job.state == JobState.queued.value)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    ).first()


def assign(
    session: Session,
    job: Job,
    app_session: AppSession,
    *,
    lease: timedelta,
    wake_session: bool = True,
) -> None:
    """Hand ``job`` to ``app_session`` as a new attempt (its fencing number goes up).

    ``wake_session`` tells a runner waiting for work; a session that asked for this
    job itself need not be told.
    """
    job.attempt += 1
    job.session_id = app_session.id
    # a new session's lease starts when its runner takes the job: preparing a runtime
    # for the first time can take longer than a lease (the start timeout covers it)
    ready = app_session.state == SessionState.ready.value
    job.lease_expires_at = utcnow() + lease if ready else None
    job.cancel_requested = False
    lifecycle.move_job(session, job, JobState.starting, reason="")
    app_session.job_id = job.id
    app_session.idle_since = None
    session.add(app_session)
    if wake_session:
        signals.announce(session, signals.session_channel(app_session.id or 0))
    logger.info("job %s attempt %d -> session %s", job.id, job.attempt, app_session.id)


def _active_jobs(column: str, value: Any) -> Any:
    """The number of jobs in progress whose ``column`` is ``value`` (a scalar subquery)."""
    active = Job.__table__.alias("active")  # type: ignore[attr-defined]
    return (
        select(func.count())
        .select_from(active)
        .where(active.c.state.in_(_ACTIVE), active.c[column] == value)
        .scalar_subquery()
    )


@functools.cache
def _claim_statement() -> Any:
    """The claim of :func:`claim_for_session`, built once (building it costs more than
    running it); the values come as bound parameters."""
    table = Job.__table__  # type: ignore[attr-defined]
    candidate = table.alias("candidate")
    window = (
        select(table.c.id)
        .where(table.c.state == JobState.queued.value)
        .order_by(table.c.priority.desc(), table.c.id)
        .limit(SESSION_CANDIDATES)
    )
    head = (
        select(candidate.c.id)
        .where(
            candidate.c.id.in_(window),
            candidate.c.state == JobState.queued.value,
            _active_jobs("owner_id", candidate.c.owner_id) < bindparam("p_per_user"),
            _active_jobs("app_id", candidate.c.app_id) < bindparam("p_per_app"),
        )
        .order_by(candidate.c.priority.desc(), candidate.c.id)
        .limit(1)
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
    return (
        update(table)
        .where(
            table.c.id == head,
            table.c.state == JobState.queued.value,
            table.c.release_id == bindparam("p_release_id"),
            table.c.owner_id == bindparam("p_owner_id"),
        )
        .values(
            state=JobState.starting.value,
            attempt=table.c.attempt + 1,
            session_id=bindparam("p_session_id"),
            lease_expires_at=bindparam("p_lease_expires_at"),
            cancel_requested=False,
            reason="",
            updated_at=bindparam("p_now"),
        )
        .returning(*table.c)
    )


def claim_for_session(
    session: Session, app_session: AppSession, *, limits: Limits, lease: timedelta
) -> Job | None:
    """The next job for an idle solve session, if the queue's head is one it can run
    (see :func:`claim_next`); recorded on ``app_session`` (the caller's, locked)."""
    if (
        app_session.kind != SessionKind.solve.value
        or app_session.state != SessionState.ready.value
        or app_session.job_id is not None
    ):
        return None
    job = claim_next(
        session,
        session_id=app_session.id or 0,
        owner_id=app_session.owner_id,
        app_id=app_session.app_id,
        release_id=app_session.release_id,
        limits=limits,
        lease=lease,
    )
    if job is not None:
        app_session.job_id = job.id
        app_session.idle_since = None
        session.add(app_session)
    return job


def claim_next(
    session: Session,
    *,
    session_id: int,
    owner_id: int,
    app_id: int,
    release_id: int | None,
    limits: Limits,
    lease: timedelta,
) -> Job | None:
    """Hand the queue's head to a warm solve session if it is one the session can run.

    A warm session takes a job only when that job is the first one the dispatcher would
    start anyway (the first queued job that the capacity limits admit), and it is of
    the session's release and user. So warm sessions never jump the queue: a more
    urgent job of another app waits for no one but the dispatcher.

    One statement: the head is found among the first :data:`SESSION_CANDIDATES` queued
    jobs (those another claimer holds are skipped, ``SKIP LOCKED``), admitted by the
    jobs in progress of its user and app, and updated only if it is the session's own.
    The caller has locked the session (a ready solve session without a job) and records
    the job on it. The claim locks of the session's user and app are held first (see
    :func:`hold_claims`), so the counts include every other claim of theirs.
    """
    if release_id is None:  # its release was deleted: nothing in the queue is for it
        return None
    hold_claims(session, owner_id=owner_id, app_id=app_id, limits=limits)
    now = utcnow()
    params = {
        "p_per_user": limits.per_user,
        "p_per_app": limits.per_app,
        "p_release_id": release_id,
        "p_owner_id": owner_id,
        "p_session_id": session_id,
        "p_lease_expires_at": now + lease,
        "p_now": now,
    }
    job = session.scalars(
        select(Job).from_statement(_claim_statement()).execution_options(populate_existing=True),
        params,
    ).first()
    if job is None:
        return None
    # what assign() and move_job() do besides the row itself
    if job.hook_url:
        lifecycle.queue_hook(session, job, now)
    logger.info("job %s: queued -> starting", job.id)
    logger.info("job %s attempt %d -> session %s", job.id, job.attempt, session_id)
    return job
