"""change notifications for the per-process caches (PostgreSQL only)

Revision ID: 0005
Revises: 0004_queue
Create Date: 2026-12-04 09:00:00

Every committed change to the tables that the REST API's caches hold rows of sends
``NOTIFY aimms_portal_changes, '<table>'`` (see aimms_portal/cache.py, whose ``WATCHED``
lists the same tables and columns). Statement triggers: one notification per statement,
and PostgreSQL folds equal notifications of one transaction into one. The last-used and
last-seen times of tokens and log-ons and the creation of new ones are left out: no
cache holds anything they change. SQLite needs nothing (nothing is cached there).
"""

from collections.abc import Sequence

from alembic import op


revision: str = "0005"
down_revision: str | None = "0004_queue"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FUNCTION = "aimms_portal_notify_change"
#: table -> the events its trigger fires on
EVENTS = {
    "users": "INSERT OR UPDATE OR DELETE OR TRUNCATE",
    "groups": "INSERT OR UPDATE OR DELETE OR TRUNCATE",
    "memberships": "INSERT OR UPDATE OR DELETE OR TRUNCATE",
    "api_tokens": (
        "UPDATE OF user_id, token_hash, scopes, expires_at, revoked_at OR DELETE OR TRUNCATE"
    ),
    "browser_sessions": (
        "UPDATE OF user_id, token_hash, expires_at, revoked_at OR DELETE OR TRUNCATE"
    ),
}


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(
        f"""
        CREATE FUNCTION {FUNCTION}() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM pg_notify('aimms_portal_changes', TG_TABLE_NAME);
            RETURN NULL;
        END
        $$
        """
    )
    for table, events in EVENTS.items():
        op.execute(
            f"CREATE TRIGGER {table}_notify_change AFTER {events} ON {table} "
            f"FOR EACH STATEMENT EXECUTE FUNCTION {FUNCTION}()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    for table in EVENTS:
        op.execute(f"DROP TRIGGER IF EXISTS {table}_notify_change ON {table}")
    op.execute(f"DROP FUNCTION IF EXISTS {FUNCTION}()")
