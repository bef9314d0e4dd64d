"""GET /metrics: the Prometheus text format.

- HTTP requests and their latency by route template (service/api/observe.py);
- jobs by status, queue depth and the oldest queued job's age, read from the database at
  scrape time (telemetry.py: indexed queries under a statement timeout);
- live workers, from the heartbeats /health reads;
- each running job's newest training figures (step time, tokens/s, MFU where the GPU's
  peak is known, device memory), from the metric rows its worker writes anyway. Workers
  export nothing themselves: Celery forks a fresh process per job, on any machine, so a
  port per worker would need multiprocess collection and discovery of every worker; the
  database already holds every log point, and one scrape target covers them all.

Who sees what (the boundary's Host check applies first):
- CLOZE_METRICS_KEY set: only a scrape with `Authorization: Bearer <that key>` (Prometheus'
  `authorization.credentials`) or an admin API key; 401 for anyone else.
- otherwise, where this request needs no API key (the keyless local default), everything,
  as before;
- otherwise (a keyed instance) everything but the per-job series: their job_id labels
  would show every tenant's running jobs to anyone. An admin key sees them too.
"""

import hmac
import logging
from collections.abc import Iterator

from fastapi import APIRouter, Request
from fastapi.responses import Response
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.api.auth import identify, keys_required, needs_lookup
from service.api.deps import SettingsDep
from service.db import session_scope
from service.domain import telemetry
from service.domain.lifecycle import JobStatus
from service.http_errors import ApiError
from service.queue import live_workers
from service.settings import Settings

router = APIRouter(tags=["health"])
log = logging.getLogger("cloze.metrics")
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

TRAINING_GAUGES = {
    "step_seconds": ("cloze_training_step_seconds",
                     "Mean time of a training step over the newest log window"),
    "mfu": ("cloze_training_mfu", "Model FLOPs utilisation (0-1) over the newest log window; "
            "only on GPUs whose peak FLOP/s is known"),
    "device_memory_bytes": ("cloze_training_device_memory_bytes",
                            "Peak CUDA memory allocated by the job, or its worker process's "
                            "resident memory on a CPU"),
}


class StateCollector(Collector):
    """Reads jobs and workers at scrape time; a dependency that is down leaves its metrics
    out (and says so in cloze_database_up) rather than failing the scrape."""

    def describe(self) -> Iterator[Metric]:
        # Without describe() the registry would call collect() when registering it, at
        # import: a database query before the app even starts.
        return iter(())

    def collect(self) -> Iterator[Metric]:
        yield from self._database()
        yield from self._workers()

    def _database(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("cloze_database_up", "1 if the database answered this scrape")
        try:
            with session_scope() as session:
                telemetry.bound_time(session)
                counts = telemetry.job_counts(session)
                running = telemetry.training(session)
        except Exception as exc:  # a scrape reports, it never raises
            log.warning("metrics: database unavailable (%s)", exc.__class__.__name__)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily("cloze_jobs", "Jobs by status", labels=["status"])
        for status, n in counts.by_status.items():
            jobs.add_metric([status], n)
        yield jobs
        yield GaugeMetricFamily("cloze_queue_depth", "Jobs queued, waiting for a worker",
                                value=counts.by_status[JobStatus.QUEUED.value])
        yield GaugeMetricFamily("cloze_queue_oldest_job_age_seconds", "Age of the oldest "
                                "queued job since it was created (0 when none waits)",
                                value=counts.oldest_queued_age_s)
        yield from self._training(running)

    @staticmethod
    def _training(running: list[telemetry.Training]) -> Iterator[Metric]:
        step = GaugeMetricFamily("cloze_training_step", "A running job's newest logged step",
                                 labels=["job_id"])
        tps = GaugeMetricFamily("cloze_training_tokens_per_second", "Tokens trained per "
                                "second over a running job's newest log window",
                                labels=["job_id"])
        figures = {key: GaugeMetricFamily(name, doc, labels=["job_id"])
                   for key, (name, doc) in TRAINING_GAUGES.items()}
        for job in running:
            step.add_metric([job.job_id], job.step)
            if job.tokens_per_second is not None:
                tps.add_metric([job.job_id], job.tokens_per_second)
            for key, value in job.figures.items():
                figures[key].add_metric([job.job_id], value)
        yield step
        yield tps
        yield from figures.values()

    @staticmethod
    def _workers() -> Iterator[Metric]:
        try:
            live = live_workers()
        except Exception as exc:
            log.warning("metrics: broker unavailable (%s)", exc.__class__.__name__)
            return
        if live is not None:  # a broker with no heartbeats: unknown, so left out
            yield GaugeMetricFamily("cloze_workers_alive", "Workers whose heartbeat is fresh",
                                    value=live)


REGISTRY.register(StateCollector())


# The families labelled by job id: left out where the caller may not see every job.
PER_JOB = frozenset({"cloze_training_step", "cloze_training_tokens_per_second",
                     *(name for name, _ in TRAINING_GAUGES.values())})


class _WithoutJobs(Collector):
    def collect(self) -> Iterator[Metric]:
        return (m for m in REGISTRY.collect() if m.name not in PER_JOB)


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message, headers={"WWW-Authenticate": "Bearer"})


def _sees_every_job(request: Request, settings: Settings) -> bool:
    """Whether this scrape may see each running job's id (or 401)."""
    scheme, _, secret = request.headers.get("authorization", "").partition(" ")
    secret = secret.strip() if scheme.lower() == "bearer" else ""
    key = settings.metrics_key.get_secret_value() if settings.metrics_key else ""
    if key and secret and hmac.compare_digest(secret.encode(), key.encode()):
        return True
    if secret and needs_lookup(request.scope, settings):  # an API key of ours: an admin's?
        with session_scope() as session:
            if identify(request.scope, session, settings).admin:  # 401 for a bad one
                return True
    if key:
        raise _unauthorized("GET /metrics needs 'Authorization: Bearer <CLOZE_METRICS_KEY>' "
                            "or an admin API key")
    return not keys_required(request.scope, settings)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request, settings: SettingsDep) -> Response:
    """Prometheus exposition (text format 0.0.4)."""
    every_job = _sees_every_job(request, settings)
    return Response(generate_latest(REGISTRY if every_job else _WithoutJobs()),
                    media_type=CONTENT_TYPE)
