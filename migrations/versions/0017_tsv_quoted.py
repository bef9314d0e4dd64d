"""a TSV is read as linear TSV unless its quotes are quoted fields: keep earlier uploads' reading

Until now a .tsv was read with the csv module's quoting, as a CSV is; now a .tsv is linear
(format "tsv": a line a record, quotes as text) unless every field holding a quote is a quoted
field (format "tsv-quoted", read as before): jobspec/formats.py's TSV_QUOTING. Datasets
uploaded before were inspected, counted and profiled with quoting, so they keep it: they
become "tsv-quoted" (a file without quotes reads the same either way). Data only.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-08 00:35:00.000000
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0017'
down_revision: str | None = '0016'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

RENAMED = {'tsv': 'tsv-quoted', 'tsv.gz': 'tsv-quoted.gz'}
datasets = sa.table('datasets', sa.column('format', sa.String))


def upgrade() -> None:
    for old, new in RENAMED.items():
        op.execute(datasets.update().where(datasets.c.format == old).values(format=new))


def downgrade() -> None:
    for old, new in RENAMED.items():
        op.execute(datasets.update().where(datasets.c.format == new).values(format=old))
