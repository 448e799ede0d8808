"""data exchange (issue #17): asset versions, products, subscriptions, metered usage, statements

Revision ID: 0005
Revises: 0004
"""
import sqlalchemy as sa
from alembic import op

revision = '0005'
down_revision = '0004'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'asset_versions',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('dataset_name', sa.String(length=64), sa.ForeignKey('datasets.name'), nullable=False),
        sa.Column('version', sa.Integer(), nullable=False),
        sa.Column('log_index', sa.Integer(), nullable=False),
        sa.Column('owner_id', sa.String(length=32), sa.ForeignKey('principals.id'), nullable=False),
        sa.Column('content_commitment', sa.String(length=64), nullable=False),
        sa.Column('metadata_commitment', sa.String(length=64), nullable=False),
        sa.Column('registered_at', sa.Float(), nullable=False),
        sa.UniqueConstraint('dataset_name', 'version'),
    )
    op.create_table(
        'products',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('dataset_name', sa.String(length=64), sa.ForeignKey('datasets.name'), nullable=False),
        sa.Column('owner_id', sa.String(length=32), sa.ForeignKey('principals.id'), nullable=False),
        sa.Column('kind', sa.String(length=16), nullable=False),
        sa.Column('title', sa.String(length=200), nullable=False),
        sa.Column('description', sa.Text(), nullable=False),
        sa.Column('unit', sa.String(length=16), nullable=False),
        sa.Column('unit_price', sa.Float(), nullable=False),
        sa.Column('allowance', sa.Float(), nullable=False),
        sa.Column('terms_json', sa.Text(), nullable=False),
        sa.Column('log_index', sa.Integer(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
    )
    op.create_table(
        'subscriptions',
        sa.Column('id', sa.String(length=32), primary_key=True),
        sa.Column('product_id', sa.String(length=32), sa.ForeignKey('products.id'), nullable=False),
        sa.Column('principal_id', sa.String(length=32), sa.ForeignKey('principals.id'), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('used', sa.Float(), nullable=False),
        sa.Column('held', sa.Float(), nullable=False),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('decided_at', sa.Float(), nullable=True),
        sa.Column('reason', sa.Text(), nullable=True),
        sa.UniqueConstraint('product_id', 'principal_id'),
    )
    op.create_table(
        'usage',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('subscription_id', sa.String(length=32), sa.ForeignKey('subscriptions.id'), nullable=False),
        sa.Column('product_id', sa.String(length=32), sa.ForeignKey('products.id'), nullable=False),
        sa.Column('job_id', sa.String(length=32), nullable=True),
        sa.Column('state', sa.String(length=16), nullable=False),
        sa.Column('units', sa.Float(), nullable=False),
        sa.Column('amount_micros', sa.BigInteger(), nullable=False),
        sa.Column('period', sa.String(length=7), nullable=True),
        sa.Column('parties_json', sa.Text(), nullable=False),
        sa.Column('log_index', sa.Integer(), nullable=True),
        sa.Column('created_at', sa.Float(), nullable=False),
        sa.Column('metered_at', sa.Float(), nullable=True),
    )
    op.create_table(
        'statements',
        sa.Column('id', sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column('period', sa.String(length=7), nullable=False),
        sa.Column('party_id', sa.String(length=32), sa.ForeignKey('principals.id'), nullable=False),
        sa.Column('side', sa.String(length=16), nullable=False),
        sa.Column('total_micros', sa.BigInteger(), nullable=False),
        sa.Column('log_index', sa.Integer(), nullable=False),
        sa.Column('issued_at', sa.Float(), nullable=False),
        sa.UniqueConstraint('period', 'party_id', 'side'),
    )


def downgrade() -> None:
    for table in ('statements', 'usage', 'subscriptions', 'products', 'asset_versions'):
        op.drop_table(table)
