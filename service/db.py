"""The SQLAlchemy engine and sessions; works on Postgres and SQLite alike."""

from collections.abc import Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, cast

from sqlalchemy import CursorResult, Engine, Result, create_engine, event
from sqlalchemy.orm import Session, sessionmaker

from service.settings import get_settings


def make_engine(url: str, *, pool_size: int | None = None, max_overflow: int | None = None,
                pool_timeout: float | None = None) -> Engine:
    """An engine whose pool is bounded and, when exhausted, fails fast (TimeoutError after
    `pool_timeout` s, answered 503 by the API) rather than queueing requests for 30 s."""
    settings = get_settings()
    pool: dict[str, Any] = {
        "pool_size": settings.db_pool_size if pool_size is None else pool_size,
        "max_overflow": settings.db_max_overflow if max_overflow is None else max_overflow,
        "pool_timeout": settings.db_pool_timeout_s if pool_timeout is None else pool_timeout,
    }
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        on_file = path not in ("", ":memory:")
        if on_file:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        # A file database has a QueuePool (an in-memory one a single connection).
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30},
                               **(pool if on_file else {}))

        @event.listens_for(engine, "connect")
        def _pragmas(dbapi_conn: Any, _record: Any) -> None:
            # WAL lets the API read while the worker writes metrics.
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA busy_timeout=30000")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.close()

        return engine
    # pre_ping: a Postgres restart must not leave dead connections in the pool;
    # connect_timeout: a down database answers quickly instead of hanging requests.
    return create_engine(url, pool_pre_ping=True, connect_args={"connect_timeout": 3}, **pool)


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().database_url)


@lru_cache
def _sessionmaker() -> sessionmaker[Session]:
    return sessionmaker(bind=get_engine(), expire_on_commit=False)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    session = _sessionmaker()()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def get_session() -> Iterator[Session]:
    """FastAPI dependency: one session per request."""
    with session_scope() as session:
        yield session


def rowcount(result: Result[Any]) -> int:
    """Rows an UPDATE or DELETE changed (what conditional updates are judged by)."""
    return cast(CursorResult[Any], result).rowcount
