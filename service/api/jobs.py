from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from service.api.deps import After, Limit, SessionDep
from service.domain import jobs
from service.domain.jobs import CheckpointPublic, EventPublic, JobPublic, JobStatus, MetricPoint
from service.domain.schemas import ListOf
from service.domain.specs import JobCreate
from service.errors import ApiError
from service.queue import enqueue_training

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])


@router.post("", status_code=202, response_model=JobPublic)
async def create_job(job_in: JobCreate, session: SessionDep) -> JobPublic:
    """Validate the spec, record the job as queued, then hand its id to the training queue."""
    row = jobs.create(session=session, job_in=job_in)
    session.commit()  # the worker must find the row when the message arrives
    try:
        await run_in_threadpool(enqueue_training, row.id)
    except Exception:
        jobs.mark_enqueue_failed(session=session, job_id=row.id)
        session.commit()
        raise ApiError(503, "service_unavailable", "the job queue is unavailable; retry later",
                       headers={"Retry-After": "5"}) from None
    return JobPublic.of(row)


@router.get("", response_model=ListOf[JobPublic])
def list_jobs(session: SessionDep, limit: Limit = 20, after: After = None,
              status: JobStatus | None = None) -> ListOf:
    rows, more = jobs.list_(session=session, limit=limit, after=after, status=status)
    return ListOf[JobPublic](data=[JobPublic.of(r) for r in rows], has_more=more)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep) -> JobPublic:
    return JobPublic.of(jobs.get(session=session, job_id=job_id))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, session: SessionDep) -> JobPublic:
    row = jobs.cancel(session=session, job_id=job_id)
    session.commit()
    return JobPublic.of(row)


@router.get("/{job_id}/metrics", response_model=ListOf[MetricPoint],
            response_model_exclude_none=True)
def job_metrics(job_id: str, session: SessionDep,
                since_step: Annotated[int | None, Query(ge=0)] = None,
                max_points: Annotated[int | None, Query(ge=2, le=100_000)] = None) -> ListOf:
    rows = jobs.metrics(session=session, job_id=job_id, since_step=since_step,
                        max_points=max_points)
    return ListOf[MetricPoint](data=[MetricPoint.of(r) for r in rows])


@router.get("/{job_id}/events", response_model=ListOf[EventPublic])
def job_events(job_id: str, session: SessionDep, limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               after: Annotated[int | None, Query(ge=0)] = None) -> ListOf:
    rows = jobs.events(session=session, job_id=job_id, limit=limit + 1, after=after)
    data = [EventPublic(id=r.id, level=r.level, message=r.message, created_at=r.created_at)
            for r in rows[:limit]]
    return ListOf[EventPublic](data=data, has_more=len(rows) > limit)


@router.get("/{job_id}/checkpoints", response_model=ListOf[CheckpointPublic])
def job_checkpoints(job_id: str, session: SessionDep) -> ListOf:
    rows = jobs.checkpoints(session=session, job_id=job_id)
    return ListOf[CheckpointPublic](data=[CheckpointPublic(
        id=r.id, job_id=r.job_id, step=r.step, bytes=r.bytes, sha256=r.sha256,
        metrics=r.metrics, created_at=r.created_at) for r in rows])
