"""The Jobs page: your solve jobs (admins: everyone's), live, with filters and paging.

While the page is open, a background event refreshes the visible page about every two
seconds. The page's loader starts it, so it belongs to the tab's on-load chain, which
Reflex 0.10 cancels when the tab navigates elsewhere or its socket disconnects; each
turn also checks that itself (:func:`keep_watching`), so a loop stops even where that
cancellation does not reach it. Every change (cancel, delete, bulk delete) goes
through :mod:`aimms_portal.services.jobs`, which checks the caller's rights on each
call: another user's job id is not found for them.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from typing import Any

import reflex as rx
from reflex.utils import prerequisites
from reflex.vars import ObjectVar
from sqlmodel import Session

from aimms_portal.errors import NotAuthenticated, PortalError
from aimms_portal.models import FINISHED_STATES, JobState, User
from aimms_portal.services import apps, jobs
from aimms_portal.services.jobs import JobView
from aimms_portal.services.pagination import Page
from aimms_portal.ui.components import PagedState, confirm_dialog, pager
from aimms_portal.ui.layout import shell
from aimms_portal.ui.state import (
    SessionState,
    background_actor,
    call_as_user,
    call_service,
    failure,
    when,
)

logger = logging.getLogger(__name__)

PAGE_SIZE = 50
#: How often an open Jobs page refreshes what it shows.
REFRESH_SECONDS = 2.0
ROUTE = "/jobs"

STATES = [s.value for s in JobState]
FINISHED = {s.value for s in FINISHED_STATES}
ANY = "any"
STATE_CHOICES = [ANY, "active", "finished", *STATES]
#: The app filter's choice for "every app" (app names never contain ``*``).
ALL_APPS = "*"
_APP = "a:"

#: Badge colours of the job states.
STATE_COLORS = {
    "scheduled": "gray",
    "queued": "gray",
    "starting": "amber",
    "running": "blue",
    "succeeded": "green",
    "failed": "red",
    "cancelled": "gray",
    "timed_out": "orange",
}


# -- shared with the job page ----------------------------------------------------------


def job_fields(view: JobView) -> dict[str, str]:
    """A job as the tables and the job page show it (all values text)."""
    job = view.job
    return {
        "id": str(job.id),
        "app": view.app_name,
        "version": job.version,
        "procedure": job.procedure,
        "owner": view.owner_name,
        "state": job.state,
        "attempt": f"{job.attempt}/{job.max_attempts}",
        "priority": str(job.priority),
        "created": when(job.created_at),
        "start_at": when(job.start_at),
        "started": when(job.started_at),
        "finished": when(job.finished_at),
        "reason": job.reason,
        "done": "yes" if job.state in FINISHED else "",
        "cancel_requested": "yes" if job.cancel_requested else "",
    }


def state_badge(state: Any, **props: Any) -> rx.Component:
    """A job state as a coloured badge."""
    color = rx.match(state, *STATE_COLORS.items(), "gray")
    return rx.badge(state, color_scheme=color, variant="soft", **props)


@functools.cache
def _event_namespace() -> Any:
    # the app of this process; looked up once (get_app puts the cwd on sys.path each call)
    return prerequisites.get_app().app.event_namespace


def tab_connected(state: rx.State) -> bool:
    """Whether the browser tab of ``state`` still has its socket to this process."""
    namespace = _event_namespace()
    token = state.router.session.client_token
    return namespace is not None and bool(token) and token in namespace.token_to_sid


def route_of(state: rx.State) -> str:
    """The route the tab shows now, e.g. ``/jobs`` or ``/jobs/[id]``."""
    return "/" + (state.router.route_id or "").strip("/")


def keep_watching(state: rx.State, route: str, loop: int, current: int) -> bool:
    """Whether a page's refresh loop number ``loop`` goes on for another turn.

    Call it while holding the state's lock. A loop stops for good when its tab shows
    another route (each page load sends an event, which updates the tab's router),
    when the tab's socket to this process is gone, or when a newer loop (``current``,
    started by the next load of the page) has taken over. Reflex usually cancels the
    loop before that (see the module docstring); these checks are what a loop relies
    on when it is not, e.g. a tab whose reconnect went to another portal process.
    """
    if loop != current:
        reason = "a newer loop took over"
    elif route_of(state) != route:
        reason = "the tab left the page"
    elif not tab_connected(state):
        reason = "the tab disconnected"
    else:
        return True
    logger.debug("%s refresh loop %d ended: %s", route, loop, reason)
    return False


# -- the page's state ----------------------------------------------------------------


def _jobs_data(
    session: Session,
    *,
    actor: User,
    limit: int,
    offset: int,
    job_state: str | None,
    app: str | None,
    all_users: bool,
) -> tuple[Page[JobView], dict[str, int]]:
    # one unit of work for the table and the counts above it; ``job_state``, since
    # call_as_user's first parameter is called ``state``
    page = jobs.list_jobs(
        session,
        actor=actor,
        limit=limit,
        offset=offset,
        state=job_state,
        app=app,
        all_users=all_users,
    )
    return page, jobs.counts_by_state(session, actor=actor, all_users=all_users)


def _delete_finished(
    session: Session,
    *,
    actor: User,
    job_state: str | None,
    app: str | None,
    all_users: bool,
    source_ip: str,
) -> int:
    return jobs.delete_jobs(
        session,
        actor=actor,
        state=job_state,
        app=app,
        all_users=all_users,
        source_ip=source_ip,
    )


def _app_names(session: Session, *, actor: User) -> list[str]:
    return [v.app.name for v in apps.catalogue(session, actor=actor)]


class JobsState(PagedState, rx.State):
    """One page of jobs, the filters that chose it, and the counts by state."""

    rows: list[dict[str, str]] = []
    counts: list[dict[str, str]] = []
    app_names: list[str] = []
    page_size: int = PAGE_SIZE
    state_filter: str = ANY
    app_filter: str = ""
    all_users: bool = False
    loaded: bool = False
    confirm_job: str = ""
    confirm_bulk: bool = False
    #: The number of the newest refresh loop; older loops stop when they see it.
    _loop: int = 0

    @rx.var
    def app_choice(self) -> str:
        return _APP + self.app_filter if self.app_filter else ALL_APPS

    @rx.var
    def filter_label(self) -> str:
        parts = []
        if self.state_filter != ANY:
            parts.append(f"state {self.state_filter}")
        if self.app_filter:
            parts.append(f"app {self.app_filter}")
        if self.all_users:
            parts.append("all users")
        return ", ".join(parts) or "none"

    def _query(self) -> dict[str, Any]:
        return {
            "limit": self.page_size,
            "offset": self.offset,
            "job_state": None if self.state_filter == ANY else self.state_filter,
            "app": self.app_filter or None,
            "all_users": self.all_users,
        }

    def _show(self, page: Page[JobView], counts: dict[str, int]) -> Any:
        rows = [job_fields(v) for v in page.items]
        by_state = [{"state": s, "count": str(counts.get(s, 0))} for s in STATES]
        # assigned only when changed: an unchanged var is not sent to the browser again
        if rows != self.rows:
            self.rows = rows
        if by_state != self.counts:
            self.counts = by_state
        if page.total != self.total:
            self.total = page.total
        if not self.loaded:
            self.loaded = True
        if not page.items and self.offset and page.total:
            # the page emptied (jobs were deleted): show the last page that has jobs
            self.offset = (page.total - 1) // self.page_size * self.page_size
            return JobsState.load
        return None

    @rx.event
    async def open(self) -> Any:
        """Page loader: fill the page and its filter's choices, then keep it fresh."""
        try:
            self.app_names = await call_as_user(self, _app_names)
        except PortalError as exc:
            return failure(exc)
        return [JobsState.load, JobsState.watch]

    @rx.event
    async def load(self) -> Any:
        try:
            page, counts = await call_as_user(self, _jobs_data, **self._query())
        except PortalError as exc:
            return failure(exc)
        return self._show(page, counts)

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
                page, counts = await call_service(_jobs_data, actor=actor, **query)
            except NotAuthenticated:
                return  # logged off: the next click goes to the log-on page
            except PortalError as exc:
                logger.debug("jobs page refresh skipped: %s", exc.log_detail or exc.message)
                continue
            async with self:
                if loop != self._loop:
                    return
                if query == self._query():
                    self._show(page, counts)

    @rx.event
    def set_state_filter(self, value: str) -> Any:
        self.state_filter = value if value in STATE_CHOICES else ANY
        self.offset = 0
        return JobsState.load

    @rx.event
    def choose_app(self, choice: str) -> Any:
        self.app_filter = choice.removeprefix(_APP)[:64] if choice != ALL_APPS else ""
        self.offset = 0
        return JobsState.load

    @rx.event
    def set_all_users(self, value: bool) -> Any:
        self.all_users = bool(value)
        self.offset = 0
        return JobsState.load

    @rx.event
    async def cancel(self, job_id: str) -> Any:
        try:
            await call_as_user(self, jobs.cancel_job, job_id=_job_id(job_id))
        except PortalError as exc:
            return [failure(exc), JobsState.load]
        return [rx.toast.success(f"Job {job_id}: cancel asked."), JobsState.load]

    @rx.event
    def ask_delete(self, job_id: str) -> None:
        self.confirm_job = job_id

    @rx.event
    def close_delete(self, open_: bool = False) -> None:
        if not open_:
            self.confirm_job = ""

    @rx.event
    async def delete(self) -> Any:
        job_id, self.confirm_job = self.confirm_job, ""
        try:
            await call_as_user(self, jobs.delete_job, job_id=_job_id(job_id))
        except PortalError as exc:
            return [failure(exc), JobsState.load]
        return [rx.toast.success(f"Job {job_id} deleted."), JobsState.load]

    @rx.event
    def set_confirm_bulk(self, open_: bool) -> None:
        self.confirm_bulk = bool(open_)

    @rx.event
    async def delete_finished(self) -> Any:
        """Delete every finished job that matches the filters, in one service call."""
        self.confirm_bulk = False
        query = self._query()
        try:
            deleted = await call_as_user(
                self,
                _delete_finished,
                job_state=query["job_state"],
                app=query["app"],
                all_users=query["all_users"],
            )
        except PortalError as exc:
            return [failure(exc), JobsState.load]
        noun = "job" if deleted == 1 else "jobs"
        return [rx.toast.success(f"Deleted {deleted} finished {noun}."), JobsState.load]


def _job_id(text: str) -> int:
    # an id from the browser is only a number to look up: the service decides
    return int(text) if text.isdigit() and len(text) < 19 else 0


# -- the page --------------------------------------------------------------------------


def _counts() -> rx.Component:
    def count(item: ObjectVar[dict[str, str]]) -> rx.Component:
        return rx.button(
            item["state"],
            rx.text.strong(item["count"], id="jobs-count-" + item["state"]),
            size="1",
            variant=rx.cond(item["count"] == "0", "ghost", "soft"),
            color_scheme=rx.match(item["state"], *STATE_COLORS.items(), "gray"),
            on_click=JobsState.set_state_filter(item["state"]),
        )

    return rx.hstack(
        rx.foreach(JobsState.counts, count),
        spacing="2",
        wrap="wrap",
        align="center",
        id="jobs-counts",
        margin_bottom="1em",
    )


def _toolbar() -> rx.Component:
    return rx.hstack(
        rx.select(
            STATE_CHOICES,
            value=JobsState.state_filter,
            on_change=JobsState.set_state_filter,
            id="jobs-filter-state",
        ),
        rx.select.root(
            rx.select.trigger(placeholder="App", id="jobs-filter-app"),
            rx.select.content(
                rx.select.item("All apps", value=ALL_APPS),
                rx.foreach(
                    JobsState.app_names, lambda name: rx.select.item(name, value=_APP + name)
                ),
            ),
            value=JobsState.app_choice,
            on_change=JobsState.choose_app,
        ),
        rx.cond(
            SessionState.is_admin,
            rx.hstack(
                rx.switch(
                    checked=JobsState.all_users,
                    on_change=JobsState.set_all_users,
                    id="jobs-all-users",
                ),
                rx.text("All users", size="2"),
                align="center",
                spacing="2",
            ),
        ),
        rx.spacer(),
        rx.button(
            rx.icon("trash-2", size=14),
            "Delete finished jobs",
            variant="soft",
            color_scheme="red",
            on_click=JobsState.set_confirm_bulk(True),
            id="jobs-delete-finished",
        ),
        rx.link(
            rx.button(rx.icon("plus", size=16), "New job", id="jobs-new"),
            href="/jobs/new",
        ),
        width="100%",
        align="center",
        spacing="3",
        margin_bottom="1em",
    )


_HEADERS = [
    "Job",
    "App",
    "Version",
    "Procedure",
    None,  # the owner, for admins
    "State",
    "Attempt",
    "Priority",
    "Created",
    "Started",
    "Finished",
    "Reason",
    "",
]


def _header_cell(label: str | None) -> rx.Component:
    if label is None:
        return rx.cond(SessionState.is_admin, rx.table.column_header_cell("Owner"))
    return rx.table.column_header_cell(label)


def _actions(row: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.cond(
        row["done"] == "yes",
        rx.button(
            "Delete",
            size="1",
            variant="soft",
            color_scheme="red",
            on_click=JobsState.ask_delete(row["id"]),
            id="job-delete-" + row["id"],
        ),
        rx.button(
            "Cancel",
            size="1",
            variant="soft",
            color_scheme="gray",
            disabled=row["cancel_requested"] == "yes",
            on_click=JobsState.cancel(row["id"]),
            id="job-cancel-" + row["id"],
        ),
    )


def _row(row: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.link(row["id"], href="/jobs/" + row["id"], id="job-link-" + row["id"])),
        rx.table.cell(row["app"]),
        rx.table.cell(row["version"]),
        rx.table.cell(rx.code(row["procedure"])),
        rx.cond(SessionState.is_admin, rx.table.cell(row["owner"])),
        rx.table.cell(state_badge(row["state"], id="job-state-" + row["id"])),
        rx.table.cell(row["attempt"]),
        rx.table.cell(row["priority"]),
        rx.table.cell(row["created"], white_space="nowrap"),
        rx.table.cell(row["started"], white_space="nowrap"),
        rx.table.cell(row["finished"], white_space="nowrap"),
        rx.table.cell(rx.text(row["reason"], size="1", overflow_wrap="anywhere")),
        rx.table.cell(_actions(row)),
        id="job-row-" + row["id"],
    )


def _table() -> rx.Component:
    return rx.cond(
        JobsState.rows,
        rx.box(
            rx.table.root(
                rx.table.header(rx.table.row(*[_header_cell(h) for h in _HEADERS])),
                rx.table.body(rx.foreach(JobsState.rows, _row)),
                id="jobs-table",
                size="1",
                width="100%",
            ),
            pager(JobsState, previous="Newer", next_="Older"),
            width="100%",
        ),
        rx.cond(
            JobsState.loaded,
            rx.callout(
                "No jobs to show. Start one with New job.",
                icon="info",
                id="jobs-empty",
            ),
        ),
    )


def _dialogs() -> rx.Component:
    return rx.fragment(
        confirm_dialog(
            open_=JobsState.confirm_job != "",
            on_open_change=JobsState.close_delete,
            title="Delete job " + JobsState.confirm_job + "?",
            description="Its log and its input and output cases are deleted too.",
            action="Delete job",
            on_confirm=JobsState.delete,
            element_id="job-delete-confirm",
        ),
        confirm_dialog(
            open_=JobsState.confirm_bulk,
            on_open_change=JobsState.set_confirm_bulk,
            title="Delete the finished jobs?",
            description="Every finished job that matches the filters ("
            + JobsState.filter_label
            + ") is deleted with its log and cases. Jobs still waiting or running stay. "
            "This cannot be undone.",
            action="Delete finished jobs",
            on_confirm=JobsState.delete_finished,
            element_id="jobs-delete-finished-confirm",
        ),
    )


def jobs_page() -> rx.Component:
    return shell("Jobs", _counts(), _toolbar(), _table(), _dialogs())
