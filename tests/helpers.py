"""Helpers the tests share: a known password, log-on and token headers."""

from __future__ import annotations

from fastapi.testclient import TestClient

from aimms_portal.api.deps import CSRF_HEADER
from aimms_portal.db import session_scope
from aimms_portal.models import User
from aimms_portal.services import tokens

#: A password that meets the policy; every test user gets it unless a test says otherwise.
PASSWORD = "Correct-horse-9-battery"


def bearer(user: User, *scopes: str, days: int = 30) -> dict[str, str]:
    """Headers with a fresh API token of ``user`` (default scopes: all the user may hold)."""
    if not scopes:
        scopes = ("read", "write", "admin") if user.is_admin else ("read", "write")
    with session_scope() as session:
        _, token = tokens.create_token(
            session, actor=user, name="test", scopes=list(scopes), expires_in_days=days
        )
    return {"Authorization": f"Bearer {token}"}


def log_on(client: TestClient, username: str, password: str = PASSWORD) -> dict[str, str]:
    """Log ``client`` on with the cookie; returns the CSRF header to send with changes."""
    response = client.post("/api/v1/auth/login", json={"username": username, "password": password})
    assert response.status_code == 200, response.text
    return {CSRF_HEADER: response.json()["csrf_token"]}
