"""Admin: users — create, search, change role, disable or enable, reset password."""

from __future__ import annotations

from typing import Any

import reflex as rx
from reflex.vars import ObjectVar

from aimms_portal.errors import PortalError
from aimms_portal.models import Role
from aimms_portal.services import accounts
from aimms_portal.ui.components import PagedState, data_table, pager
from aimms_portal.ui.layout import shell
from aimms_portal.ui.pages.admin_nav import admin_tabs
from aimms_portal.ui.state import call_as_user, failure, when

PAGE_SIZE = 50
ROLES = [r.value for r in Role]


class UsersState(PagedState, rx.State):
    """One page of the user list, its search, and the open dialogs."""

    rows: list[dict[str, str]] = []
    page_size: int = PAGE_SIZE
    query: str = ""
    create_open: bool = False
    reset_user_id: str = ""
    reset_username: str = ""

    @rx.event
    async def load(self) -> Any:
        try:
            page = await call_as_user(
                self,
                accounts.list_users,
                query=self.query,
                limit=self.page_size,
                offset=self.offset,
            )
        except PortalError as exc:
            return failure(exc)
        self.total = page.total
        self.rows = [
            {
                "id": str(u.id),
                "username": u.username,
                "full_name": u.full_name,
                "email": u.email,
                "role": u.role,
                "active": "yes" if u.is_active else "no",
                "last_login": when(u.last_login_at) or "never",
            }
            for u in page.items
        ]
        return None

    @rx.event
    def search(self, form: dict[str, Any]) -> Any:
        self.query = str(form.get("query", ""))[:64]
        self.offset = 0
        return UsersState.load

    @rx.event
    def set_create_open(self, value: bool) -> None:
        self.create_open = value

    @rx.event
    async def create(self, form: dict[str, Any]) -> Any:
        try:
            user = await call_as_user(
                self,
                accounts.create_user,
                username=str(form.get("username", "")),
                password=str(form.get("password", "")),
                role=str(form.get("role") or Role.user.value),
                email=str(form.get("email", "")).strip(),
                full_name=str(form.get("full_name", "")).strip(),
            )
        except PortalError as exc:
            return failure(exc)
        self.create_open = False
        return [rx.toast.success(f"User {user.username} created."), UsersState.load]

    @rx.event
    async def set_role(self, user_id: str, role: str) -> Any:
        try:
            await call_as_user(self, accounts.update_user, user_id=int(user_id), role=role)
        except PortalError as exc:
            return [failure(exc), UsersState.load]
        return [rx.toast.success(f"Role changed to {role}."), UsersState.load]

    @rx.event
    async def set_active(self, user_id: str, active: bool) -> Any:
        try:
            user = await call_as_user(
                self, accounts.update_user, user_id=int(user_id), is_active=active
            )
        except PortalError as exc:
            return failure(exc)
        verb = "enabled" if active else "disabled; their log-ons and tokens were ended"
        return [rx.toast.success(f"{user.username} {verb}."), UsersState.load]

    @rx.event
    def open_reset(self, user_id: str, username: str) -> None:
        self.reset_user_id = user_id
        self.reset_username = username

    @rx.event
    def close_reset(self, open_: bool = False) -> None:
        if not open_:
            self.reset_user_id = ""
            self.reset_username = ""

    @rx.event
    async def reset_password(self, form: dict[str, Any]) -> Any:
        try:
            await call_as_user(
                self,
                accounts.reset_password,
                user_id=int(self.reset_user_id or 0),
                new_password=str(form.get("password", "")),
            )
        except PortalError as exc:
            return failure(exc)
        name = self.reset_username
        self.reset_user_id = ""
        self.reset_username = ""
        return rx.toast.success(f"New password set for {name}; their log-ons were ended.")


def _field(label: str, control: rx.Component) -> rx.Component:
    return rx.vstack(rx.text(label, size="2", weight="medium"), control, spacing="1", width="100%")


def _create_dialog() -> rx.Component:
    return rx.dialog.root(
        rx.dialog.trigger(rx.button(rx.icon("user-plus", size=16), "New user", id="user-new")),
        rx.dialog.content(
            rx.dialog.title("New user"),
            rx.form(
                rx.vstack(
                    _field(
                        "User name",
                        rx.input(name="username", required=True, max_length=64, id="new-username"),
                    ),
                    _field("Full name", rx.input(name="full_name", max_length=128)),
                    _field("E-mail", rx.input(name="email", type="email", max_length=254)),
                    _field("Role", rx.select(ROLES, name="role", default_value="user")),
                    _field(
                        "Password (12+ characters with a letter, a digit and a symbol)",
                        rx.input(
                            name="password",
                            type="password",
                            required=True,
                            auto_complete="new-password",
                            id="new-password",
                        ),
                    ),
                    rx.hstack(
                        rx.dialog.close(
                            rx.button("Cancel", variant="soft", color_scheme="gray", type="button")
                        ),
                        rx.button("Create", type="submit", id="user-create"),
                        justify="end",
                        width="100%",
                    ),
                    spacing="3",
                ),
                on_submit=UsersState.create,
                reset_on_submit=False,
            ),
        ),
        open=UsersState.create_open,
        on_open_change=UsersState.set_create_open,
    )


def _reset_dialog() -> rx.Component:
    return rx.dialog.root(
        rx.dialog.content(
            rx.dialog.title("New password for ", UsersState.reset_username),
            rx.form(
                rx.vstack(
                    rx.input(
                        name="password",
                        type="password",
                        required=True,
                        auto_complete="new-password",
                        id="reset-password",
                    ),
                    rx.text(
                        "Setting it ends all of this user's browser log-ons.",
                        size="2",
                        color_scheme="gray",
                    ),
                    rx.hstack(
                        rx.dialog.close(
                            rx.button("Cancel", variant="soft", color_scheme="gray", type="button")
                        ),
                        rx.button("Set password", type="submit", id="reset-submit"),
                        justify="end",
                        width="100%",
                    ),
                    spacing="3",
                ),
                on_submit=UsersState.reset_password,
            ),
        ),
        open=UsersState.reset_user_id != "",
        on_open_change=UsersState.close_reset,
    )


def _row(row: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.text.strong(row["username"])),
        rx.table.cell(row["full_name"]),
        rx.table.cell(row["email"]),
        rx.table.cell(
            rx.select(
                ROLES,
                value=row["role"],
                size="1",
                on_change=lambda role: UsersState.set_role(row["id"], role),
            )
        ),
        rx.table.cell(
            rx.cond(
                row["active"] == "yes",
                rx.badge("active", color_scheme="green"),
                rx.badge("disabled", color_scheme="red"),
            )
        ),
        rx.table.cell(row["last_login"]),
        rx.table.cell(
            rx.hstack(
                rx.cond(
                    row["active"] == "yes",
                    rx.button(
                        "Disable",
                        size="1",
                        variant="soft",
                        color_scheme="red",
                        on_click=UsersState.set_active(row["id"], False),
                    ),
                    rx.button(
                        "Enable",
                        size="1",
                        variant="soft",
                        on_click=UsersState.set_active(row["id"], True),
                    ),
                ),
                rx.button(
                    "Reset password",
                    size="1",
                    variant="soft",
                    on_click=UsersState.open_reset(row["id"], row["username"]),
                ),
            )
        ),
        id="user-row-" + row["username"],
    )


def users_page() -> rx.Component:
    return shell(
        "Admin",
        admin_tabs("users"),
        rx.hstack(
            rx.form(
                rx.hstack(
                    rx.input(
                        name="query", placeholder="Search name, full name or e-mail", width="20em"
                    ),
                    rx.button("Search", type="submit", variant="soft"),
                ),
                on_submit=UsersState.search,
            ),
            rx.spacer(),
            _create_dialog(),
            width="100%",
            margin_bottom="1em",
        ),
        data_table(
            ("User", "Full name", "E-mail", "Role", "State", "Last log-on", ""),
            UsersState.rows,
            _row,
            id="users-table",
        ),
        pager(UsersState),
        _reset_dialog(),
    )
