import logging
from typing import Annotated

from fastapi import APIRouter, Path, Query
from fastapi.responses import JSONResponse
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from service.api.deps import (
    After,
    CallerDep,
    IdempotencyKey,
    Limit,
    SessionDep,
    SettingsDep,
    StoreDep,
)
from service.api.json_body import JsonBodyRoute
from service.api.webhook_target import check_webhook
from service.domain import (
    checkpoint_quota,
    estimates,
    idempotency,
    jobs,
    models,
    quotas,
    webhooks,
)
from service.domain.estimates import JobEstimate
from service.domain.jobs import (
    CheckpointPublic,
    CheckpointsDeleted,
    EventPublic,
    JobPublic,
    MetricPoint,
)
from service.domain.lifecycle import JobStatus
from service.domain.models import ModelPublic
from service.domain.schemas import ListOf
from service.domain.specs import JobCreate
from service.domain.tables import JobRow
from service.domain.webhooks import WebhookDeliveryPublic
from service.http_errors import ApiError
from service.queue import enqueue_training
from service.settings import Settings

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=JsonBodyRoute)
log = logging.getLogger("cloze.api")
ROUTE = "POST /v1/jobs"  # what its idempotency records name


@router.post("", status_code=202, response_model=JobPublic, responses={200: {
    "model": JobEstimate, "description": "dry_run=true: what the job would do; nothing made"}})
async def create_job(job_in: JobCreate, session: SessionDep, caller: CallerDep,
                     settings: SettingsDep, store: StoreDep,
                     idempotency_key: IdempotencyKey = None,
                     dry_run: Annotated[bool, Query(
                         description="check the spec as a submission does and answer what "
                                     "the job would do (tokens, steps, epochs, parameters, "
                                     "memory, time), creating nothing")] = False,
                     ) -> JobPublic | JSONResponse:
    """Validate the spec, record the job as queued, then hand its id to the training queue."""
    if dry_run:
        # The same checks as a submission, then figures instead of a job: no row, no
        # message, no idempotency record.
        _check_quota(session, caller.owner, settings)
        await check_webhook(job_in.webhook, settings)
        admitted = jobs.admit(session=session, job_in=job_in, owner=caller.owner,
                              max_active=settings.max_active_jobs)
        found = await run_in_threadpool(estimates.estimate, session=session, store=store,
                                        job_in=admitted.job_in, name=admitted.name)
        checkpoint_quota.check(session, caller.owner, settings, admitted.job_in, found)
        session.rollback()
        return JSONResponse(found.model_dump(mode="json"), 200)
    fingerprint = idempotency.fingerprint(job_in.model_dump_json())
    first = idempotency.replay(session=session, owner=caller.owner, key=idempotency_key,
                               route=ROUTE, request_sha256=fingerprint)
    if first is not None:
        return JSONResponse(first[1], first[0])
    _check_quota(session, caller.owner, settings)
    await check_webhook(job_in.webhook, settings)
    admitted = jobs.admit(session=session, job_in=job_in, owner=caller.owner,
                          max_active=settings.max_active_jobs)
    figures = await run_in_threadpool(estimates.estimate_or_none, session=session, store=store,
                                      job_in=admitted.job_in, name=admitted.name)
    checkpoint_quota.check(session, caller.owner, settings, admitted.job_in, figures)
    seconds = figures.time.seconds if figures is not None and figures.time else None
    row = await run_in_threadpool(_record, session, admitted, caller.owner, seconds,
                                  idempotency_key, fingerprint)
    try:
        await run_in_threadpool(enqueue_training, row.id)
    except Exception:
        # Nothing half-made stays behind: the client is told to retry, and a retry with
        # the same Idempotency-Key creates the job afresh.
        session.delete(row)
        idempotency.forget(session=session, owner=caller.owner, key=idempotency_key)
        session.commit()
        raise ApiError(503, "service_unavailable", "the job queue is unavailable; retry later",
                       headers={"Retry-After": "5"}) from None
    jobs.mark_enqueued(session=session, job_id=row.id)
    session.commit()
    return JobPublic.of(row)


def _record(session: Session, admitted: jobs.Admitted, owner: str, seconds: float | None,
            key: str | None, fingerprint: str) -> JobRow:
    """Insert and commit the job (and its idempotency record): off the event loop, as it
    may wait for the owner's admission lock (jobs.create)."""
    row = jobs.create(session=session, admitted=admitted, owner=owner,
                      estimated_seconds=seconds)
    idempotency.remember(session=session, owner=owner, key=key, route=ROUTE,
                         request_sha256=fingerprint, status_code=202,
                         response=JobPublic.of(row).model_dump(mode="json"))
    session.commit()  # the worker must find the row when the message arrives
    return row


def _check_quota(session: Session, owner: str, settings: Settings) -> None:
    if quotas.left(session, owner, settings) == 0:
        # Admission, not publication: a job admitted here publishes its model even if that
        # passes the quota (hours of training are never thrown away at the end).
        raise quotas.full_for_jobs(settings.storage_quota_bytes,
                                   quotas.used_bytes(session, owner))


@router.get("", response_model=ListOf[JobPublic])
def list_jobs(session: SessionDep, caller: CallerDep, limit: Limit = 20, after: After = None,
              status: JobStatus | None = None) -> ListOf:
    rows, more = jobs.list_(session=session, scope=caller.scope, limit=limit, after=after,
                            status=status)
    return ListOf[JobPublic](data=[JobPublic.of(r) for r in rows], has_more=more)


@router.get("/{job_id}", response_model=JobPublic)
def get_job(job_id: str, session: SessionDep, caller: CallerDep) -> JobPublic:
    row = jobs.get(session=session, job_id=job_id, scope=caller.scope)
    return JobPublic.of(row, jobs.evaluation(session, row))


@router.post("/{job_id}/cancel", response_model=JobPublic)
def cancel_job(job_id: str, session: SessionDep, caller: CallerDep) -> JobPublic:
    row = jobs.cancel(session=session, job_id=job_id, scope=caller.scope)
    session.commit()
    return JobPublic.of(row)


@router.post("/{job_id}/pause", response_model=JobPublic)
def pause_job(job_id: str, session: SessionDep, caller: CallerDep) -> JobPublic:
    """A queued job is paused at once; a running one checkpoints its next step and frees
    its worker (pause_requested until then). 409 for a finished or cancelling job."""
    row = jobs.pause(session=session, job_id=job_id, scope=caller.scope)
    session.commit()
    return JobPublic.of(row)


@router.post("/{job_id}/resume", response_model=JobPublic)
async def resume_job(job_id: str, session: SessionDep, caller: CallerDep) -> JobPublic:
    """Queue a paused job again; it continues exactly from its checkpoint. 409 if not
    paused."""
    row = jobs.resume(session=session, job_id=job_id, scope=caller.scope)
    session.commit()  # the worker must find it queued when the message arrives
    try:
        await run_in_threadpool(enqueue_training, row.id)
    except Exception:  # it is queued: the reaper re-sends it once the queue is back
        log.warning("%s: resumed, but the queue is unavailable; the reaper re-sends it",
                    row.id)
    return JobPublic.of(row)


@router.get("/{job_id}/metrics", response_model=ListOf[MetricPoint],
            response_model_exclude_none=True)
def job_metrics(job_id: str, session: SessionDep, caller: CallerDep,
                since_step: Annotated[int | None, Query(ge=0)] = None,
                max_points: Annotated[int | None, Query(ge=2, le=100_000)] = None) -> ListOf:
    rows = jobs.metrics(session=session, job_id=job_id, scope=caller.scope,
                        since_step=since_step, max_points=max_points)
    return ListOf[MetricPoint](data=[MetricPoint.of(r) for r in rows])


@router.get("/{job_id}/events", response_model=ListOf[EventPublic])
def job_events(job_id: str, session: SessionDep, caller: CallerDep,
               limit: Annotated[int, Query(ge=1, le=1000)] = 100,
               after: Annotated[int | None, Query(ge=0)] = None) -> ListOf:
    rows = jobs.events(session=session, job_id=job_id, scope=caller.scope, limit=limit + 1,
                       after=after)
    data = [EventPublic(id=r.id, level=r.level, message=r.message, created_at=r.created_at)
            for r in rows[:limit]]
    return ListOf[EventPublic](data=data, has_more=len(rows) > limit)


@router.get("/{job_id}/webhooks", response_model=ListOf[WebhookDeliveryPublic])
def job_webhooks(job_id: str, session: SessionDep, caller: CallerDep,
                 limit: Annotated[int, Query(ge=1, le=1000)] = 100, after: After = None
                 ) -> ListOf:
    """The job's webhook deliveries, one per status change, oldest first: attempts, the
    last answer's status code or error, and when the next attempt is due."""
    jobs.get(session=session, job_id=job_id, scope=caller.scope)
    rows, more = webhooks.deliveries(session, job_id, limit=limit, after=after)
    return ListOf[WebhookDeliveryPublic](data=[WebhookDeliveryPublic.of(r) for r in rows],
                                         has_more=more)


@router.get("/{job_id}/checkpoints", response_model=ListOf[CheckpointPublic])
def job_checkpoints(job_id: str, session: SessionDep, caller: CallerDep) -> ListOf:
    rows = jobs.checkpoints(session=session, job_id=job_id, scope=caller.scope)
    return ListOf[CheckpointPublic](data=[CheckpointPublic(
        id=r.id, job_id=r.job_id, step=r.step, bytes=r.bytes, sha256=r.sha256,
        metrics=r.metrics, created_at=r.created_at) for r in rows])


@router.delete("/{job_id}/checkpoints", response_model=CheckpointsDeleted)
def delete_checkpoints(job_id: str, session: SessionDep, store: StoreDep,
                       caller: CallerDep) -> CheckpointsDeleted:
    """Delete a finished job's checkpoints (409 while it is queued, running or paused: it
    resumes from them), freeing their bytes of your storage quota; models published from
    them stay."""
    return jobs.delete_checkpoints(session=session, store=store, job_id=job_id,
                                   scope=caller.scope)


@router.post("/{job_id}/checkpoints/{step}/publish", status_code=201,
             response_model=ModelPublic,
             responses={200: {"model": ModelPublic,
                              "description": "this step was published before: that model"}})
async def publish_checkpoint(job_id: str, step: Annotated[int, Path(ge=0, le=2**31 - 1)],
                             session: SessionDep, store: StoreDep, settings: SettingsDep,
                             caller: CallerDep) -> ModelPublic | JSONResponse:
    """Make a model of one checkpoint, as the final export would be, while the job may
    still run; served by every route of its task. The same step again returns that model."""
    row, made = await run_in_threadpool(
        models.publish_checkpoint, session=session, store=store, settings=settings,
        job_id=job_id, step=step, scope=caller.scope)
    session.commit()
    public = ModelPublic.of(row)
    return public if made else JSONResponse(public.model_dump(mode="json"), 200)
