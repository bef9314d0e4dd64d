from collections.abc import Callable

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import text
from starlette.concurrency import run_in_threadpool

from service.db import get_engine
from service.queue import check_broker
from service.storage import get_store

router = APIRouter(tags=["health"])


def _probe(check: Callable[[], object]) -> str:
    try:
        check()
        return "ok"
    except Exception as exc:  # a health probe reports, it never raises
        return f"unavailable ({exc.__class__.__name__})"


def _database() -> None:
    with get_engine().connect() as conn:
        conn.execute(text("SELECT 1"))


@router.get("/health")
async def health() -> JSONResponse:
    """Reports the database, the broker and the storage; 503 when any is down."""
    report = {
        "database": await run_in_threadpool(_probe, _database),
        "broker": await run_in_threadpool(_probe, check_broker),
        "storage": await run_in_threadpool(_probe, lambda: get_store().check()),
    }
    ok = all(v == "ok" for v in report.values())
    return JSONResponse({"status": "ok" if ok else "degraded", **report}, 200 if ok else 503)
