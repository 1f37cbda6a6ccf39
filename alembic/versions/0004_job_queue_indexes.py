"""jobs: partial indexes for the queue, the jobs in progress and scheduled jobs

The full indexes on ``state`` and on ``(state, priority, id)`` got an entry for every
state a job passed through; the partial ones hold only the rows their queries want.

Revision ID: 0004_queue
Revises: 0003
Create Date: 2026-12-04 09:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op


revision: str = '0004_queue'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

QUEUED = "state = 'queued'"
ACTIVE = "state IN ('starting', 'running')"
SCHEDULED = "state = 'scheduled'"


def _where(clause: str) -> dict[str, object]:
    return {"postgresql_where": sa.text(clause), "sqlite_where": sa.text(clause)}


def upgrade() -> None:
    op.drop_index('ix_jobs_queue', table_name='jobs')
    op.drop_index('ix_jobs_state', table_name='jobs')
    op.create_index(
        'ix_jobs_queue', 'jobs', [sa.text('priority DESC'), 'id'], unique=False, **_where(QUEUED)
    )
    op.create_index('ix_jobs_active', 'jobs', ['owner_id', 'app_id'], unique=False, **_where(ACTIVE))
    op.create_index('ix_jobs_scheduled', 'jobs', ['start_at'], unique=False, **_where(SCHEDULED))


def downgrade() -> None:
    op.drop_index('ix_jobs_scheduled', table_name='jobs')
    op.drop_index('ix_jobs_active', table_name='jobs')
    op.drop_index('ix_jobs_queue', table_name='jobs')
    op.create_index('ix_jobs_state', 'jobs', ['state'], unique=False)
    op.create_index('ix_jobs_queue', 'jobs', ['state', sa.text('priority DESC'), 'id'], unique=False)
