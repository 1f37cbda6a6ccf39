"""One job: its fields, its input and output cases, the live log, Cancel and Delete.

While the job has not finished, a background event fetches its state and the log
chunks after the last one shown, about every second; it stops once the job has
finished and its log is complete, or as the Jobs page's loop does (see
:mod:`aimms_portal.ui.pages.jobs`). The page keeps only the last
:data:`MAX_LOG_LINES` lines, so a huge log never floods the browser.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import reflex as rx
from reflex.vars import ObjectVar
from sqlmodel import Session

from aimms_portal.errors import NotAuthenticated, NotFound, PortalError
from aimms_portal.models import JobLogChunk, User
from aimms_portal.services import cases, jobs
from aimms_portal.ui.components import confirm_dialog, size_label
from aimms_portal.ui.layout import shell
from aimms_portal.ui.pages.jobs import job_fields, keep_watching, state_badge
from aimms_portal.ui.state import (
    SessionState,
    background_actor,
    call_as_user,
    call_service,
    failure,
    path_segments,
    when,
)

logger = logging.getLogger(__name__)

ROUTE = "/jobs/[id]"
#: How often the page looks for news while the job runs.
REFRESH_SECONDS = 1.0
#: Lines of log the page keeps; older ones are dropped from the top.
MAX_LOG_LINES = 2000
#: Pages of log chunks one refresh reads at most (a long log catches up over turns).
LOG_PAGES_PER_TURN = 5
NO_SUCH_JOB = "No such job."


def _case_fields(session: Session, actor: User, case_id: int | None) -> dict[str, str]:
    if case_id is None:
        return {}
    try:
        case = cases.get_case(session, actor=actor, case_id=case_id)
    except NotFound:
        return {"id": str(case_id), "name": "", "missing": "yes"}
    return {
        "id": str(case.id),
        "name": case.name,
        "size": size_label(case.size),
        "created": when(case.created_at),
        "url": f"/api/v1/cases/{case.id}/content",
        "missing": "",
    }


def _job_update(session: Session, *, actor: User, job_id: int, after: int) -> dict[str, Any]:
    """The job, its cases and the log chunks after chunk ``after``, in one unit of work.

    The job is read before its log: once a read shows it finished, the log read after
    it holds every line the job wrote.
    """
    view = jobs.get_job(session, actor=actor, job_id=job_id)
    job = view.job
    fields = job_fields(view) | {
        "max_attempts": str(job.max_attempts),
        "time_limit": f"{job.time_limit_s} s",
        "exit_code": "" if job.exit_code is None else str(job.exit_code),
        "arguments": json.dumps(json.loads(job.arguments), indent=2),
        "updated": when(job.updated_at),
    }
    chunks: list[JobLogChunk] = []
    complete = False
    for _ in range(LOG_PAGES_PER_TURN):
        page = jobs.job_log(session, actor=actor, job_id=job_id, after=after)
        chunks += page
        if len(page) < jobs.LOG_PAGE:
            complete = True
            break
        after = page[-1].id or after
    return {
        "job": fields,
        "input": _case_fields(session, actor, job.input_case_id),
        "output": _case_fields(session, actor, job.output_case_id),
        "chunks": [{"id": str(c.id), "stream": c.stream, "text": c.text} for c in chunks],
        "log_complete": complete,
    }


def _line_count(text: str) -> int:
    return text.count("\n") + (0 if text.endswith("\n") else 1)


def trim_log(chunks: list[dict[str, str]], max_lines: int) -> tuple[list[dict[str, str]], int]:
    """``chunks`` cut to their last ``max_lines`` lines, and how many lines were cut."""
    counts = [_line_count(c["text"]) for c in chunks]
    excess = sum(counts) - max_lines
    if excess <= 0:
        return chunks, 0
    dropped = 0
    start = 0
    while start < len(chunks) and counts[start] <= excess - dropped:
        dropped += counts[start]
        start += 1
    kept = chunks[start:]
    if dropped < excess and kept:
        # cut the oldest chunk that stays to its last lines
        lines = kept[0]["text"].splitlines(keepends=True)
        cut = excess - dropped
        kept = [kept[0] | {"text": "".join(lines[cut:])}, *kept[1:]]
        dropped = excess
    return kept, dropped


class JobState(rx.State):
    """The job shown by ``/jobs/[id]``, if the signed-on user may see it."""

    job_id: int = 0
    job: dict[str, str] = {}
    input_case: dict[str, str] = {}
    output_case: dict[str, str] = {}
    log: list[dict[str, str]] = []
    lines_dropped: int = 0
    missing: str = ""
    confirm_delete: bool = False
    #: The id of the last log chunk shown.
    _after: int = 0
    _log_complete: bool = False
    _loop: int = 0

    @rx.var
    def finished(self) -> bool:
        return self.job.get("done") == "yes"

    @rx.event
    async def load(self) -> Any:
        segments = path_segments(self)
        text = segments[-1] if segments else ""
        self.job_id = int(text) if text.isdigit() and len(text) < 19 else 0
        self.job, self.input_case, self.output_case = {}, {}, {}
        self.log, self.lines_dropped, self._after, self._log_complete = [], 0, 0, False
        self.missing = ""
        away = await self._refresh()
        if away is not None or self.missing:
            return away
        return JobState.watch

    async def _refresh(self) -> Any:
        """Fetch the job and the news of its log now (a normal event's helper)."""
        try:
            data = await call_as_user(self, _job_update, job_id=self.job_id, after=self._after)
        except NotFound:
            self._gone()
            return None
        except PortalError as exc:
            return failure(exc)
        self._apply(data)
        return None

    def _gone(self) -> None:
        self.job, self.input_case, self.output_case, self.log = {}, {}, {}, []
        self.missing = NO_SUCH_JOB

    def _apply(self, data: dict[str, Any]) -> None:
        # assigned only when changed: an unchanged var is not sent to the browser again
        for name, key in (("job", "job"), ("input_case", "input"), ("output_case", "output")):
            if getattr(self, name) != data[key]:
                setattr(self, name, data[key])
        new = data["chunks"]
        if new:
            self._after = int(new[-1]["id"])
            self.log, dropped = trim_log(self.log + new, MAX_LOG_LINES)
            self.lines_dropped += dropped
        self._log_complete = self.job.get("done") == "yes" and data["log_complete"]

    @rx.event(background=True)
    async def watch(self) -> None:
        """Follow the job until it has finished and its whole log is shown."""
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
                if not keep_watching(self, ROUTE, loop, self._loop) or self._log_complete:
                    return
                job_id, after = self.job_id, self._after
            try:
                actor = await background_actor(self)
                data = await call_service(_job_update, actor=actor, job_id=job_id, after=after)
            except NotAuthenticated:
                return
            except NotFound:
                async with self:
                    if loop == self._loop:
                        self._gone()  # deleted meanwhile (another tab, the API)
                return
            except PortalError as exc:
                logger.debug("job %s page refresh skipped: %s", job_id, exc.message)
                continue
            async with self:
                if loop != self._loop:
                    return
                if (job_id, after) == (self.job_id, self._after):
                    self._apply(data)

    @rx.event
    async def cancel(self) -> Any:
        try:
            await call_as_user(self, jobs.cancel_job, job_id=self.job_id)
        except PortalError as exc:
            return failure(exc)
        await self._refresh()
        return rx.toast.success(f"Job {self.job_id}: cancel asked.")

    @rx.event
    def set_confirm_delete(self, open_: bool) -> None:
        self.confirm_delete = bool(open_)

    @rx.event
    async def delete(self) -> Any:
        self.confirm_delete = False
        try:
            await call_as_user(self, jobs.delete_job, job_id=self.job_id)
        except PortalError as exc:
            return failure(exc)
        return [rx.toast.success(f"Job {self.job_id} deleted."), rx.redirect("/jobs")]


# -- the page --------------------------------------------------------------------------


def _fact(label: str, value: Any, **props: Any) -> rx.Component:
    return rx.data_list.item(rx.data_list.label(label), rx.data_list.value(value, **props))


def _case_link(case: Any, element_id: str) -> rx.Component:
    return rx.cond(
        case,
        rx.cond(
            case["missing"] == "yes",
            rx.text("case ", case["id"], " (deleted)", color_scheme="gray"),
            rx.hstack(
                rx.link(
                    rx.hstack(rx.icon("download", size=14), case["name"], spacing="1"),
                    href=case["url"],
                    id=element_id,
                ),
                rx.text(case["size"], " · case ", case["id"], size="1", color_scheme="gray"),
                align="center",
                spacing="2",
            ),
        ),
        rx.text("none", color_scheme="gray"),
    )


def _header() -> rx.Component:
    job = JobState.job
    return rx.hstack(
        rx.heading("Job ", job["id"], size="6", id="job-title"),
        state_badge(job["state"], size="2", id="job-state"),
        rx.cond(
            job["cancel_requested"] == "yes",
            rx.cond(~JobState.finished, rx.badge("cancel asked", color_scheme="amber")),
        ),
        rx.spacer(),
        rx.cond(
            JobState.finished,
            rx.button(
                rx.icon("trash-2", size=14),
                "Delete",
                color_scheme="red",
                variant="soft",
                on_click=JobState.set_confirm_delete(True),
                id="job-delete",
            ),
            rx.button(
                rx.icon("square", size=14),
                "Cancel",
                color_scheme="gray",
                variant="soft",
                disabled=job["cancel_requested"] == "yes",
                on_click=JobState.cancel,
                id="job-cancel",
            ),
        ),
        rx.link(rx.button("All jobs", variant="soft"), href="/jobs"),
        align="center",
        spacing="3",
        width="100%",
        margin_bottom="1em",
    )


def _facts() -> rx.Component:
    job = JobState.job
    return rx.card(
        rx.data_list.root(
            _fact("App", rx.link(job["app"], href="/apps/" + job["app"]), id="job-app"),
            _fact("Release", job["version"], id="job-version"),
            _fact("Procedure", rx.code(job["procedure"]), id="job-procedure"),
            rx.cond(SessionState.is_admin, _fact("Owner", job["owner"], id="job-owner")),
            _fact("Attempt", job["attempt"], id="job-attempt"),
            _fact("Priority", job["priority"]),
            _fact("Time limit", job["time_limit"]),
            rx.cond(job["start_at"] != "", _fact("Not before", job["start_at"])),
            _fact("Created", job["created"]),
            _fact("Started", job["started"]),
            _fact("Finished", job["finished"], id="job-finished"),
            _fact("Exit code", job["exit_code"], id="job-exit-code"),
            _fact("Reason", job["reason"], id="job-reason"),
            _fact("Input case", _case_link(JobState.input_case, "job-input-download")),
            _fact("Output case", _case_link(JobState.output_case, "job-output-download")),
            _fact(
                "Arguments",
                rx.code(job["arguments"], white_space="pre-wrap", id="job-arguments"),
            ),
        ),
        width="100%",
    )


def _log_chunk(chunk: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.text.span(
        chunk["text"],
        color=rx.match(
            chunk["stream"],
            ("stderr", "var(--red-11)"),
            ("portal", "var(--amber-11)"),
            "inherit",
        ),
    )


def _log() -> rx.Component:
    return rx.vstack(
        rx.hstack(
            rx.heading("Log", size="4"),
            rx.cond(~JobState.finished, rx.spinner(size="1")),
            rx.cond(
                JobState.lines_dropped > 0,
                rx.text(
                    "Showing the last 2,000 lines; ",
                    JobState.lines_dropped,
                    " earlier lines are not shown (the REST API has them all).",
                    size="1",
                    color_scheme="gray",
                ),
            ),
            align="center",
            spacing="3",
        ),
        # column-reverse keeps the view at the newest lines as they arrive
        rx.box(
            rx.box(
                rx.foreach(JobState.log, _log_chunk),
                white_space="pre-wrap",
                overflow_wrap="anywhere",
            ),
            id="job-log",
            font_family="var(--code-font-family, monospace)",
            font_size="12px",
            background="var(--gray-a2)",
            border="1px solid var(--gray-a5)",
            border_radius="var(--radius-3)",
            padding="0.75em",
            width="100%",
            min_height="2.5em",
            max_height="32em",
            overflow_y="auto",
            display="flex",
            flex_direction="column-reverse",
        ),
        width="100%",
        spacing="2",
    )


def job_page() -> rx.Component:
    return shell(
        "",
        rx.cond(
            JobState.missing != "",
            rx.callout(JobState.missing, icon="circle-alert", color_scheme="red", id="job-missing"),
            rx.cond(
                JobState.job,
                rx.vstack(
                    _header(),
                    _facts(),
                    _log(),
                    confirm_dialog(
                        open_=JobState.confirm_delete,
                        on_open_change=JobState.set_confirm_delete,
                        title="Delete job " + JobState.job["id"] + "?",
                        description="Its log and its input and output cases are deleted too.",
                        action="Delete job",
                        on_confirm=JobState.delete,
                        element_id="job-delete-confirm",
                    ),
                    spacing="4",
                    width="100%",
                ),
                rx.center(rx.spinner(size="3"), height="20vh"),
            ),
        ),
    )
