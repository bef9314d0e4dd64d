"""Celery tasks: each one's whole policy is in its decorator; the body calls one function."""

from service import sweeper
from service.queue import TRAIN_TASK
from service.routing import device_queue
from service.settings import get_settings
from workers.celery_app import app
from workers.runner import run_job


# The API sends each job to the queue of its device (service/routing.py); this is only
# where a send naming no queue would go.
@app.task(name=TRAIN_TASK, queue=device_queue(get_settings(), "cpu"), acks_late=True,
          reject_on_worker_lost=True, ignore_result=True)
def train_job(job_id: str) -> None:
    # Takes an id, never an object: run_job re-reads the row and claims it atomically,
    # so a duplicate delivery does nothing.
    run_job(job_id)
    sweeper.after_trial_event(job_id)  # a sweep's trial ended: start the next one now
