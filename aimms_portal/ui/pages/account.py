"""Your account: change your own password."""

from __future__ import annotations

from typing import Any

import reflex as rx

from aimms_portal.errors import PortalError
from aimms_portal.services import accounts
from aimms_portal.ui.layout import shell
from aimms_portal.ui.state import SessionState, call_as_user, failure


class AccountState(rx.State):
    @rx.event
    async def change_password(self, form: dict[str, Any]) -> Any:
        new = str(form.get("new_password", ""))
        if new != str(form.get("repeat_password", "")):
            return rx.toast.error("The new passwords differ.")
        try:
            await call_as_user(
                self,
                accounts.change_own_password,
                current_password=str(form.get("current_password", "")),
                new_password=new,
            )
        except PortalError as exc:
            return failure(exc)
        return rx.toast.success("Password changed.")


def account_page() -> rx.Component:
    def field(label: str, name: str, autocomplete: str) -> rx.Component:
        return rx.vstack(
            rx.text(label, size="2", weight="medium"),
            rx.input(
                name=name, type="password", required=True, auto_complete=autocomplete, width="100%"
            ),
            spacing="1",
            width="100%",
        )

    return shell(
        "Your account",
        rx.text(
            "Signed on as ",
            rx.text.strong(SessionState.username),
            " (",
            SessionState.role,
            ").",
            margin_bottom="1em",
        ),
        rx.card(
            rx.form(
                rx.vstack(
                    rx.heading("Change password", size="4"),
                    field("Current password", "current_password", "current-password"),
                    field(
                        "New password (12+ characters with a letter, a digit and a symbol)",
                        "new_password",
                        "new-password",
                    ),
                    field("Repeat new password", "repeat_password", "new-password"),
                    rx.button("Change password", type="submit"),
                    spacing="3",
                ),
                on_submit=AccountState.change_password,
                reset_on_submit=True,
            ),
            max_width="28em",
        ),
    )
