"""publishing

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03 19:46:39.204357
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op


revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('apps',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('title', sa.String(length=80), nullable=False),
    sa.Column('description', sa.String(length=2000), nullable=False),
    sa.Column('category', sa.String(length=40), nullable=False),
    sa.Column('latest_release_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_apps_category'), 'apps', ['category'], unique=False)
    op.create_index(op.f('ix_apps_name'), 'apps', ['name'], unique=True)

    op.create_table('portal_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('public_pem', sa.Text(), nullable=False),
    sa.Column('private_pem_encrypted', sa.Text(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index(op.f('ix_portal_keys_fingerprint'), 'portal_keys', ['fingerprint'], unique=True)

    op.create_table('runtime_versions',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('python_requires', sa.String(length=128), nullable=False),
    sa.Column('description', sa.String(length=2000), nullable=False),
    sa.Column('sha256', sa.String(length=64), nullable=False),
    sa.Column('size', sa.Integer(), nullable=False),
    sa.Column('storage_key', sa.String(length=255), nullable=False),
    sa.Column('signature', sa.String(length=128), nullable=False),
    sa.Column('signer_fingerprint', sa.String(length=64), nullable=False),
    sa.Column('signer_name', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('uploaded_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name', 'version', name='uq_runtime_name_version')
    )
    op.create_index(op.f('ix_runtime_versions_name'), 'runtime_versions', ['name'], unique=False)

    op.create_table('signing_keys',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('fingerprint', sa.String(length=64), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('name')
    )
    op.create_index(op.f('ix_signing_keys_fingerprint'), 'signing_keys', ['fingerprint'], unique=True)

    op.create_table('app_grants',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('principal_type', sa.String(length=8), nullable=False),
    sa.Column('principal_id', sa.Integer(), nullable=False),
    sa.Column('right', sa.String(length=8), nullable=False),
    sa.Column('effect', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('created_by', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], ondelete='CASCADE'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('app_id', 'principal_type', 'principal_id', 'right', name='uq_grant_principal_right')
    )
    op.create_index(op.f('ix_app_grants_app_id'), 'app_grants', ['app_id'], unique=False)
    op.create_index(op.f('ix_app_grants_principal_id'), 'app_grants', ['principal_id'], unique=False)

    op.create_table('releases',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('app_id', sa.Integer(), nullable=False),
    sa.Column('version', sa.String(length=64), nullable=False),
    sa.Column('runtime_version_id', sa.Integer(), nullable=False),
    sa.Column('runtime_spec', sa.String(length=128), nullable=False),
    sa.Column('manifest', sa.Text(), nullable=False),
    sa.Column('bundle_key', sa.String(length=255), nullable=False),
    sa.Column('bundle_sha256', sa.String(length=64), nullable=False),
    sa.Column('bundle_size', sa.Integer(), nullable=False),
    sa.Column('icon_key', sa.String(length=255), nullable=True),
    sa.Column('icon_type', sa.String(length=32), nullable=True),
    sa.Column('encrypted', sa.Boolean(), nullable=False),
    sa.Column('portal_key_fingerprint', sa.String(length=64), nullable=True),
    sa.Column('hidden', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('published_by', sa.String(length=64), nullable=False),
    sa.ForeignKeyConstraint(['app_id'], ['apps.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['runtime_version_id'], ['runtime_versions.id'], ondelete='RESTRICT'),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('app_id', 'version', name='uq_release_app_version')
    )
    op.create_index(op.f('ix_releases_app_id'), 'releases', ['app_id'], unique=False)
    op.create_index(op.f('ix_releases_runtime_version_id'), 'releases', ['runtime_version_id'], unique=False)

    # apps and releases point at each other: the apps -> releases key comes last
    with op.batch_alter_table('apps') as batch_op:
        batch_op.create_foreign_key(
            'fk_apps_latest_release', 'releases', ['latest_release_id'], ['id'],
            ondelete='SET NULL',
        )


def downgrade() -> None:
    with op.batch_alter_table('apps') as batch_op:
        batch_op.drop_constraint('fk_apps_latest_release', type_='foreignkey')

    op.drop_index(op.f('ix_releases_runtime_version_id'), table_name='releases')
    op.drop_index(op.f('ix_releases_app_id'), table_name='releases')

    op.drop_table('releases')
    op.drop_index(op.f('ix_app_grants_principal_id'), table_name='app_grants')
    op.drop_index(op.f('ix_app_grants_app_id'), table_name='app_grants')

    op.drop_table('app_grants')
    op.drop_index(op.f('ix_signing_keys_fingerprint'), table_name='signing_keys')

    op.drop_table('signing_keys')
    op.drop_index(op.f('ix_runtime_versions_name'), table_name='runtime_versions')

    op.drop_table('runtime_versions')
    op.drop_index(op.f('ix_portal_keys_fingerprint'), table_name='portal_keys')

    op.drop_table('portal_keys')
    op.drop_index(op.f('ix_apps_name'), table_name='apps')
    op.drop_index(op.f('ix_apps_category'), table_name='apps')

    op.drop_table('apps')
