"""What GET /metrics reads from the database at scrape time: jobs by status, the age of the
oldest queued job, and the newest training figures of each running job (which its worker's
reporter writes on the job row with each log point). Three queries on the jobs table, each
served by its status index; a statement timeout bounds them all on Postgres.
"""

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from service.domain.lifecycle import JobStatus
from service.domain.tables import JobRow, utcnow

# A scrape must answer even when the jobs table is huge or locked; past this the query is
# cancelled and the scrape reports the database as down instead of hanging (Postgres only;
# SQLite is a local file). A module constant, not a setting: nobody has needed to tune it.
QUERY_TIMEOUT_MS = 2000

# The figures the worker's reporter writes into a job row's `training_gauges`.
TRAINING_GAUGES = ("step_seconds", "mfu", "device_memory_bytes")


@dataclass(frozen=True)
class JobCounts:
    by_status: dict[str, int]  # every status, 0 where there is none
    oldest_queued_age_s: float  # 0 with nothing queued


@dataclass(frozen=True)
class Training:
    """A running job's newest log point."""

    job_id: str
    step: int
    tokens_per_second: float | None
    figures: dict[str, float]  # of TRAINING_GAUGES, those the worker reported


def bound_time(session: Session) -> None:
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text(f"SET LOCAL statement_timeout = {int(QUERY_TIMEOUT_MS)}"))


def job_counts(session: Session) -> JobCounts:
    counts = {status.value: 0 for status in JobStatus}
    for status, n in session.execute(
            select(JobRow.status, func.count()).group_by(JobRow.status)):
        counts[status] = int(n)
    oldest = session.scalar(select(func.min(JobRow.created_at)).where(
        JobRow.status == JobStatus.QUEUED.value))
    return JobCounts(counts, _age_s(oldest) if oldest is not None else 0.0)


def _age_s(then: datetime) -> float:
    if then.tzinfo is None:  # SQLite hands back naive datetimes (written as UTC)
        then = then.replace(tzinfo=utcnow().tzinfo)
    return max(0.0, (utcnow() - then).total_seconds())


def training(session: Session) -> list[Training]:
    rows = session.execute(
        select(JobRow.id, JobRow.step, JobRow.tokens_per_second, JobRow.training_gauges)
        .where(JobRow.status == JobStatus.RUNNING.value))
    return [Training(job_id, step, tps, _figures(gauges))
            for job_id, step, tps, gauges in rows]


def _figures(gauges: dict[str, Any] | None) -> dict[str, float]:
    gauges = gauges or {}
    return {k: float(gauges[k]) for k in TRAINING_GAUGES
            if isinstance(gauges.get(k), int | float) and not isinstance(gauges.get(k), bool)}
