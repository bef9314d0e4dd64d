"""names made before the name rule (jobspec/names.py) brought within it: control and
invisible characters left out, names past 255 characters cut (a sweep's '-sweep' name on
SQLite), in the names columns and in the stored specs that the engine and the sweep driver
read again (a paused job resumed after the upgrade would otherwise fail its spec check, a
sweep's every read be a 500)

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-03 09:00:00.000000
"""
from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from jobspec import names

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _clean(name: Any, fallback: str) -> Any:
    if not isinstance(name, str) or names.problem(name) is None:
        return name
    return names.derived(name) or fallback


def upgrade() -> None:
    conn = op.get_bind()
    for table_name in ("datasets", "models", "jobs", "sweeps"):
        has_spec = table_name in ("jobs", "sweeps")
        table = sa.table(table_name, sa.column("id", sa.String), sa.column("name", sa.String),
                         *([sa.column("spec", sa.JSON)] if has_spec else []))
        for row in conn.execute(sa.select(table)).mappings():
            values: dict[str, Any] = {}
            if (name := _clean(row["name"], row["id"])) != row["name"]:
                values["name"] = name
            spec = dict(row["spec"] or {}) if has_spec else {}
            if spec and (spec_name := _clean(spec.get("name"), row["id"])) != spec.get("name"):
                values["spec"] = {**spec, "name": spec_name}
            if values:
                conn.execute(sa.update(table).where(table.c.id == row["id"]).values(**values))


def downgrade() -> None:
    pass  # the names as they were are not kept: they are not wanted back
