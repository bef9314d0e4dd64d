"""evaluation_cells: the finished cells of evaluate jobs (a task trained one way, scored)

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 23:55:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'evaluation_cells',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('job_id', sa.String(length=40), nullable=False),
        sa.Column('task_index', sa.Integer(), nullable=False),
        sa.Column('variant', sa.String(length=32), nullable=False),
        sa.Column('metrics', sa.JSON(), nullable=False),
        sa.Column('steps', sa.Integer(), nullable=True),
        sa.Column('seconds', sa.Float(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('job_id', 'task_index', 'variant',
                            name='uq_evaluation_cells_job_task_variant'),
    )
    op.create_index(op.f('ix_evaluation_cells_job_id'), 'evaluation_cells', ['job_id'],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f('ix_evaluation_cells_job_id'), table_name='evaluation_cells')
    op.drop_table('evaluation_cells')
