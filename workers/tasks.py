"""Celery tasks: each one's whole policy is in its decorator; the body calls one function."""

from service.queue import TRAIN_TASK
from service.settings import get_settings
from workers.celery_app import app
from workers.runner import run_job


@app.task(name=TRAIN_TASK, queue=get_settings().train_queue, acks_late=True,
          reject_on_worker_lost=True, ignore_result=True)
def train_job(job_id: str) -> None:
    # Takes an id, never an object: run_job re-reads the row and claims it atomically,
    # so a duplicate delivery does nothing.
    run_job(job_id)
