"""admission_locks, the row each owner's admissions lock (service/domain/admission.py);
tokenized_data, the token shards stored for each dataset and their bytes (counted in the
storage quota)

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-02 09:00:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        'admission_locks',
        sa.Column('owner', sa.String(length=64), nullable=False),
        sa.Column('locked_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('owner'),
    )
    op.create_table(
        'tokenized_data',
        sa.Column('prefix', sa.String(length=512), nullable=False),
        sa.Column('dataset_id', sa.String(length=40), nullable=False),
        sa.Column('bytes', sa.BigInteger(), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['dataset_id'], ['datasets.id'], ondelete='CASCADE'),
        sa.PrimaryKeyConstraint('prefix'),
    )
    op.create_index('ix_tokenized_data_dataset_id', 'tokenized_data', ['dataset_id'])


def downgrade() -> None:
    op.drop_index('ix_tokenized_data_dataset_id', table_name='tokenized_data')
    op.drop_table('tokenized_data')
    op.drop_table('admission_locks')
