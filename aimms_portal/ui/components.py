"""Pieces shared by several pages: paged lists and their tables."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import reflex as rx


class PagedState(rx.State, mixin=True):
    """A list shown one page at a time.

    A page's state mixes this in, sets ``page_size`` and defines a ``load`` event that
    fetches ``page_size`` items from ``offset`` and stores ``total``.
    """

    total: int = 0
    offset: int = 0
    page_size: int = 50

    @rx.var
    def page_label(self) -> str:
        if not self.total:
            return "nothing to show"
        last = min(self.offset + self.page_size, self.total)
        return f"{self.offset + 1}–{last} of {self.total}"

    @rx.var
    def has_previous(self) -> bool:
        return self.offset > 0

    @rx.var
    def has_next(self) -> bool:
        return self.offset + self.page_size < self.total

    @rx.event
    def previous_page(self) -> Any:
        self.offset = max(0, self.offset - self.page_size)
        return type(self).load  # type: ignore[attr-defined]

    @rx.event
    def next_page(self) -> Any:
        self.offset += self.page_size
        return type(self).load  # type: ignore[attr-defined]


def pager(state: Any, previous: str = "Previous", next_: str = "Next") -> rx.Component:
    """Buttons to page through the list of a :class:`PagedState`."""
    return rx.hstack(
        rx.button(
            previous,
            size="1",
            variant="soft",
            disabled=~state.has_previous,
            on_click=state.previous_page,
        ),
        rx.text(state.page_label, size="2"),
        rx.button(
            next_, size="1", variant="soft", disabled=~state.has_next, on_click=state.next_page
        ),
        align="center",
        margin_top="1em",
    )


def data_table(
    headers: Sequence[str], rows: Any, render_row: Callable[[Any], rx.Component], **props: Any
) -> rx.Component:
    """A table with one header row and a row per item of the list var ``rows``."""
    return rx.table.root(
        rx.table.header(rx.table.row(*[rx.table.column_header_cell(h) for h in headers])),
        rx.table.body(rx.foreach(rows, render_row)),
        **props,
    )


def size_label(size: int) -> str:
    """A size for tables: ``812 B``, ``1.4 KiB``, ``210.3 MiB``, ``2.0 GiB``."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # pragma: no cover


def confirm_dialog(
    *,
    open_: Any,
    on_open_change: Any,
    title: Any,
    description: Any,
    action: str,
    on_confirm: Any,
    element_id: str,
) -> rx.Component:
    """A dialog that asks before something that cannot be undone."""
    return rx.alert_dialog.root(
        rx.alert_dialog.content(
            rx.alert_dialog.title(title),
            rx.alert_dialog.description(description, size="2"),
            rx.hstack(
                rx.alert_dialog.cancel(rx.button("Cancel", variant="soft", color_scheme="gray")),
                rx.alert_dialog.action(
                    rx.button(action, color_scheme="red", on_click=on_confirm, id=element_id)
                ),
                justify="end",
                spacing="3",
                margin_top="1em",
            ),
        ),
        open=open_,
        on_open_change=on_open_change,
    )
