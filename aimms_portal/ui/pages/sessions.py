"""The Sessions page: your WebUI, desktop and solve sessions (admins: everyone's), live.

Newest first, one page at a time, filtered by kind and by live or ended. Each live
WebUI session can be opened (through the proxy) or terminated; any session shows its
details below the table: its timeline (every state with its time) and its log (kept
after it ended). While the page is open, a background event refreshes the visible
rows and the details about every two seconds, and stops as the Jobs page's loop does
(see :mod:`aimms_portal.ui.pages.jobs`). Every read and change goes through
:mod:`aimms_portal.services.sessions`, which checks the caller's rights on each call:
another user's session id is not found for them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any
from urllib.parse import urlencode

import reflex as rx
from reflex.vars import ObjectVar
from sqlmodel import Session

from aimms_portal.aio import run_blocking
from aimms_portal.errors import NotAuthenticated, NotFound, PortalError
from aimms_portal.models import SessionState as Lifecycle
from aimms_portal.models import User
from aimms_portal.services import sessions
from aimms_portal.services.pagination import Page
from aimms_portal.services.sessions import SessionView
from aimms_portal.ui.components import PagedState, confirm_dialog, pager, size_label
from aimms_portal.ui.layout import shell
from aimms_portal.ui.pages.jobs import keep_watching
from aimms_portal.ui.pages.launch import session_state_badge, session_timeline
from aimms_portal.ui.state import (
    SessionState,
    actor_of,
    background_actor,
    call_as_user,
    call_service,
    failure,
    when,
)

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
#: How often an open Sessions page refreshes what it shows.
REFRESH_SECONDS = 2.0
ROUTE = "/sessions"
#: Lines of a session's log the details show.
LOG_LINES = 200
EXPORT_URL = "/api/v1/sessions/export.csv"

ANY = "any"
#: The filters' choices and their labels.
KIND_LABELS = {ANY: "All kinds", "webui": "WebUI", "desktop": "Desktop", "solve": "Solve"}
STATE_LABELS = {ANY: "Live and ended", "live": "Live", "ended": "Ended"}
KIND_CHOICES = list(KIND_LABELS)
STATE_CHOICES = list(STATE_LABELS)
#: States in which a session holds its seat: it can still be opened or terminated.
SEATED = {Lifecycle.pending.value, Lifecycle.starting.value, Lifecycle.ready.value}


def session_fields(view: SessionView) -> dict[str, str]:
    """A session as the table and its details show it (all values text)."""
    s = view.session
    seated = s.state in SEATED
    return {
        "id": str(s.id),
        "kind": s.kind,
        "app": view.app_name,
        "version": s.version,
        "owner": view.owner_name,
        "state": s.state,
        "reason": s.reason,
        "url": view.url or "",
        "started": when(s.created_at),
        "ready": when(s.ready_at),
        "ended": when(s.ended_at),
        "activity": when(s.last_activity_at),
        "memory": "" if s.peak_memory_bytes is None else size_label(s.peak_memory_bytes),
        "cpu": "" if s.cpu_seconds is None else f"{s.cpu_seconds:.1f}",
        "job": "" if s.job_id is None else str(s.job_id),
        "live": "yes" if seated else "",
        "openable": "yes" if seated and view.url else "",
    }


def _sessions_data(
    session: Session,
    *,
    actor: User,
    limit: int,
    offset: int,
    kind: str | None,
    live: str | None,
    all_users: bool,
    selected: int,
) -> dict[str, Any]:
    """One page of sessions and the selected session's details, in one unit of work."""
    page: Page[SessionView] = sessions.list_sessions(
        session,
        actor=actor,
        limit=limit,
        offset=offset,
        kind=kind,
        state=live,
        all_users=all_users,
    )
    data: dict[str, Any] = {
        "rows": [session_fields(v) for v in page.items],
        "total": page.total,
        "detail": {},
        "timeline": [],
    }
    if selected:
        try:
            view = sessions.get_session(session, actor=actor, session_id=selected)
        except NotFound:
            return data
        data["detail"] = session_fields(view)
        data["timeline"] = session_timeline(session, actor=actor, session_id=selected)
    return data


def _session_id(text: str) -> int:
    # an id from the browser is only a number to look up: the service decides
    return int(text) if text.isdigit() and len(text) < 19 else 0


class SessionsState(PagedState, rx.State):
    """One page of sessions, the filters that chose it, and the session shown in detail."""

    rows: list[dict[str, str]] = []
    page_size: int = PAGE_SIZE
    kind_filter: str = ANY
    state_filter: str = ANY
    all_users: bool = False
    loaded: bool = False
    selected: str = ""
    detail: dict[str, str] = {}
    timeline: list[dict[str, str]] = []
    log_lines: list[str] = []
    confirm_session: str = ""
    #: Sessions asked to be terminated, not yet handed to the service.
    _ending: list[str] = []
    _loop: int = 0

    @rx.var
    def export_url(self) -> str:
        query = {}
        if self.kind_filter != ANY:
            query["kind"] = self.kind_filter
        if self.all_users:
            query["all"] = "true"
        return EXPORT_URL + ("?" + urlencode(query) if query else "")

    def _query(self) -> dict[str, Any]:
        return {
            "limit": self.page_size,
            "offset": self.offset,
            "kind": None if self.kind_filter == ANY else self.kind_filter,
            "live": None if self.state_filter == ANY else self.state_filter,
            "all_users": self.all_users,
            "selected": _session_id(self.selected),
        }

    def _show(self, data: dict[str, Any], lines: list[str] | None) -> Any:
        # assigned only when changed: an unchanged var is not sent to the browser again
        if data["rows"] != self.rows:
            self.rows = data["rows"]
        if data["total"] != self.total:
            self.total = data["total"]
        if not self.loaded:
            self.loaded = True
        if self.selected:
            if not data["detail"]:
                self._close_details()
            else:
                if data["detail"] != self.detail:
                    self.detail = data["detail"]
                if data["timeline"] != self.timeline:
                    self.timeline = data["timeline"]
                if lines is not None and lines != self.log_lines:
                    self.log_lines = lines
        if not data["rows"] and self.offset and data["total"]:
            # the page emptied (filters or fewer sessions): show the last page with rows
            self.offset = (data["total"] - 1) // self.page_size * self.page_size
            return SessionsState.load
        return None

    def _close_details(self) -> None:
        self.selected, self.detail, self.timeline, self.log_lines = "", {}, [], []

    @rx.event
    async def open(self) -> Any:
        """Page loader: fill the page, then keep it fresh."""
        self._close_details()
        return [SessionsState.load, SessionsState.watch]

    @rx.event
    async def load(self) -> Any:
        query = self._query()
        try:
            data = await call_as_user(self, _sessions_data, **query)
            lines = await self._log(query["selected"]) if data["detail"] else None
        except PortalError as exc:
            return failure(exc)
        return self._show(data, lines)

    async def _log(self, session_id: int, actor: User | None = None) -> list[str]:
        actor = actor or await actor_of(self)
        try:
            return await run_blocking(
                sessions.session_log, actor=actor, session_id=session_id, tail=LOG_LINES
            )
        except NotFound:
            return []

    @rx.event(background=True)
    async def watch(self) -> None:
        """Refresh the visible page every :data:`REFRESH_SECONDS` while the tab shows it.

        The database is read outside the state's lock, so clicks are never held up by
        a refresh; a refresh whose filters changed meanwhile is dropped.
        """
        async with self:
            self._loop += 1
            loop = self._loop
        try:
            await self._follow(loop)
        except asyncio.CancelledError:
            logger.debug("%s refresh loop %d cancelled (navigation or disconnect)", ROUTE, loop)
            raise

    async def _follow(self, loop: int) -> None:
        while True:
            await asyncio.sleep(REFRESH_SECONDS)
            async with self:
                if not keep_watching(self, ROUTE, loop, self._loop):
                    return
                query = self._query()
            try:
                actor = await background_actor(self)
                data = await call_service(_sessions_data, actor=actor, **query)
                lines = await self._log(query["selected"], actor) if data["detail"] else None
            except NotAuthenticated:
                return  # logged off: the next click goes to the log-on page
            except PortalError as exc:
                logger.debug("sessions page refresh skipped: %s", exc.log_detail or exc.message)
                continue
            async with self:
                if loop != self._loop:
                    return
                if query == self._query():
                    self._show(data, lines)

    @rx.event
    def set_kind_filter(self, value: str) -> Any:
        self.kind_filter = value if value in KIND_CHOICES else ANY
        self.offset = 0
        return SessionsState.load

    @rx.event
    def set_state_filter(self, value: str) -> Any:
        self.state_filter = value if value in STATE_CHOICES else ANY
        self.offset = 0
        return SessionsState.load

    @rx.event
    def set_all_users(self, value: bool) -> Any:
        self.all_users = bool(value)
        self.offset = 0
        return SessionsState.load

    @rx.event
    def show_details(self, session_id: str) -> Any:
        self._close_details()
        self.selected = str(_session_id(session_id) or "")
        return [SessionsState.load, rx.scroll_to("session-details")]

    @rx.event
    def close_details(self) -> None:
        self._close_details()

    @rx.event
    def ask_terminate(self, session_id: str) -> None:
        self.confirm_session = session_id

    @rx.event
    def close_terminate(self, open_: bool = False) -> None:
        if not open_:
            self.confirm_session = ""

    @rx.event
    def terminate(self) -> Any:
        """End the session asked about: read here, in order with the dialog's close
        (which clears it), and ended by :meth:`end_sessions`."""
        if self.confirm_session:
            self._ending = [*self._ending, self.confirm_session]
        self.confirm_session = ""
        return SessionsState.end_sessions

    @rx.event(background=True)
    async def end_sessions(self) -> Any:
        """Terminate the sessions asked for; the launcher's stop may take a few seconds,
        so it runs outside the state's lock."""
        async with self:
            ending, self._ending = self._ending, []
            source_ip = self.router.session.client_ip or ""
        events: list[Any] = []
        for session_id in ending:
            try:
                actor = await background_actor(self)
                await run_blocking(
                    sessions.terminate_session,
                    actor=actor,
                    session_id=_session_id(session_id),
                    source_ip=source_ip,
                )
            except PortalError as exc:
                events.append(failure(exc))
            else:
                events.append(rx.toast.success(f"Session {session_id} ended."))
        return [*events, SessionsState.load] if ending else None


# -- the page --------------------------------------------------------------------------


def _filter(labels: dict[str, str], value: Any, on_change: Any, element_id: str) -> rx.Component:
    return rx.select.root(
        rx.select.trigger(id=element_id),
        rx.select.content(*[rx.select.item(label, value=v) for v, label in labels.items()]),
        value=value,
        on_change=on_change,
    )


def _toolbar() -> rx.Component:
    return rx.hstack(
        _filter(
            KIND_LABELS,
            SessionsState.kind_filter,
            SessionsState.set_kind_filter,
            "sessions-filter-kind",
        ),
        _filter(
            STATE_LABELS,
            SessionsState.state_filter,
            SessionsState.set_state_filter,
            "sessions-filter-state",
        ),
        rx.cond(
            SessionState.is_admin,
            rx.hstack(
                rx.switch(
                    checked=SessionsState.all_users,
                    on_change=SessionsState.set_all_users,
                    id="sessions-all-users",
                ),
                rx.text("All users", size="2"),
                align="center",
                spacing="2",
            ),
        ),
        rx.spacer(),
        rx.link(
            rx.button(rx.icon("download", size=14), "Export CSV", variant="soft"),
            href=SessionsState.export_url,
            reload_document=True,
            id="sessions-export",
        ),
        width="100%",
        align="center",
        spacing="3",
        margin_bottom="1em",
    )


_HEADERS = [
    "Session",
    "Kind",
    "App",
    "Release",
    None,  # the owner, for admins
    "State",
    "Started",
    "Last activity",
    "Peak memory",
    "CPU s",
    "Reason",
    "",
]


def _header_cell(label: str | None) -> rx.Component:
    if label is None:
        return rx.cond(SessionState.is_admin, rx.table.column_header_cell("Owner"))
    return rx.table.column_header_cell(label)


def _actions(row: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.hstack(
        rx.cond(
            row["openable"] == "yes",
            rx.link(
                rx.button("Open", size="1", variant="soft"),
                href=row["url"],
                reload_document=True,
                id="session-open-" + row["id"],
            ),
        ),
        rx.cond(
            row["live"] == "yes",
            rx.button(
                "Terminate",
                size="1",
                variant="soft",
                color_scheme="red",
                on_click=SessionsState.ask_terminate(row["id"]),
                id="session-terminate-" + row["id"],
            ),
        ),
        rx.button(
            "Details",
            size="1",
            variant="soft",
            color_scheme="gray",
            on_click=SessionsState.show_details(row["id"]),
            id="session-details-" + row["id"],
        ),
        spacing="2",
    )


def _row(row: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(row["id"]),
        rx.table.cell(row["kind"]),
        rx.table.cell(row["app"]),
        rx.table.cell(row["version"]),
        rx.cond(SessionState.is_admin, rx.table.cell(row["owner"])),
        rx.table.cell(session_state_badge(row["state"], id="session-state-" + row["id"])),
        rx.table.cell(row["started"], white_space="nowrap"),
        rx.table.cell(row["activity"], white_space="nowrap"),
        rx.table.cell(row["memory"], white_space="nowrap"),
        rx.table.cell(row["cpu"]),
        rx.table.cell(
            rx.text(row["reason"], size="1", overflow_wrap="anywhere"),
            id="session-reason-" + row["id"],
        ),
        rx.table.cell(_actions(row)),
        id="session-row-" + row["id"],
    )


def _table() -> rx.Component:
    return rx.cond(
        SessionsState.rows,
        rx.box(
            rx.table.root(
                rx.table.header(rx.table.row(*[_header_cell(h) for h in _HEADERS])),
                rx.table.body(rx.foreach(SessionsState.rows, _row)),
                id="sessions-table",
                size="1",
                width="100%",
            ),
            pager(SessionsState, previous="Newer", next_="Older"),
            width="100%",
        ),
        rx.cond(
            SessionsState.loaded,
            rx.callout(
                "No sessions to show. Launch an app from the Apps page.",
                icon="info",
                id="sessions-empty",
            ),
        ),
    )


def _fact(label: str, value: Any, **props: Any) -> rx.Component:
    return rx.data_list.item(rx.data_list.label(label), rx.data_list.value(value, **props))


def _timeline_row(event: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(event["at"], white_space="nowrap"),
        rx.table.cell(session_state_badge(event["state"])),
        rx.table.cell(rx.text(event["detail"], size="1", overflow_wrap="anywhere")),
    )


def _details() -> rx.Component:
    detail = SessionsState.detail
    return rx.cond(
        SessionsState.detail,
        rx.card(
            rx.vstack(
                rx.hstack(
                    rx.heading("Session ", detail["id"], size="5", id="session-details-title"),
                    session_state_badge(detail["state"], size="2"),
                    rx.spacer(),
                    rx.button(
                        "Close",
                        size="1",
                        variant="soft",
                        color_scheme="gray",
                        on_click=SessionsState.close_details,
                        id="session-details-close",
                    ),
                    align="center",
                    width="100%",
                ),
                rx.data_list.root(
                    _fact("App", detail["app"] + " " + detail["version"]),
                    _fact("Kind", detail["kind"]),
                    rx.cond(SessionState.is_admin, _fact("Owner", detail["owner"])),
                    _fact("Started", detail["started"]),
                    _fact("Ready", detail["ready"]),
                    _fact("Ended", detail["ended"]),
                    _fact("Reason", detail["reason"]),
                    rx.cond(detail["job"] != "", _fact("Job", detail["job"])),
                ),
                rx.heading("Timeline", size="3"),
                rx.table.root(
                    rx.table.body(rx.foreach(SessionsState.timeline, _timeline_row)),
                    size="1",
                    id="session-timeline",
                ),
                rx.heading("Log", size="3"),
                rx.box(
                    rx.box(
                        rx.foreach(SessionsState.log_lines, lambda line: rx.text(line, as_="div")),
                        white_space="pre-wrap",
                        overflow_wrap="anywhere",
                    ),
                    id="session-log",
                    font_family="var(--code-font-family, monospace)",
                    font_size="12px",
                    background="var(--gray-a2)",
                    border="1px solid var(--gray-a5)",
                    border_radius="var(--radius-3)",
                    padding="0.75em",
                    width="100%",
                    min_height="2.5em",
                    max_height="28em",
                    overflow_y="auto",
                    display="flex",
                    flex_direction="column-reverse",
                ),
                width="100%",
                spacing="3",
            ),
            id="session-details",
            width="100%",
            margin_top="1.5em",
        ),
    )


def sessions_page() -> rx.Component:
    return shell(
        "Sessions",
        _toolbar(),
        _table(),
        _details(),
        confirm_dialog(
            open_=SessionsState.confirm_session != "",
            on_open_change=SessionsState.close_terminate,
            title="Terminate session " + SessionsState.confirm_session + "?",
            description="The app stops now; anything not saved in it is lost.",
            action="Terminate",
            on_confirm=SessionsState.terminate,
            element_id="session-terminate-confirm",
        ),
    )
