"""A job's metrics without a browser: its loss curves as a standalone SVG, and all of its
metrics as a TensorBoard event file. Owner-scoped like every job route."""

import math
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from jobspec.metrics import BY_NAME, EVAL_LOSS, TRAIN_LOSS, tag
from service.api.deps import CallerDep, SessionDep
from service.api.json_body import JsonBodyRoute
from service.domain import jobs
from service.domain.jobs import MetricPoint
from service.domain.tables import MetricRow
from service.plots.svg import Series, line_chart
from service.plots.tfevents import Scalars, event_file

router = APIRouter(prefix="/v1/jobs", tags=["jobs"], route_class=JsonBodyRoute)

# Points drawn in the SVG by default: more than a chart 800 pixels wide can show (eval
# points are always kept, see jobs.metrics).
SVG_POINTS = 2000

# The SVG's curves: the train loss as a line, the eval loss as a line with a dot per eval.
CURVES = ((TRAIN_LOSS, False), (EVAL_LOSS, True))


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) \
        and math.isfinite(value)


def _points(rows: list[MetricRow], field: str) -> list[tuple[float, float]]:
    out = []
    for row in rows:
        value = getattr(row, field)
        if _finite(value):
            out.append((float(row.step), float(value)))
    return out


@router.get("/{job_id}/metrics.svg", response_class=Response, responses={200: {
    "description": "the train and eval loss curves as an SVG image",
    "content": {"image/svg+xml": {"schema": {"type": "string"}}}}})
def metrics_svg(job_id: str, session: SessionDep, caller: CallerDep,
                max_points: Annotated[int, Query(ge=2, le=100_000)] = SVG_POINTS) -> Response:
    """Train loss (a line) and eval loss (a line with a dot per eval) against the step."""
    job = jobs.get(session=session, job_id=job_id, scope=caller.scope)
    rows = jobs.metrics(session=session, job_id=job_id, scope=caller.scope, since_step=None,
                        max_points=max_points)
    svg = line_chart(f"{job.name} ({job.id}, {job.status})", [
        Series(name, BY_NAME[name].label, BY_NAME[name].color, _points(rows, name), dots=dots)
        for name, dots in CURVES])
    return Response(svg, media_type="image/svg+xml",
                    headers={"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff",
                             # An SVG opened on its own is a document: no scripts in it.
                             "Content-Security-Policy": "default-src 'none'; "
                                                        "style-src 'unsafe-inline'"})


def _epoch(value: datetime) -> float:
    # SQLite hands back naive datetimes; every time we store is UTC.
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).timestamp()


def _scalars(row: MetricRow) -> Scalars:
    point = MetricPoint.of(row).model_dump(exclude_none=True)
    values = {tag(name): float(value) for name, value in point.items()
              if name != "step" and _finite(value)}
    return Scalars(step=row.step, wall_time=_epoch(row.created_at), values=values)


@router.get("/{job_id}/tensorboard", response_class=Response, responses={200: {
    "description": "a TensorBoard event file of every metric point "
                   "(`tensorboard --logdir` a folder holding it)",
    "content": {"application/octet-stream": {"schema": {"type": "string",
                                                        "format": "binary"}}}}})
async def metrics_tensorboard(job_id: str, session: SessionDep, caller: CallerDep
                              ) -> Response:
    """Every metric point as scalars (train/loss, train/learning_rate, eval/loss, ...)."""

    def build() -> tuple[str, bytes]:
        job = jobs.get(session=session, job_id=job_id, scope=caller.scope)
        rows = jobs.metrics(session=session, job_id=job_id, scope=caller.scope,
                            since_step=None, max_points=None)
        created = _epoch(job.created_at)
        # TensorBoard finds event files by "tfevents" in their name.
        return f"events.out.tfevents.{int(created)}.cloze.{job.id}", \
            event_file((_scalars(r) for r in rows), created)

    name, data = await run_in_threadpool(build)
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{name}"',
                             "Cache-Control": "no-cache"})
