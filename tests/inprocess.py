"""The whole app (middleware included) in this process on a fresh SQLite database, with
settings from CLOZE_* variables, for boundary, rate-limit and health tests. TestClient's
`client` and `base_url` stand for the connection's peer and server socket addresses."""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

LOCAL = ("127.0.0.1", 41000)
REMOTE = ("203.0.113.7", 41000)  # TEST-NET-3: another machine


def _clear_caches() -> None:
    from service import db, queue, storage
    from service.api import auth
    from service.settings import get_settings

    if db.get_engine.cache_info().currsize:
        db.get_engine().dispose()
    for cached in (get_settings, db.get_engine, db._sessionmaker, storage.get_store,
                   queue.get_celery):
        cached.cache_clear()
    auth._limiters.clear()


@contextmanager
def make_app(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **env: str) -> Iterator[FastAPI]:
    """create_app() under CLOZE_HOME=tmp_path plus the given CLOZE_* variables."""
    for name in ("CLOZE_DATABASE_URL", "CLOZE_BROKER_URL", "CLOZE_STORAGE_URL", "CLOZE_HOST",
                 "CLOZE_REQUIRE_API_KEYS", "CLOZE_ALLOWED_HOSTS", "CLOZE_TRUSTED_PROXIES",
                 "CLOZE_CORS_ORIGINS", "CLOZE_RATE_LIMIT_PER_MINUTE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("CLOZE_HOME", str(tmp_path))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    _clear_caches()
    from service.api.app import create_app
    from service.db import get_engine
    from service.domain.tables import Base

    Base.metadata.create_all(get_engine())
    try:
        yield create_app()
    finally:
        _clear_caches()


def client(app: FastAPI, *, peer: tuple[str, int] = LOCAL,
           server: str = "http://127.0.0.1:8000", **headers: str) -> TestClient:
    """A client connecting from `peer` to the server socket in `server` (no lifespan, so no
    reaper thread)."""
    return TestClient(app, base_url=server, client=peer, headers=headers or None,
                      raise_server_exceptions=False)


def make_key(owner: str) -> str:
    from service.db import session_scope
    from service.domain import keys

    with session_scope() as session:
        return keys.create(session=session, owner=owner)[1]
