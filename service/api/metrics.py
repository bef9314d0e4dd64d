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

No API key, like /health: it shows counts and the ids of running jobs, never their data
(an id alone opens nothing); the boundary's Host check still applies. Publish the API
behind a proxy that keeps /metrics internal if the counts are sensitive to you.
"""

import logging
from collections.abc import Iterator

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import REGISTRY, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from service.db import session_scope
from service.domain import telemetry
from service.domain.lifecycle import JobStatus
from service.queue import live_workers

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


@router.get("/metrics", include_in_schema=False)
def metrics() -> Response:
    """Prometheus exposition (text format 0.0.4)."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE)
