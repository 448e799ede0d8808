"""what a holder sees about its nodes (issue #15): reported version and TLS client certificate

Revision ID: 0004
Revises: 0003
"""
import sqlalchemy as sa
from alembic import op

revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('nodes') as batch:
        batch.add_column(sa.Column('agent_version', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('cert_subject', sa.String(length=512), nullable=True))
        batch.add_column(sa.Column('cert_fingerprint', sa.String(length=64), nullable=True))
        batch.add_column(sa.Column('cert_not_after', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('nodes') as batch:
        batch.drop_column('cert_not_after')
        batch.drop_column('cert_fingerprint')
        batch.drop_column('cert_subject')
        batch.drop_column('agent_version')
