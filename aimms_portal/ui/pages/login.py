"""The log-on page.

The form posts straight from the browser to ``/api/v1/auth/login`` so the password
never passes through Reflex state, and the HttpOnly cookie is set by that response.
A full page load follows, because the socket's headers (with the cookie) are only
read when it connects.
"""

from __future__ import annotations

import reflex as rx

_LOGIN_JS = """
(async () => {
  const r = await fetch('/api/v1/auth/login', {
    method: 'POST', credentials: 'same-origin',
    headers: {'Content-Type': 'application/json'},
    body: JSON.stringify({
      username: document.getElementById('login-username').value,
      password: document.getElementById('login-password').value,
    }),
  });
  if (r.ok) {
    const next = new URLSearchParams(window.location.search).get('next') || '/';
    window.location.href = next.startsWith('/') && !next.startsWith('//') ? next : '/';
    return '';
  }
  try { return (await r.json()).error.message; }
  catch (e) { return 'Log-on failed (' + r.status + ').'; }
})()
"""


class LoginState(rx.State):
    """The message shown under the form after a failed attempt."""

    error: str = ""

    @rx.event
    def show_error(self, message: str) -> None:
        self.error = message or ""

    @rx.event
    def clear_error(self) -> None:
        self.error = ""


def login_page() -> rx.Component:
    return rx.center(
        rx.card(
            rx.form(
                rx.vstack(
                    rx.heading("Log on to aimms portal", size="6"),
                    rx.text("User name", size="2", weight="medium"),
                    rx.input(
                        id="login-username",
                        name="username",
                        auto_complete="username",
                        required=True,
                        width="100%",
                        auto_focus=True,
                    ),
                    rx.text("Password", size="2", weight="medium"),
                    rx.input(
                        id="login-password",
                        name="password",
                        type="password",
                        auto_complete="current-password",
                        required=True,
                        width="100%",
                    ),
                    rx.cond(
                        LoginState.error != "",
                        rx.callout(
                            LoginState.error,
                            icon="triangle-alert",
                            color_scheme="red",
                            id="login-error",
                            width="100%",
                        ),
                    ),
                    rx.button("Log on", type="submit", width="100%", id="login-submit"),
                    spacing="3",
                    width="100%",
                ),
                on_submit=[
                    LoginState.clear_error,
                    rx.call_script(_LOGIN_JS, callback=LoginState.show_error),
                ],
                reset_on_submit=False,
            ),
            width="24em",
        ),
        height="100vh",
    )
