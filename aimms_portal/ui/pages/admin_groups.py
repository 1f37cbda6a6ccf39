"""Admin: groups — create, describe, delete, and manage members."""

from __future__ import annotations

from typing import Any

import reflex as rx
from reflex.vars import ObjectVar

from aimms_portal.errors import PortalError
from aimms_portal.services import accounts
from aimms_portal.ui.components import data_table
from aimms_portal.ui.layout import shell
from aimms_portal.ui.pages.admin_nav import admin_tabs
from aimms_portal.ui.state import call_as_user, failure

MEMBER_PAGE = 200


class GroupsState(rx.State):
    """All groups, the selected group and its members."""

    groups: list[dict[str, str]] = []
    selected_id: str = ""
    selected_name: str = ""
    selected_builtin: bool = False
    members: list[dict[str, str]] = []
    member_total: int = 0

    @rx.event
    async def load(self) -> Any:
        try:
            page = await call_as_user(self, accounts.list_groups, limit=500)
        except PortalError as exc:
            return failure(exc)
        self.groups = [
            {
                "id": str(g.id),
                "name": g.name,
                "description": g.description,
                "builtin": "yes" if g.builtin else "",
            }
            for g in page.items
        ]
        if self.selected_id and self.selected_id not in {g["id"] for g in self.groups}:
            self.selected_id = ""
        return GroupsState.load_members if self.selected_id else None

    @rx.event
    async def create(self, form: dict[str, Any]) -> Any:
        try:
            group = await call_as_user(
                self,
                accounts.create_group,
                name=str(form.get("name", "")),
                description=str(form.get("description", "")).strip(),
            )
        except PortalError as exc:
            return failure(exc)
        self.selected_id = str(group.id)
        return [rx.toast.success(f"Group {group.name} created."), GroupsState.load]

    @rx.event
    def select(self, group_id: str) -> Any:
        self.selected_id = group_id
        return GroupsState.load_members

    @rx.event
    async def load_members(self) -> Any:
        if not self.selected_id:
            return None
        try:
            group = await call_as_user(self, accounts.get_group, group_id=int(self.selected_id))
            page = await call_as_user(
                self, accounts.list_members, group_id=int(self.selected_id), limit=MEMBER_PAGE
            )
        except PortalError as exc:
            self.selected_id = ""
            return failure(exc)
        self.selected_name = group.name
        self.selected_builtin = group.builtin
        self.member_total = page.total
        self.members = [
            {"id": str(u.id), "username": u.username, "full_name": u.full_name} for u in page.items
        ]
        return None

    @rx.event
    async def add_member(self, form: dict[str, Any]) -> Any:
        try:
            user = await call_as_user(
                self, accounts.get_user_by_username, username=str(form.get("username", ""))
            )
            await call_as_user(
                self, accounts.add_member, group_id=int(self.selected_id), user_id=user.id
            )
        except PortalError as exc:
            return failure(exc)
        return GroupsState.load_members

    @rx.event
    async def remove_member(self, user_id: str) -> Any:
        try:
            await call_as_user(
                self,
                accounts.remove_member,
                group_id=int(self.selected_id),
                user_id=int(user_id),
            )
        except PortalError as exc:
            return failure(exc)
        return GroupsState.load_members

    @rx.event
    async def delete_selected(self) -> Any:
        try:
            await call_as_user(self, accounts.delete_group, group_id=int(self.selected_id))
        except PortalError as exc:
            return failure(exc)
        name = self.selected_name
        self.selected_id = ""
        return [rx.toast.success(f"Group {name} deleted."), GroupsState.load]


def _group_row(group: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(
            rx.link(group["name"], on_click=GroupsState.select(group["id"]), cursor="pointer"),
            rx.cond(group["builtin"] == "yes", rx.badge("built-in", margin_left="0.5em")),
        ),
        rx.table.cell(group["description"]),
        id="group-row-" + group["name"],
    )


def _member_row(member: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(member["username"]),
        rx.table.cell(member["full_name"]),
        rx.table.cell(
            rx.cond(
                ~GroupsState.selected_builtin,
                rx.button(
                    "Remove",
                    size="1",
                    variant="soft",
                    color_scheme="red",
                    on_click=GroupsState.remove_member(member["id"]),
                ),
            )
        ),
    )


def _members_panel() -> rx.Component:
    return rx.card(
        rx.hstack(
            rx.heading(GroupsState.selected_name, size="4"),
            rx.text(GroupsState.member_total, " members", size="2", color_scheme="gray"),
            rx.spacer(),
            rx.cond(
                ~GroupsState.selected_builtin,
                rx.button(
                    "Delete group",
                    size="1",
                    color_scheme="red",
                    variant="soft",
                    on_click=GroupsState.delete_selected,
                    id="group-delete",
                ),
            ),
            align="center",
            width="100%",
        ),
        rx.cond(
            GroupsState.selected_builtin,
            rx.text("Every active user belongs to this group.", size="2", color_scheme="gray"),
            rx.form(
                rx.hstack(
                    rx.input(
                        name="username",
                        placeholder="user name",
                        required=True,
                        id="member-username",
                    ),
                    rx.button("Add member", type="submit", id="member-add"),
                ),
                on_submit=GroupsState.add_member,
                reset_on_submit=True,
                margin_y="0.75em",
            ),
        ),
        rx.table.root(
            rx.table.body(rx.foreach(GroupsState.members, _member_row)),
            id="members-table",
        ),
        width="100%",
    )


def groups_page() -> rx.Component:
    return shell(
        "Admin",
        admin_tabs("groups"),
        rx.form(
            rx.hstack(
                rx.input(
                    name="name",
                    placeholder="new group name",
                    required=True,
                    max_length=64,
                    id="group-name",
                ),
                rx.input(
                    name="description", placeholder="description", max_length=255, width="20em"
                ),
                rx.button("Create group", type="submit", id="group-create"),
            ),
            on_submit=GroupsState.create,
            reset_on_submit=True,
            margin_bottom="1em",
        ),
        rx.grid(
            data_table(("Group", "Description"), GroupsState.groups, _group_row, id="groups-table"),
            rx.cond(
                GroupsState.selected_id != "",
                _members_panel(),
                rx.text("Select a group to see its members.", color_scheme="gray"),
            ),
            columns="2",
            spacing="5",
            width="100%",
        ),
    )
