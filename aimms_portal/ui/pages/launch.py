"""Launching an app: ``/launch/{app}`` and ``/launch/{app}/{version}``.

The page resolves the release a launch would start and checks the run right on the
server. "Open in the browser" (or ``?start=1`` in the address) starts a WebUI session
through :func:`aimms_portal.services.sessions.launch_session`; a background event then
follows the session about every second, showing its state and timeline, until it is
``ready`` (the browser goes to the session's address under the proxy) or has ended
(the reason and the last lines of its log, with "Try again"). The loop stops early as
the Jobs page's loop does (see :mod:`aimms_portal.ui.pages.jobs`). The page also shows
the commands that run the release on the user's own computer instead.

:func:`launch_menu` is the Launch button of the catalogue and the app page: "In the
browser" starts a WebUI session here (``?start=1``), "Run on my computer" shows the
same commands as this page in :func:`desktop_dialog`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shlex
from typing import Any

import reflex as rx
from reflex.vars import ObjectVar
from sqlmodel import Session

from aimms_portal.aio import run_blocking
from aimms_portal.config import get_settings
from aimms_portal.errors import NotAuthenticated, NotFound, PermissionDenied, PortalError
from aimms_portal.models import ENDED_SESSION_STATES, SessionKind, User
from aimms_portal.models import SessionState as Lifecycle
from aimms_portal.services import apps, sessions
from aimms_portal.services.sessions import SessionView
from aimms_portal.ui.layout import shell
from aimms_portal.ui.pages.jobs import keep_watching, route_of
from aimms_portal.ui.state import (
    actor_of,
    background_actor,
    call_as_user,
    call_service,
    failure,
    path_segments,
)

logger = logging.getLogger(__name__)

NOT_ALLOWED = "You may not run this app."
NOT_FOUND = "No such app or release."
#: How often the page looks at a session it started until it is ready or has ended.
REFRESH_SECONDS = 1.0
#: Lines of a failed session's log the page shows.
LOG_LINES = 40
ENDED = {s.value for s in ENDED_SESSION_STATES}

#: Badge colours of the session states (the Sessions page uses them too).
SESSION_STATE_COLORS = {
    "pending": "gray",
    "starting": "amber",
    "ready": "green",
    "stopping": "orange",
    "stopped": "gray",
    "failed": "red",
}


def session_state_badge(state: Any, **props: Any) -> rx.Component:
    """A session state as a coloured badge."""
    color = rx.match(state, *SESSION_STATE_COLORS.items(), "gray")
    return rx.badge(state, color_scheme=color, variant="soft", **props)


def clock(moment: Any) -> str:
    """A timestamp to the second, for timelines: ``2026-12-03 18:42:07`` (UTC)."""
    return moment.strftime("%Y-%m-%d %H:%M:%S") if moment else ""


def session_timeline(session: Session, *, actor: User, session_id: int) -> list[dict[str, str]]:
    """The session's state changes, oldest first, as the pages show them."""
    return [
        {"id": str(e.id), "state": e.state, "at": clock(e.at), "detail": e.detail}
        for e in sessions.timeline(session, actor=actor, session_id=session_id)
    ]


def desktop_commands(app: str, version: str) -> dict[str, str]:
    """The commands that run release ``version`` of ``app`` on the user's own computer:
    log on to this portal once, then start it (quoted for a POSIX shell)."""
    return {
        "desktop_login": f"aimms-portal login {shlex.quote(get_settings().public_url)}",
        "desktop_command": (
            f"aimms-portal desktop {shlex.quote(app)} --version {shlex.quote(version)}"
        ),
    }


def _target(session: Session, *, actor: User, name: str, version: str | None) -> dict[str, str]:
    app, release = apps.resolve_launch(session, actor=actor, name=name, version=version)
    manifest = json.loads(release.manifest)
    runtime = apps.runtime_labels(session, [release]).get(release.id or 0, "?")
    return {
        "name": app.name,
        "title": app.title or app.name,
        "version": release.version,
        "runtime": runtime,
        "webui": "yes" if (manifest.get("webui") or {}).get("command") else "",
        "procedures": ", ".join(sorted(manifest.get("procedures") or {})) or "none",
        "latest": "yes" if release.id == app.latest_release_id else "",
        **desktop_commands(app.name, release.version),
    }


def _fields(view: SessionView) -> dict[str, str]:
    s = view.session
    return {"id": str(s.id), "state": s.state, "reason": s.reason, "url": view.url or ""}


def _progress(session: Session, *, actor: User, session_id: int) -> dict[str, Any]:
    """The session and its timeline, in one unit of work."""
    view = sessions.get_session(session, actor=actor, session_id=session_id)
    return {
        "session": _fields(view),
        "timeline": session_timeline(session, actor=actor, session_id=session_id),
    }


def _open_script(url: str) -> Any:
    # a full page load: the proxy's pages are not routes of this front end, which
    # rx.redirect would look up without asking the server
    return rx.call_script(f"window.location.assign({json.dumps(url)})")


class LaunchState(rx.State):
    """What the launch address resolves to, and the session this tab started from it."""

    target: dict[str, str] = {}
    #: Why the address cannot be launched at all (no such release, no run right).
    refusal: str = ""
    #: Why the portal refused the last start (no free seat, untrusted runtime, ...).
    start_refusal: str = ""
    #: Its code: ``no_free_seats`` comes with a link to the Sessions page.
    start_refusal_code: str = ""
    launching: bool = False
    session: dict[str, str] = {}
    timeline: list[dict[str, str]] = []
    log_lines: list[str] = []
    _loop: int = 0

    @rx.var
    def phase(self) -> str:
        """``""`` (nothing started), ``live``, ``ready``, ``stopped`` or ``failed``."""
        state = self.session.get("state", "")
        if not state:
            return ""
        if state in (Lifecycle.ready.value, Lifecycle.stopped.value, Lifecycle.failed.value):
            return state
        return "stopped" if state == Lifecycle.stopping.value else "live"

    def _release(self) -> tuple[str, str | None]:
        segments = path_segments(self)
        # /launch/{name} or /launch/{name}/{version}
        with_version = (self.router.route_id or "").rstrip("/").endswith("[version]")
        name = segments[-2] if with_version and len(segments) >= 2 else segments[-1]
        return name, segments[-1] if with_version else None

    def _forget_session(self) -> None:
        self.session, self.timeline, self.log_lines = {}, [], []
        self.start_refusal, self.start_refusal_code = "", ""

    @rx.event
    async def load(self) -> Any:
        self._loop += 1  # a loop of the page shown before stops
        self.target, self.refusal, self.launching = {}, "", False
        self._forget_session()
        name, version = self._release()
        try:
            self.target = await call_as_user(self, _target, name=name, version=version)
        except PermissionDenied:
            self.refusal = NOT_ALLOWED
        except NotFound:
            self.refusal = NOT_FOUND
        except PortalError as exc:
            self.refusal = exc.message
            return failure(exc)
        if self.router.url.query_parameters.get("start") == "1":
            # drop ?start=1 first, so that going back to this page does not start again
            return [
                rx.call_script("history.replaceState(history.state, '', location.pathname)"),
                LaunchState.start,
            ]
        return None

    @rx.event
    async def start(self) -> Any:
        """Start a WebUI session of the release shown, then follow it."""
        if not self.target or self.launching:
            return
        self._forget_session()
        self.launching = True
        yield  # the button shows that it works
        try:
            actor = await actor_of(self)
            view, _ = await run_blocking(
                sessions.launch_session,
                actor=actor,
                app=self.target["name"],
                version=self.target["version"],
                kind=SessionKind.webui.value,
            )
        except NotAuthenticated as exc:
            yield failure(exc)
            return
        except PortalError as exc:
            self.start_refusal, self.start_refusal_code = exc.message, exc.code
            return
        finally:
            self.launching = False
        self.session = _fields(view)
        yield LaunchState.follow

    @rx.event(background=True)
    async def follow(self) -> Any:
        """Show the session's progress until it is ready (then open it) or has ended."""
        async with self:
            self._loop += 1
            loop, route = self._loop, route_of(self)
            session_id = int(self.session.get("id") or 0)
        try:
            return await self._follow(loop, route, session_id)
        except asyncio.CancelledError:
            logger.debug("launch page loop %d cancelled (navigation or disconnect)", loop)
            raise

    async def _follow(self, loop: int, route: str, session_id: int) -> Any:
        while True:
            try:
                actor = await background_actor(self)
                data = await call_service(_progress, actor=actor, session_id=session_id)
                state = data["session"]["state"]
                lines: list[str] = []
                if state in ENDED:
                    lines = await run_blocking(
                        sessions.session_log, actor=actor, session_id=session_id, tail=LOG_LINES
                    )
            except NotAuthenticated:
                return None
            except NotFound:
                async with self:
                    if loop == self._loop:  # gone meanwhile (its app was deleted)
                        self._forget_session()
                        self.start_refusal = f"Session {session_id} is gone."
                return None
            except PortalError as exc:
                logger.debug("session %s progress skipped: %s", session_id, exc.message)
                await asyncio.sleep(REFRESH_SECONDS)
                continue
            async with self:
                if not keep_watching(self, route, loop, self._loop):
                    return None
                if data["session"] != self.session:
                    self.session = data["session"]
                if data["timeline"] != self.timeline:
                    self.timeline = data["timeline"]
                if state in ENDED:
                    self.log_lines = lines
                    return None
                if state == Lifecycle.ready.value and self.session["url"]:
                    return _open_script(self.session["url"])
            await asyncio.sleep(REFRESH_SECONDS)


# -- the page --------------------------------------------------------------------------


def _fact(label: str, value: Any) -> rx.Component:
    return rx.data_list.item(
        rx.data_list.label(label),
        rx.data_list.value(value),
    )


def _copyable(command: Any, element_id: str) -> rx.Component:
    return rx.hstack(
        rx.code(command, id=element_id, white_space="pre-wrap", overflow_wrap="anywhere"),
        rx.icon_button(
            rx.icon("copy", size=14),
            size="1",
            variant="ghost",
            title="Copy",
            on_click=rx.set_clipboard(command),
        ),
        align="center",
        spacing="2",
    )


def _facts() -> rx.Component:
    target = LaunchState.target
    return rx.data_list.root(
        _fact("App", rx.code(target["name"])),
        _fact(
            "Release",
            rx.hstack(
                rx.text(target["version"], id="launch-version"),
                rx.cond(target["latest"] == "yes", rx.badge("latest", color_scheme="green")),
                spacing="2",
            ),
        ),
        _fact("Runtime", target["runtime"]),
        _fact("WebUI", rx.cond(target["webui"] == "yes", "yes", "no")),
        _fact("Solve procedures", target["procedures"]),
    )


def _timeline_item(event: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.hstack(
        rx.text(event["at"], size="1", color_scheme="gray", white_space="nowrap"),
        session_state_badge(event["state"]),
        rx.text(event["detail"], size="1"),
        align="center",
        spacing="2",
    )


def _log_box(lines: Any, element_id: str) -> rx.Component:
    return rx.box(
        rx.foreach(lines, lambda line: rx.text(line, as_="div")),
        id=element_id,
        font_family="var(--code-font-family, monospace)",
        font_size="12px",
        white_space="pre-wrap",
        overflow_wrap="anywhere",
        background="var(--gray-a2)",
        border="1px solid var(--gray-a5)",
        border_radius="var(--radius-3)",
        padding="0.75em",
        width="100%",
        max_height="24em",
        overflow_y="auto",
    )


def _retry() -> rx.Component:
    return rx.button(
        rx.icon("rotate-ccw", size=16),
        "Try again",
        on_click=LaunchState.start,
        loading=LaunchState.launching,
        id="launch-retry",
    )


def _ended() -> rx.Component:
    session = LaunchState.session
    return rx.vstack(
        rx.cond(
            LaunchState.phase == "failed",
            rx.callout(
                "The session could not start: " + session["reason"],
                icon="circle-alert",
                color_scheme="red",
                id="launch-failed",
                width="100%",
            ),
            rx.callout(
                "The session ended: " + session["reason"],
                icon="info",
                id="launch-ended",
                width="100%",
            ),
        ),
        rx.cond(
            LaunchState.log_lines,
            rx.vstack(
                rx.text("The last lines of its log:", size="2"),
                _log_box(LaunchState.log_lines, "launch-log"),
                width="100%",
                spacing="1",
            ),
        ),
        _retry(),
        width="100%",
        spacing="3",
    )


def _progress_view() -> rx.Component:
    session = LaunchState.session
    return rx.vstack(
        rx.hstack(
            rx.text("Session ", session["id"], weight="medium"),
            session_state_badge(session["state"], id="launch-state"),
            rx.cond(LaunchState.phase == "live", rx.spinner(size="1")),
            align="center",
            spacing="2",
        ),
        rx.cond(
            LaunchState.phase == "live",
            rx.text(
                "The app is being prepared. The first start of a runtime sets up its "
                "environment, which can take a minute; later starts are quicker.",
                size="2",
                color_scheme="gray",
            ),
        ),
        rx.vstack(
            rx.foreach(LaunchState.timeline, _timeline_item), spacing="1", id="launch-timeline"
        ),
        rx.cond(
            LaunchState.phase == "ready",
            rx.text(
                "Ready. Opening it… ",
                rx.el.a("Open it yourself", href=session["url"], id="launch-open"),
                size="2",
            ),
        ),
        rx.cond((LaunchState.phase == "failed") | (LaunchState.phase == "stopped"), _ended()),
        width="100%",
        spacing="2",
        id="launch-progress",
    )


def _browser_section() -> rx.Component:
    target = LaunchState.target
    return rx.vstack(
        rx.heading("In the browser", size="4"),
        rx.cond(
            target["webui"] == "yes",
            rx.text(
                "The app runs on the portal's servers; you work in it in this browser.",
                size="2",
            ),
            rx.text(
                "This release has no WebUI to open. Its solve procedures can run as jobs.",
                size="2",
                color_scheme="gray",
            ),
        ),
        rx.cond(
            LaunchState.start_refusal != "",
            rx.callout(
                LaunchState.start_refusal,
                icon="ban",
                color_scheme="red",
                id="launch-refused",
                width="100%",
            ),
        ),
        rx.cond(
            LaunchState.start_refusal_code == "no_free_seats",
            rx.link("Your sessions", href="/sessions", size="2", id="launch-sessions-link"),
        ),
        rx.cond(
            LaunchState.session,
            _progress_view(),
            rx.button(
                rx.icon("play", size=16),
                "Open in the browser",
                on_click=LaunchState.start,
                loading=LaunchState.launching,
                disabled=target["webui"] != "yes",
                id="launch-start",
            ),
        ),
        width="100%",
        spacing="2",
    )


def _desktop_section() -> rx.Component:
    target = LaunchState.target
    return rx.vstack(
        rx.heading("On your computer", size="4"),
        rx.text(
            "Run the app on your own computer with the aimms-portal command (installed "
            "from the portal's repository, see its README); it stays connected to this "
            "portal. Log on once, then start the release:",
            size="2",
        ),
        _copyable(target["desktop_login"], "launch-desktop-login"),
        _copyable(target["desktop_command"], "launch-desktop-command"),
        width="100%",
        spacing="2",
        id="launch-desktop",
    )


def _resolved() -> rx.Component:
    target = LaunchState.target
    return rx.card(
        rx.vstack(
            rx.heading(target["title"], size="5", id="launch-title"),
            _facts(),
            rx.separator(),
            _browser_section(),
            rx.separator(),
            _desktop_section(),
            rx.link("Back to the app", href="/apps/" + target["name"]),
            spacing="3",
        ),
        max_width="44em",
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


# -- the Launch menu (catalogue, app page) -------------------------------------------------


def _desktop_target(session: Session, *, actor: User, name: str) -> dict[str, str]:
    # the release a launch of the app would start (rights checked, as the launch page does)
    app, release = apps.resolve_launch(session, actor=actor, name=name)
    return {"title": app.title or app.name, **desktop_commands(app.name, release.version)}


class LaunchMenuState(rx.State):
    """The "Run on my computer" dialog of a Launch menu."""

    desktop_open: bool = False
    desktop: dict[str, str] = {}

    @rx.event
    async def show_desktop(self, name: str) -> Any:
        """Show the commands for the latest release of ``name`` (if the user may run it)."""
        try:
            self.desktop = await call_as_user(self, _desktop_target, name=str(name)[:200])
        except PortalError as exc:
            self.desktop, self.desktop_open = {}, False
            return failure(exc)
        self.desktop_open = True
        return None

    @rx.event
    def set_desktop_open(self, open_: bool) -> None:
        self.desktop_open = open_


def launch_menu(name: Any, element_id: Any, size: str = "2") -> rx.Component:
    """The Launch button of app ``name``: a menu of "In the browser" and "Run on my
    computer" (the page shows :func:`desktop_dialog` once for all its menus)."""
    return rx.menu.root(
        rx.menu.trigger(
            rx.button(
                rx.icon("play", size=14),
                "Launch",
                rx.icon("chevron-down", size=14),
                size=size,  # type: ignore[arg-type]
                id=element_id,
            ),
        ),
        rx.menu.content(
            rx.menu.item(
                rx.icon("globe", size=14),
                "In the browser",
                on_click=rx.redirect("/launch/" + name + "?start=1"),
                id="launch-menu-browser",
            ),
            rx.menu.item(
                rx.icon("laptop", size=14),
                "Run on my computer",
                on_click=LaunchMenuState.show_desktop(name),
                id="launch-menu-desktop",
            ),
            rx.menu.separator(),
            rx.menu.item(
                "Release and details…",
                on_click=rx.redirect("/launch/" + name),
                id="launch-menu-page",
            ),
        ),
    )


def desktop_dialog() -> rx.Component:
    """The commands of the "Run on my computer" item, to copy."""
    desktop = LaunchMenuState.desktop
    return rx.dialog.root(
        rx.dialog.content(
            rx.dialog.title("Run " + desktop["title"] + " on your computer"),
            rx.dialog.description(
                "Run the app on your own computer with the aimms-portal command (installed "
                "from the portal's repository, see its README); it stays connected to this "
                "portal. Log on once, then start the release:",
                size="2",
            ),
            rx.vstack(
                _copyable(desktop["desktop_login"], "launch-menu-login"),
                _copyable(desktop["desktop_command"], "launch-menu-command"),
                spacing="2",
                margin_y="1em",
            ),
            rx.flex(
                rx.dialog.close(rx.button("Close", variant="soft", id="launch-menu-close")),
                justify="end",
            ),
            id="launch-menu-dialog",
        ),
        open=LaunchMenuState.desktop_open,
        on_open_change=LaunchMenuState.set_desktop_open,
    )
