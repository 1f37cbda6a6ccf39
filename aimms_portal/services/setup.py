"""Getting a portal ready to serve: schema, built-in groups, first admin."""

from __future__ import annotations

import logging
from dataclasses import dataclass

from aimms_portal.config import Settings
from aimms_portal.db import session_scope, upgrade_database
from aimms_portal.services import accounts, demo, portal_keys

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prepared:
    """What a start did that the operator should hear about."""

    #: The generated password of a newly created first admin, to be shown once.
    admin_password: str | None
    #: What happened to the demo content, if anything.
    demo: str | None


def prepare(settings: Settings) -> Prepared:
    """Migrate the database, create the built-in groups, the portal key and an admin,
    and on a fresh development portal publish the demo content.

    Safe to run at every start and from several processes in turn.
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
        portal_keys.ensure_portal_key(session)
    summary = demo.publish_demo_if_wanted(settings, admin)
    logger.info("portal prepared; admin account: %s", admin.username)
    return Prepared(admin_password=generated, demo=summary)
