"""The API tokens page: create (shown once), list and revoke your personal tokens.

A new token goes to the browser inside a one-off script and straight into a read-only
field; it is never kept in Reflex state, which the state manager writes to disk or Redis.
"""

from __future__ import annotations

import json
from typing import Any

import reflex as rx
from reflex.vars import ObjectVar

from aimms_portal.errors import PortalError
from aimms_portal.services import tokens
from aimms_portal.ui.components import data_table
from aimms_portal.ui.layout import shell
from aimms_portal.ui.state import SessionState, call_as_user, failure, when

EXPIRY_CHOICES = ["7", "30", "90", "180", "365"]


class TokensState(rx.State):
    """The signed-on user's tokens, and the one just created (until dismissed)."""

    rows: list[dict[str, str]] = []
    created_name: str = ""

    @rx.event
    async def load(self) -> Any:
        try:
            page = await call_as_user(self, tokens.list_tokens, limit=200)
        except PortalError as exc:
            return failure(exc)
        self.rows = [
            {
                "id": str(t.id),
                "name": t.name,
                "prefix": t.prefix,
                "scopes": t.scopes,
                "created": when(t.created_at),
                "expires": when(t.expires_at),
                "last_used": when(t.last_used_at) or "never",
            }
            for t in page.items
        ]
        return None

    @rx.event
    async def create(self, form: dict[str, Any]) -> Any:
        scopes = [s for s in tokens.SCOPES if form.get(f"scope_{s}") == "on"]
        try:
            row, secret = await call_as_user(
                self,
                tokens.create_token,
                name=str(form.get("name", "")),
                scopes=scopes,
                expires_in_days=int(form.get("expires_in_days") or 90),
            )
        except PortalError as exc:
            return failure(exc)
        except ValueError:
            return rx.toast.error("Choose how many days the token lives.")
        self.created_name = row.name
        return [rx.call_script(_show_token_js(secret)), TokensState.load]

    @rx.event
    def dismiss(self) -> None:
        """Hide the shown token: from now on nobody can see it again."""
        self.created_name = ""

    @rx.event
    async def revoke(self, token_id: str) -> Any:
        try:
            await call_as_user(self, tokens.revoke_token, token_id=int(token_id))
        except PortalError as exc:
            return failure(exc)
        return [rx.toast.success("Token revoked."), TokensState.load]


def _show_token_js(secret: str) -> str:
    # the field appears with the next render; wait for it for up to about two seconds
    return f"""
(function put(tries) {{
  const field = document.getElementById('new-token');
  if (field) {{ field.value = {json.dumps(secret)}; field.select(); }}
  else if (tries > 0) {{ setTimeout(() => put(tries - 1), 40); }}
}})(50)
"""


_COPY_JS = "navigator.clipboard.writeText(document.getElementById('new-token').value)"


def _created_callout() -> rx.Component:
    return rx.callout.root(
        rx.callout.icon(rx.icon("key-round")),
        rx.vstack(
            rx.text(
                "Token ",
                rx.text.strong(TokensState.created_name),
                " created. Copy it now: it is shown only this once.",
            ),
            rx.hstack(
                rx.input(id="new-token", read_only=True, width="34em", font_family="monospace"),
                rx.button(
                    rx.icon("copy", size=14),
                    "Copy",
                    size="1",
                    variant="soft",
                    on_click=rx.call_script(_COPY_JS),
                ),
                rx.button("Done", size="1", on_click=TokensState.dismiss, id="token-done"),
                align="center",
                wrap="wrap",
            ),
        ),
        color_scheme="green",
        margin_bottom="1em",
    )


def _create_form() -> rx.Component:
    return rx.form(
        rx.hstack(
            rx.input(
                name="name",
                placeholder="What is it for? e.g. laptop CLI",
                max_length=64,
                required=True,
                id="token-name",
                width="18em",
            ),
            rx.checkbox("read", name="scope_read", default_checked=True),
            rx.checkbox("write", name="scope_write", default_checked=True),
            rx.cond(SessionState.is_admin, rx.checkbox("admin", name="scope_admin")),
            rx.select(EXPIRY_CHOICES, name="expires_in_days", default_value="90"),
            rx.text("days", size="2"),
            rx.button("Create token", type="submit", id="token-create"),
            align="center",
            spacing="3",
            wrap="wrap",
        ),
        on_submit=TokensState.create,
        reset_on_submit=True,
        margin_bottom="1.5em",
    )


def _row(row: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(row["name"]),
        rx.table.cell(rx.code(row["prefix"] + "…")),
        rx.table.cell(row["scopes"]),
        rx.table.cell(row["created"]),
        rx.table.cell(row["expires"]),
        rx.table.cell(row["last_used"]),
        rx.table.cell(
            rx.button(
                "Revoke",
                color_scheme="red",
                variant="soft",
                size="1",
                on_click=TokensState.revoke(row["id"]),
            )
        ),
    )


def tokens_page() -> rx.Component:
    return shell(
        "API tokens",
        rx.text(
            "Tokens let scripts and the aimms-portal command act as you. Send one as "
            "'Authorization: Bearer <token>'. ",
            rx.link("API documentation", href="/api/v1/docs", is_external=True),
            color_scheme="gray",
            margin_bottom="1em",
        ),
        rx.cond(TokensState.created_name != "", _created_callout()),
        _create_form(),
        rx.cond(
            TokensState.rows,
            data_table(
                ("Name", "Token", "Scopes", "Created", "Expires", "Last used", ""),
                TokensState.rows,
                _row,
                id="tokens-table",
            ),
            rx.text("You have no active tokens.", color_scheme="gray"),
        ),
    )
