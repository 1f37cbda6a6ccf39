"""Helpers the tests share: throwaway databases, a known password, log-on and tokens."""

from __future__ import annotations

import asyncio
import contextlib
import os
import uuid
from collections.abc import Callable, Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from aimms_portal.api.deps import CSRF_HEADER
from aimms_portal.db import session_scope, upgrade_database
from aimms_portal.models import User
from aimms_portal.services import tokens

#: A password that meets the policy; every test user gets it unless a test says otherwise.
PASSWORD = "Correct-horse-9-battery"

PG_ADMIN_URL = os.environ.get(
    "AIMMS_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
USE_SQLITE = os.environ.get("AIMMS_TEST_DB", "postgresql") == "sqlite"

T = TypeVar("T")


def run_async(
    coro: Coroutine[Any, Any, T], runner: Callable[[Coroutine[Any, Any, T]], T] = asyncio.run
) -> T:
    """``asyncio.run`` (or another ``runner``) in a thread of its own: Playwright's sync
    API keeps a loop running on the main thread once a browser test has run in this
    process, and a test module may run after one on the same pytest worker."""
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(runner, coro).result()


@contextlib.contextmanager
def migrated_database(folder: Path) -> Iterator[str]:
    """A new database migrated to ``head``: on the PostgreSQL server of the tests, or
    (``AIMMS_TEST_DB=sqlite``) a SQLite file in ``folder``. Dropped afterwards."""
    if USE_SQLITE:
        url = f"sqlite:///{folder / 'portal.db'}"
        upgrade_database(url)
        yield url
        return
    name = f"aimms_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    try:
        upgrade_database(url)
        yield url
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


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
