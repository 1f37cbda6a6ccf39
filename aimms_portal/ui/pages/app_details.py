"""One app: its releases, ``latest``, hide and roll back, the access editor, rights check.

Everyone who may read the app sees its releases; the controls that change something
are shown only to writers, and the services refuse them to anyone else anyway.
"""

from __future__ import annotations

import json
from typing import Any

import reflex as rx
from reflex.vars import ObjectVar
from sqlmodel import Session

from aimms_portal.errors import PortalError
from aimms_portal.models import AppRight, Release, User
from aimms_portal.services import app_access, apps
from aimms_portal.ui.components import confirm_dialog, data_table, size_label
from aimms_portal.ui.layout import shell
from aimms_portal.ui.pages.catalogue import app_icon, icon_url
from aimms_portal.ui.pages.launch import desktop_dialog, launch_menu
from aimms_portal.ui.state import call_as_user, failure, path_segments, when

RIGHTS = [r.value for r in AppRight]


def _app_data(session: Session, *, actor: User, name: str) -> dict[str, Any]:
    # one unit of work for the whole page: the app, its releases and (writers) its grants
    view = apps.get_app(session, actor=actor, name=name)
    releases = apps.list_releases(session, actor=actor, name=name)
    runtimes = apps.runtime_labels(session, releases)
    grants = app_access.list_grants(session, actor=actor, name=name) if view.can_write else []
    latest_id = view.app.latest_release_id
    return {
        "app": {
            "name": view.app.name,
            "title": view.app.title or view.app.name,
            "description": view.app.description,
            "category": view.app.category,
            "icon": icon_url(view),
        },
        "can_write": view.can_write,
        "can_run": view.can_run,
        "releases": [_release_row(r, runtimes, latest_id) for r in releases],
        "grants": [
            {
                "id": str(g.grant.id),
                "principal_type": g.grant.principal_type,
                "principal_name": g.principal_name,
                "right": g.grant.right,
                "effect": g.grant.effect,
                "created_by": g.grant.created_by,
            }
            for g in grants
        ],
    }


def _release_row(
    release: Release, runtimes: dict[int, str], latest_id: int | None
) -> dict[str, str]:
    manifest = json.loads(release.manifest)
    return {
        "version": release.version,
        "runtime": runtimes.get(release.id or 0, "?"),
        "published_by": release.published_by,
        "published_at": when(release.created_at),
        "hidden": "yes" if release.hidden else "",
        "latest": "yes" if release.id == latest_id else "",
        "encrypted": "yes" if release.encrypted else "",
        "procedures": ", ".join(sorted(manifest.get("procedures") or {})) or "—",
        "webui": "yes" if manifest.get("webui") else "",
        "size": size_label(release.bundle_size),
    }


class AppState(rx.State):
    """The app shown by ``/apps/[name]``; only what the signed-on user may see."""

    name: str = ""
    app: dict[str, str] = {}
    can_write: bool = False
    can_run: bool = False
    releases: list[dict[str, str]] = []
    grants: list[dict[str, str]] = []
    missing: str = ""
    confirm_release: str = ""
    confirm_app: bool = False
    explained_user: str = ""
    explanation: list[dict[str, str]] = []

    @rx.event
    async def load(self) -> Any:
        segments = path_segments(self)
        name = segments[-1] if segments else ""
        if name != self.name:
            # another app: show nothing of the previous one while this one loads
            self.app, self.releases, self.grants = {}, [], []
            self.explained_user, self.explanation = "", []
        self.name = name
        return AppState.refresh

    @rx.event
    async def refresh(self) -> Any:
        try:
            data = await call_as_user(self, _app_data, name=self.name)
        except PortalError as exc:
            self.app, self.releases, self.grants = {}, [], []
            self.can_write = self.can_run = False
            self.missing = exc.message
            return None if exc.code == "not_found" else failure(exc)
        self.missing = ""
        self.app = data["app"]
        self.can_write = data["can_write"]
        self.can_run = data["can_run"]
        self.releases = data["releases"]
        self.grants = data["grants"]
        return None

    async def _change(self, fn: Any, done: str, **kwargs: Any) -> Any:
        try:
            await call_as_user(self, fn, name=self.name, **kwargs)
        except PortalError as exc:
            return [failure(exc), AppState.refresh]
        return [rx.toast.success(done), AppState.refresh]

    @rx.event
    async def make_latest(self, version: str) -> Any:
        return await self._change(
            apps.set_latest, f"{version} is the latest release now.", version=version
        )

    @rx.event
    async def set_hidden(self, version: str, hidden: bool) -> Any:
        done = f"{version} is hidden." if hidden else f"{version} is shown again."
        return await self._change(apps.set_hidden, done, version=version, hidden=hidden)

    @rx.event
    def ask_delete_release(self, version: str) -> None:
        self.confirm_release = version

    @rx.event
    def close_delete_release(self, open_: bool = False) -> None:
        if not open_:
            self.confirm_release = ""

    @rx.event
    async def delete_release(self) -> Any:
        version, self.confirm_release = self.confirm_release, ""
        return await self._change(apps.delete_release, f"{version} deleted.", version=version)

    @rx.event
    def set_confirm_app(self, open_: bool) -> None:
        self.confirm_app = open_

    @rx.event
    async def delete_app(self) -> Any:
        self.confirm_app = False
        try:
            await call_as_user(self, apps.delete_app, name=self.name)
        except PortalError as exc:
            return failure(exc)
        return [rx.toast.success(f"App {self.name} deleted."), rx.redirect("/")]

    @rx.event
    async def add_grant(self, form: dict[str, Any]) -> Any:
        principal = str(form.get("principal_name", "")).strip()[:64]
        return await self._change(
            app_access.set_grant,
            f"{form.get('effect')} {form.get('right')} for {principal} saved.",
            principal_type=str(form.get("principal_type") or "group"),
            principal_name=principal,
            right=str(form.get("right") or "read"),
            effect=str(form.get("effect") or "allow"),
        )

    @rx.event
    async def remove_grant(self, grant_id: str) -> Any:
        return await self._change(
            app_access.delete_grant, "Grant removed.", grant_id=int(grant_id or 0)
        )

    @rx.event
    async def explain(self, form: dict[str, Any]) -> Any:
        username = str(form.get("username", "")).strip()[:64]
        try:
            target, decisions = await call_as_user(
                self, app_access.explain_rights, name=self.name, username=username
            )
        except PortalError as exc:
            self.explained_user, self.explanation = "", []
            return failure(exc)
        self.explained_user = target.username
        self.explanation = [
            {
                "right": right,
                "allowed": "yes" if decision.allowed else "",
                "reason": decision.reason,
            }
            for right, decision in decisions.items()
        ]
        return None


def _header() -> rx.Component:
    app = AppState.app
    return rx.hstack(
        app_icon(app["icon"], size="64px"),
        rx.vstack(
            rx.heading(app["title"], size="6", id="app-title"),
            rx.hstack(
                rx.code(app["name"]),
                rx.cond(app["category"] != "", rx.badge(app["category"], variant="soft")),
                spacing="2",
                align="center",
            ),
            rx.text(
                app["description"],
                color_scheme="gray",
                id="app-description",
                white_space="pre-wrap",
                overflow_wrap="anywhere",
            ),
            spacing="2",
            flex="1",
            min_width="0",
        ),
        rx.vstack(
            rx.cond(AppState.can_run, launch_menu(AppState.name, "app-launch")),
            rx.cond(
                AppState.can_write,
                rx.link(
                    rx.button(rx.icon("upload", size=16), "Publish a release", variant="soft"),
                    href="/publish",
                ),
            ),
            align="end",
            spacing="2",
        ),
        spacing="4",
        align="start",
        width="100%",
        margin_bottom="1.5em",
    )


def _release_actions(row: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.hstack(
        rx.cond(
            row["latest"] != "yes",
            rx.button(
                "Make latest",
                size="1",
                variant="soft",
                on_click=AppState.make_latest(row["version"]),
            ),
        ),
        rx.cond(
            row["latest"] != "yes",
            rx.cond(
                row["hidden"] == "yes",
                rx.button(
                    "Show",
                    size="1",
                    variant="soft",
                    color_scheme="gray",
                    on_click=AppState.set_hidden(row["version"], False),
                ),
                rx.button(
                    "Hide",
                    size="1",
                    variant="soft",
                    color_scheme="gray",
                    on_click=AppState.set_hidden(row["version"], True),
                ),
            ),
        ),
        rx.cond(
            row["latest"] != "yes",
            rx.button(
                "Delete",
                size="1",
                variant="soft",
                color_scheme="red",
                on_click=AppState.ask_delete_release(row["version"]),
            ),
        ),
        spacing="2",
    )


def _release_row_view(row: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            rx.hstack(
                rx.text.strong(row["version"]),
                rx.cond(
                    row["latest"] == "yes",
                    rx.badge("latest", color_scheme="green", class_name="latest-badge"),
                ),
                rx.cond(
                    row["hidden"] == "yes",
                    rx.badge("hidden", color_scheme="gray", class_name="hidden-badge"),
                ),
                rx.cond(
                    row["encrypted"] == "yes",
                    rx.badge("encrypted", color_scheme="amber", class_name="encrypted-badge"),
                ),
                spacing="2",
                align="center",
            )
        ),
        rx.table.cell(row["runtime"]),
        rx.table.cell(row["procedures"]),
        rx.table.cell(row["size"], white_space="nowrap"),
        rx.table.cell(
            rx.text(row["published_at"], " by ", row["published_by"], size="1"),
        ),
        rx.cond(AppState.can_write, rx.table.cell(_release_actions(row))),
        id="release-row-" + row["version"],
    )


def _releases() -> rx.Component:
    return rx.vstack(
        rx.heading("Releases", size="4"),
        rx.table.root(
            rx.table.header(
                rx.table.row(
                    rx.table.column_header_cell("Version"),
                    rx.table.column_header_cell("Runtime"),
                    rx.table.column_header_cell("Procedures"),
                    rx.table.column_header_cell("Size"),
                    rx.table.column_header_cell("Published"),
                    rx.cond(AppState.can_write, rx.table.column_header_cell("")),
                )
            ),
            rx.table.body(rx.foreach(AppState.releases, _release_row_view)),
            id="releases-table",
            width="100%",
        ),
        width="100%",
        margin_bottom="1.5em",
    )


def _grant_row(grant: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            rx.text(grant["principal_type"], " ", rx.text.strong(grant["principal_name"]))
        ),
        rx.table.cell(grant["right"]),
        rx.table.cell(
            rx.cond(
                grant["effect"] == "deny",
                rx.badge("deny", color_scheme="red"),
                rx.badge("allow", color_scheme="green"),
            )
        ),
        rx.table.cell(rx.text(grant["created_by"], size="1", color_scheme="gray")),
        rx.table.cell(
            rx.button(
                "Remove",
                size="1",
                variant="soft",
                color_scheme="red",
                on_click=AppState.remove_grant(grant["id"]),
            )
        ),
        id="grant-row-"
        + grant["principal_type"]
        + "-"
        + grant["principal_name"]
        + "-"
        + grant["right"],
    )


def _grant_form() -> rx.Component:
    return rx.form(
        rx.hstack(
            rx.select(
                ["group", "user"], name="principal_type", default_value="group", id="grant-type"
            ),
            rx.input(
                name="principal_name",
                placeholder="group or user name",
                required=True,
                max_length=64,
                id="grant-name",
                width="12em",
            ),
            rx.select(RIGHTS, name="right", default_value="run", id="grant-right"),
            rx.select(["allow", "deny"], name="effect", default_value="allow", id="grant-effect"),
            rx.button("Add", type="submit", id="grant-add"),
            spacing="2",
            wrap="wrap",
        ),
        on_submit=AppState.add_grant,
        reset_on_submit=True,
        margin_bottom="0.75em",
    )


def _access() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.heading("Access", size="4"),
            rx.text(
                "read: see the app · write: change it, publish, grant · run: launch it. "
                "A deny beats every allow; without a grant there is no access.",
                size="2",
                color_scheme="gray",
            ),
            _grant_form(),
            rx.cond(
                AppState.grants,
                data_table(
                    ("Who", "Right", "Effect", "Granted by", ""),
                    AppState.grants,
                    _grant_row,
                    id="grants-table",
                    width="100%",
                ),
                rx.text("No grants: only admins can see this app.", size="2"),
            ),
            spacing="3",
            width="100%",
        ),
        width="100%",
    )


def _explanation_row(row: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.text.strong(row["right"])),
        rx.table.cell(
            rx.cond(
                row["allowed"] == "yes",
                rx.badge("yes", color_scheme="green"),
                rx.badge("no", color_scheme="red"),
            )
        ),
        rx.table.cell(row["reason"]),
        id="explain-" + row["right"],
    )


def _rights_check() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.heading("Check someone's rights", size="4"),
            rx.form(
                rx.hstack(
                    rx.input(
                        name="username",
                        placeholder="user name",
                        required=True,
                        max_length=64,
                        id="explain-username",
                    ),
                    rx.button("Check", type="submit", variant="soft", id="explain-submit"),
                ),
                on_submit=AppState.explain,
            ),
            rx.cond(
                AppState.explained_user != "",
                rx.vstack(
                    rx.text("Effective rights of ", rx.text.strong(AppState.explained_user)),
                    data_table(
                        ("Right", "Held", "Decided by"),
                        AppState.explanation,
                        _explanation_row,
                        id="explain-table",
                        width="100%",
                    ),
                    width="100%",
                ),
            ),
            spacing="3",
            width="100%",
        ),
        width="100%",
    )


def _danger_zone() -> rx.Component:
    return rx.hstack(
        rx.spacer(),
        rx.button(
            rx.icon("trash-2", size=14),
            "Delete app",
            color_scheme="red",
            variant="soft",
            on_click=AppState.set_confirm_app(True),
            id="app-delete",
        ),
        width="100%",
        margin_top="1.5em",
    )


def _dialogs() -> rx.Component:
    return rx.fragment(
        confirm_dialog(
            open_=AppState.confirm_release != "",
            on_open_change=AppState.close_delete_release,
            title="Delete release " + AppState.confirm_release + "?",
            description="Its bundle is removed from storage. This cannot be undone.",
            action="Delete release",
            on_confirm=AppState.delete_release,
            element_id="release-delete-confirm",
        ),
        confirm_dialog(
            open_=AppState.confirm_app,
            on_open_change=AppState.set_confirm_app,
            title="Delete the app " + AppState.name + "?",
            description="All its releases, bundles and grants are removed. This cannot be undone.",
            action="Delete app",
            on_confirm=AppState.delete_app,
            element_id="app-delete-confirm",
        ),
    )


def app_page() -> rx.Component:
    return shell(
        "",
        desktop_dialog(),
        rx.cond(
            AppState.missing != "",
            rx.callout(
                AppState.missing,
                icon="circle-alert",
                color_scheme="red",
                id="app-missing",
            ),
            rx.cond(
                AppState.app,
                rx.box(
                    _header(),
                    _releases(),
                    rx.cond(
                        AppState.can_write,
                        rx.box(
                            rx.grid(
                                _access(),
                                _rights_check(),
                                columns=rx.breakpoints(initial="1", md="2"),
                                spacing="4",
                                width="100%",
                            ),
                            _danger_zone(),
                            _dialogs(),
                        ),
                    ),
                    width="100%",
                ),
                rx.center(rx.spinner(size="3"), height="20vh"),
            ),
        ),
    )
