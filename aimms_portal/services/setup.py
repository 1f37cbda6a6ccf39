"""Getting a portal ready to serve: schema, built-in groups, first admin."""

from __future__ import annotations

import logging

from aimms_portal.config import Settings
from aimms_portal.db import session_scope, upgrade_database
from aimms_portal.services import accounts

logger = logging.getLogger(__name__)


def prepare(settings: Settings) -> str | None:
    """Migrate the database, create the built-in groups and make sure an admin exists.

    Safe to run at every start and from several processes in turn. Returns the
    generated password of a newly created first admin (to be shown once), else ``None``.
    """
    upgrade_database(settings.resolved_database_url)
    with session_scope() as session:
        accounts.ensure_builtin_groups(session)
        password = settings.admin_password.get_secret_value() if settings.admin_password else None
        admin, generated = accounts.ensure_admin(
            session,
            username=settings.admin_username,
            password=password,
            email=settings.admin_email,
        )
    logger.info("portal prepared; admin account: %s", admin.username)
    return generated
