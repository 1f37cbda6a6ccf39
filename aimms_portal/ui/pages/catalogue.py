"""The Apps catalogue: the apps you may read, as cards, with search and a category filter.

Titles, descriptions and categories come from publishers' manifests: they are shown as
text (React escapes them), never as HTML. Icons load from the REST API, which serves
them with a content security policy that keeps them inert.
"""

from __future__ import annotations

from typing import Any

import reflex as rx
from reflex.vars import ObjectVar

from aimms_portal.errors import PortalError
from aimms_portal.services import apps
from aimms_portal.ui.layout import shell
from aimms_portal.ui.pages.launch import desktop_dialog, launch_menu
from aimms_portal.ui.state import SessionState, call_as_user, failure

ALL = "all"
_CATEGORY = "c:"


def icon_url(view: apps.AppView) -> str:
    """Where the browser fetches the app's icon; empty when it has none.

    The version in the query string makes a new release's icon replace a cached one.
    """
    latest = view.latest
    if latest is None or not latest.icon_key:
        return ""
    return f"/api/v1/apps/{view.app.name}/icon?v={latest.version}"


def _catalogue(session: Any, *, actor: Any, query: str, category: str) -> tuple[list, list]:
    # one unit of work for the cards and the filter's choices
    views = apps.catalogue(session, actor=actor, query=query, category=category)
    return views, apps.categories(session, actor=actor)


class CatalogueState(rx.State):
    """The cards shown, the search text and the chosen category."""

    cards: list[dict[str, str]] = []
    categories: list[str] = []
    query: str = ""
    category: str = ""
    loaded: bool = False

    @rx.var
    def category_choice(self) -> str:
        return _CATEGORY + self.category if self.category else ALL

    @rx.var
    def filtered(self) -> bool:
        return bool(self.query or self.category)

    @rx.event
    async def load(self) -> Any:
        try:
            views, categories = await call_as_user(
                self, _catalogue, query=self.query, category=self.category
            )
        except PortalError as exc:
            return failure(exc)
        self.cards = [
            {
                "name": v.app.name,
                "title": v.app.title or v.app.name,
                "description": v.app.description,
                "category": v.app.category,
                "version": v.latest.version if v.latest else "",
                "icon": icon_url(v),
                "run": "yes" if v.can_run else "",
            }
            for v in views
        ]
        self.categories = categories
        self.loaded = True
        return None

    @rx.event
    def search(self, form: dict[str, Any]) -> Any:
        self.query = str(form.get("query", "")).strip()[:80]
        return CatalogueState.load

    @rx.event
    def choose_category(self, choice: str) -> Any:
        self.category = choice.removeprefix(_CATEGORY)[:40] if choice != ALL else ""
        return CatalogueState.load

    @rx.event
    def clear(self) -> Any:
        self.query = ""
        self.category = ""
        return [rx.set_value("catalogue-search", ""), CatalogueState.load]


def app_icon(url: Any, size: str = "48px") -> rx.Component:
    """An app's icon, or a neutral placeholder when it has none."""
    return rx.cond(
        url != "",
        rx.image(src=url, width=size, height=size, alt="", object_fit="contain"),
        rx.center(
            rx.icon("box", size=22, color="var(--accent-11)"),
            width=size,
            height=size,
            background="var(--accent-a3)",
            border_radius="var(--radius-3)",
            flex_shrink="0",
        ),
    )


def _card(card: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.hstack(
                app_icon(card["icon"]),
                rx.vstack(
                    rx.link(
                        rx.heading(card["title"], size="4", class_name="app-title"),
                        href="/apps/" + card["name"],
                        underline="hover",
                    ),
                    rx.hstack(
                        rx.cond(
                            card["category"] != "",
                            rx.badge(card["category"], variant="soft"),
                        ),
                        rx.text("v", card["version"], size="1", color_scheme="gray"),
                        spacing="2",
                        align="center",
                    ),
                    spacing="1",
                    min_width="0",
                ),
                spacing="3",
                align="start",
                width="100%",
            ),
            rx.text(
                card["description"],
                size="2",
                color_scheme="gray",
                class_name="app-description",
                style={
                    "display": "-webkit-box",
                    "WebkitLineClamp": "3",
                    "WebkitBoxOrient": "vertical",
                    "overflow": "hidden",
                    "overflowWrap": "anywhere",
                },
            ),
            rx.spacer(),
            rx.hstack(
                rx.cond(
                    card["run"] == "yes",
                    launch_menu(card["name"], "app-card-launch-" + card["name"]),
                    rx.text("You may see this app but not run it.", size="1", color_scheme="gray"),
                ),
                rx.link(
                    rx.button("Details", size="2", variant="soft"),
                    href="/apps/" + card["name"],
                ),
                spacing="2",
                width="100%",
                justify="end",
            ),
            spacing="3",
            height="100%",
        ),
        id="app-card-" + card["name"],
        class_name="app-card",
    )


def _toolbar() -> rx.Component:
    return rx.hstack(
        rx.form(
            rx.hstack(
                rx.input(
                    rx.input.slot(rx.icon("search", size=16)),
                    name="query",
                    placeholder="Search apps",
                    default_value=CatalogueState.query,
                    max_length=80,
                    width="18em",
                    id="catalogue-search",
                ),
                rx.button("Search", type="submit", variant="soft", id="catalogue-search-submit"),
                rx.select.root(
                    rx.select.trigger(placeholder="Category", id="catalogue-category"),
                    rx.select.content(
                        rx.select.item("All categories", value=ALL),
                        rx.foreach(
                            CatalogueState.categories,
                            lambda c: rx.select.item(c, value=_CATEGORY + c),
                        ),
                    ),
                    value=CatalogueState.category_choice,
                    on_change=CatalogueState.choose_category,
                ),
                rx.cond(
                    CatalogueState.filtered,
                    rx.button(
                        "Clear", type="button", variant="ghost", on_click=CatalogueState.clear
                    ),
                ),
                spacing="3",
                align="center",
            ),
            on_submit=CatalogueState.search,
        ),
        rx.spacer(),
        rx.cond(
            SessionState.is_publisher,
            rx.link(
                rx.button(rx.icon("upload", size=16), "Publish", id="catalogue-publish"),
                href="/publish",
            ),
        ),
        width="100%",
        align="center",
        margin_bottom="1.25em",
    )


def _empty() -> rx.Component:
    return rx.cond(
        CatalogueState.loaded,
        rx.callout(
            rx.cond(
                CatalogueState.filtered,
                "No app matches your search.",
                "There are no apps for you yet. Apps appear here once a publisher "
                "publishes one and gives you the right to see it.",
            ),
            icon="info",
            id="catalogue-empty",
        ),
    )


def catalogue_page() -> rx.Component:
    return shell(
        "Apps",
        _toolbar(),
        desktop_dialog(),
        rx.cond(
            CatalogueState.cards,
            rx.grid(
                rx.foreach(CatalogueState.cards, _card),
                columns=rx.breakpoints(initial="1", sm="2", lg="3"),
                spacing="4",
                width="100%",
                id="catalogue",
            ),
            _empty(),
        ),
    )
