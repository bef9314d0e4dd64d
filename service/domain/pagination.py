"""Cursor pagination, newest first: ?limit=&after=<id> as in OpenAI's API."""

from typing import Any, TypeVar

from sqlalchemy import Select, select, tuple_
from sqlalchemy.orm import Session

T = TypeVar("T")


def newest_first(session: Session, stmt: Select[Any], table: Any, *, limit: int,
                 after: str | None, scope: str | None) -> tuple[list[Any], bool]:
    """Rows older than the cursor row `after`, newest first; returns (rows, has_more).

    The cursor is looked up within the caller's scope: another owner's id must behave
    exactly like an id that does not exist, or the page would reveal that it exists and
    where it sorts.
    """
    if after is not None:
        cursor = session.execute(owned(
            select(table.created_at, table.id).where(table.id == after), table, scope)).first()
        if cursor is None:
            return [], False
        stmt = stmt.where(tuple_(table.created_at, table.id) < tuple_(cursor[0], cursor[1]))
    rows = list(session.scalars(
        stmt.order_by(table.created_at.desc(), table.id.desc()).limit(limit + 1)))
    return rows[:limit], len(rows) > limit


def owned(stmt: Select[Any], table: Any, scope: str | None) -> Select[Any]:
    """Restrict a query to one owner's rows; scope None (an admin) sees every owner's."""
    return stmt if scope is None else stmt.where(table.owner == scope)
