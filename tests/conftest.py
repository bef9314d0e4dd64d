"""Fixtures: real Postgres and Redis (required under CI=true), real service processes."""

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.stack import Stack

IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}
PG_ADMIN = os.environ.get("CLOZE_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres")
REDIS_URL = os.environ.get("CLOZE_TEST_REDIS", "redis://127.0.0.1:6379/0")


def _reachable(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=2).close()
        return True
    except OSError:
        return False


def require(service: str, port: int) -> None:
    if _reachable(port):
        return
    if IN_CI:
        pytest.fail(f"{service} is not reachable on 127.0.0.1:{port}; CI requires it")
    pytest.skip(f"{service} is not running on 127.0.0.1:{port}")


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A fresh, empty Postgres database for this test session, dropped afterwards."""
    require("postgres", 5432)
    import psycopg

    name = f"cloze_test_{uuid.uuid4().hex[:10]}"
    admin = PG_ADMIN.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield admin.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def fresh_postgres(postgres_url: str) -> Iterator[str]:
    """A Postgres database of this test's own: a stale or queued job here is never
    reaped by, nor meets the reaps of, other tests' stacks."""
    import psycopg

    admin, name = postgres_url.rsplit("/", 1)[0] + "/postgres", f"own_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    require("redis", 6379)
    return REDIS_URL


@pytest.fixture(scope="session")
def pg_redis_stack(tmp_path_factory: pytest.TempPathFactory, postgres_url: str,
                   redis_url: str) -> Iterator[Stack]:
    """`cloze api` + `cloze worker` on Postgres and Redis, objects in a local directory."""
    home = tmp_path_factory.mktemp("pg-redis")
    stack = Stack(home, {
        "CLOZE_DATABASE_URL": postgres_url, "CLOZE_BROKER_URL": redis_url,
        # A queue of its own, so parallel runs on one Redis never take each other's jobs.
        "CLOZE_TRAIN_QUEUE": f"train-{uuid.uuid4().hex[:8]}",
        "CLOZE_STORAGE_URL": f"file://{home / 'objects'}",
    }, embedded=False)
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def embedded_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`cloze up` with nothing configured: SQLite, local objects, filesystem broker."""
    home = tmp_path_factory.mktemp("embedded")
    env = {k: "" for k in ("CLOZE_DATABASE_URL", "CLOZE_BROKER_URL", "CLOZE_STORAGE_URL")}
    env["CLOZE_MAX_UPLOAD_BYTES"] = str(8 * 1024 * 1024)
    stack = Stack(home, env, embedded=True)
    yield stack
    stack.stop()


@pytest.fixture(scope="session")
def data_dir() -> Path:
    from tests.stack import DATA

    if not DATA.exists():
        pytest.fail(f"test data not found at {DATA}")
    return DATA
