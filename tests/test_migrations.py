"""The Alembic migrations create exactly what the SQLModel tables describe."""

from __future__ import annotations

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlmodel import SQLModel

import aimms_portal.models  # noqa: F401
from aimms_portal.db import make_engine

pytestmark = pytest.mark.sqlite


def test_models_and_migrations_agree(database_url):
    engine = make_engine(database_url, pooled=False)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, SQLModel.metadata)
    engine.dispose()
    assert differences == []


def test_upgrade_from_empty_sqlite_file(tmp_path):
    from aimms_portal.db import upgrade_database

    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade_database(url)
    upgrade_database(url)  # a second run is a no-op
    engine = make_engine(url, pooled=False)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection)
        assert context.get_current_revision() is not None
    engine.dispose()
