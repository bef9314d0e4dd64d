"""The Celery configuration shared by the API (which sends tasks by name) and the workers.

The API never imports worker code: it only knows the task's name and queue.
"""

import json
import os
import threading
import time
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery

from service import routing
from service.settings import Settings, get_settings

TRAIN_TASK = "cloze.train_job"


def celery_config(settings: Settings) -> dict[str, Any]:
    transport: dict[str, Any] = {}
    if settings.broker_url.startswith("filesystem://"):
        # kombu's filesystem transport: a real broker that is only a folder, for the
        # embedded default. Producer and consumer share the one folder.
        folder, control = settings.broker_dir / "queue", settings.broker_dir / "control"
        folder.mkdir(parents=True, exist_ok=True)
        control.mkdir(parents=True, exist_ok=True)
        transport = {"data_folder_in": str(folder), "data_folder_out": str(folder),
                     "control_folder": str(control), "store_processed": False}
    else:
        # Redis redelivers unacked messages after this; it must exceed the longest job
        # and be set for the broker and the result backend alike (celery#7651).
        transport = {"visibility_timeout": settings.visibility_timeout_s,
                     # Message priorities as Celery's documentation sets them up for Redis:
                     # one list per priority (0 popped first), ":" in their names.
                     "priority_steps": list(range(10)), "sep": ":",
                     "queue_order_strategy": "priority"}
    return {
        "broker_url": settings.broker_url,
        "broker_transport_options": transport,
        "result_backend_transport_options": transport,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": 3,
        "task_ignore_result": True,  # job state lives in the database
        "accept_content": ["json"],
        "task_serializer": "json",
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "task_default_queue": routing.device_queue(settings, "cpu"),
        "task_create_missing_queues": True,
        # Training frees its memory (and a GPU) when its process exits.
        "worker_max_tasks_per_child": 1,
        "worker_hijack_root_logger": False,
    }


@lru_cache
def get_celery() -> Celery:
    app = Celery("cloze")
    app.conf.update(celery_config(get_settings()))
    return app


def enqueue_training(job_id: str, spec: Mapping[str, Any] | None = None) -> None:
    """Send the job to the queue of its device, at its priority (service/routing.py); the
    spec is read from the job's row when the caller does not have it."""
    settings = get_settings()
    if spec is None:
        spec = _stored_spec(job_id)
    live = live_queues() if routing.needs_live(spec) else None
    queue = routing.device_queue(settings, routing.device_of(spec, live, settings))
    get_celery().send_task(TRAIN_TASK, kwargs={"job_id": job_id}, queue=queue,
                           priority=routing.broker_priority(spec),
                           retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2,
                                                     "interval_step": 0.5})


def _stored_spec(job_id: str) -> Mapping[str, Any]:
    from sqlalchemy import select

    from service.db import session_scope
    from service.domain.tables import JobRow

    with session_scope() as session:
        spec = session.scalar(select(JobRow.spec).where(JobRow.id == job_id))
    return spec or {}  # a job deleted meanwhile: the worker finds no row and skips it


def check_broker() -> None:
    """Raise if the broker cannot be reached (used by /health)."""
    with get_celery().connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)


# Live workers: each worker's main process records itself every heartbeat_interval_s with
# an expiry of heartbeat_timeout_s (a Redis key on Redis, a file's mtime on the embedded
# filesystem broker), so /health can tell "jobs wait and nobody will take them".


def _worker_prefix(settings: Settings) -> str:
    # The queue names the deployment: stacks sharing one Redis each count their own workers.
    return f"cloze:{settings.train_queue}:worker:"


def _redis_broker(settings: Settings) -> bool:
    return settings.broker_url.startswith(("redis://", "rediss://"))


def _redis_client(settings: Settings) -> Any:
    import redis

    return redis.Redis.from_url(settings.broker_url, socket_timeout=2, socket_connect_timeout=2)


def _worker_dir(settings: Settings) -> Path:
    return settings.broker_dir / "workers"


def beat_worker(name: str, *, alive: bool = True, queues: list[str] | None = None) -> None:
    """Record that the worker `name` is alive and the queues it consumes (or, with
    alive=False, that it stopped)."""
    settings = get_settings()
    record = json.dumps({"at": time.time(), "pid": os.getpid(), "queues": queues or []})
    if _redis_broker(settings):
        client, key = _redis_client(settings), _worker_prefix(settings) + name
        if alive:
            client.set(key, record, px=int(settings.heartbeat_timeout_s * 1000))
        else:
            client.delete(key)
    elif settings.broker_url.startswith("filesystem://"):
        path = _worker_dir(settings) / name.replace("/", "_")
        if alive:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(record)  # the write is the heartbeat (mtime)
        else:
            path.unlink(missing_ok=True)


def live_workers() -> int | None:
    """Workers whose heartbeat is fresh; None when the broker offers no way to tell."""
    settings = get_settings()
    if _redis_broker(settings):
        client = _redis_client(settings)
        return sum(1 for _ in client.scan_iter(match=_worker_prefix(settings) + "*",
                                               count=1000))
    if settings.broker_url.startswith("filesystem://"):
        fresh = time.time() - settings.heartbeat_timeout_s
        folder = _worker_dir(settings)
        return sum(1 for p in folder.iterdir() if _mtime(p) > fresh) if folder.is_dir() else 0
    return None


def live_queues() -> dict[str, int] | None:
    """Queue name -> live workers consuming it; None when the broker offers no way to tell.
    Read at most once per LIVE_QUEUES_TTL_S per process (a job's GET asks it: no Redis scan
    per request), failures included (an unreachable broker: None, without waiting again)."""
    settings = get_settings()
    key = (settings.broker_url, settings.train_queue)  # settings may change (tests)
    with _live_lock:
        at, cached_key, value = _live_cache
        if cached_key == key and time.monotonic() - at < LIVE_QUEUES_TTL_S:
            return value
    try:
        value = _read_live_queues()
    except Exception:
        value = None
    with _live_lock:
        _live_cache[:] = [time.monotonic(), key, value]
    return value


LIVE_QUEUES_TTL_S = 2.0
_live_lock = threading.Lock()
_live_cache: list[Any] = [float("-inf"), None, None]


def _read_live_queues() -> dict[str, int] | None:
    settings = get_settings()
    records: list[str | bytes | None]
    if _redis_broker(settings):
        client = _redis_client(settings)
        keys = list(client.scan_iter(match=_worker_prefix(settings) + "*", count=1000))
        records = client.mget(keys) if keys else []
    elif settings.broker_url.startswith("filesystem://"):
        fresh, folder = time.time() - settings.heartbeat_timeout_s, _worker_dir(settings)
        paths = [p for p in folder.iterdir() if _mtime(p) > fresh] if folder.is_dir() else []
        records = [_read(p) for p in paths]
    else:
        return None
    counts: dict[str, int] = {}
    for record in records:
        for queue in _queues_of(record):
            counts[queue] = counts.get(queue, 0) + 1
    return counts


def _queues_of(record: str | bytes | None) -> list[str]:
    try:  # a worker of an older release wrote a bare timestamp: queues unknown
        queues = json.loads(record or "{}").get("queues", [])
    except (ValueError, AttributeError):
        return []
    return [q for q in queues if isinstance(q, str)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text()
    except OSError:
        return None


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # a worker stopped while we looked
        return 0.0
