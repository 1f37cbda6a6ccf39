"""Admin: the audit log, newest first, with filters and paging."""

from __future__ import annotations

from typing import Any

import reflex as rx
from reflex.vars import ObjectVar

from aimms_portal.errors import PortalError
from aimms_portal.services import audit
from aimms_portal.ui.components import PagedState, data_table, pager
from aimms_portal.ui.layout import shell
from aimms_portal.ui.pages.admin_nav import admin_tabs
from aimms_portal.ui.state import call_as_user, failure

PAGE_SIZE = 100
OUTCOMES = ["any", "success", "failure", "refused"]


class AuditState(PagedState, rx.State):
    """One page of audit events and the filters that chose it."""

    rows: list[dict[str, str]] = []
    page_size: int = PAGE_SIZE
    action: str = ""
    actor: str = ""
    outcome: str = "any"

    @rx.event
    async def load(self) -> Any:
        try:
            page = await call_as_user(
                self,
                audit.list_events,
                action=self.action or None,
                actor_name=self.actor or None,
                outcome=None if self.outcome == "any" else self.outcome,
                limit=self.page_size,
                offset=self.offset,
            )
        except PortalError as exc:
            return failure(exc)
        self.total = page.total
        self.rows = [
            {
                "time": e.created_at.strftime("%Y-%m-%d %H:%M:%S"),
                "actor": e.actor_name,
                "action": e.action,
                "target": f"{e.target_type} {e.target_name or e.target_id}".strip(),
                "outcome": e.outcome,
                "source": e.source_ip,
                "detail": e.detail,
            }
            for e in page.items
        ]
        return None

    @rx.event
    def filter(self, form: dict[str, Any]) -> Any:
        self.action = str(form.get("action", "")).strip()[:64]
        self.actor = str(form.get("actor", "")).strip().lower()[:64]
        outcome = str(form.get("outcome") or "any")
        self.outcome = outcome if outcome in OUTCOMES else "any"
        self.offset = 0
        return AuditState.load


def _row(row: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(row["time"], white_space="nowrap"),
        rx.table.cell(row["actor"]),
        rx.table.cell(rx.code(row["action"])),
        rx.table.cell(row["target"]),
        rx.table.cell(
            rx.cond(
                row["outcome"] == "success",
                rx.badge("success", color_scheme="green"),
                rx.badge(row["outcome"], color_scheme="red"),
            )
        ),
        rx.table.cell(row["source"]),
        rx.table.cell(row["detail"]),
    )


def audit_page() -> rx.Component:
    return shell(
        "Admin",
        admin_tabs("audit"),
        rx.form(
            rx.hstack(
                rx.input(
                    name="action", placeholder="action, e.g. auth. or user.role", width="16em"
                ),
                rx.input(name="actor", placeholder="actor user name"),
                rx.select(OUTCOMES, name="outcome", default_value="any"),
                rx.button("Filter", type="submit", variant="soft", id="audit-filter"),
                align="center",
            ),
            on_submit=AuditState.filter,
            margin_bottom="1em",
        ),
        data_table(
            ("Time (UTC)", "Actor", "Action", "Target", "Outcome", "Source", "Detail"),
            AuditState.rows,
            _row,
            id="audit-table",
            size="1",
        ),
        pager(AuditState, previous="Newer", next_="Older"),
    )
