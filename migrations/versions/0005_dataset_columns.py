"""dataset columns, tag column, column samples

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 10:02:17.318204
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.add_column(sa.Column('column_count', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('tag_column', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('column_samples', sa.JSON(), nullable=True))
    # CoNLL datasets uploaded before this were read with their tags in column 1; say so.
    op.execute("UPDATE datasets SET tag_column = 1 WHERE format LIKE 'conll%'")


def downgrade() -> None:
    with op.batch_alter_table('datasets', schema=None) as batch_op:
        batch_op.drop_column('column_samples')
        batch_op.drop_column('tag_column')
        batch_op.drop_column('column_count')

