"""Sweeps: a base job spec run as trials over a search space (Optuna TPE, median pruning),
the best trial's model published as the sweep's. Owner-scoped like every job route."""

import logging
import math

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from jobspec.sweep import SweepSpec
from service import sweeper
from service.api.deps import After, CallerDep, IdempotencyKey, Limit, SessionDep, SettingsDep
from service.api.json_body import JsonBodyRoute
from service.api.webhook_target import check_webhook
from service.domain import admission, idempotency, quotas, sweeps
from service.domain.schemas import ListOf
from service.domain.sweeps import SweepPublic
from service.plots.svg import Series, line_chart

router = APIRouter(prefix="/v1/sweeps", tags=["sweeps"], route_class=JsonBodyRoute)
log = logging.getLogger("cloze.sweeps")

# Trial lines in the chart, in turn (matplotlib's tab10).
COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf")


@router.post("", status_code=202, response_model=SweepPublic)
async def create_sweep(sweep_in: SweepSpec, session: SessionDep, caller: CallerDep,
                       settings: SettingsDep, idempotency_key: IdempotencyKey = None
                       ) -> SweepPublic | JSONResponse:
    """Check the base spec and every end of the search space as the job schema would, record
    the sweep, and start its first trials."""
    route = "POST /v1/sweeps"
    fingerprint = idempotency.fingerprint(sweep_in.model_dump_json())
    first = idempotency.replay(session=session, owner=caller.owner, key=idempotency_key,
                               route=route, request_sha256=fingerprint)
    if first is not None:
        return JSONResponse(first[1], first[0])
    if quotas.left(session, caller.owner, settings) == 0:
        raise quotas.full_for_jobs(settings.storage_quota_bytes,
                                   quotas.used_bytes(session, caller.owner))
    admitted = sweeps.admit(session=session, sweep_in=sweep_in, owner=caller.owner,
                            max_active=settings.max_active_jobs)
    # Every trial is a job with the base's webhook: its target is checked as a job's is.
    await check_webhook(admitted.base.webhook, settings, within="base.")
    # Room for it, and its row, in one step under the owner's lock (as a job's: jobs.create).
    admission.reserve(session, caller.owner, settings.max_active_jobs)
    row = sweeps.create(session=session, sweep_in=sweep_in, name=admitted.name,
                        owner=caller.owner)
    idempotency.remember(session=session, owner=caller.owner, key=idempotency_key, route=route,
                         request_sha256=fingerprint, status_code=202,
                         response=sweeps.public(session, row).model_dump(mode="json"))
    session.commit()
    try:  # the first trials start now
        await run_in_threadpool(sweeper.step_sweep, row.id)
    except Exception as exc:  # the sweep is recorded: the next reaper round starts them
        log.warning("%s: first step failed (%s)", row.id, exc.__class__.__name__)
    session.expire_all()
    return sweeps.public(session, sweeps.get(session=session, sweep_id=row.id,
                                             scope=caller.scope))


@router.get("", response_model=ListOf[SweepPublic])
def list_sweeps(session: SessionDep, caller: CallerDep, limit: Limit = 20,
                after: After = None) -> ListOf:
    rows, more = sweeps.list_(session=session, scope=caller.scope, limit=limit, after=after)
    return ListOf[SweepPublic](data=[sweeps.public(session, r) for r in rows], has_more=more)


@router.get("/{sweep_id}", response_model=SweepPublic)
def get_sweep(sweep_id: str, session: SessionDep, caller: CallerDep) -> SweepPublic:
    """The sweep and one row per trial: its params, status, value, best metric, pruned."""
    return sweeps.public(session, sweeps.get(session=session, sweep_id=sweep_id,
                                             scope=caller.scope))


@router.post("/{sweep_id}/cancel", response_model=SweepPublic)
def cancel_sweep(sweep_id: str, session: SessionDep, caller: CallerDep) -> SweepPublic:
    """Cancel the sweep and its trials (queued ones never start, running ones stop)."""
    row = sweeps.cancel(session=session, sweep_id=sweep_id, scope=caller.scope)
    session.commit()
    return sweeps.public(session, row)


@router.get("/{sweep_id}/metrics.svg", response_class=Response, responses={200: {
    "description": "each trial's eval metric against the step, as an SVG image",
    "content": {"image/svg+xml": {"schema": {"type": "string"}}}}})
def sweep_svg(sweep_id: str, session: SessionDep, caller: CallerDep) -> Response:
    row = sweeps.get(session=session, sweep_id=sweep_id, scope=caller.scope)
    spec = SweepSpec.model_validate(row.spec)
    records = sweeps.trial_records(session, spec, sweeps.trial_rows(session, row.id))
    series = []
    for trial in records:
        mark = " (pruned)" if trial.pruned else ""
        points = [(float(s), v) for s, v in sorted(trial.evals.items()) if math.isfinite(v)]
        series.append(Series(f"trial-{trial.number}", f"#{trial.number}{mark}",
                             COLORS[trial.number % len(COLORS)], points, dots=True))
    svg = line_chart(f"{row.name} ({row.id}, {row.status})", series,
                     y_label=spec.metric)
    return Response(svg, media_type="image/svg+xml",
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                             "Content-Security-Policy": "default-src 'none'; "
                                                        "style-src 'unsafe-inline'"})
