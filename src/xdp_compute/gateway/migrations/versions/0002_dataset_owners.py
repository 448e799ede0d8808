"""dataset owners and members (issue #12: co-holders are strangers)

Revision ID: 0002
Revises: 0001

Existing datasets are given to the holder of the node that registered first; every other
holder already contributing to them becomes an invited member, so no running deployment loses
a node. From here on a holder joins only when the owner invites it.
"""
import time

import sqlalchemy as sa
from alembic import op

revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no table rebuild: SQLite could not drop `datasets` under its foreign keys);
    # the foreign key rides inline on SQLite and as ADD CONSTRAINT elsewhere.
    if op.get_bind().dialect.name == 'sqlite':
        op.execute("ALTER TABLE datasets ADD COLUMN owner_id VARCHAR(32) REFERENCES principals (id)")
    else:
        op.add_column('datasets', sa.Column('owner_id', sa.String(length=32), sa.ForeignKey('principals.id'),
                                            nullable=True))
    op.add_column('datasets', sa.Column('policy_json', sa.Text(), nullable=False, server_default='{}'))
    op.create_table('dataset_members',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('dataset_name', sa.String(length=64), nullable=False),
    sa.Column('holder_id', sa.String(length=32), nullable=False),
    sa.Column('invited_by', sa.String(length=32), nullable=False),
    sa.Column('invited_at', sa.Float(), nullable=False),
    sa.ForeignKeyConstraint(['dataset_name'], ['datasets.name'], ),
    sa.ForeignKeyConstraint(['holder_id'], ['principals.id'], ),
    sa.ForeignKeyConstraint(['invited_by'], ['principals.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('dataset_name', 'holder_id')
    )
    conn = op.get_bind()
    rows = conn.execute(sa.text(
        "SELECT nd.dataset_name, n.holder_id FROM node_datasets nd JOIN nodes n ON n.id = nd.node_id "
        "ORDER BY n.registered_at, n.name")).all()
    owners: dict[str, str] = {}
    members: set[tuple[str, str]] = set()
    for name, holder in rows:
        owner = owners.setdefault(name, holder)
        if holder != owner:
            members.add((name, holder))
    now = time.time()
    for name, owner in owners.items():
        conn.execute(sa.text("UPDATE datasets SET owner_id = :o WHERE name = :n"), {"o": owner, "n": name})
    for name, holder in sorted(members):
        conn.execute(sa.text("INSERT INTO dataset_members (dataset_name, holder_id, invited_by, invited_at) "
                             "VALUES (:n, :h, :o, :t)"), {"n": name, "h": holder, "o": owners[name], "t": now})


def downgrade() -> None:
    op.drop_table('dataset_members')
    with op.batch_alter_table('datasets') as batch:
        batch.drop_column('policy_json')
        batch.drop_column('owner_id')
