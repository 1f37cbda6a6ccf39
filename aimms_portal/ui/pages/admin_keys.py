"""Admin: the runtime signing keys this portal trusts, and the portal's own public key.

Publishers sign runtime packages with their Ed25519 key; the portal accepts a package
only if an admin trusted that key here. Bundles may be encrypted for the portal's RSA
key shown below (it is public; the private half never leaves the server).
"""

from __future__ import annotations

from typing import Any

import reflex as rx
from reflex.vars import ObjectVar

from aimms_portal.errors import PortalError
from aimms_portal.services import portal_keys, signing_keys
from aimms_portal.ui.components import confirm_dialog, data_table
from aimms_portal.ui.layout import shell
from aimms_portal.ui.pages.admin_nav import admin_tabs
from aimms_portal.ui.state import call_as_user, call_service, failure, when

PORTAL_KEY_URL = "/api/v1/portal-key"


class KeysState(rx.State):
    """The trusted keys, the portal's public key and the key about to be deleted."""

    keys: list[dict[str, str]] = []
    portal_fingerprint: str = ""
    portal_pem: str = ""
    delete_id: str = ""
    delete_name: str = ""

    @rx.event
    async def load(self) -> Any:
        try:
            # the service checks that the caller is an admin before anything is shown
            keys = await call_as_user(self, signing_keys.list_signing_keys)
            portal_key = await call_service(portal_keys.ensure_portal_key)
        except PortalError as exc:
            return failure(exc)
        self.keys = [
            {
                "id": str(k.id),
                "name": k.name,
                "fingerprint": k.fingerprint,
                "added": f"{when(k.created_at)} by {k.created_by or '?'}",
            }
            for k in keys
        ]
        self.portal_fingerprint = portal_key.fingerprint
        self.portal_pem = portal_key.public_pem
        return None

    @rx.event
    async def add(self, form: dict[str, Any]) -> Any:
        try:
            key = await call_as_user(
                self,
                signing_keys.add_signing_key,
                name=str(form.get("name", "")),
                public_key=str(form.get("public_key", ""))[:200],
            )
        except PortalError as exc:
            return failure(exc)
        return [rx.toast.success(f"Key {key.name} is trusted now."), KeysState.load]

    @rx.event
    def ask_delete(self, key_id: str, name: str) -> None:
        self.delete_id, self.delete_name = key_id, name

    @rx.event
    def close_delete(self, open_: bool = False) -> None:
        if not open_:
            self.delete_id, self.delete_name = "", ""

    @rx.event
    async def delete(self) -> Any:
        key_id, name = self.delete_id, self.delete_name
        self.delete_id, self.delete_name = "", ""
        try:
            await call_as_user(self, signing_keys.delete_signing_key, key_id=int(key_id or 0))
        except PortalError as exc:
            return failure(exc)
        return [rx.toast.success(f"Key {name} is no longer trusted."), KeysState.load]


def _row(key: ObjectVar[dict[str, str]]) -> rx.Component:
    return rx.table.row(
        rx.table.cell(rx.text.strong(key["name"])),
        rx.table.cell(rx.code(key["fingerprint"], size="1")),
        rx.table.cell(rx.text(key["added"], size="1", color_scheme="gray")),
        rx.table.cell(
            rx.button(
                "Stop trusting",
                size="1",
                variant="soft",
                color_scheme="red",
                on_click=KeysState.ask_delete(key["id"], key["name"]),
            )
        ),
        id="key-row-" + key["id"],
    )


def _add_form() -> rx.Component:
    return rx.form(
        rx.vstack(
            rx.hstack(
                rx.input(
                    name="name",
                    placeholder="name, e.g. ops team 2026",
                    required=True,
                    max_length=64,
                    id="key-name",
                    width="16em",
                ),
                rx.input(
                    name="public_key",
                    placeholder="ed25519:… (the text of the publisher's KEY.pub)",
                    required=True,
                    max_length=200,
                    id="key-text",
                    font_family="monospace",
                    flex="1",
                ),
                rx.button("Trust key", type="submit", id="key-add"),
                width="100%",
                spacing="3",
            ),
            width="100%",
        ),
        on_submit=KeysState.add,
        reset_on_submit=True,
        margin_bottom="1em",
        width="100%",
    )


def _portal_key() -> rx.Component:
    return rx.card(
        rx.vstack(
            rx.heading("This portal's key for encrypted bundles", size="4"),
            rx.text(
                "Publishers encrypt a bundle for this portal with this public key "
                "('aimms-portal app pack DIR --encrypt-for KEY'). Scripts fetch it from ",
                rx.link(PORTAL_KEY_URL, href=PORTAL_KEY_URL, is_external=True),
                ".",
                size="2",
                color_scheme="gray",
            ),
            rx.hstack(
                rx.text("Fingerprint", size="2", weight="medium"),
                rx.code(KeysState.portal_fingerprint, id="portal-key-fingerprint"),
                align="center",
                wrap="wrap",
            ),
            rx.text_area(
                value=KeysState.portal_pem,
                read_only=True,
                rows="10",
                width="100%",
                font_family="monospace",
                id="portal-key-pem",
            ),
            spacing="3",
            width="100%",
        ),
        width="100%",
        margin_top="1.5em",
    )


def keys_page() -> rx.Component:
    return shell(
        "Admin",
        admin_tabs("keys"),
        rx.heading("Trusted signing keys", size="4", margin_bottom="0.25em"),
        rx.text(
            "Runtime packages are accepted only when signed by one of these keys. Removing "
            "a key keeps the runtime versions it signed.",
            size="2",
            color_scheme="gray",
            margin_bottom="0.75em",
        ),
        _add_form(),
        rx.cond(
            KeysState.keys,
            data_table(
                ("Name", "Fingerprint (SHA-256)", "Added", ""),
                KeysState.keys,
                _row,
                id="keys-table",
                width="100%",
            ),
            rx.text(
                "No key is trusted yet: no runtime package can be uploaded.", color_scheme="gray"
            ),
        ),
        _portal_key(),
        confirm_dialog(
            open_=KeysState.delete_id != "",
            on_open_change=KeysState.close_delete,
            title="Stop trusting " + KeysState.delete_name + "?",
            description="New packages signed with this key will be refused. Runtime versions "
            "it signed stay.",
            action="Stop trusting",
            on_confirm=KeysState.delete,
            element_id="key-delete-confirm",
        ),
    )
