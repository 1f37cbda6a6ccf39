"""Alembic environment of the portal: migrates the database the settings name.

A URL given in the Alembic configuration (``sqlalchemy.url``, set by tests and by
``aimms_portal.db.upgrade_database``) wins over the settings.
"""

from __future__ import annotations

from logging.config import fileConfig

from sqlmodel import SQLModel

from aimms_portal import models  # noqa: F401  (registers the tables)
from aimms_portal.config import get_settings
from aimms_portal.db import make_engine
from alembic import context

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logger", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = SQLModel.metadata


def _url() -> str:
    return config.get_main_option("sqlalchemy.url") or get_settings().resolved_database_url


def run_migrations_offline() -> None:
    context.configure(
        url=_url(),
        target_metadata=target_metadata,
        literal_binds=True,
        render_as_batch=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    engine = make_engine(_url(), pooled=False)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            # SQLite can only change tables by copying them; batch mode does that
            render_as_batch=connection.dialect.name == "sqlite",
            compare_type=True,
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
