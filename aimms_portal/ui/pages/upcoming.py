"""Areas of the portal that later versions fill in; each says so plainly."""

from __future__ import annotations

import reflex as rx

from aimms_portal.ui.layout import not_built


def operator_page() -> rx.Component:
    return not_built(
        "Operator",
        "Capacity, queues, running sessions and failures will be shown here.",
        "solve jobs and data sessions",
    )
