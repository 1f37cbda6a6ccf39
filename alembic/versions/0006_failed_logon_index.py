"""audit_events: a partial index of failed log-ons by address, for the log-on throttle

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-04 17:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op


revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FAILED_LOG_ON = "action = 'auth.login' AND outcome = 'failure'"


def upgrade() -> None:
    op.create_index(
        'ix_audit_failed_logons',
        'audit_events',
        ['source_ip', 'created_at'],
        unique=False,
        postgresql_where=sa.text(FAILED_LOG_ON),
        sqlite_where=sa.text(FAILED_LOG_ON),
    )


def downgrade() -> None:
    op.drop_index('ix_audit_failed_logons', table_name='audit_events')
