"""The Celery configuration shared by the API (which sends tasks by name) and the workers.

The API never imports worker code: it only knows the task's name and queue.
"""

from functools import lru_cache
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
