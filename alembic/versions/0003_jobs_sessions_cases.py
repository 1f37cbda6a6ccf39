"""jobs, sessions, cases, job logs, state hooks, leader lease

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-04 02:19:32.958483
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op


revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('leader_leases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=32), nullable=False),
    sa.Column('holder', sa.String(length=128), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', name='uq_leader_lease_name')
    )
    op.create_table('cases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('app_id', sa.Integer(), nullable=True),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('attempt', sa.Integer(), nullable=True),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('name', sa.String(length=128), nullable=False),
    sa.Column('storage_key', sa.String(length=255), nullable=False),
    sa.Column('stored_size', sa.Integer(), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_cases_app_id'), 'cases', ['app_id'], unique=False)
    op.create_index(op.f('ix_cases_job_id'), 'cases', ['job_id'], unique=False)
    op.create_index(op.f('ix_cases_owner_id'), 'cases', ['owner_id'], unique=False)
    op.create_table('app_sessions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('release_id', sa.Integer(), nullable=True),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('launcher', sa.String(length=16), nullable=False),
    sa.Column('handle', sa.String(length=255), nullable=False),
    sa.Column('address', sa.String(length=255), nullable=False),
    sa.Column('log_tail', sa.Text(), server_default='', nullable=False),
    sa.Column('token_hash', sa.String(length=64), nullable=False),
    sa.Column('token_expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=True),
    sa.Column('idle_since', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_heartbeat_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_activity_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('peak_memory_bytes', sa.Integer(), nullable=True),
    sa.Column('cpu_seconds', sa.Float(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('ready_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('ended_at', sa.DateTime(timezone=True), nullable=True),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['release_id'], ['releases.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_app_sessions_app_id'), 'app_sessions', ['app_id'], unique=False)
    op.create_index(op.f('ix_app_sessions_kind'), 'app_sessions', ['kind'], unique=False)
    op.create_index(op.f('ix_app_sessions_owner_id'), 'app_sessions', ['owner_id'], unique=False)
    op.create_index(op.f('ix_app_sessions_release_id'), 'app_sessions', ['release_id'], unique=False)
    op.create_index(op.f('ix_app_sessions_state'), 'app_sessions', ['state'], unique=False)
    op.create_index(op.f('ix_app_sessions_token_hash'), 'app_sessions', ['token_hash'], unique=True)
    op.create_table('jobs',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('owner_id', sa.Integer(), nullable=False),
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('release_id', sa.Integer(), nullable=True),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('procedure', sa.String(length=64), nullable=False),
    sa.Column('input_case_id', sa.Integer(), nullable=True),
    sa.Column('output_case_id', sa.Integer(), nullable=True),
    sa.Column('arguments', sa.Text(), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('time_limit_s', sa.Integer(), nullable=False),
    sa.Column('start_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('max_attempts', sa.Integer(), nullable=False),
    sa.Column('session_id', sa.Integer(), nullable=True),
    sa.Column('lease_expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), nullable=False),
    sa.Column('exit_code', sa.Integer(), nullable=True),
    sa.Column('reason', sa.String(length=500), nullable=False),
    sa.Column('hook_url', sa.String(length=2000), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['input_case_id'], ['cases.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['output_case_id'], ['cases.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['owner_id'], ['users.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['release_id'], ['releases.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['session_id'], ['app_sessions.id'], ondelete='SET NULL'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_jobs_app_id'), 'jobs', ['app_id'], unique=False)
    op.create_index(op.f('ix_jobs_owner_id'), 'jobs', ['owner_id'], unique=False)
    op.create_index('ix_jobs_queue', 'jobs', ['state', sa.text('priority DESC'), 'id'], unique=False)
    op.create_index(op.f('ix_jobs_release_id'), 'jobs', ['release_id'], unique=False)
    op.create_index(op.f('ix_jobs_session_id'), 'jobs', ['session_id'], unique=False)
    op.create_index(op.f('ix_jobs_state'), 'jobs', ['state'], unique=False)
    op.create_table('session_events',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('session_id', sa.Integer(), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('detail', sa.String(length=500), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['session_id'], ['app_sessions.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_session_events_session_id'), 'session_events', ['session_id'], unique=False)
    op.create_table('hook_deliveries',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('url', sa.String(length=2000), nullable=False),
    sa.Column('body', sa.Text(), nullable=False),
    sa.Column('tries', sa.Integer(), nullable=False),
    sa.Column('next_try_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('last_error', sa.String(length=500), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_hook_deliveries_job_id'), 'hook_deliveries', ['job_id'], unique=False)
    op.create_index(op.f('ix_hook_deliveries_next_try_at'), 'hook_deliveries', ['next_try_at'], unique=False)
    op.create_table('job_log_chunks',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('job_id', sa.Integer(), nullable=False),
    sa.Column('attempt', sa.Integer(), nullable=False),
    sa.Column('stream', sa.String(length=8), nullable=False),
    sa.Column('text', sa.Text(), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_job_log_chunks_job_id'), 'job_log_chunks', ['job_id'], unique=False)

    # cases and sessions point back at jobs: those keys come once jobs exist
    with op.batch_alter_table('cases') as batch_op:
        batch_op.create_foreign_key(
            'fk_cases_job', 'jobs', ['job_id'], ['id'], ondelete='SET NULL'
        )
    with op.batch_alter_table('app_sessions') as batch_op:
        batch_op.create_foreign_key(
            'fk_sessions_job', 'jobs', ['job_id'], ['id'], ondelete='SET NULL'
        )


def downgrade() -> None:
    with op.batch_alter_table('app_sessions') as batch_op:
        batch_op.drop_constraint('fk_sessions_job', type_='foreignkey')
    with op.batch_alter_table('cases') as batch_op:
        batch_op.drop_constraint('fk_cases_job', type_='foreignkey')
    op.drop_index(op.f('ix_job_log_chunks_job_id'), table_name='job_log_chunks')
    op.drop_table('job_log_chunks')
    op.drop_index(op.f('ix_hook_deliveries_next_try_at'), table_name='hook_deliveries')
    op.drop_index(op.f('ix_hook_deliveries_job_id'), table_name='hook_deliveries')
    op.drop_table('hook_deliveries')
    op.drop_index(op.f('ix_session_events_session_id'), table_name='session_events')
    op.drop_table('session_events')
    op.drop_index(op.f('ix_jobs_state'), table_name='jobs')
    op.drop_index(op.f('ix_jobs_session_id'), table_name='jobs')
    op.drop_index(op.f('ix_jobs_release_id'), table_name='jobs')
    op.drop_index('ix_jobs_queue', table_name='jobs')
    op.drop_index(op.f('ix_jobs_owner_id'), table_name='jobs')
    op.drop_index(op.f('ix_jobs_app_id'), table_name='jobs')
    op.drop_table('jobs')
    op.drop_index(op.f('ix_app_sessions_token_hash'), table_name='app_sessions')
    op.drop_index(op.f('ix_app_sessions_state'), table_name='app_sessions')
    op.drop_index(op.f('ix_app_sessions_release_id'), table_name='app_sessions')
    op.drop_index(op.f('ix_app_sessions_owner_id'), table_name='app_sessions')
    op.drop_index(op.f('ix_app_sessions_kind'), table_name='app_sessions')
    op.drop_index(op.f('ix_app_sessions_app_id'), table_name='app_sessions')
    op.drop_table('app_sessions')
    op.drop_index(op.f('ix_cases_owner_id'), table_name='cases')
    op.drop_index(op.f('ix_cases_job_id'), table_name='cases')
    op.drop_index(op.f('ix_cases_app_id'), table_name='cases')
    op.drop_table('cases')
    op.drop_table('leader_leases')
