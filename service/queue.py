"""The Celery configuration shared by the API (which sends tasks by name) and the workers.

The API never imports worker code: it only knows the task's name and queue.
"""

import os
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery

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
        transport = {"visibility_timeout": settings.visibility_timeout_s}
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
        "task_default_queue": settings.train_queue,
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


def enqueue_training(job_id: str) -> None:
    settings = get_settings()
    get_celery().send_task(TRAIN_TASK, kwargs={"job_id": job_id}, queue=settings.train_queue,
                           retry=True, retry_policy={"max_retries": 2, "interval_start": 0.2,
                                                     "interval_step": 0.5})


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


def beat_worker(name: str, *, alive: bool = True) -> None:
    """Record that the worker `name` is alive (or, with alive=False, that it stopped)."""
    settings = get_settings()
    if _redis_broker(settings):
        client, key = _redis_client(settings), _worker_prefix(settings) + name
        if alive:
            client.set(key, str(time.time()), px=int(settings.heartbeat_timeout_s * 1000))
        else:
            client.delete(key)
    elif settings.broker_url.startswith("filesystem://"):
        path = _worker_dir(settings) / name.replace("/", "_")
        if alive:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(str(os.getpid()))  # the write is the heartbeat (mtime)
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


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:  # a worker stopped while we looked
        return 0.0
