from collections.abc import Callable
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from sqlalchemy import func, select, text
from starlette.concurrency import run_in_threadpool

from service.db import get_engine
from service.domain.lifecycle import ACTIVE
from service.domain.tables import JobRow
from service.queue import check_broker, live_workers
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


def _workers() -> dict[str, Any]:
    """Live workers and the jobs waiting for one: jobs that wait with no live worker are
    stranded, which is worth saying even though every dependency is up."""
    try:
        with get_engine().connect() as conn:
            waiting = conn.scalar(select(func.count()).select_from(JobRow).where(
                JobRow.status.in_(ACTIVE))) or 0
        live = live_workers()
    except Exception as exc:  # already reported by the database or broker probe
        return {"status": f"unavailable ({exc.__class__.__name__})"}
    if live is None:
        status = "unknown"  # a broker with no heartbeat support: nothing to claim
    elif live == 0 and waiting:
        status = f"degraded ({waiting} job(s) waiting and no live worker)"
    else:
        status = "ok"
    return {"status": status, "live": live, "waiting_jobs": waiting}


@router.get("/health")
async def health() -> JSONResponse:
    """Reports the database, the broker, the storage (503 when any is down) and the
    workers: "degraded" with 200 when jobs wait and no worker is alive to take them (the
    API itself still serves, so a load balancer must not take it out of rotation)."""
    report: dict[str, Any] = {
        "database": await run_in_threadpool(_probe, _database),
        "broker": await run_in_threadpool(_probe, check_broker),
        "storage": await run_in_threadpool(_probe, lambda: get_store().check()),
    }
    down = any(v != "ok" for v in report.values())
    # Not asked while a dependency is down: it would wait on the same timeout again.
    workers = {"status": "unknown"} if down else await run_in_threadpool(_workers)
    ok = not down and workers["status"] in ("ok", "unknown")
    return JSONResponse({"status": "ok" if ok else "degraded", **report, "workers": workers},
                        503 if down else 200)
