"""App sessions as users see them: launch a WebUI or desktop session, list, show,
terminate, read the log and the timeline, export; and the proxy's rights check.

A session is private to its owner; admins see and end every session. Another user's
session id answers as not found, everywhere (the proxy too).

Seats: a user may hold ``max_sessions_per_user`` WebUI and desktop sessions at once, and
the launcher runs at most ``max_webui_sessions`` WebUI sessions in all; a session that
is stopping no longer holds its seat. When none is free, the launch is refused and the
message says which limit was reached and what to do.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, text, update
from sqlmodel import Session, col, select
from sqlmodel.sql.expression import SelectOfScalar

from aimms_portal.config import get_settings
from aimms_portal.db import session_scope
from aimms_portal.errors import Conflict, Gone, InvalidInput, NotFound, PermissionDenied
from aimms_portal.launchers import LauncherError, get_launcher
from aimms_portal.models import (
    ENDED_SESSION_STATES,
    App,
    AppSession,
    RuntimeVersion,
    SessionEvent,
    SessionKind,
    SessionState,
    User,
    utcnow,
)
from aimms_portal.scheduler import lifecycle
from aimms_portal.scheduler.dispatcher import (
    DESKTOP,
    ENV_RUNTIME_CACHE,
    end_session,
    stop_session,
)
from aimms_portal.services import apps, audit, signing_keys
from aimms_portal.services.pagination import Page, paginate
from aimms_portal.storage import get_storage

logger = logging.getLogger(__name__)

#: Sessions that hold a seat (a stopping one has given it back).
SEATED_STATES = (SessionState.pending.value, SessionState.starting.value, SessionState.ready.value)
#: Activity is written at most this often per session (the proxy sees every request).
ACTIVITY_WRITE_INTERVAL = timedelta(seconds=30)
#: Any number: the key of PostgreSQL's advisory lock that serializes seat counting.
_SEAT_LOCK = 4_711_001
#: How much longer a session's token lasts than the session may: the reaper ends a
#: session at its longest lifetime and says so, before its runner finds its token expired
#: and ends it without that reason.
TOKEN_GRACE = timedelta(minutes=10)

#: Called with a session's id once it is being ended in this process (see
#: :func:`on_ending`).
_ending_callbacks: list[Callable[[int], None]] = []


def on_ending(callback: Callable[[int], None]) -> None:
    """Call ``callback(session_id)`` whenever this process starts ending a session
    (:func:`terminate_session`), as soon as that is committed: the proxy forgets who it
    let through to that session. It may be called from any thread."""
    _ending_callbacks.append(callback)


@dataclass(frozen=True)
class SessionView:
    """A session with the names a caller wants to see next to it."""

    session: AppSession
    app_name: str
    owner_name: str

    @property
    def url(self) -> str | None:
        """Where the browser opens a WebUI session (through the proxy)."""
        if self.session.kind != SessionKind.webui.value:
            return None
        return proxy_path(self.session.id or 0)


def proxy_path(session_id: int) -> str:
    """The path prefix under which the proxy serves a WebUI session."""
    return f"/s/{session_id}/"


# -- launching ---------------------------------------------------------------------------


def launch_session(
    *,
    actor: User,
    app: str,
    version: str | None = None,
    kind: str = SessionKind.webui.value,
) -> tuple[SessionView, str | None]:
    """Launch a WebUI session (started by the launcher) or register a desktop one.

    Returns the session and, for a desktop session only, its token (shown once: the
    user's own computer runs the app with it). A WebUI session comes back ``starting``;
    it is ``ready`` once its app answers, or ``failed`` with the reason.

    Raises:
        NotFound: no such app or release for this actor (hidden releases count as
            missing for non-writers).
        PermissionDenied: no run right; or a desktop session of an encrypted release
            where the portal does not allow that.
        InvalidInput: ``no_webui``: the release has no WebUI; ``runtime_untrusted``: its
            runtime's signing key is no longer trusted; ``runtime_missing``: its
            runtime's package is not in storage.
        Conflict: ``no_free_seats``: a seat limit is reached (the message says which).
        LauncherError: the launcher could not start the session (it is recorded as
            failed with the reason).
    """
    if kind not in (SessionKind.webui.value, SessionKind.desktop.value):
        raise InvalidInput("A session you launch is 'webui' or 'desktop'.")
    settings = get_settings()
    launcher = get_launcher() if kind == SessionKind.webui.value else None
    with session_scope() as session:
        app_row, release = apps.resolve_launch(session, actor=actor, name=app, version=version)
        manifest = json.loads(release.manifest)
        if not (manifest.get("webui") or {}).get("command"):
            raise InvalidInput(
                f"{app_row.name} {release.version} has no WebUI to open.", code="no_webui"
            )
        if (
            kind == SessionKind.desktop.value
            and release.encrypted
            and not settings.desktop_encrypted
        ):
            raise PermissionDenied(
                f"{app_row.name} {release.version} is encrypted and this portal does not hand "
                "encrypted apps to computers of its users; open it in the browser instead.",
                code="encrypted_release",
            )
        runtime = session.get(RuntimeVersion, release.runtime_version_id)
        if runtime is None or signing_keys.trusted_key(session, runtime.signer_fingerprint) is None:
            raise InvalidInput(
                f"The runtime of {app_row.name} {release.version} is not trusted any more; "
                "ask its publisher for a release on a trusted runtime.",
                code="runtime_untrusted",
            )
        if not get_storage().exists(runtime.storage_key):
            # a session would only fail fetching it: say so now, and why
            raise InvalidInput(
                f"The runtime {runtime.name} {runtime.version} of {app_row.name} "
                f"{release.version} is missing from the portal's storage; ask an admin to "
                "upload it again.",
                code="runtime_missing",
            )
        _take_seat(
            session, actor, kind, settings.max_sessions_per_user, settings.max_webui_sessions
        )
        app_session, token = lifecycle.open_session(
            session,
            kind=kind,
            owner_id=actor.id or 0,
            app_id=app_row.id or 0,
            release_id=release.id or 0,
            launcher=launcher.kind if launcher else DESKTOP,
            lifetime=timedelta(hours=settings.webui_max_hours) + TOKEN_GRACE,
        )
        app_session.version = release.version
        session.add(app_session)
        view = SessionView(app_session, app_row.name, actor.username)
        resources = manifest.get("resources") or {}
    logger.info(
        "session %s: %s %s (%s) for %s",
        app_session.id,
        app_row.name,
        release.version,
        kind,
        actor.username,
    )
    if launcher is None:
        return view, token

    from aimms_portal.launchers import SessionSpec

    spec = SessionSpec(
        session_id=app_session.id or 0,
        kind=kind,
        portal_url=settings.resolved_runner_portal_url,
        token=token,
        cpu=resources.get("cpu"),
        memory_mb=resources.get("memory_mb"),
        base_path=proxy_path(app_session.id or 0),
        extra_env={ENV_RUNTIME_CACHE: str(settings.resolved_runtime_cache_dir)}
        if launcher.kind == "local"
        else {},
    )
    try:
        handle = launcher.start(spec)
    except LauncherError as exc:
        with session_scope() as session:
            row = session.get(AppSession, app_session.id, with_for_update=True)
            if row is not None:
                end_session(session, row, failed=True, detail=exc.message)
        raise
    with session_scope() as session:
        row = session.get(AppSession, app_session.id, with_for_update=True)
        assert row is not None
        row.handle = handle
        session.add(row)
        if row.state == SessionState.pending.value:
            lifecycle.move_session(session, row, SessionState.starting)
        return SessionView(row, app_row.name, actor.username), None


def _take_seat(session: Session, actor: User, kind: str, per_user: int, webui: int) -> None:
    """Refuse a launch when no seat is free (counted under a lock: no two launches at
    once can both take the last seat)."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SEAT_LOCK})
    mine = session.exec(
        select(func.count())
        .select_from(AppSession)
        .where(
            AppSession.owner_id == actor.id,
            col(AppSession.kind).in_([SessionKind.webui.value, SessionKind.desktop.value]),
            col(AppSession.state).in_(SEATED_STATES),
        )
    ).one()
    if mine >= per_user:
        open_ = f"{mine} session open" if mine == 1 else f"{mine} sessions open"
        raise Conflict(
            f"No free seat: you have {open_}, the most one user may have. "
            "End one on the Sessions page, then launch again.",
            code="no_free_seats",
        )
    if kind != SessionKind.webui.value:
        return
    running = session.exec(
        select(func.count())
        .select_from(AppSession)
        .where(
            AppSession.kind == SessionKind.webui.value,
            col(AppSession.state).in_(SEATED_STATES),
        )
    ).one()
    if running >= webui:
        in_use = (
            "the one browser session of this portal is in use"
            if webui == 1
            else f"all {webui} browser sessions of this portal are in use"
        )
        raise Conflict(
            f"No free seat: {in_use}. "
            "Try again in a few minutes, or run the app on your own computer.",
            code="no_free_seats",
        )


# -- reading -----------------------------------------------------------------------------


def _visible(session: Session, actor: User, session_id: int) -> AppSession:
    row = session.get(AppSession, session_id) if 0 < session_id < 2**63 else None
    if row is None or (row.owner_id != actor.id and not actor.is_admin):
        raise NotFound(f"No session {session_id}.")
    return row


def _views(session: Session, rows: Iterable[AppSession]) -> list[SessionView]:
    rows = list(rows)
    app_ids = {r.app_id for r in rows}
    owner_ids = {r.owner_id for r in rows}
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
        SessionView(r, app_names.get(r.app_id, "?"), owner_names.get(r.owner_id, "?")) for r in rows
    ]


def get_session(session: Session, *, actor: User, session_id: int) -> SessionView:
    """One session of the actor's (any session for admins).

    Raises:
        NotFound: no such session, or another user's.
    """
    return _views(session, [_visible(session, actor, session_id)])[0]


def _listing(
    actor: User, *, kind: str | None, state: str | None, all_users: bool
) -> SelectOfScalar[AppSession]:
    statement = select(AppSession)
    if not (all_users and actor.is_admin):
        statement = statement.where(AppSession.owner_id == actor.id)
    if kind:
        if kind not in {k.value for k in SessionKind}:
            raise InvalidInput("kind is 'webui', 'desktop' or 'solve'.")
        statement = statement.where(AppSession.kind == kind)
    if state == "live":
        statement = statement.where(
            col(AppSession.state).not_in([s.value for s in ENDED_SESSION_STATES])
        )
    elif state == "ended":
        statement = statement.where(
            col(AppSession.state).in_([s.value for s in ENDED_SESSION_STATES])
        )
    elif state:
        if state not in {s.value for s in SessionState}:
            raise InvalidInput("state is 'live', 'ended' or one session state.")
        statement = statement.where(AppSession.state == state)
    return statement.order_by(col(AppSession.id).desc())


def list_sessions(
    session: Session,
    *,
    actor: User,
    limit: int,
    offset: int,
    kind: str | None = None,
    state: str | None = None,
    all_users: bool = False,
) -> Page[SessionView]:
    """The actor's sessions, newest first; everyone's for an admin who asks for all.

    ``state`` is ``live``, ``ended`` or one session state.
    """
    statement = _listing(actor, kind=kind, state=state, all_users=all_users)
    page = paginate(session, statement, limit=limit, offset=offset)
    return Page(_views(session, page.items), page.total, page.limit, page.offset)


CSV_COLUMNS = (
    "id",
    "kind",
    "app",
    "version",
    "owner",
    "state",
    "reason",
    "created_at",
    "ready_at",
    "ended_at",
    "last_activity_at",
    "peak_memory_bytes",
    "cpu_seconds",
)


def sessions_csv(
    session: Session, *, actor: User, kind: str | None = None, all_users: bool = False
) -> str:
    """The sessions a list would show (all of them, newest first), as CSV text."""
    statement = _listing(actor, kind=kind, state=None, all_users=all_users)
    rows = _views(session, session.exec(statement.limit(100_000)).all())
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(CSV_COLUMNS)
    for view in rows:
        s = view.session
        writer.writerow(
            [
                s.id,
                s.kind,
                _cell(view.app_name),
                s.version,
                _cell(view.owner_name),
                s.state,
                _cell(s.reason),
                _iso(s.created_at),
                _iso(s.ready_at),
                _iso(s.ended_at),
                _iso(s.last_activity_at),
                s.peak_memory_bytes or "",
                f"{s.cpu_seconds:.2f}" if s.cpu_seconds is not None else "",
            ]
        )
    return out.getvalue()


def _cell(value: str) -> str:
    # a cell a spreadsheet would run as a formula is quoted as text
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def _iso(moment: object) -> str:
    return moment.isoformat() if moment is not None else ""  # type: ignore[attr-defined]


def timeline(session: Session, *, actor: User, session_id: int) -> list[SessionEvent]:
    """Every state change of the session, oldest first."""
    row = _visible(session, actor, session_id)
    return list(
        session.exec(
            select(SessionEvent)
            .where(SessionEvent.session_id == row.id)
            .order_by(col(SessionEvent.id))
        ).all()
    )


def session_log(*, actor: User, session_id: int, tail: int = 200) -> list[str]:
    """The last ``tail`` lines of the session's log (kept when it ended)."""
    tail = max(1, min(tail, 2000))
    with session_scope() as session:
        row = _visible(session, actor, session_id)
    live = row.state not in {s.value for s in ENDED_SESSION_STATES}
    if live and row.handle and row.launcher != DESKTOP:
        try:
            return get_launcher().logs(row.handle, tail=tail)
        except LauncherError:
            pass
    return row.log_tail.splitlines()[-tail:]


# -- ending ------------------------------------------------------------------------------


def terminate_session(*, actor: User, session_id: int, source_ip: str = "") -> SessionView:
    """End a session now (its seat is free at once); admins may end anyone's.

    Raises:
        NotFound: no such session (for this actor).
        Conflict: it has ended already.
    """
    with session_scope() as session:
        row = _visible(session, actor, session_id)
        session.refresh(row, with_for_update=True)
        if row.state in {s.value for s in ENDED_SESSION_STATES}:
            raise Conflict(f"Session {session_id} has ended already.", code="session_ended")
        who = "you" if row.owner_id == actor.id else actor.username
        lifecycle.move_session(session, row, SessionState.stopping, detail=f"ended by {who}")
        if row.owner_id != actor.id:
            audit.record(
                session,
                action="session.terminate",
                actor=actor,
                target_type="session",
                target_id=row.id or "",
                target_name=f"session {row.id}",
                source_ip=source_ip,
            )
        handle, launcher_kind = row.handle, row.launcher
    for callback in _ending_callbacks:
        callback(session_id)
    if launcher_kind == DESKTOP:
        with session_scope() as session:
            ending = session.get(AppSession, session_id, with_for_update=True)
            if ending is not None:
                end_session(session, ending, failed=False, detail=ending.reason)
    else:
        stop_session(get_launcher(), session_id, handle)
    with session_scope() as session:
        return get_session(session, actor=actor, session_id=session_id)


# -- the proxy -------------------------------------------------------------------------


def proxy_target(session: Session, *, actor: User, session_id: int) -> AppSession:
    """The WebUI session behind ``/s/<id>/`` if ``actor`` may use it (its owner, or an
    admin), and it is ready; notes the activity.

    Raises:
        NotFound: no such WebUI session, or another user's.
        Gone: the session has ended (the reason is in the message).
        Conflict: ``session_starting``: not ready yet.
    """
    row = session.get(AppSession, session_id) if 0 < session_id < 2**63 else None
    if (
        row is None
        or row.kind != SessionKind.webui.value
        or (row.owner_id != actor.id and not actor.is_admin)
    ):
        raise NotFound(f"No session {session_id}.")
    if (
        row.state in {s.value for s in ENDED_SESSION_STATES}
        or row.state == SessionState.stopping.value
    ):
        raise Gone(f"This session has ended: {row.reason or row.state}.", code="session_ended")
    if row.state != SessionState.ready.value or not row.address:
        raise Conflict("This session is still starting.", code="session_starting")
    touch(session, row)
    return row


def activity_interval() -> timedelta:
    """How often activity is written: every 30 s, or more often under a short idle timeout
    (a session in use must never look idle for as long as the timeout)."""
    idle = timedelta(minutes=get_settings().webui_idle_minutes)
    return min(ACTIVITY_WRITE_INTERVAL, idle / 4)


def touch(session: Session, row: AppSession) -> None:
    """Note activity on a session, at most every :func:`activity_interval`."""
    now = utcnow()
    if row.last_activity_at is not None and now - row.last_activity_at < activity_interval():
        return
    session.execute(
        update(AppSession)
        .where(AppSession.id == row.id)  # type: ignore[arg-type]
        .values(last_activity_at=now)
    )


def relaunch_target(session: Session, *, actor: User, session_id: int) -> str | None:
    """The app name an ended session of the actor's can be launched again as."""
    row = session.get(AppSession, session_id) if 0 < session_id < 2**63 else None
    if row is None or (row.owner_id != actor.id and not actor.is_admin):
        return None
    app = session.get(App, row.app_id)
    return app.name if app else None
