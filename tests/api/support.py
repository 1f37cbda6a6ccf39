"""What the REST tests share: cheap users, a second browser, the one error shape."""

from __future__ import annotations

import functools
from typing import Any

import httpx
from fastapi.testclient import TestClient
from sqlmodel import col, select

from aimms_portal.api.app import create_api
from aimms_portal.auth import passwords
from aimms_portal.db import session_scope
from aimms_portal.models import AuditEvent, Role, User
from aimms_portal.services import accounts
from tests.helpers import PASSWORD

API = "/api/v1"
#: The address the ``client`` fixture sends from; audit events must show it.
CLIENT_IP = "203.0.113.7"


@functools.cache
def _password_hash() -> str:
    # hashing costs ~50 ms; one hash of PASSWORD serves every user of the run
    return passwords.hash_password(PASSWORD)


def quick_user(username: str, role: str = Role.user.value, *, active: bool = True) -> User:
    """A user whose password is ``PASSWORD``, without paying for a fresh hash."""
    with session_scope() as session:
        user = accounts.create_user(
            session, actor=None, username=username, password=None, role=role
        )
        user.password_hash = _password_hash()
        user.is_active = active
        session.add(user)
    return user


def browser(port: int = 50001) -> TestClient:
    """Another in-process client with its own cookie jar (use it as a context manager)."""
    return TestClient(create_api(), client=(CLIENT_IP, port))


def error(response: httpx.Response, status: int, code: str | None = None) -> str:
    """Check ``response`` is an error in the API's one shape; returns its message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"]
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    if code is not None:
        assert body["error"]["code"] == code, body
    return str(body["error"]["message"])


def audit_events(**where: Any) -> list[AuditEvent]:
    """Audit events straight from the database, oldest first, filtered by column values."""
    with session_scope() as session:
        statement = select(AuditEvent).filter_by(**where).order_by(col(AuditEvent.id))
        return list(session.exec(statement).all())
