"""Dispatch: give queued jobs a solve session, warm or new, within the capacity limits.

Runs only in the leader (see :mod:`aimms_portal.scheduler.service`). One round:

1. scheduled jobs whose time has come join the queue;
2. the head of the queue is walked in order; each job the per-user and per-app limits
   admit (counted under the claim locks of its user and app, see
   :func:`~aimms_portal.scheduler.queue.hold_claims`) goes to an idle (warm) session of
   its release and user, or else to a new session while the session limit allows; when
   the limit is reached and some sessions are idle (warm for other releases or users),
   the longest idle one is stopped to make room;
3. after the unit of work has committed, new sessions are started by the launcher.

A crash between 2 and 3 leaves sessions in ``pending`` without a handle; the reaper
finds them (adopting any that the launcher did start) and puts their jobs back.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session, col, select

from aimms_portal.config import Settings
from aimms_portal.db import session_scope
from aimms_portal.launchers import Launcher, LauncherError, SessionSpec
from aimms_portal.models import (
    AppSession,
    Job,
    JobState,
    Release,
    SessionKind,
    SessionState,
)
from aimms_portal.scheduler import lifecycle, signals
from aimms_portal.scheduler.queue import (
    Limits,
    Load,
    active_jobs,
    assign,
    current_load,
    hold_claims,
    lock_queued,
    promote_due,
    queued_candidates,
)

logger = logging.getLogger(__name__)

#: Environment variable naming the folder where local sessions cache runtimes.
ENV_RUNTIME_CACHE = "AIMMS_PORTAL_RUNTIME_CACHE"
#: The ``launcher`` of sessions that run on their user's own computer (no launcher).
DESKTOP = "desktop"


@dataclass(frozen=True)
class _Start:
    session_id: int
    spec: SessionSpec


def session_spec(
    settings: Settings, app_session: AppSession, token: str, release: Release, launcher: Launcher
) -> SessionSpec:
    """What the launcher needs to start ``app_session`` (resource hints from the release)."""
    resources = json.loads(release.manifest).get("resources") or {}
    limit = resources.get("time_limit_s") or settings.job_default_time_limit_s
    extra = {}
    if launcher.kind == "local":
        extra[ENV_RUNTIME_CACHE] = str(settings.resolved_runtime_cache_dir)
    return SessionSpec(
        session_id=app_session.id or 0,
        kind=app_session.kind,
        portal_url=settings.resolved_runner_portal_url,
        token=token,
        cpu=resources.get("cpu"),
        memory_mb=resources.get("memory_mb"),
        # a backstop per process: the runner itself enforces each job's wall-clock limit
        cpu_time_s=max(limit, settings.job_max_time_limit_s)
        if app_session.kind == "solve"
        else None,
        extra_env=extra,
    )


def dispatch_once(launcher: Launcher, settings: Settings) -> int:
    """One dispatch round; returns how many jobs were handed to a session."""
    limits = Limits.from_settings(settings)
    lease = timedelta(seconds=settings.job_lease_seconds)
    starts: list[_Start] = []
    to_stop: list[tuple[int, str]] = []
    assigned = 0
    with session_scope() as session:
        promote_due(session)
        load = current_load(session)
        releases: dict[int, Release] = {}
        held: set[tuple[int, int]] = set()
        busy = False
        for candidate in queued_candidates(session, lock=False):
            if not load.allows(candidate, limits):
                continue
            if (candidate.owner_id, candidate.app_id) not in held:
                if not _hold(session, candidate, load, limits):
                    busy = True  # a session is claiming for this user or app right now
                    continue
                held.add((candidate.owner_id, candidate.app_id))
                if not load.allows(candidate, limits):
                    continue
            # lock only the jobs handed out: sessions claiming their next job skip them
            job = lock_queued(session, candidate.id or 0)
            if job is None:
                continue
            if job.release_id is None:  # its release was deleted while it waited
                lifecycle.move_job(session, job, JobState.failed, reason="the release was deleted")
                continue
            warm = _warm_session(session, job)
            if warm is not None:
                assign(session, job, warm, lease=lease)
            elif load.live_sessions < limits.sessions:
                release = releases.get(job.release_id) or session.get(Release, job.release_id)
                if release is None:
                    lifecycle.move_job(
                        session, job, JobState.failed, reason="the release was deleted"
                    )
                    continue
                releases[job.release_id] = release
                app_session, token = lifecycle.open_session(
                    session,
                    kind=SessionKind.solve.value,
                    owner_id=job.owner_id,
                    app_id=job.app_id,
                    release_id=job.release_id,
                    launcher=launcher.kind,
                    lifetime=timedelta(seconds=settings.job_max_time_limit_s * 2 + 3600),
                )
                app_session.version = release.version
                assign(session, job, app_session, lease=lease)
                starts.append(
                    _Start(
                        app_session.id or 0,
                        session_spec(settings, app_session, token, release, launcher),
                    )
                )
                load.live_sessions += 1
            else:
                idle = _longest_idle(session)
                if idle is None:
                    continue
                lifecycle.move_session(
                    session, idle, SessionState.stopping, detail="making room for another job"
                )
                to_stop.append((idle.id or 0, idle.handle))
                continue
            load.take(job)
            assigned += 1
        if busy:  # another round right after this one commits, not a poll later
            signals.announce(session, signals.QUEUE)

    for start in starts:
        _start(launcher, start)
    for session_id, handle in to_stop:
        stop_session(launcher, session_id, handle)
    return assigned


def _hold(session: Session, job: Job, load: Load, limits: Limits) -> bool:
    """Hold the claim locks of ``job``'s user and app without waiting, and count their
    jobs in progress afresh (the round's first count may miss a claim committed since);
    False if another claimer holds them."""
    if not hold_claims(
        session, owner_id=job.owner_id, app_id=job.app_id, limits=limits, wait=False
    ):
        return False
    load.by_user[job.owner_id] = active_jobs(session, owner_id=job.owner_id)
    load.by_app[job.app_id] = active_jobs(session, app_id=job.app_id)
    return True


def _warm_session(session: Session, job: Job) -> AppSession | None:
    return session.exec(
        select(AppSession)
        .where(
            AppSession.kind == SessionKind.solve.value,
            AppSession.state == SessionState.ready.value,
            col(AppSession.idle_since).is_not(None),
            col(AppSession.job_id).is_(None),
            AppSession.release_id == job.release_id,
            AppSession.owner_id == job.owner_id,
        )
        .order_by(col(AppSession.idle_since).desc())
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()


def _longest_idle(session: Session) -> AppSession | None:
    # an idle session that could run the job would have been found as warm before
    return session.exec(
        select(AppSession)
        .where(
            AppSession.kind == SessionKind.solve.value,
            AppSession.state == SessionState.ready.value,
            col(AppSession.idle_since).is_not(None),
            col(AppSession.job_id).is_(None),
        )
        .order_by(col(AppSession.idle_since))
        .limit(1)
        .with_for_update(skip_locked=True)
    ).first()


def _start(launcher: Launcher, start: _Start) -> None:
    """Start one new session; a failure ends the session and puts its job back."""
    try:
        handle = launcher.start(start.spec)
    except LauncherError as exc:
        logger.warning("session %s did not start: %s", start.session_id, exc.message)
        with session_scope() as session:
            app_session = session.get(AppSession, start.session_id)
            if app_session is not None:
                end_session(session, app_session, failed=True, detail=exc.message)
        return
    with session_scope() as session:
        app_session = session.get(AppSession, start.session_id, with_for_update=True)
        if app_session is None:
            launcher.stop(handle)
            return
        app_session.handle = handle
        session.add(app_session)
        if app_session.state == SessionState.pending.value:
            lifecycle.move_session(session, app_session, SessionState.starting)
        # it may be ready already; or it ended while the launcher started it
        stop_later = app_session.state in (
            SessionState.stopping.value,
            SessionState.stopped.value,
            SessionState.failed.value,
        )
    if stop_later:
        launcher.stop(handle)


def end_session(
    session: Session,
    app_session: AppSession,
    *,
    failed: bool,
    detail: str,
    log_lines: list[str] | None = None,
) -> None:
    """Mark a session ended; a job still in it was lost: back to the queue (or failed).

    The job's fencing number keeps the ended session from reporting for it any more.
    ``log_lines`` (the end of its log) are kept with the session.
    """
    if log_lines:
        app_session.log_tail = "\n".join(log_lines)[-LOG_TAIL_CHARS:]
    job = session.get(Job, app_session.job_id, with_for_update=True) if app_session.job_id else None
    lifecycle.move_session(
        session, app_session, SessionState.failed if failed else SessionState.stopped, detail=detail
    )
    active = job is not None and job.state in (JobState.starting.value, JobState.running.value)
    if job is not None and active and job.session_id == app_session.id:
        requeue_or_fail(session, job, f"lost: {detail}")


def requeue_or_fail(session: Session, job: Job, reason: str) -> None:
    """Put a job whose attempt was lost back into the queue, or fail it when none is left.

    A job whose cancel was asked for is cancelled instead.
    """
    if job.cancel_requested:
        lifecycle.note_in_log(session, job, f"[portal] cancelled ({reason})")
        lifecycle.move_job(session, job, JobState.cancelled, reason=job.reason or "cancelled")
        return
    if job.attempt >= job.max_attempts:
        lifecycle.note_in_log(
            session, job, f"[portal] attempt {job.attempt} {reason}; no attempt left"
        )
        lifecycle.move_job(session, job, JobState.failed, reason=reason[:480] or "lost")
        return
    lifecycle.note_in_log(session, job, f"[portal] attempt {job.attempt} {reason}; queued again")
    lifecycle.move_job(session, job, JobState.queued, reason=reason)


def stop_session(
    launcher: Launcher, session_id: int, handle: str, *, detail: str = "", failed: bool = False
) -> None:
    """Stop a session through its launcher and record that it ended (with the last
    lines of its log, which go with it); ``failed`` when it ended by a fault."""
    tail: list[str] = []
    if handle:
        tail = log_tail(launcher, handle)
        try:
            launcher.stop(handle)
        except LauncherError as exc:
            logger.warning("session %s did not stop: %s", session_id, exc.message)
            return
    with session_scope() as session:
        app_session = session.get(AppSession, session_id, with_for_update=True)
        if app_session is not None:
            end_session(
                session,
                app_session,
                failed=failed,
                detail=detail or app_session.reason,
                log_lines=tail,
            )


#: How much of a session's log is kept once it has ended.
LOG_TAIL_LINES = 200
LOG_TAIL_CHARS = 64 * 1024


def log_tail(launcher: Launcher, handle: str) -> list[str]:
    """The last lines of a session's log, or none when the launcher cannot tell."""
    try:
        return launcher.logs(handle, tail=LOG_TAIL_LINES)
    except LauncherError:
        return []
