"""per-worker-kind training throughput (dry-run time estimates), jobs.estimated_seconds

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-28 23:45:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('throughput',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('worker_kind', sa.String(length=255), nullable=False),
    sa.Column('architecture', sa.String(length=32), nullable=False),
    sa.Column('objective', sa.String(length=32), nullable=False),
    sa.Column('parameters', sa.BigInteger(), nullable=False),
    sa.Column('tokens_per_second', sa.Float(), nullable=False),
    sa.Column('jobs', sa.Integer(), nullable=False),
    sa.Column('worker', sa.String(length=255), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('worker_kind', 'architecture', 'objective', 'parameters',
                        name='uq_throughput_key')
    )
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('estimated_seconds', sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('estimated_seconds')
    op.drop_table('throughput')
