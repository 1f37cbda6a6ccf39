"""Direct launch addresses: ``/launch/{app}`` and ``/launch/{app}/{version}``.

They resolve the release a launch would start and check the run right on the server.
Starting a session comes with data sessions; until then the page says what would run.
"""

from __future__ import annotations

import json
from typing import Any

import reflex as rx
from sqlmodel import Session

from aimms_portal.errors import NotFound, PermissionDenied, PortalError
from aimms_portal.models import User
from aimms_portal.services import apps
from aimms_portal.ui.layout import shell
from aimms_portal.ui.state import call_as_user, failure, path_segments

NOT_ALLOWED = "You may not run this app."
NOT_FOUND = "No such app or release."


def _target(session: Session, *, actor: User, name: str, version: str | None) -> dict[str, str]:
    app, release = apps.resolve_launch(session, actor=actor, name=name, version=version)
    manifest = json.loads(release.manifest)
    runtime = apps.runtime_labels(session, [release]).get(release.id or 0, "?")
    return {
        "name": app.name,
        "title": app.title or app.name,
        "version": release.version,
        "runtime": runtime,
        "webui": "yes" if manifest.get("webui") else "",
        "procedures": ", ".join(sorted(manifest.get("procedures") or {})) or "none",
        "latest": "yes" if release.id == app.latest_release_id else "",
    }


class LaunchState(rx.State):
    """What the launch address resolves to, or why it does not."""

    target: dict[str, str] = {}
    refusal: str = ""

    @rx.event
    async def load(self) -> Any:
        segments = path_segments(self)
        # /launch/{name} or /launch/{name}/{version}
        with_version = (self.router.route_id or "").rstrip("/").endswith("[version]")
        name = segments[-2] if with_version and len(segments) >= 2 else segments[-1]
        version = segments[-1] if with_version else None
        self.target, self.refusal = {}, ""
        try:
            self.target = await call_as_user(self, _target, name=name, version=version)
        except PermissionDenied:
            self.refusal = NOT_ALLOWED
        except NotFound:
            self.refusal = NOT_FOUND
        except PortalError as exc:
            self.refusal = exc.message
            return failure(exc)
        return None


def _fact(label: str, value: Any) -> rx.Component:
    return rx.data_list.item(
        rx.data_list.label(label),
        rx.data_list.value(value),
    )


def _resolved() -> rx.Component:
    target = LaunchState.target
    return rx.card(
        rx.vstack(
            rx.heading(target["title"], size="5", id="launch-title"),
            rx.data_list.root(
                _fact("App", rx.code(target["name"])),
                _fact(
                    "Release",
                    rx.hstack(
                        rx.text(target["version"], id="launch-version"),
                        rx.cond(
                            target["latest"] == "yes", rx.badge("latest", color_scheme="green")
                        ),
                        spacing="2",
                    ),
                ),
                _fact("Runtime", target["runtime"]),
                _fact("WebUI", rx.cond(target["webui"] == "yes", "yes", "no")),
                _fact("Solve procedures", target["procedures"]),
            ),
            rx.callout(
                "You may run this release. Starting sessions is not built yet: it arrives "
                "with data sessions, so nothing is started from this page today.",
                icon="construction",
                color_scheme="amber",
                id="launch-not-yet",
            ),
            rx.link("Back to the app", href="/apps/" + target["name"]),
            spacing="3",
        ),
        max_width="40em",
        id="launch-target",
    )


def _launch() -> rx.Component:
    return shell(
        "Launch",
        rx.cond(
            LaunchState.refusal != "",
            rx.callout(
                LaunchState.refusal,
                icon="ban",
                color_scheme="red",
                id="launch-refused",
                max_width="40em",
            ),
            rx.cond(
                LaunchState.target,
                _resolved(),
                rx.center(rx.spinner(size="3"), height="20vh"),
            ),
        ),
    )


def launch_page() -> rx.Component:
    return _launch()


def launch_version_page() -> rx.Component:
    return _launch()
