"""sweeps of trials: sweeps, sweep_trials

Revision ID: 0011
Revises: 0010
Create Date: 2026-11-29 02:30:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'sweeps',
        sa.Column('id', sa.String(length=40), nullable=False),
        sa.Column('owner', sa.String(length=64), nullable=False),
        sa.Column('name', sa.String(length=255), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('spec', sa.JSON(), nullable=False),
        sa.Column('trials_started', sa.Integer(), nullable=False),
        sa.Column('best_job_id', sa.String(length=40), nullable=True),
        sa.Column('best_value', sa.Float(), nullable=True),
        sa.Column('model_id', sa.String(length=40), nullable=True),
        sa.Column('error_message', sa.Text(), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint('id'),
    )
    op.create_index('ix_sweeps_owner', 'sweeps', ['owner'])
    op.create_index('ix_sweeps_status', 'sweeps', ['status'])
    op.create_index('ix_sweeps_created_at', 'sweeps', ['created_at'])
    op.create_table(
        'sweep_trials',
        sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
        sa.Column('sweep_id', sa.String(length=40), nullable=False),
        sa.Column('number', sa.Integer(), nullable=False),
        sa.Column('job_id', sa.String(length=40), nullable=False),
        sa.Column('params', sa.JSON(), nullable=False),
        sa.Column('pruned', sa.Boolean(), nullable=False),
        sa.Column('pruned_step', sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(['sweep_id'], ['sweeps.id'], ondelete='CASCADE'),
        sa.ForeignKeyConstraint(['job_id'], ['jobs.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('id'),
        sa.UniqueConstraint('sweep_id', 'number', name='uq_sweep_trials_number'),
        sa.UniqueConstraint('job_id'),
    )


def downgrade() -> None:
    op.drop_table('sweep_trials')
    op.drop_index('ix_sweeps_created_at', table_name='sweeps')
    op.drop_index('ix_sweeps_status', table_name='sweeps')
    op.drop_index('ix_sweeps_owner', table_name='sweeps')
    op.drop_table('sweeps')
