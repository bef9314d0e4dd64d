"""jobs.pause_requested, jobs.pauses: a running job asked to pause by its owner, and how
many times a job was paused (the `paused` status is a new value of the string jobs.status)

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-29 02:30:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('pause_requested', sa.Boolean(), nullable=False,
                                      server_default=sa.false()))
        batch_op.add_column(sa.Column('pauses', sa.Integer(), nullable=False,
                                      server_default='0'))


def downgrade() -> None:
    # A paused job has no place in the older schema: it goes back to the queue.
    op.execute("UPDATE jobs SET status = 'queued' WHERE status = 'paused'")
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('pauses')
        batch_op.drop_column('pause_requested')
