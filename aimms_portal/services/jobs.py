"""Solve jobs as users see them: submit, list, show, cancel, delete, read the log.

A job runs one named procedure of an app's release on an input case, in a solve session
(see :mod:`aimms_portal.scheduler`). Jobs are private to their owner; admins see and
act on every job. Another user's job id answers as not found.

Rules at submission:

- the run right on the app; a hidden release only for the app's writers;
- the procedure must be one the release's manifest names;
- the input case must be the submitter's own (an admin may use any);
- ``priority`` from -100 to 100, default 0; only admins may go above 0 (users may only
  lower theirs);
- ``time_limit_s`` at most the release's ``resources.time_limit_s`` (else the portal's
  default) for users, which is also the default; admins may ask for up to a week;
- ``start_at`` in the future makes the job ``scheduled`` until then (at most a year);
- ``arguments``: a JSON object of at most 64 KiB, handed to the procedure as a file;
- ``hook_url``: an ``http://`` or ``https://`` address that receives a signed POST on
  every state change (see :mod:`aimms_portal.scheduler.hooks`).
"""

from __future__ import annotations

import ipaddress
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import delete, func
from sqlmodel import Session, col, select

from aimms_portal.config import get_settings
from aimms_portal.errors import Conflict, InvalidInput, NotFound
from aimms_portal.models import (
    FINISHED_STATES,
    App,
    Case,
    Job,
    JobLogChunk,
    JobState,
    User,
    utcnow,
)
from aimms_portal.scheduler import hooks, lifecycle, signals
from aimms_portal.services import apps, audit, cases
from aimms_portal.services.pagination import Page, paginate
from aimms_portal.storage import get_storage

logger = logging.getLogger(__name__)

PRIORITY_RANGE = (-100, 100)
MAX_ARGUMENTS_BYTES = 64 * 1024
#: The longest time limit anyone (an admin too) may ask for: a week.
ABSOLUTE_MAX_TIME_LIMIT_S = 7 * 24 * 3600
MAX_START_DELAY = timedelta(days=366)
#: Most log chunks one call returns.
LOG_PAGE = 1000
#: Most jobs one bulk delete removes.
BULK_LIMIT = 10_000


@dataclass(frozen=True)
class JobView:
    """A job with the names a caller wants to see next to it."""

    job: Job
    app_name: str
    owner_name: str

    @property
    def hook_secret(self) -> str | None:
        return lifecycle.hook_secret(self.job.id or 0) if self.job.hook_url else None


def submit_job(
    session: Session,
    *,
    actor: User,
    app: str,
    procedure: str,
    version: str | None = None,
    input_case_id: int | None = None,
    arguments: dict | None = None,
    priority: int = 0,
    time_limit_s: int | None = None,
    start_at: datetime | None = None,
    hook_url: str | None = None,
) -> JobView:
    """Queue a job (or schedule it for ``start_at``). See the module docstring for rules.

    Raises:
        NotFound: no such app or release (for this actor), or no such input case.
        PermissionDenied: no run right on the app.
        InvalidInput: unknown procedure, or a value outside its rule (the message says).
    """
    app_row, release = apps.resolve_launch(session, actor=actor, name=app, version=version)
    manifest = json.loads(release.manifest)
    procedures = manifest.get("procedures") or {}
    if procedure not in procedures:
        known = ", ".join(sorted(procedures)) or "none"
        raise InvalidInput(
            f"{app_row.name} {release.version} has no procedure {procedure[:64]!r} "
            f"(it has: {known}).",
            code="unknown_procedure",
        )
    settings = get_settings()
    priority = _checked_priority(actor, priority)
    limit = _checked_time_limit(actor, time_limit_s, manifest, settings.job_default_time_limit_s)
    args_text = _checked_arguments(arguments)
    start_at = _checked_start(start_at)
    hook = _checked_hook_url(hook_url)

    input_case = None
    if input_case_id is not None:
        input_case = cases.get_case(session, actor=actor, case_id=input_case_id)

    job = Job(
        owner_id=actor.id or 0,
        app_id=app_row.id or 0,
        release_id=release.id,
        version=release.version,
        procedure=procedure,
        input_case_id=input_case.id if input_case else None,
        arguments=args_text,
        priority=priority,
        time_limit_s=limit,
        start_at=start_at,
        state=JobState.scheduled.value if start_at else JobState.queued.value,
        max_attempts=settings.job_max_attempts,
        hook_url=hook,
    )
    session.add(job)
    session.flush()
    if input_case is not None and input_case.job_id is None and input_case.kind == "input":
        # an input case goes with its first job (retention, delete); saved data never
        input_case.job_id = job.id
        session.add(input_case)
    if hook:
        lifecycle.queue_hook(session, job)
    signals.announce(session, signals.QUEUE)
    logger.info(
        "job %s submitted by %s: %s %s %s",
        job.id,
        actor.username,
        app_row.name,
        release.version,
        procedure,
    )
    return JobView(job, app_row.name, actor.username)


def _checked_priority(actor: User, priority: int) -> int:
    low, high = PRIORITY_RANGE
    if not low <= priority <= high:
        raise InvalidInput(f"priority must be between {low} and {high}.", code="invalid_priority")
    if priority > 0 and not actor.is_admin:
        raise InvalidInput(
            "Only admins may raise a job's priority above 0; you may lower it.",
            code="invalid_priority",
        )
    return priority


def _checked_time_limit(actor: User, asked: int | None, manifest: dict, default: int) -> int:
    release_limit = (manifest.get("resources") or {}).get("time_limit_s") or default
    if asked is None:
        return int(release_limit)
    ceiling = ABSOLUTE_MAX_TIME_LIMIT_S if actor.is_admin else int(release_limit)
    if not 1 <= asked <= ceiling:
        raise InvalidInput(
            f"time_limit_s must be between 1 and {ceiling} seconds"
            + ("" if actor.is_admin else " (the app's limit)")
            + ".",
            code="invalid_time_limit",
        )
    return asked


def _checked_arguments(arguments: dict | None) -> str:
    if arguments is None:
        return "{}"
    if not isinstance(arguments, dict):
        raise InvalidInput("arguments must be a JSON object.", code="invalid_arguments")
    try:
        text = json.dumps(arguments, allow_nan=False, sort_keys=True)
    except (TypeError, ValueError) as exc:
        raise InvalidInput(
            f"arguments are not valid JSON: {exc}", code="invalid_arguments"
        ) from exc
    if len(text.encode()) > MAX_ARGUMENTS_BYTES:
        raise InvalidInput(
            f"arguments may take at most {MAX_ARGUMENTS_BYTES // 1024} KiB as JSON.",
            code="invalid_arguments",
        )
    return text


def _checked_start(start_at: datetime | None) -> datetime | None:
    if start_at is None:
        return None
    if start_at.tzinfo is None:
        raise InvalidInput(
            "start_at needs a time zone, e.g. 2026-12-24T18:00:00Z.", code="invalid_start"
        )
    now = utcnow()
    if start_at <= now:
        return None  # a start time that has come means: now
    if start_at > now + MAX_START_DELAY:
        raise InvalidInput("start_at may be at most a year ahead.", code="invalid_start")
    return start_at


def _checked_hook_url(url: str | None) -> str:
    if not url:
        return ""
    problem = ""
    if len(url) > 2000:
        problem = "is longer than 2,000 characters"
    else:
        try:
            parts = urlsplit(url)
        except ValueError:
            parts = None
        if parts is None or parts.scheme not in ("http", "https"):
            problem = "must start with http:// or https://"
        elif not parts.hostname:
            problem = "names no host"
        elif parts.username or parts.password:
            problem = "must not carry a user name or password"
        elif not get_settings().hooks_may_reach_private_addresses and _private(parts.hostname):
            problem = "names an address that is not public (hooks go to public addresses only)"
    if problem:
        raise InvalidInput(f"The state hook URL {problem}.", code="invalid_hook_url")
    return url


def _private(host: str) -> bool:
    """``host`` is an address that hooks may not reach (a name is checked when a hook is
    sent: what it resolves to may change until then)."""
    try:
        return not hooks.public(ipaddress.ip_address(host))
    except ValueError:
        return False


# -- reading -------------------------------------------------------------------------


def _visible(session: Session, actor: User, job_id: int) -> Job:
    job = session.get(Job, job_id) if 0 < job_id < 2**63 else None
    if job is None or (job.owner_id != actor.id and not actor.is_admin):
        raise NotFound(f"No job {job_id}.")
    return job


def _views(session: Session, jobs: list[Job]) -> list[JobView]:
    app_ids = {j.app_id for j in jobs}
    owner_ids = {j.owner_id for j in jobs}
    app_names = (
        dict(session.exec(select(App.id, App.name).where(col(App.id).in_(app_ids))).all())
        if app_ids
        else {}
    )
    owner_names = (
        dict(session.exec(select(User.id, User.username).where(col(User.id).in_(owner_ids))).all())
        if owner_ids
        else {}
    )
    return [
        JobView(j, app_names.get(j.app_id, "?"), owner_names.get(j.owner_id, "?")) for j in jobs
    ]


def get_job(session: Session, *, actor: User, job_id: int) -> JobView:
    """One job of the actor's (any job for admins).

    Raises:
        NotFound: no such job, or another user's.
    """
    return _views(session, [_visible(session, actor, job_id)])[0]


def list_jobs(
    session: Session,
    *,
    actor: User,
    limit: int,
    offset: int,
    state: str | None = None,
    app: str | None = None,
    all_users: bool = False,
) -> Page[JobView]:
    """The actor's jobs, newest first; every user's for an admin who asks for all.

    ``state`` is one job state, or ``active`` (scheduled to running) or ``finished``.
    """
    statement = select(Job)
    if not (all_users and actor.is_admin):
        statement = statement.where(Job.owner_id == actor.id)
    statement = _filtered(session, statement, state=state, app=app)
    page = paginate(session, statement.order_by(col(Job.id).desc()), limit=limit, offset=offset)
    return Page(_views(session, page.items), page.total, page.limit, page.offset)


def _states(state: str) -> list[str]:
    if state == "finished":
        return [s.value for s in FINISHED_STATES]
    if state == "active":
        return [s.value for s in JobState if s not in FINISHED_STATES]
    try:
        return [JobState(state).value]
    except ValueError:
        known = ", ".join([s.value for s in JobState] + ["active", "finished"])
        raise InvalidInput(f"Unknown job state {state[:32]!r}; use one of {known}.") from None


def _filtered(session: Session, statement: Any, *, state: str | None, app: str | None) -> Any:
    if state:
        statement = statement.where(col(Job.state).in_(_states(state)))
    if app:
        app_id = session.exec(select(App.id).where(App.name == app.strip().lower())).first()
        statement = statement.where(Job.app_id == (app_id or -1))
    return statement


def job_log(
    session: Session, *, actor: User, job_id: int, after: int = 0, limit: int = LOG_PAGE
) -> list[JobLogChunk]:
    """The job's log chunks after chunk id ``after``, oldest first (every attempt's)."""
    job = _visible(session, actor, job_id)
    return list(
        session.exec(
            select(JobLogChunk)
            .where(JobLogChunk.job_id == job.id, col(JobLogChunk.id) > after)
            .order_by(col(JobLogChunk.id))
            .limit(max(1, min(limit, LOG_PAGE)))
        ).all()
    )


# -- changing ------------------------------------------------------------------------


def cancel_job(session: Session, *, actor: User, job_id: int, source_ip: str = "") -> JobView:
    """Cancel a job: at once if it waits; a running one is stopped by its session
    (within about a heartbeat) and then recorded as cancelled.

    Raises:
        NotFound: no such job (for this actor).
        Conflict: the job has finished already.
    """
    job = _visible(session, actor, job_id)
    session.refresh(job, with_for_update=True)
    if job.state in {s.value for s in FINISHED_STATES}:
        raise Conflict(f"Job {job.id} has {job.state} already.", code="job_finished")
    if job.owner_id != actor.id:
        audit.record(
            session,
            action="job.cancel",
            actor=actor,
            target_type="job",
            target_id=job.id or "",
            target_name=f"job {job.id}",
            source_ip=source_ip,
        )
    if job.state in (JobState.scheduled.value, JobState.queued.value):
        lifecycle.move_job(
            session, job, JobState.cancelled, reason=f"cancelled by {actor.username}"
        )
    else:
        job.cancel_requested = True
        job.reason = f"cancelled by {actor.username}"
        session.add(job)
        if job.session_id:
            signals.announce(session, signals.session_channel(job.session_id))
    return get_job(session, actor=actor, job_id=job_id)


def delete_job(session: Session, *, actor: User, job_id: int, source_ip: str = "") -> None:
    """Delete a finished job with its log and the cases that came with it.

    Raises:
        NotFound: no such job (for this actor).
        Conflict: the job has not finished (cancel it first).
    """
    job = _visible(session, actor, job_id)
    if job.state not in {s.value for s in FINISHED_STATES}:
        raise Conflict(
            f"Job {job.id} is {job.state}; cancel it before deleting it.", code="job_active"
        )
    _delete_jobs(session, [job.id or 0])
    if job.owner_id != actor.id:
        audit.record(
            session,
            action="job.delete",
            actor=actor,
            target_type="job",
            target_id=job.id or "",
            target_name=f"job {job.id}",
            source_ip=source_ip,
        )


def delete_jobs(
    session: Session,
    *,
    actor: User,
    job_ids: list[int] | None = None,
    state: str | None = None,
    app: str | None = None,
    all_users: bool = False,
    source_ip: str = "",
) -> int:
    """Delete finished jobs in bulk: the given ids, or every finished job matching the
    filters (the actor's own; everyone's for an admin asking for all). Jobs that have
    not finished are left alone. Returns how many were deleted.

    A handful of statements whatever the number of jobs: it stays fast for thousands.
    """
    statement = select(Job.id).where(col(Job.state).in_([s.value for s in FINISHED_STATES]))
    if not (all_users and actor.is_admin):
        statement = statement.where(Job.owner_id == actor.id)
    if job_ids is not None:
        if len(job_ids) > BULK_LIMIT:
            raise InvalidInput(f"At most {BULK_LIMIT} jobs at once.")
        statement = statement.where(col(Job.id).in_(job_ids))
    statement = _filtered(session, statement, state=state, app=app)
    ids = list(session.exec(statement.limit(BULK_LIMIT)).all())
    removed = _delete_jobs(session, [i for i in ids if i is not None])
    if removed and (all_users and actor.is_admin):
        audit.record(
            session,
            action="job.delete",
            actor=actor,
            target_type="job",
            target_name=f"{removed} jobs",
            source_ip=source_ip,
        )
    return removed


def _delete_jobs(session: Session, ids: list[int]) -> int:
    """Delete jobs, their logs, hooks and the cases bound to them; objects after commit."""
    if not ids:
        return 0
    bound = list(
        session.exec(select(Case.id, Case.storage_key).where(col(Case.job_id).in_(ids))).all()
    )
    outputs = list(
        session.exec(
            select(Job.output_case_id).where(
                col(Job.id).in_(ids), col(Job.output_case_id).is_not(None)
            )
        ).all()
    )
    case_ids = {cid for cid, _ in bound} | {cid for cid in outputs if cid is not None}
    keys = [key for _, key in bound]
    extra = case_ids - {cid for cid, _ in bound}
    if extra:
        keys += list(session.exec(select(Case.storage_key).where(col(Case.id).in_(extra))).all())
    session.execute(delete(JobLogChunk).where(col(JobLogChunk.job_id).in_(ids)))
    session.execute(delete(Job).where(col(Job.id).in_(ids)))
    if case_ids:
        session.execute(delete(Case).where(col(Case.id).in_(case_ids)))
    session.commit()
    # the rows are gone for good; an object left by a failed delete is only space
    storage = get_storage()
    for key in keys:
        try:
            storage.delete(key)
        except Exception:  # the rows were the truth; log and go on
            logger.warning("could not delete stored case %s", key)
    return len(ids)


def purge_finished(session: Session, *, retention_days: int) -> int:
    """Delete jobs that finished more than ``retention_days`` ago (and their cases)."""
    cutoff = utcnow() - timedelta(days=retention_days)
    ids = list(
        session.exec(
            select(Job.id)
            .where(
                col(Job.state).in_([s.value for s in FINISHED_STATES]),
                col(Job.finished_at) < cutoff,
            )
            .limit(BULK_LIMIT)
        ).all()
    )
    removed = _delete_jobs(session, [i for i in ids if i is not None])
    if removed:
        logger.info("retention: deleted %d finished jobs", removed)
    return removed


def counts_by_state(session: Session, *, actor: User, all_users: bool = False) -> dict[str, int]:
    """How many of the actor's jobs (everyone's for an admin asking) are in each state."""
    statement = select(Job.state, func.count()).group_by(Job.state)  # type: ignore[arg-type]
    if not (all_users and actor.is_admin):
        statement = statement.where(Job.owner_id == actor.id)
    return {state: count for state, count in session.exec(statement).all()}
