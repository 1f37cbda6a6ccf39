"""Steps the browser tests share: log on, and set up users and groups over REST."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from playwright.sync_api import Page, expect

from aimms_portal.client import PortalClient
from tests.ui.conftest import Portal

#: How long a step may take in the browser (ms).
TIMEOUT = 20_000


def log_on(page: Page, portal: Portal, username: str, password: str) -> None:
    """Log ``page`` on through the log-on form and wait for the signed-on shell."""
    page.goto(f"{portal.url}/login")
    page.fill("#login-username", username)
    page.fill("#login-password", password)
    page.click("#login-submit")
    try:
        expect(page.locator("#main-nav")).to_be_visible(timeout=TIMEOUT)
    except AssertionError as exc:
        # what the portal did meanwhile is the clue to a log-on that never lands
        tail = "\n".join(portal.log.read_text(errors="replace").splitlines()[-40:])
        raise AssertionError(f"{exc}\n--- the portal's log, last lines:\n{tail}") from exc


def token_for(portal: Portal, username: str, password: str, *scopes: str) -> str:
    """A fresh one-day API token of ``username`` (default scopes: read and write)."""
    with PortalClient(portal.url) as client:
        created = client.log_on_for_token(
            username,
            password,
            token_name="test setup",
            scopes=list(scopes or ("read", "write")),
            expires_in_days=1,
        )
    return str(created["token"])


def admin_client(portal: Portal) -> PortalClient:
    """A REST client acting as the portal's admin (close it, or use it in ``with``)."""
    token = token_for(
        portal, portal.admin_username, portal.admin_password, "read", "write", "admin"
    )
    return PortalClient(portal.url, token)


def create_user(portal: Portal, username: str, password: str, role: str = "user") -> None:
    """Create a user through the portal's REST API, as its admin."""
    with admin_client(portal) as admin:
        admin.request(
            "POST", "/users", json={"username": username, "password": password, "role": role}
        )


def get_json(portal: Portal, path: str, token: str) -> tuple[int, Any]:
    """GET ``/api/v1{path}`` with a bearer token: the status and the decoded body."""
    request = urllib.request.Request(
        f"{portal.url}/api/v1{path}", headers={"Authorization": f"Bearer {token}"}
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)
