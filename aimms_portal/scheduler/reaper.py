"""The reaper: finds lost work and ended sessions, and cleans up after them.

Runs only in the leader, after every dispatch round. It looks for:

- jobs whose lease lapsed (no heartbeat): their session is stopped and the job goes
  back to the queue with its attempt raised, or fails (reason ``lost``) once its
  attempts are used up; a job whose cancel was asked for is cancelled instead;
- jobs running far past their time limit (the runner enforces the limit; this is the
  backstop when the runner cannot): stopped, ``timed_out``;
- sessions the launcher reports ended or unknown: recorded, their job re-queued;
- sessions that did not become ready in time, ready sessions that stopped
  heartbeating, warm sessions idle for too long, and sessions asked to stop;
- at the start of a leadership and every :data:`ORPHAN_INTERVAL` seconds: sessions the
  launcher runs that the database does not know as live (stopped), and sessions the
  database has as ``pending`` that the launcher did start (adopted).

Launcher calls are made outside units of work: they can be slow.
"""

from __future__ import annotations

import logging
import time
from datetime import datetime, timedelta

from sqlmodel import col, select

from aimms_portal.config import Settings
from aimms_portal.db import session_scope
from aimms_portal.launchers import Launcher, LauncherError, SessionStatus
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
from aimms_portal.scheduler import lifecycle
from aimms_portal.scheduler.dispatcher import (
    DESKTOP,
    end_session,
    log_tail,
    requeue_or_fail,
    stop_session,
)

logger = logging.getLogger(__name__)

#: Extra time past a job's limit before the portal itself stops it.
TIME_LIMIT_GRACE = timedelta(seconds=30)
#: How often the database is scanned for lost, overdue and idle work, in seconds.
SCAN_INTERVAL = 0.5
#: How often every live session is polled through the launcher, in seconds.
POLL_INTERVAL = 1.0
#: How often the launcher's sessions are compared with the database, in seconds.
ORPHAN_INTERVAL = 30.0


class Reaper:
    """The reaper of one leader; keeps the times of its periodic checks."""

    def __init__(self, launcher: Launcher, settings: Settings) -> None:
        self.launcher = launcher
        self.settings = settings
        self._last_poll = 0.0
        self._last_orphans = 0.0
        self._last_scan = 0.0
        #: When this leadership began: a session's silence counts from then at the
        #: earliest (see :meth:`became_leader`).
        self._leading_since: datetime | None = None

    def became_leader(self) -> None:
        """Check everything at once when leadership begins (e.g. after a restart).

        Heartbeats sent while no portal process ran (a restart of the only one, which
        with the production build takes longer than a lease) reached nobody: a ready
        session's silence counts from now, not from its last heartbeat, so a restart
        never ends the sessions that outlived it. A session that died meanwhile is found
        one lease later.
        """
        self._last_poll = 0.0
        self._last_orphans = 0.0
        self._last_scan = 0.0
        self._leading_since = utcnow()

    def reap_once(self) -> None:
        now = time.monotonic()
        # the leader's rounds follow every wake-up; the scans need not
        if now - self._last_scan < SCAN_INTERVAL:
            return
        self._last_scan = now
        self._expired_leases()
        self._past_time_limit()
        if now - self._last_orphans >= ORPHAN_INTERVAL:
            self._last_orphans = now
            self.reconcile()
        if now - self._last_poll >= POLL_INTERVAL:
            self._last_poll = now
            self._poll_sessions()
        self._overdue_sessions()

    # -- jobs --------------------------------------------------------------------

    def _expired_leases(self) -> None:
        now = utcnow()
        stops: list[tuple[int, str]] = []
        with session_scope() as session:
            jobs = session.exec(
                select(Job)
                .where(
                    col(Job.state).in_([s.value for s in ACTIVE_STATES]),
                    col(Job.lease_expires_at) < now,
                )
                .with_for_update(skip_locked=True)
            ).all()
            for job in jobs:
                seconds = self.settings.job_lease_seconds
                app_session = session.get(AppSession, job.session_id) if job.session_id else None
                if app_session is not None:
                    stops.append((app_session.id or 0, app_session.handle))
                    lifecycle.move_session(
                        session, app_session, SessionState.stopping, detail="lost its job's lease"
                    )
                requeue_or_fail(session, job, f"no heartbeat for {seconds:g} s")
        for session_id, handle in stops:
            stop_session(self.launcher, session_id, handle)

    def _past_time_limit(self) -> None:
        now = utcnow()
        stops: list[tuple[int, str]] = []
        with session_scope() as session:
            # a job that started within the grace cannot be past its limit and the grace
            running = session.exec(
                select(Job)
                .where(
                    Job.state == JobState.running.value,
                    col(Job.started_at) < now - TIME_LIMIT_GRACE,
                )
                .with_for_update(skip_locked=True)
            ).all()
            for job in running:
                assert job.started_at is not None
                limit = timedelta(seconds=job.time_limit_s)
                if job.started_at + limit + TIME_LIMIT_GRACE > now:
                    continue
                app_session = session.get(AppSession, job.session_id) if job.session_id else None
                lifecycle.note_in_log(
                    session, job, f"[portal] time limit of {job.time_limit_s} s passed; stopped"
                )
                lifecycle.move_job(
                    session, job, JobState.timed_out, reason=f"time limit {job.time_limit_s} s"
                )
                if app_session is not None:
                    lifecycle.move_session(
                        session,
                        app_session,
                        SessionState.stopping,
                        detail="job past its time limit",
                    )
                    stops.append((app_session.id or 0, app_session.handle))
        for session_id, handle in stops:
            stop_session(self.launcher, session_id, handle)

    # -- sessions ----------------------------------------------------------------

    def _live_sessions(self) -> list[AppSession]:
        with session_scope() as session:
            return list(
                session.exec(
                    select(AppSession).where(
                        col(AppSession.state).not_in([s.value for s in ENDED_SESSION_STATES]),
                        AppSession.launcher == self.launcher.kind,
                    )
                ).all()
            )

    def _poll_sessions(self) -> None:
        for app_session in self._live_sessions():
            if not app_session.handle:
                continue
            try:
                seen = self.launcher.poll(app_session.handle)
            except LauncherError as exc:
                logger.warning("cannot poll session %s: %s", app_session.id, exc.message)
                continue
            if seen.status == SessionStatus.running:
                self._record_usage(app_session.id or 0, seen.memory_bytes, seen.cpu_seconds)
                continue
            if seen.status == SessionStatus.exited:
                detail = f"the session ended (exit code {seen.exit_code})"
                if seen.exit_code is None:
                    detail = "the session ended" + (f": {seen.detail}" if seen.detail else "")
            else:
                detail = "the session is gone"
            # the log first: stopping frees what the session held, its log too
            tail = log_tail(self.launcher, app_session.handle)
            self._stop_quietly(app_session.handle)
            with session_scope() as session:
                current = session.get(AppSession, app_session.id, with_for_update=True)
                if current is not None:
                    asked = current.state == SessionState.stopping.value
                    end_session(
                        session,
                        current,
                        failed=not asked and seen.exit_code != 0,
                        detail=current.reason if asked else detail,
                        log_lines=tail,
                    )

    def _record_usage(self, session_id: int, memory: int | None, cpu: float | None) -> None:
        if memory is None and cpu is None:
            return
        with session_scope() as session:
            app_session = session.get(AppSession, session_id)
            if app_session is None:
                return
            if memory is not None:
                app_session.peak_memory_bytes = max(app_session.peak_memory_bytes or 0, memory)
            if cpu is not None:
                app_session.cpu_seconds = cpu
            session.add(app_session)

    def _overdue_sessions(self) -> None:
        """Sessions that did not start in time, stopped heartbeating, idled too long,
        outlived their maximum lifetime, or were asked to stop."""
        now = utcnow()
        stops: list[tuple[int, str, str, bool]] = []
        with session_scope() as session:
            for seen in session.exec(
                select(AppSession).where(
                    col(AppSession.state).not_in([s.value for s in ENDED_SESSION_STATES]),
                    col(AppSession.launcher).in_([self.launcher.kind, DESKTOP]),
                )
            ).all():
                if self._why_stop(seen, now) is None:
                    continue
                # lock only the sessions acted on: busy runners update theirs all the time
                app_session = session.exec(
                    select(AppSession)
                    .where(AppSession.id == seen.id)
                    .with_for_update(skip_locked=True)
                    .execution_options(populate_existing=True)
                ).first()
                verdict = self._why_stop(app_session, now) if app_session else None
                if app_session is None or verdict is None:
                    continue
                why, failed = verdict
                if app_session.state != SessionState.stopping.value:
                    lifecycle.move_session(session, app_session, SessionState.stopping, detail=why)
                stops.append((app_session.id or 0, app_session.handle, why, failed))
        for session_id, handle, why, failed in stops:
            stop_session(self.launcher, session_id, handle, detail=why, failed=failed)

    def _why_stop(self, app_session: AppSession, now: datetime) -> tuple[str, bool] | None:
        """Why the session must stop now, and whether that counts as a failure; or None."""
        settings = self.settings
        state, kind = app_session.state, app_session.kind
        if state == SessionState.stopping.value:
            return app_session.reason or "asked to stop", False
        if state in (SessionState.pending.value, SessionState.starting.value):
            timeout = settings.session_start_timeout_s
            if app_session.created_at + timedelta(seconds=timeout) < now:
                return f"not ready within {timeout:g} s of its start", True
            return None
        if state != SessionState.ready.value:
            return None
        silence = settings.job_lease_seconds
        heard = app_session.last_heartbeat_at or app_session.created_at
        if self._leading_since is not None:
            heard = max(heard, self._leading_since)
        if heard + timedelta(seconds=silence) < now:
            return f"no heartbeat for {silence:g} s", True
        if kind == SessionKind.solve.value:
            idle = settings.solve_idle_seconds
            since = app_session.idle_since
            if since is not None and since + timedelta(seconds=idle) < now:
                return f"idle for {idle:g} s", False
            return None
        lifetime = settings.webui_max_hours
        if app_session.created_at + timedelta(hours=lifetime) < now:
            return f"reached its longest lifetime of {lifetime:g} h", False
        if kind == SessionKind.webui.value:
            idle_minutes = settings.webui_idle_minutes
            active = app_session.last_activity_at or app_session.ready_at or app_session.created_at
            if active + timedelta(minutes=idle_minutes) < now:
                return f"idle for {idle_minutes:g} minutes", False
        return None

    def reconcile(self) -> None:
        """Make the launcher's sessions and the database's live sessions agree."""
        try:
            running = self.launcher.list_sessions()
        except LauncherError as exc:
            logger.warning("cannot list the launcher's sessions: %s", exc.message)
            return
        known = {s.id: s for s in self._live_sessions()}
        for session_id, handle in running.items():
            app_session = known.get(session_id)
            if app_session is None:
                logger.info("stopping session %s: the portal does not know it", session_id)
                self._stop_quietly(handle)
                continue
            if app_session.handle == handle:
                self.launcher.adopt(handle)
                continue
            if app_session.handle:
                # the database names another process for this session: this one is stray
                self._stop_quietly(handle)
                continue
            with session_scope() as session:
                current = session.get(AppSession, session_id, with_for_update=True)
                if current is not None and not current.handle:
                    current.handle = handle
                    session.add(current)
                    lifecycle.move_session(
                        session, current, SessionState.starting, detail="adopted"
                    )
                    logger.info("adopted session %s", session_id)

    def _stop_quietly(self, handle: str) -> None:
        try:
            self.launcher.stop(handle)
        except LauncherError as exc:
            logger.warning("cannot stop a stray session: %s", exc.message)
