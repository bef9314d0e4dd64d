"""throughput.setup_seconds: a job's time outside its training loop, for estimates

Revision ID: 0012
Revises: 0011
Create Date: 2026-11-29 09:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('throughput', sa.Column('setup_seconds', sa.Float(), nullable=False,
                                          server_default='0'))


def downgrade() -> None:
    op.drop_column('throughput', 'setup_seconds')
