"""The state machines of jobs and sessions: every state change goes through here.

A change is checked against the allowed transitions, stamped with its time, recorded
(the session timeline; the job's state hook, as an outbox row) and announced to the
dispatcher and to the session concerned (:mod:`aimms_portal.scheduler.signals`). The
caller's unit of work commits it; nothing here commits.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from datetime import datetime, timedelta
from typing import Protocol

from sqlmodel import Session

from aimms_portal.auth import tokens
from aimms_portal.config import get_settings
from aimms_portal.errors import Conflict
from aimms_portal.models import (
    AppSession,
    HookDelivery,
    Job,
    JobLogChunk,
    JobState,
    SessionEvent,
    SessionState,
    utcnow,
)
from aimms_portal.scheduler import signals

logger = logging.getLogger(__name__)

#: Session tokens start with this (personal API tokens with ``apt_``).
SESSION_TOKEN_PREFIX = "ast_"  # noqa: S105

_JOB_MOVES: dict[JobState, frozenset[JobState]] = {
    JobState.scheduled: frozenset({JobState.queued, JobState.cancelled}),
    JobState.queued: frozenset({JobState.starting, JobState.cancelled, JobState.failed}),
    JobState.starting: frozenset(
        {
            JobState.running,
            JobState.queued,
            JobState.succeeded,
            JobState.failed,
            JobState.cancelled,
            JobState.timed_out,
        }
    ),
    JobState.running: frozenset(
        {
            JobState.queued,
            JobState.succeeded,
            JobState.failed,
            JobState.cancelled,
            JobState.timed_out,
        }
    ),
}

_SESSION_MOVES: dict[SessionState, frozenset[SessionState]] = {
    # a runner may report ready before its launcher's start() has returned
    SessionState.pending: frozenset(
        {
            SessionState.starting,
            SessionState.ready,
            SessionState.stopping,
            SessionState.stopped,
            SessionState.failed,
        }
    ),
    SessionState.starting: frozenset(
        {SessionState.ready, SessionState.stopping, SessionState.stopped, SessionState.failed}
    ),
    SessionState.ready: frozenset(
        {SessionState.stopping, SessionState.stopped, SessionState.failed}
    ),
    SessionState.stopping: frozenset({SessionState.stopped, SessionState.failed}),
}


#: Job states whose arrival the dispatcher must hear of: work to place, capacity freed.
_WAKES_DISPATCHER = frozenset(
    {JobState.queued, JobState.succeeded, JobState.failed, JobState.cancelled, JobState.timed_out}
)


def move_job(
    session: Session,
    job: Job,
    to: JobState,
    *,
    reason: str | None = None,
    wake_dispatcher: bool = True,
) -> None:
    """Put ``job`` into state ``to`` (stamping times, queuing its state hook).

    A job that joins the queue or finishes wakes the dispatcher, unless the caller
    says it need not (a session that takes its next job itself frees no capacity).

    Raises:
        Conflict: the job cannot go from its state to ``to`` (e.g. it has finished).
    """
    current = JobState(job.state)
    if to not in _JOB_MOVES.get(current, frozenset()):
        raise Conflict(f"Job {job.id} is {current.value}; it cannot become {to.value}.")
    now = utcnow()
    job.state = to.value
    job.updated_at = now
    if reason is not None:
        job.reason = reason[:500]
    if to == JobState.running:
        job.started_at = now
    if to in (
        JobState.succeeded,
        JobState.failed,
        JobState.cancelled,
        JobState.timed_out,
    ):
        job.finished_at = now
        job.lease_expires_at = None
    if to == JobState.queued:
        job.session_id = None
        job.lease_expires_at = None
        job.started_at = None
    session.add(job)
    session.flush()
    if job.hook_url:
        queue_hook(session, job, now)
    if wake_dispatcher and to in _WAKES_DISPATCHER:
        signals.announce(session, signals.QUEUE)
    logger.info(
        "job %s: %s -> %s%s", job.id, current.value, to.value, f" ({reason})" if reason else ""
    )


def note_in_log(session: Session, job: Job, text: str) -> None:
    """Add a line of the portal's own to the job's log (re-queued, lost, cancelled)."""
    session.add(
        JobLogChunk(job_id=job.id or 0, attempt=job.attempt, stream="portal", text=text + "\n")
    )


def hook_secret(job_id: int) -> str:
    """The key a job's state hooks are signed with (HMAC-SHA256), derived, not stored."""
    key = get_settings().secret_key.get_secret_value().encode()
    return hmac.new(key, f"hook:{job_id}".encode(), hashlib.sha256).hexdigest()


class HookFields(Protocol):
    """What a state hook tells about a job: a :class:`Job`, or a row of its columns
    (the fenced reports read them back with ``RETURNING`` instead of loading the job)."""

    @property
    def id(self) -> int | None: ...
    @property
    def state(self) -> str: ...
    @property
    def attempt(self) -> int: ...
    @property
    def reason(self) -> str: ...
    @property
    def exit_code(self) -> int | None: ...
    @property
    def output_case_id(self) -> int | None: ...
    @property
    def hook_url(self) -> str: ...


def hook_body(job: HookFields, at: datetime) -> str:
    return json.dumps(
        {
            "job_id": job.id,
            "state": job.state,
            "attempt": job.attempt,
            "reason": job.reason,
            "exit_code": job.exit_code,
            "output_case_id": job.output_case_id,
            "at": at.isoformat(),
        },
        sort_keys=True,
    )


def queue_hook(session: Session, job: HookFields, at: datetime | None = None) -> None:
    """Queue the state hook of ``job``'s current state for delivery (an outbox row)."""
    body = hook_body(job, at or utcnow())
    session.add(HookDelivery(job_id=job.id or 0, url=job.hook_url, body=body))


def new_session_token() -> str:
    return SESSION_TOKEN_PREFIX + tokens.new_secret()


def open_session(
    session: Session,
    *,
    kind: str,
    owner_id: int,
    app_id: int,
    release_id: int,
    launcher: str,
    lifetime: timedelta,
) -> tuple[AppSession, str]:
    """Record a new session in ``pending``; returns it with its token (shown only here)."""
    token = new_session_token()
    now = utcnow()
    app_session = AppSession(
        kind=kind,
        owner_id=owner_id,
        app_id=app_id,
        release_id=release_id,
        state=SessionState.pending.value,
        launcher=launcher,
        token_hash=tokens.hash_secret(token),
        token_expires_at=now + lifetime,
        last_heartbeat_at=now,
        created_at=now,
    )
    session.add(app_session)
    session.flush()
    session.add(SessionEvent(session_id=app_session.id or 0, state=app_session.state, at=now))
    return app_session, token


def move_session(
    session: Session, app_session: AppSession, to: SessionState, *, detail: str = ""
) -> bool:
    """Put ``app_session`` into state ``to`` and add it to the timeline.

    Returns False (and changes nothing) when the session is there already or has ended:
    sessions are stopped from several places (reaper, user, runner), and only the
    first one counts.
    """
    current = SessionState(app_session.state)
    if to not in _SESSION_MOVES.get(current, frozenset()):
        return False
    now = utcnow()
    app_session.state = to.value
    if detail:
        app_session.reason = detail[:500]
    if to == SessionState.ready:
        app_session.ready_at = now
    if to in (SessionState.stopped, SessionState.failed):
        app_session.ended_at = now
        app_session.idle_since = None
        app_session.job_id = None
    session.add(app_session)
    session.add(
        SessionEvent(session_id=app_session.id or 0, state=to.value, detail=detail[:500], at=now)
    )
    signals.announce(session, signals.session_channel(app_session.id or 0))
    signals.announce(session, signals.QUEUE)
    logger.info(
        "session %s: %s -> %s%s",
        app_session.id,
        current.value,
        to.value,
        f" ({detail})" if detail else "",
    )
    return True
