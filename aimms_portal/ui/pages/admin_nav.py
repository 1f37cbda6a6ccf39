"""The tabs that link the admin pages."""

from __future__ import annotations

import reflex as rx

_TABS = [
    ("users", "Users", "/admin/users"),
    ("groups", "Groups", "/admin/groups"),
    ("keys", "Signing keys", "/admin/keys"),
    ("audit", "Audit log", "/admin/audit"),
]


def admin_tabs(current: str) -> rx.Component:
    """Links to the admin pages; ``current`` is shown as selected."""
    return rx.hstack(
        *[
            rx.link(
                rx.button(label, variant="solid" if key == current else "soft", size="2"),
                href=href,
            )
            for key, label, href in _TABS
        ],
        margin_bottom="1.25em",
        id="admin-tabs",
    )
