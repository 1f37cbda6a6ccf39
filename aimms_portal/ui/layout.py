"""The page shell: navigation by role, the user menu, and the content area."""

from __future__ import annotations

import reflex as rx

from aimms_portal.api.deps import CSRF_COOKIE, CSRF_HEADER
from aimms_portal.ui.state import SessionState

#: Runs in the browser: the log-off call needs the CSRF token, which only the page's
#: scripts can read (from its cookie); then a full reload drops the socket's old headers.
LOG_OFF_JS = f"""
(async () => {{
  const m = document.cookie.match(/(?:^|; ){CSRF_COOKIE}=([^;]*)/);
  await fetch('/api/v1/auth/logout', {{
    method: 'POST', credentials: 'same-origin',
    headers: {{'{CSRF_HEADER}': m ? decodeURIComponent(m[1]) : ''}}
  }});
  window.location.href = '/login';
}})()
"""


def _nav_link(label: str, href: str, icon: str) -> rx.Component:
    return rx.link(
        rx.hstack(rx.icon(icon, size=16), rx.text(label), spacing="2", align="center"),
        href=href,
        underline="none",
        class_name="nav-link",
        padding_x="0.75em",
        padding_y="0.4em",
        border_radius="var(--radius-2)",
        _hover={"background": "var(--gray-a3)"},
    )


def navigation() -> rx.Component:
    """Links to the portal's areas; admin areas only for admins."""
    return rx.hstack(
        _nav_link("Apps", "/", "layout-grid"),
        _nav_link("Jobs", "/jobs", "list-checks"),
        _nav_link("Sessions", "/sessions", "monitor-play"),
        rx.cond(SessionState.is_publisher, _nav_link("Runtimes", "/runtimes", "package")),
        rx.cond(SessionState.is_admin, _nav_link("Admin", "/admin/users", "shield")),
        rx.cond(SessionState.is_admin, _nav_link("Operator", "/operator", "activity")),
        spacing="1",
        id="main-nav",
    )


def user_menu() -> rx.Component:
    return rx.menu.root(
        rx.menu.trigger(
            rx.button(
                rx.icon("circle-user", size=16),
                SessionState.username,
                variant="soft",
                id="user-menu",
            )
        ),
        rx.menu.content(
            rx.menu.item(rx.text(SessionState.role, color_scheme="gray"), disabled=True),
            rx.menu.separator(),
            rx.menu.item("API tokens", on_click=rx.redirect("/tokens"), id="menu-tokens"),
            rx.menu.item("Change password", on_click=rx.redirect("/account"), id="menu-account"),
            rx.menu.separator(),
            rx.menu.item("Log off", on_click=rx.call_script(LOG_OFF_JS), id="menu-logoff"),
        ),
    )


def shell(title: str, *children: rx.Component) -> rx.Component:
    """A signed-on page: header with navigation and user menu, then the page content.

    Nothing is rendered until the server has confirmed the log-on, so a page never
    flashes content to someone who is about to be sent to the log-on page. A page that
    draws its own heading passes an empty ``title``.
    """
    return rx.cond(
        SessionState.signed_on,
        rx.box(
            rx.hstack(
                rx.heading("aimms portal", size="5", white_space="nowrap"),
                navigation(),
                rx.spacer(),
                user_menu(),
                align="center",
                padding="0.75em 1.5em",
                border_bottom="1px solid var(--gray-a5)",
                spacing="5",
            ),
            rx.box(
                *([rx.heading(title, size="7", margin_bottom="0.75em")] if title else []),
                *children,
                padding="1.5em",
                max_width="1200px",
            ),
        ),
        rx.center(rx.spinner(size="3"), height="60vh"),
    )


def not_built(title: str, what: str, issue: str) -> rx.Component:
    """Page content for an area that this version of the portal does not have yet."""
    return shell(
        title,
        rx.callout(
            f"{title} is not built yet. {what} It arrives with {issue}.",
            icon="construction",
            color_scheme="amber",
            id="not-built",
        ),
    )
