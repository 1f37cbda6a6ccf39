"""Fixtures shared by the whole suite.

The suite runs against PostgreSQL (``AIMMS_TEST_PG_URL``, default the server on
127.0.0.1:5432): each run creates its own database and drops it at the end (see
``tests.helpers.migrated_database``). With
``AIMMS_TEST_DB=sqlite`` the same tests run on a SQLite file instead (the smoke
subset, ``-m sqlite``). Every test starts from empty tables.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlmodel import SQLModel

from aimms_portal import config, storage
from aimms_portal.api.app import create_api
from aimms_portal.db import reset_engine, session_scope
from aimms_portal.models import Role, User
from aimms_portal.services import accounts, demo
from tests.helpers import PASSWORD, USE_SQLITE, migrated_database

pytest_plugins = ["tests.servers", "tests.solving"]


def pytest_configure(config: pytest.Config) -> None:
    # the demo content downloads wheels from PyPI: only the tests about it turn it on
    os.environ.setdefault("AIMMS_PORTAL_DEMO", "false")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if USE_SQLITE:
        skip = pytest.mark.skip(reason="not in the SQLite smoke subset")
        for item in items:
            if "sqlite" not in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A freshly migrated database for this test run; dropped afterwards."""
    with migrated_database(tmp_path_factory.mktemp("db")) as url:
        yield url
        reset_engine()


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


@pytest.fixture(scope="session")
def demo_wheels(request: pytest.FixtureRequest) -> Path:
    """The demo runtime's wheels, downloaded from PyPI once and kept in the pytest cache."""
    digest = hashlib.sha256((demo.RUNTIME_DIR / "requirements.txt").read_bytes()).hexdigest()[:16]
    folder = Path(request.config.cache.mkdir(f"demo-wheels-{digest}"))
    complete = folder / "complete"
    if not complete.exists():
        # into a subfolder of this process first: an interrupted download is never taken
        # as done, and parallel test workers never download into one folder
        partial = folder / f"partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--disable-pip-version-check",
                "--no-input",
                "--only-binary=:all:",
                "-r",
                str(demo.RUNTIME_DIR / "requirements.txt"),
                "-d",
                str(partial),
            ],
            check=True,
            capture_output=True,
        )
        for wheel in partial.glob("*.whl"):
            wheel.replace(folder / wheel.name)
        shutil.rmtree(partial)
        complete.write_text("")
    return folder
