"""models published from a checkpoint: checkpoint_step, one model per (job, step)

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-28 22:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.add_column(sa.Column('checkpoint_step', sa.Integer(), nullable=True))
        batch_op.create_index('ix_models_job_checkpoint', ['job_id', 'checkpoint_step'],
                              unique=True)


def downgrade() -> None:
    with op.batch_alter_table('models', schema=None) as batch_op:
        batch_op.drop_index('ix_models_job_checkpoint')
        batch_op.drop_column('checkpoint_step')
