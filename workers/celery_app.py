"""The workers' Celery app: `celery -A workers.celery_app worker`, or `cloze worker`.

A worker's main process also keeps a liveness heartbeat (what /health counts) and runs
the reaper, so a dead worker's job is re-queued wherever workers run, not only where an
API process happens to be. The reaper's updates are conditional: any number may run.
It sends no webhooks: the API processes do (service/webhook_sender.py), so an HTTP attempt
never runs in a process that forks, nor holds up a job's start or the heartbeat.
"""

import ctypes
import logging
import os
import signal
import sys
import threading
from typing import Any

from celery import Celery
from celery.signals import (
    after_setup_logger,
    after_setup_task_logger,
    worker_process_init,
    worker_ready,
    worker_shutdown,
)

from service import logs, reaper
from service.queue import beat_worker, celery_config
from service.routing import GPU_IDS_ENV, GPUS_PER_JOB_ENV
from service.settings import get_settings

if logs.json_wanted():  # now, before the worker starts: its first warnings are JSON too
    logs.configure()

app = Celery("cloze", include=["workers.celery_tasks"])
app.conf.update(celery_config(get_settings()))

log = logging.getLogger("cloze.worker")
_stop = threading.Event()
_reaper_stops: list[threading.Event] = []

# The pool forks a fresh child for every job (worker_max_tasks_per_child 1) while the
# heartbeat and reaper threads run. A child forked in the middle of one of their rounds
# inherits whatever lock that thread held, held forever: seen, a child hung at its first
# database connection on the import lock of psycopg, which the reaper was importing at the
# fork. So each round runs under this lock, and a fork waits for the round to end.
def _die_with_supervisor() -> None:
    """Under `cloze up` (which sets CLOZE_SUPERVISOR_PID), the worker asks Linux for SIGQUIT
    when its parent dies, even by kill -9: a cold shutdown that ends its pool child too,
    where it would otherwise train on, orphaned, beside the next `cloze up`'s worker (its
    job is then re-queued by the reaper and resumes from its checkpoint)."""
    supervisor = os.environ.get("CLOZE_SUPERVISOR_PID")
    if not supervisor or not sys.platform.startswith("linux"):
        return
    if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGQUIT) != 0:
        return
    _quit_if_orphaned()  # it died before we asked


def _quit_if_orphaned() -> None:
    supervisor = os.environ.get("CLOZE_SUPERVISOR_PID")
    if supervisor and os.getppid() != int(supervisor):
        os.kill(os.getpid(), signal.SIGQUIT)


PR_SET_PDEATHSIG = 1  # linux/prctl.h
_die_with_supervisor()

_fork_guard = threading.Lock()
os.register_at_fork(before=_fork_guard.acquire, after_in_parent=_fork_guard.release,
                    after_in_child=_fork_guard.release)


def _heartbeat(name: str, queues: list[str]) -> None:
    interval = get_settings().heartbeat_interval_s
    while True:
        try:
            with _fork_guard:
                beat_worker(name, queues=queues)
        except Exception as exc:  # the broker is down: beat again next round
            log.warning("worker heartbeat failed: %s", exc.__class__.__name__)
        if _stop.wait(interval):
            return


@after_setup_logger.connect
@after_setup_task_logger.connect
def _json_logs(logger: logging.Logger | None = None, **_: Any) -> None:
    """CLOZE_LOG_FORMAT=json: Celery's handlers write JSON lines (with the job's id while a
    job runs) instead of its console format."""
    if logger is not None and logs.json_wanted():
        logs.use_json(logger)
        logs.use_json_everywhere()


@worker_ready.connect
def _start_housekeeping(sender: Any = None, **_: Any) -> None:
    # A supervisor that died while Celery was starting may have sent its SIGQUIT before
    # Celery's own handler was in place, and it was lost (seen under load: the worker
    # started, orphaned, and never shut down): ask again now that the handler is there.
    _quit_if_orphaned()
    name = getattr(sender, "hostname", None) or "worker"
    # The queues it consumes (-Q), so the API can tell which devices have a live worker.
    queues = sorted(getattr(app.amqp.queues, "consume_from", None) or {})
    threading.Thread(target=_heartbeat, args=(name, queues), name="cloze-heartbeat",
                     daemon=True).start()
    _reaper_stops.append(reaper.start(guard=_fork_guard))


@worker_shutdown.connect
def _stop_housekeeping(sender: Any = None, **_: Any) -> None:
    _stop.set()
    for stop in _reaper_stops:
        stop.set()
    try:
        beat_worker(getattr(sender, "hostname", None) or "worker", alive=False)
    except Exception:  # a stale heartbeat expires on its own
        pass


@worker_process_init.connect
def _pin_gpu(**_: Any) -> None:
    """Pool process i trains on the worker's i-th GPU only (its i-th group of
    --gpus-per-job GPUs, where a multi-process job's ranks train). billiard gives a
    replacement process (one per job: worker_max_tasks_per_child 1) the index of the one it
    replaces, and CUDA is first touched here, in the child, after this is set."""
    gpus = [g for g in os.environ.get(GPU_IDS_ENV, "").split(",") if g]
    if gpus:
        from billiard.process import current_process

        per_job = int(os.environ.get(GPUS_PER_JOB_ENV) or 1)
        groups = [gpus[i:i + per_job] for i in range(0, len(gpus), per_job)]
        index = getattr(current_process(), "index", 0) or 0
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(groups[index % len(groups)])


@worker_process_init.connect
def _after_fork(**_: Any) -> None:
    # A pool child is forked from the main process, whose reaper may hold pooled database
    # connections: the child must open its own, never share the parent's sockets.
    from service.db import get_engine

    if get_engine.cache_info().currsize:
        get_engine().dispose(close=False)
