"""Fixtures shared by the whole suite.

The suite runs against PostgreSQL (``AIMMS_TEST_PG_URL``, default the server on
127.0.0.1:5432): each run creates its own database and drops it at the end. With
``AIMMS_TEST_DB=sqlite`` the same tests run on a SQLite file instead (the smoke
subset, ``-m sqlite``). Every test starts from empty tables.
"""

from __future__ import annotations

import os
import secrets
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlmodel import SQLModel

from aimms_portal import config, storage
from aimms_portal.api.app import create_api
from aimms_portal.db import reset_engine, session_scope, upgrade_database
from aimms_portal.models import Role, User
from aimms_portal.services import accounts
from tests.helpers import PASSWORD

PG_ADMIN_URL = os.environ.get(
    "AIMMS_TEST_PG_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
)
USE_SQLITE = os.environ.get("AIMMS_TEST_DB", "postgresql") == "sqlite"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if USE_SQLITE:
        skip = pytest.mark.skip(reason="not in the SQLite smoke subset")
        for item in items:
            if "sqlite" not in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A freshly migrated database for this test run; dropped afterwards."""
    if USE_SQLITE:
        url = f"sqlite:///{tmp_path_factory.mktemp('db') / 'portal.db'}"
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
        reset_engine()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def settings_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, database_url: str
) -> Iterator[Path]:
    """Point the portal's settings at the test database and a fresh storage folder."""
    monkeypatch.setenv("AIMMS_PORTAL_DATABASE_URL", database_url)
    monkeypatch.setenv("AIMMS_PORTAL_STORAGE_URL", (tmp_path / "storage").as_uri())
    monkeypatch.setenv("AIMMS_PORTAL_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("AIMMS_PORTAL_ENVIRONMENT", raising=False)
    config.get_settings.cache_clear()
    storage.get_storage.cache_clear()
    reset_engine()
    yield tmp_path
    config.get_settings.cache_clear()
    storage.get_storage.cache_clear()


@pytest.fixture
def db(settings_env: Path, database_url: str) -> Iterator[None]:
    """Empty tables (plus the built-in groups) for one test."""
    tables = [t.name for t in reversed(SQLModel.metadata.sorted_tables)]
    with session_scope() as session:
        if USE_SQLITE:
            for table in tables:
                session.exec(text(f"DELETE FROM {table}"))  # type: ignore[call-overload]
        else:
            session.exec(  # type: ignore[call-overload]
                text(f"TRUNCATE {', '.join(tables)} RESTART IDENTITY CASCADE")
            )
    with session_scope() as session:
        accounts.ensure_builtin_groups(session)
    yield


@pytest.fixture
def make_user(db: None) -> Callable[..., User]:
    """Create users: ``make_user("ann", role="publisher", active=True)``."""

    def make(
        username: str | None = None,
        *,
        role: str = Role.user.value,
        password: str = PASSWORD,
        active: bool = True,
    ) -> User:
        with session_scope() as session:
            user = accounts.create_user(
                session,
                actor=None,
                username=username or f"u{secrets.token_hex(4)}",
                password=password,
                role=role,
            )
            user.is_active = active
            session.add(user)
        return user

    return make


@pytest.fixture
def admin(make_user: Callable[..., User]) -> User:
    return make_user("root", role=Role.admin.value)


@pytest.fixture
def client(db: None) -> Iterator[TestClient]:
    """The REST API in-process (no UI), cookies kept between calls."""
    with TestClient(create_api(), client=("203.0.113.7", 50000)) as test_client:
        yield test_client
