"""What a session's runner may do, with its session-scoped token.

A runner holds no database credentials and no personal token: it proves with the token
its launcher gave it that it *is* one session, and may only fetch what that session
needs (its release's runtime and bundle, its job's input) and report for the job it
holds. Every job call names the attempt (the fencing number) it works on; a call for
an attempt that is no longer the job's current one (the job was re-queued after the
session was thought lost, or cancelled) is refused with ``stale_attempt``, so a stale
attempt can never change a job, its log or its result.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, case, func, update
from sqlmodel import Session, select

from aimms_portal.auth import tokens
from aimms_portal.config import get_settings
from aimms_portal.db import session_scope
from aimms_portal.errors import Conflict, Gone, InvalidInput, NotAuthenticated, NotFound
from aimms_portal.models import (
    ENDED_SESSION_STATES,
    App,
    AppSession,
    Case,
    CaseKind,
    Job,
    JobLogChunk,
    JobState,
    Release,
    RuntimeVersion,
    SessionKind,
    SessionState,
    SigningKey,
    User,
    utcnow,
)
from aimms_portal.packages import encryption
from aimms_portal.scheduler import lifecycle, signals
from aimms_portal.scheduler.dispatcher import end_session
from aimms_portal.scheduler.queue import Limits, claim_for_session, claim_next
from aimms_portal.services import cases
from aimms_portal.services.portal_keys import private_key_for
from aimms_portal.storage import get_storage
from aimms_portal.storage.base import Readable

logger = logging.getLogger(__name__)

#: How a job may end, as its runner reports it.
OUTCOMES = frozenset({JobState.succeeded, JobState.failed, JobState.cancelled, JobState.timed_out})
#: Most log lines one report may carry, and most characters per line.
MAX_LOG_LINES = 5000
MAX_LINE = 16 * 1024
#: A heartbeat younger than this is not written again by a session asking for work.
HEARD_RECENTLY = timedelta(seconds=2)


@dataclass(frozen=True)
class RunnerSession:
    """The session behind a runner's token, with its owner."""

    app_session: AppSession
    owner: User


def session_from_token(session: Session, token: str) -> RunnerSession:
    """The live session a session token belongs to.

    Raises:
        NotAuthenticated: unknown (forged) or expired token, an ended session, or a
            disabled owner; the code says which.
    """
    app_session = session.exec(
        select(AppSession).where(AppSession.token_hash == tokens.hash_secret(token))
    ).first()
    if app_session is None:
        raise NotAuthenticated("The session token is not valid.", code="invalid_session_token")
    if app_session.state in {s.value for s in ENDED_SESSION_STATES}:
        raise NotAuthenticated("This session has ended.", code="session_ended")
    if app_session.token_expires_at <= utcnow():
        raise NotAuthenticated("The session token has expired.", code="session_token_expired")
    owner = session.get(User, app_session.owner_id)
    if owner is None or not owner.is_active:
        raise NotAuthenticated("The session's owner is disabled.", code="account_disabled")
    return RunnerSession(app_session, owner)


def _locked(session: Session, runner: RunnerSession) -> AppSession:
    app_session = session.get(AppSession, runner.app_session.id, with_for_update=True)
    if app_session is None or app_session.state in {s.value for s in ENDED_SESSION_STATES}:
        raise Gone("This session has ended.", code="session_ended")
    return app_session


def _release(session: Session, app_session: AppSession) -> Release:
    release = session.get(Release, app_session.release_id) if app_session.release_id else None
    if release is None:
        raise Gone("The session's release was deleted.", code="release_gone")
    return release


# -- the session ----------------------------------------------------------------------


def session_info(session: Session, *, runner: RunnerSession) -> dict[str, Any]:
    """What the runner needs to prepare: release, manifest, runtime and bundle digests."""
    app_session = runner.app_session
    release = _release(session, app_session)
    runtime = session.get(RuntimeVersion, release.runtime_version_id)
    app = session.get(App, app_session.app_id)
    assert runtime is not None and app is not None
    signer = session.exec(
        select(SigningKey).where(SigningKey.fingerprint == runtime.signer_fingerprint)
    ).first()
    settings = get_settings()
    return {
        "session_id": app_session.id,
        "kind": app_session.kind,
        "app": app.name,
        "version": release.version,
        "manifest": json.loads(release.manifest),
        "runtime": {
            "name": runtime.name,
            "version": runtime.version,
            "python_requires": runtime.python_requires,
            "sha256": runtime.sha256,
            "size": runtime.size,
            # the .sig document, rebuilt: the runner verifies the package it receives
            "signature": {
                "format": 1,
                "key": runtime.signer_fingerprint,
                "sha256": runtime.sha256,
                "signature": runtime.signature,
            },
            # None once an admin no longer trusts the key: the runner then refuses it
            "signer_public_key": signer.public_key if signer else None,
        },
        "bundle": {
            "sha256": release.bundle_sha256,
            "size": release.bundle_size,
            "encrypted": release.encrypted,
        },
        "heartbeat_seconds": settings.heartbeat_seconds,
        "idle_seconds": settings.solve_idle_seconds,
        "answer_timeout_s": settings.webui_answer_timeout_s,
    }


def runtime_object(session: Session, *, runner: RunnerSession) -> tuple[str, int]:
    """Storage key and size of the session's runtime package."""
    release = _release(session, runner.app_session)
    runtime = session.get(RuntimeVersion, release.runtime_version_id)
    assert runtime is not None
    return runtime.storage_key, runtime.size


def bundle_object(session: Session, *, runner: RunnerSession) -> tuple[str, int]:
    """Storage key and size of the session's bundle (as stored: encrypted if it is)."""
    release = _release(session, runner.app_session)
    return release.bundle_key, release.bundle_size


def bundle_key(session: Session, *, runner: RunnerSession) -> bytes | None:
    """The data key of the session's encrypted bundle (``None`` for a plain bundle).

    The portal's private key never leaves the portal: it unwraps the bundle's own key
    for the session that runs the bundle, and nothing else.
    """
    release = _release(session, runner.app_session)
    if not release.encrypted:
        return None
    with get_storage().open(release.bundle_key) as stream:
        header = encryption.read_header(stream)
    return encryption.unwrap_data_key(header, private_key_for(session, header.key))


def mark_ready(session: Session, *, runner: RunnerSession, address: str = "") -> None:
    """The runner has prepared the session and is ready: a solve session for work, a
    WebUI session's app answers at ``address`` (``host:port``, the proxy's target)."""
    app_session = _locked(session, runner)
    now = utcnow()
    app_session.last_heartbeat_at = now
    if address:
        app_session.address = address[:255]
        app_session.last_activity_at = now
    lifecycle.move_session(session, app_session, SessionState.ready)


def session_failed(
    session: Session, *, runner: RunnerSession, reason: str, log: Iterable[str] = ()
) -> None:
    """The runner gives up on its session (the runtime cannot be prepared, the app
    does not answer or crashed).

    The session ends as failed with ``reason`` and the last lines of its ``log`` (what
    its user is shown); a job in it goes back to the queue (or fails, when its attempts
    are used up) with that reason.
    """
    app_session = _locked(session, runner)
    end_session(
        session,
        app_session,
        failed=True,
        detail=reason[:480] or "the runner failed",
        log_lines=[line[:MAX_LINE] for line in log],
    )


def session_stopped(session: Session, *, runner: RunnerSession, reason: str) -> None:
    """The session ended by itself as it should (e.g. its app was closed)."""
    end_session(session, _locked(session, runner), failed=False, detail=reason[:480])


def session_heartbeat(session: Session, *, runner: RunnerSession) -> bool:
    """Record that the session lives; returns whether it should stop."""
    app_session = _locked(session, runner)
    app_session.last_heartbeat_at = utcnow()
    session.add(app_session)
    return app_session.state == SessionState.stopping.value


def next_job(session: Session, *, runner: RunnerSession) -> Job | None:
    """The job the session should run now, if any; the session counts as idle otherwise.

    Raises:
        Gone: the session is asked to stop (or has ended): the runner should exit.
    """
    app_session = _locked(session, runner)
    if app_session.state == SessionState.stopping.value:
        raise Gone("This session is stopping.", code="session_stopping")
    return _next_for(session, app_session)


def _next_for(session: Session, app_session: AppSession) -> Job | None:
    """:func:`next_job` for a session this unit of work has locked (and found live)."""
    now = utcnow()
    # a waiting runner asks every second; the heartbeat need not be written as often
    if not app_session.last_heartbeat_at or now - app_session.last_heartbeat_at > HEARD_RECENTLY:
        app_session.last_heartbeat_at = now
        session.add(app_session)
    if app_session.job_id is not None:
        job = session.get(Job, app_session.job_id)
        active = (JobState.starting.value, JobState.running.value)
        if job is not None and job.session_id == app_session.id and job.state in active:
            if job.lease_expires_at is None:  # handed over before the session was ready
                job.lease_expires_at = now + timedelta(seconds=get_settings().job_lease_seconds)
                session.add(job)
            return job
        app_session.job_id = None
    settings = get_settings()
    # the session's row is written once, at commit, not flushed ahead of the claim
    with session.no_autoflush:
        job = claim_for_session(
            session,
            app_session,
            limits=Limits.from_settings(settings),
            lease=timedelta(seconds=settings.job_lease_seconds),
        )
    if job is None and app_session.idle_since is None:
        app_session.idle_since = utcnow()
        session.add(app_session)
        signals.announce(session, signals.QUEUE)  # an idle session is capacity
    return job


# -- the job it holds -----------------------------------------------------------------


def _held(session: Session, runner: RunnerSession, job_id: int, attempt: int) -> Job:
    """The job, locked, if this session holds its current attempt.

    Raises:
        Conflict: ``stale_attempt``: the attempt is not (any longer) this session's.
    """
    job = session.get(Job, job_id, with_for_update=True) if 0 < job_id < 2**63 else None
    if job is None or job.session_id != runner.app_session.id:
        raise Conflict(f"This session does not hold job {job_id}.", code="stale_attempt")
    if job.attempt != attempt or job.state not in (
        JobState.starting.value,
        JobState.running.value,
    ):
        raise Conflict(
            f"Attempt {attempt} of job {job_id} is not current (the job is {job.state}, "
            f"attempt {job.attempt}).",
            code="stale_attempt",
        )
    return job


def job_document(session: Session, job: Job) -> dict[str, Any]:
    """The job as the runner needs it."""
    release = session.get(Release, job.release_id) if job.release_id else None
    manifest = json.loads(release.manifest) if release else {}
    procedure = (manifest.get("procedures") or {}).get(job.procedure) or {}
    case = session.get(Case, job.input_case_id) if job.input_case_id else None
    return {
        "job_id": job.id,
        "attempt": job.attempt,
        "procedure": job.procedure,
        "command": procedure.get("command"),
        "arguments": json.loads(job.arguments),
        "time_limit_s": job.time_limit_s,
        "input": {"id": case.id, "name": case.name, "size": case.size, "sha256": case.sha256}
        if case
        else None,
    }


def job_input(session: Session, *, runner: RunnerSession, job_id: int, attempt: int) -> Case:
    """The input case of the job the session holds.

    Raises:
        Conflict: ``stale_attempt``.
        NotFound: the job has no input case (or it was deleted).
    """
    job = _held(session, runner, job_id, attempt)
    case = session.get(Case, job.input_case_id) if job.input_case_id else None
    if case is None:
        raise NotFound(f"Job {job_id} has no input case.")
    return case


def job_started(session: Session, *, runner: RunnerSession, job_id: int, attempt: int) -> None:
    """The procedure has started: ``starting`` -> ``running``.

    Raises:
        Conflict: ``stale_attempt``.
    """
    now = utcnow()
    lease = now + timedelta(seconds=get_settings().job_lease_seconds)
    # the usual case in one fenced statement; a repeated report (already running) and
    # every refusal take the long way, which also says why
    row = _fenced(
        session,
        _started_statement(),
        runner,
        job_id,
        attempt,
        {"p_now": now, "p_lease": lease},
    )
    if row is not None:
        _moved(session, row, now, came_from=JobState.starting)
        return
    job = _held(session, runner, job_id, attempt)
    job.lease_expires_at = lease
    if job.state == JobState.starting.value:
        lifecycle.move_job(session, job, JobState.running)
    else:
        session.add(job)


def _fenced_update(states: tuple[str, ...], values: dict[str, Any]) -> Any:
    """``UPDATE jobs SET values WHERE`` the session holds the current attempt and the job
    is in one of ``states`` ``RETURNING`` what a state hook needs. The row's lock comes
    with the update, so no other writer can come between the check and the change."""
    table = Job.__table__  # type: ignore[attr-defined]
    c = table.c
    return (
        update(table)
        .where(
            c.id == bindparam("p_job_id"),
            # compared as an expression so that the row is always found by its key: with
            # old statistics the planner took the session's index and stepped through
            # every job the session ever ran
            func.coalesce(c.session_id, 0) == bindparam("p_session_id"),
            c.attempt == bindparam("p_attempt"),
            c.state.in_(states),
        )
        .values(**values)
        .returning(c.id, c.state, c.attempt, c.reason, c.exit_code, c.output_case_id, c.hook_url)
    )


@functools.cache
def _started_statement() -> Any:
    return _fenced_update(
        (JobState.starting.value,),
        {
            "state": JobState.running.value,
            "started_at": bindparam("p_now"),
            "lease_expires_at": bindparam("p_lease"),
            "updated_at": bindparam("p_now"),
        },
    )


@functools.cache
def _finish_statement(cancelled: bool) -> Any:
    table = Job.__table__  # type: ignore[attr-defined]
    cases_table = Case.__table__  # type: ignore[attr-defined]
    output = (
        select(cases_table.c.id)
        .where(
            cases_table.c.job_id == bindparam("p_job_id"),
            cases_table.c.attempt == bindparam("p_attempt"),
            cases_table.c.kind == CaseKind.output.value,
        )
        .order_by(cases_table.c.id.desc())
        .limit(1)
        .scalar_subquery()
    )
    reason: Any = bindparam("p_reason")
    if cancelled:  # a cancel that was asked for keeps who asked for it
        reason = case((table.c.cancel_requested, table.c.reason), else_=reason)
    return _fenced_update(
        (JobState.starting.value, JobState.running.value),
        {
            "state": bindparam("p_state"),
            "output_case_id": output,
            "exit_code": bindparam("p_exit_code"),
            "reason": reason,
            "finished_at": bindparam("p_now"),
            "lease_expires_at": None,
            "updated_at": bindparam("p_now"),
        },
    )


def _fenced(
    session: Session,
    statement: Any,
    runner: RunnerSession,
    job_id: int,
    attempt: int,
    values: dict[str, Any],
) -> Any:
    """Run a fenced update for the attempt; the job's hook fields, or None when this
    session does not hold that attempt (then nothing changed)."""
    if not 0 < job_id < 2**63:
        return None
    params = {"p_job_id": job_id, "p_session_id": runner.app_session.id, "p_attempt": attempt}
    return session.execute(statement, {**params, **values}).first()


def _moved(session: Session, row: Any, at: datetime, *, came_from: JobState | None = None) -> None:
    """What :func:`lifecycle.move_job` does besides the row, for a fenced update (the
    transitions these make are all allowed ones; none wakes the dispatcher)."""
    if row.hook_url:
        lifecycle.queue_hook(session, row, at)
    logger.info(
        "job %s attempt %d: %s-> %s",
        row.id,
        row.attempt,
        f"{came_from.value} " if came_from else "",
        row.state,
    )


def job_heartbeat(session: Session, *, runner: RunnerSession, job_id: int, attempt: int) -> bool:
    """Renew the attempt's lease; returns whether the job should be cancelled."""
    job = _held(session, runner, job_id, attempt)
    now = utcnow()
    job.lease_expires_at = now + timedelta(seconds=get_settings().job_lease_seconds)
    job.updated_at = now
    session.add(job)
    app_session = session.get(AppSession, runner.app_session.id)
    if app_session is not None:
        app_session.last_heartbeat_at = now
        session.add(app_session)
    return job.cancel_requested


def append_log(
    session: Session,
    *,
    runner: RunnerSession,
    job_id: int,
    attempt: int,
    lines: Iterable[tuple[str, str]],
) -> int:
    """Add ``(stream, text)`` lines to the attempt's log; returns how many were kept.

    Each attempt keeps at most ``job_log_max_bytes``; past that one line says the log
    was cut off and the rest is dropped (the job itself goes on).
    """
    job = _held(session, runner, job_id, attempt)
    batch = list(lines)
    if len(batch) > MAX_LOG_LINES:
        raise InvalidInput(f"At most {MAX_LOG_LINES} log lines per report.")
    for stream, _ in batch:
        if stream not in ("stdout", "stderr"):
            raise InvalidInput("A log line's stream is 'stdout' or 'stderr'.")
    limit = get_settings().job_log_max_bytes
    used = session.exec(
        select(func.coalesce(func.sum(func.length(JobLogChunk.text)), 0)).where(
            JobLogChunk.job_id == job.id, JobLogChunk.attempt == attempt
        )
    ).one()
    if used >= limit:
        return 0
    kept = 0
    # one row per run of lines of one stream: few rows, and the order of the lines holds
    runs: list[tuple[str, list[str]]] = []
    for stream, text in batch:
        line = text[:MAX_LINE]
        if used + len(line) > limit:
            runs.append(("stderr", ["[portal] the log was cut off here\n"]))
            used = limit
            break
        used += len(line)
        if runs and runs[-1][0] == stream:
            runs[-1][1].append(line)
        else:
            runs.append((stream, [line]))
        kept += 1
    for stream, texts in runs:
        session.add(
            JobLogChunk(job_id=job.id or 0, attempt=attempt, stream=stream, text="".join(texts))
        )
    return kept


def store_output(
    *,
    runner: RunnerSession,
    job_id: int,
    attempt: int,
    name: str,
    source: Readable | Iterable[bytes],
) -> Case:
    """Receive the output case of the attempt (streamed), bound to the job.

    The attempt is checked before the upload and again when it is recorded; an output of
    an attempt that went stale meanwhile is removed again.

    Raises:
        Conflict: ``stale_attempt``.
        TooLarge: the case exceeds the upload limit.
    """
    with session_scope() as session:
        job = _held(session, runner, job_id, attempt)
        owner, app_id = job.owner_id, job.app_id
    with session_scope() as session:
        case = cases.store_output_case(
            session,
            owner=owner,
            job_id=job_id,
            attempt=attempt,
            app_id=app_id,
            name=name,
            source=source,
        )
    try:
        with session_scope() as session:
            _held(session, runner, job_id, attempt)
    except Conflict:
        with session_scope() as session:
            cases.purge_cases(session, case_ids=[case.id or 0])
        raise
    return case


def finish_job(
    session: Session,
    *,
    runner: RunnerSession,
    job_id: int,
    attempt: int,
    outcome: str,
    exit_code: int | None = None,
    reason: str = "",
) -> Job | None:
    """Record how the attempt ended — once: the result of a job is written by exactly one
    attempt, the current one. Returns the session's next job, if it takes one at once.

    Raises:
        Conflict: ``stale_attempt``.
        InvalidInput: an unknown outcome.
    """
    try:
        state = JobState(outcome)
    except ValueError:
        state = None
    if state not in OUTCOMES:
        raise InvalidInput(
            "outcome must be one of " + ", ".join(sorted(s.value for s in OUTCOMES)) + "."
        )
    assert state is not None
    if state == JobState.succeeded:
        reason = ""
    elif not reason:
        reason = f"exit code {exit_code}" if exit_code is not None else state.value
    now = utcnow()
    statement = _finish_statement(state == JobState.cancelled)
    values = {
        "p_state": state.value,
        "p_exit_code": exit_code,
        "p_reason": reason[:500],
        "p_now": now,
    }
    row = _fenced(session, statement, runner, job_id, attempt, values)
    if row is None:
        _held(session, runner, job_id, attempt)  # says why: stale_attempt
        # it was held after all (changed between the two looks); now it is locked too
        row = _fenced(session, statement, runner, job_id, attempt, values)
        if row is None:
            raise Conflict(f"This session does not hold job {job_id}.", code="stale_attempt")
    # the dispatcher hears of it below, unless this session takes the next job itself
    _moved(session, row, now)

    # the session: free, and (when ready) its next job, in plain statements
    freed = session.execute(
        _free_session_statement(), {"p_id": runner.app_session.id, "p_now": now}
    ).first()
    if freed is None or freed.state != SessionState.ready.value:
        signals.announce(session, signals.QUEUE)
        return None
    job = None
    if freed.kind == SessionKind.solve.value:
        settings = get_settings()
        job = claim_next(
            session,
            session_id=runner.app_session.id or 0,
            owner_id=freed.owner_id,
            app_id=freed.app_id,
            release_id=freed.release_id,
            limits=Limits.from_settings(settings),
            lease=timedelta(seconds=settings.job_lease_seconds),
        )
    if job is not None:
        session.execute(_took_job_statement(), {"p_id": runner.app_session.id, "p_job": job.id})
    elif freed.idle_since is None:
        session.execute(_went_idle_statement(), {"p_id": runner.app_session.id, "p_now": now})
        signals.announce(session, signals.QUEUE)  # an idle session is capacity
    return job


# the statements of finish_job's second half, built once


@functools.cache
def _free_session_statement() -> Any:
    sessions = AppSession.__table__  # type: ignore[attr-defined]
    c = sessions.c
    return (
        update(sessions)
        .where(c.id == bindparam("p_id"))
        .values(job_id=None, last_heartbeat_at=bindparam("p_now"))
        .returning(c.kind, c.state, c.idle_since, c.owner_id, c.app_id, c.release_id)
    )


@functools.cache
def _took_job_statement() -> Any:
    sessions = AppSession.__table__  # type: ignore[attr-defined]
    return (
        update(sessions)
        .where(sessions.c.id == bindparam("p_id"))
        .values(job_id=bindparam("p_job"), idle_since=None)
    )


@functools.cache
def _went_idle_statement() -> Any:
    sessions = AppSession.__table__  # type: ignore[attr-defined]
    return (
        update(sessions)
        .where(sessions.c.id == bindparam("p_id"))
        .values(idle_since=bindparam("p_now"))
    )
