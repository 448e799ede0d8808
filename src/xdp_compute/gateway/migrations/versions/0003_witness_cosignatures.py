"""witness cosignatures of the release log (issue #12: a log nobody can rewrite alone)

Revision ID: 0003
Revises: 0002

Each node witnesses the release log: its key and its latest C2SP cosignature/v1 on the log's
checkpoint. The release-log signing key itself leaves the database (``gateway/log_key.py``
moves an old ``secrets`` row out to a 0600 key file at the first start).
"""
import sqlalchemy as sa
from alembic import op

revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('witness_cosignatures',
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('node_id', sa.String(length=32), nullable=False),
    sa.Column('public_key', sa.String(length=64), nullable=False),
    sa.Column('tree_size', sa.BigInteger(), nullable=False),
    sa.Column('root_hash', sa.String(length=64), nullable=False),
    sa.Column('cosigned_at', sa.BigInteger(), nullable=False),
    sa.Column('signature_line', sa.Text(), nullable=False),
    sa.PrimaryKeyConstraint('name')
    )


def downgrade() -> None:
    op.drop_table('witness_cosignatures')
