"""New job: choose an app you may run, a release, a procedure and an input case, then
submit; ``/jobs/new?app=<name>`` comes with the app chosen.

The input is an uploaded file (streamed into :func:`cases.upload_case`, never held
whole and never in Reflex's public upload folder), one of your cases, or none. The
form's own fields are checked before a byte is uploaded; if the portal then refuses
the job, the case uploaded for it is deleted again, so nothing is left behind.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import reflex as rx
from reflex.vars import ObjectVar
from sqlmodel import Session

from aimms_portal.db import session_scope
from aimms_portal.errors import InvalidInput, NotAuthenticated, PortalError
from aimms_portal.models import CaseKind, Release, User
from aimms_portal.services import apps, cases, jobs
from aimms_portal.ui.components import size_label
from aimms_portal.ui.layout import shell
from aimms_portal.ui.state import background_actor, call_as_user, call_service, failure, when
from aimms_portal.ui.uploads import (
    UploadProgressState,
    file_picker,
    stream_upload,
    upload_progress,
)

logger = logging.getLogger(__name__)

INPUT_UPLOAD = "new-job-input"
#: The release choice that means "whatever carries the latest tag at submission".
LATEST = "latest"
#: Input choices: upload a file, one of your cases, or none.
UPLOAD, CASE, NONE = "upload", "case", "none"
#: How many of your cases the form offers, newest first.
CASE_CHOICES = 100


def _procedures(release: Release) -> list[dict[str, str]]:
    procedures = json.loads(release.manifest).get("procedures") or {}
    return [
        {"name": name, "description": str((spec or {}).get("description") or "")}
        for name, spec in sorted(procedures.items())
    ]


def _release_choices(session: Session, *, actor: User, name: str) -> dict[str, Any]:
    """The releases of ``name`` the actor may see, with each one's procedures."""
    view = apps.get_app(session, actor=actor, name=name)
    releases = apps.list_releases(session, actor=actor, name=name)
    by_version = {r.version: _procedures(r) for r in releases}
    latest = view.latest.version if view.latest else ""
    if view.latest is not None:
        by_version[LATEST] = _procedures(view.latest)
    return {"versions": [r.version for r in releases], "latest": latest, "procedures": by_version}


def _form_data(session: Session, *, actor: User) -> dict[str, Any]:
    """The apps the actor may run and the actor's cases, in one unit of work."""
    runnable = [v for v in apps.catalogue(session, actor=actor) if v.can_run]
    own = cases.list_cases(session, actor=actor, limit=CASE_CHOICES)
    return {
        "apps": [{"name": v.app.name, "title": v.app.title or v.app.name} for v in runnable],
        "cases": [
            {
                "id": str(c.id),
                "label": f"{c.name} · {c.kind} · {size_label(c.size)} · {when(c.created_at)}",
            }
            for c in own.items
        ],
    }


def _store_input(*, actor: User, source: Any, source_ip: str, name: str, app: str) -> int:
    """Store an uploaded input case (for :func:`stream_upload`); its id."""
    del source_ip  # storing one's own case is not audited
    with session_scope() as session:
        case = cases.upload_case(
            session, actor=actor, name=name, source=source, app=app, kind=CaseKind.input.value
        )
        return case.id or 0


def _parsed(fields: dict[str, str]) -> dict[str, Any]:
    """The form's fields as :func:`jobs.submit_job` takes them; the service checks the rest.

    Raises:
        InvalidInput: a field that is not what it says (the message says which).
    """
    text = fields["arguments"].strip()
    try:
        arguments = json.loads(text) if text else None
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            f"The arguments are not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno}).",
            code="invalid_arguments",
        ) from None
    try:
        priority = int(fields["priority"].strip() or "0")
    except ValueError:
        raise InvalidInput("The priority must be a whole number, e.g. 0 or -10.") from None
    limit_text = fields["time_limit"].strip()
    try:
        time_limit = int(limit_text) if limit_text else None
    except ValueError:
        raise InvalidInput(
            "The time limit must be a whole number of seconds, or empty for the app's limit."
        ) from None
    start_text = fields["start_at"].strip()
    try:
        start_at = datetime.fromisoformat(start_text).replace(tzinfo=UTC) if start_text else None
    except ValueError:
        raise InvalidInput("The start time must look like 2026-12-24 18:00 (UTC).") from None
    return {
        "app": fields["app"],
        "version": None if fields["version"] == LATEST else fields["version"],
        "procedure": fields["procedure"],
        "arguments": arguments,
        "priority": priority,
        "time_limit_s": time_limit,
        "start_at": start_at,
    }


class NewJobState(UploadProgressState, rx.State):
    """The New-job form: the choices offered and what is chosen."""

    apps: list[dict[str, str]] = []
    app: str = ""
    versions: list[str] = []
    latest_version: str = ""
    version: str = LATEST
    procedures: list[dict[str, str]] = []
    procedure: str = ""
    cases: list[dict[str, str]] = []
    input_mode: str = UPLOAD
    case_id: str = ""
    arguments: str = "{}"
    priority: str = "0"
    time_limit: str = ""
    start_at: str = ""
    error: str = ""
    loaded: bool = False
    submitting: bool = False
    #: Each release's procedures, by version (and under ``latest``).
    _by_version: dict[str, list[dict[str, str]]] = {}

    @rx.var
    def procedure_description(self) -> str:
        for p in self.procedures:
            if p["name"] == self.procedure:
                return p["description"]
        return ""

    @rx.var
    def latest_label(self) -> str:
        return f"latest ({self.latest_version})" if self.latest_version else LATEST

    def _fields(self) -> dict[str, str]:
        return {
            "app": self.app,
            "version": self.version,
            "procedure": self.procedure,
            "arguments": self.arguments,
            "priority": self.priority,
            "time_limit": self.time_limit,
            "start_at": self.start_at,
        }

    @rx.event
    async def load(self) -> Any:
        """Page loader: the apps you may run, your cases, and the app from ``?app=``."""
        wanted = (self.router.url.query_parameters.get("app") or "").strip().lower()
        # a new form each time; the app stays chosen unless the address names another
        self.error, self.phase, self.submitting = "", "", False
        self.input_mode, self.arguments, self.priority = UPLOAD, "{}", "0"
        self.time_limit = self.start_at = ""
        try:
            data = await call_as_user(self, _form_data)
        except PortalError as exc:
            return failure(exc)
        self.apps, self.cases = data["apps"], data["cases"]
        self.loaded = True
        names = [a["name"] for a in self.apps]
        if self.case_id not in {c["id"] for c in self.cases}:
            self.case_id = self.cases[0]["id"] if self.cases else ""
        app = wanted if wanted in names else (self.app if self.app in names else "")
        if not app and names:
            app = names[0]
        return await self._choose_app(app)

    async def _choose_app(self, name: str) -> Any:
        self.app = name
        self.versions, self.latest_version, self._by_version = [], "", {}
        self.version, self.procedures, self.procedure = LATEST, [], ""
        if not name:
            return None
        try:
            choices = await call_as_user(self, _release_choices, name=name)
        except PortalError as exc:
            return failure(exc)
        self.versions = choices["versions"]
        self.latest_version = choices["latest"]
        self._by_version = choices["procedures"]
        self._show_procedures()
        return None

    def _show_procedures(self) -> None:
        self.procedures = self._by_version.get(self.version, [])
        names = [p["name"] for p in self.procedures]
        if self.procedure not in names:
            self.procedure = names[0] if names else ""

    @rx.event
    async def choose_app(self, name: str) -> Any:
        self.error = ""
        if name not in {a["name"] for a in self.apps}:
            return None
        return await self._choose_app(name)

    @rx.event
    def choose_version(self, version: str) -> None:
        self.version = version if version in self._by_version else LATEST
        self._show_procedures()

    @rx.event
    def choose_procedure(self, name: str) -> None:
        self.procedure = name[:64]

    @rx.event
    def set_input_mode(self, mode: str) -> None:
        self.input_mode = mode if mode in (UPLOAD, CASE, NONE) else UPLOAD

    @rx.event
    def set_case_id(self, case_id: str) -> None:
        self.case_id = case_id

    @rx.event
    def set_arguments(self, text: str) -> None:
        self.arguments = text[: jobs.MAX_ARGUMENTS_BYTES + 1]

    @rx.event
    def set_priority(self, text: str) -> None:
        self.priority = text[:8]

    @rx.event
    def set_time_limit(self, text: str) -> None:
        self.time_limit = text[:12]

    @rx.event
    def set_start_at(self, text: str) -> None:
        self.start_at = text[:32]

    @rx.event
    async def submit(self) -> Any:
        """Submit with one of your cases as input, or none."""
        self.error = ""
        try:
            request = _parsed(self._fields())
            if self.input_mode == CASE:
                if not self.case_id.isdigit():
                    raise InvalidInput("Choose one of your cases as the input.")
                request["input_case_id"] = int(self.case_id)
            view = await call_as_user(self, jobs.submit_job, **request)
        except NotAuthenticated as exc:
            return failure(exc)
        except PortalError as exc:
            self.error = exc.message
            return None
        return _submitted(view.job.id or 0)

    @rx.event(background=True)
    async def submit_upload(self, chunks: rx.UploadChunkIterator, chosen: list[str]) -> Any:
        """Upload the chosen file as an input case, then submit the job with it."""
        async with self:
            self.error = ""
            self.submitting = True
            fields = self._fields()
        name = (chosen[0] if chosen else "").replace("\\", "/").rsplit("/", 1)[-1]
        case_id = 0
        try:
            request = _parsed(fields)  # before a byte is read
            case_id = await stream_upload(self, chunks, _store_input, name=name, app=request["app"])
            actor = await background_actor(self)
            view = await call_service(
                jobs.submit_job, actor=actor, input_case_id=case_id, **request
            )
        except PortalError as exc:
            if case_id:
                await _forget_case(self, case_id)
            async with self:
                self.submitting = False
                self.error = exc.message
                if case_id:
                    self._finish(False, exc.message)
                else:
                    self.phase = ""  # refused before the upload was taken
            return None
        async with self:
            self.submitting = False
            self._finish(True, "")
        return [rx.clear_selected_files(INPUT_UPLOAD), *_submitted(view.job.id or 0)]


async def _forget_case(state: rx.State, case_id: int) -> None:
    """Delete the case uploaded for a job the portal refused (best effort)."""
    try:
        actor = await background_actor(state)
        await call_service(cases.delete_case, actor=actor, case_id=case_id)
    except PortalError as exc:
        logger.warning("could not delete case %s of a refused job: %s", case_id, exc.message)


def _submitted(job_id: int) -> list[Any]:
    return [rx.toast.success(f"Job {job_id} submitted."), rx.redirect(f"/jobs/{job_id}")]


# -- the page --------------------------------------------------------------------------


def _field(label: str, control: rx.Component, hint: Any = None) -> rx.Component:
    return rx.vstack(
        rx.text(label, size="2", weight="medium"),
        control,
        *([rx.text(hint, size="1", color_scheme="gray")] if hint is not None else []),
        spacing="1",
        width="100%",
    )


def _app_select() -> rx.Component:
    return rx.select.root(
        rx.select.trigger(placeholder="Choose an app", id="new-job-app", width="100%"),
        rx.select.content(
            rx.foreach(
                NewJobState.apps,
                lambda a: rx.select.item(a["title"] + " (" + a["name"] + ")", value=a["name"]),
            )
        ),
        value=NewJobState.app,
        on_change=NewJobState.choose_app,
    )


def _version_select() -> rx.Component:
    return rx.select.root(
        rx.select.trigger(id="new-job-version", width="100%"),
        rx.select.content(
            rx.select.item(NewJobState.latest_label, value=LATEST),
            rx.foreach(NewJobState.versions, lambda v: rx.select.item(v, value=v)),
        ),
        value=NewJobState.version,
        on_change=NewJobState.choose_version,
    )


def _procedure_select() -> rx.Component:
    return rx.select.root(
        rx.select.trigger(placeholder="Choose a procedure", id="new-job-procedure", width="100%"),
        rx.select.content(
            rx.foreach(
                NewJobState.procedures,
                lambda p: rx.select.item(p["name"], value=p["name"]),
            )
        ),
        value=NewJobState.procedure,
        on_change=NewJobState.choose_procedure,
    )


def _case_item(case: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.select.item(case["label"], value=case["id"])


def _input() -> rx.Component:
    return rx.vstack(
        rx.text("Input case", size="2", weight="medium"),
        rx.radio_group.root(
            rx.hstack(
                rx.radio_group.item(value=UPLOAD, id="new-job-input-upload"),
                rx.text("Upload a file", size="2"),
                rx.radio_group.item(value=CASE, id="new-job-input-case"),
                rx.text("One of your cases", size="2"),
                rx.radio_group.item(value=NONE, id="new-job-input-none"),
                rx.text("None", size="2"),
                spacing="2",
                align="center",
            ),
            value=NewJobState.input_mode,
            on_change=NewJobState.set_input_mode,
        ),
        rx.match(
            NewJobState.input_mode,
            (UPLOAD, file_picker(INPUT_UPLOAD, "Input file: drop it here or click to choose")),
            (
                CASE,
                rx.cond(
                    NewJobState.cases,
                    rx.select.root(
                        rx.select.trigger(id="new-job-case", width="100%"),
                        rx.select.content(rx.foreach(NewJobState.cases, _case_item)),
                        value=NewJobState.case_id,
                        on_change=NewJobState.set_case_id,
                    ),
                    rx.text("You have no cases yet.", size="2", color_scheme="gray"),
                ),
            ),
            rx.text("The procedure runs without an input case.", size="2", color_scheme="gray"),
        ),
        spacing="2",
        width="100%",
    )


def _submit_button() -> rx.Component:
    chosen = rx.selected_files(INPUT_UPLOAD).length() > 0  # type: ignore[attr-defined]
    ready = (NewJobState.app != "") & (NewJobState.procedure != "")
    return rx.cond(
        NewJobState.input_mode == UPLOAD,
        rx.button(
            rx.icon("play", size=16),
            "Submit",
            id="new-job-submit",
            loading=NewJobState.submitting,
            disabled=~(ready & chosen),
            on_click=[
                NewJobState.begin_upload,
                NewJobState.submit_upload(  # type: ignore[misc]
                    rx.upload_files_chunk(
                        upload_id=INPUT_UPLOAD, on_upload_progress=NewJobState.on_progress
                    ),
                    rx.selected_files(INPUT_UPLOAD),
                ),
            ],
        ),
        rx.button(
            rx.icon("play", size=16),
            "Submit",
            id="new-job-submit",
            disabled=~ready,
            on_click=NewJobState.submit,
        ),
    )


def _form() -> rx.Component:
    return rx.card(
        rx.vstack(
            _field("App", _app_select()),
            _field("Release", _version_select()),
            _field(
                "Procedure",
                rx.cond(
                    NewJobState.procedures,
                    _procedure_select(),
                    rx.text(
                        "This release has no solve procedures.",
                        size="2",
                        color_scheme="gray",
                        id="new-job-no-procedures",
                    ),
                ),
                rx.text(NewJobState.procedure_description, id="new-job-procedure-description"),
            ),
            _input(),
            _field(
                "Arguments (a JSON object)",
                rx.text_area(
                    value=NewJobState.arguments,
                    on_change=NewJobState.set_arguments,
                    rows="4",
                    font_family="monospace",
                    width="100%",
                    id="new-job-arguments",
                ),
                'Handed to the procedure as a file; e.g. {"reverse": true}.',
            ),
            rx.grid(
                _field(
                    "Priority",
                    rx.input(
                        value=NewJobState.priority,
                        on_change=NewJobState.set_priority,
                        type="number",
                        id="new-job-priority",
                        width="100%",
                    ),
                    "-100 to 100; above 0 for admins only.",
                ),
                _field(
                    "Time limit (seconds)",
                    rx.input(
                        value=NewJobState.time_limit,
                        on_change=NewJobState.set_time_limit,
                        type="number",
                        placeholder="the app's limit",
                        id="new-job-time-limit",
                        width="100%",
                    ),
                ),
                _field(
                    "Start at (UTC)",
                    rx.input(
                        value=NewJobState.start_at,
                        on_change=NewJobState.set_start_at,
                        type="datetime-local",
                        id="new-job-start-at",
                        width="100%",
                    ),
                    "Empty: as soon as possible.",
                ),
                columns=rx.breakpoints(initial="1", sm="3"),
                spacing="3",
                width="100%",
            ),
            rx.cond(
                NewJobState.error != "",
                rx.callout(
                    NewJobState.error,
                    icon="triangle-alert",
                    color_scheme="red",
                    id="new-job-error",
                    width="100%",
                ),
            ),
            _submit_button(),
            upload_progress(NewJobState, "new-job-progress"),
            spacing="4",
            width="100%",
        ),
        max_width="44em",
    )


def new_job_page() -> rx.Component:
    return shell(
        "New job",
        rx.cond(
            NewJobState.apps,
            _form(),
            rx.cond(
                NewJobState.loaded,
                rx.callout(
                    "There is no app you may run. Ask a publisher for the run right on one.",
                    icon="info",
                    id="new-job-no-apps",
                ),
                rx.center(rx.spinner(size="3"), height="20vh"),
            ),
        ),
    )
