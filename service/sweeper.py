"""Where sweeps move: a step for every running sweep in each reaper round (every API
process and every worker), and a step for a trial's sweep as soon as that trial reports an
eval or ends (in the worker that trains it).

Why here and not in a task of its own: a sweep lives for hours across many trials, and
whatever drives it must survive any one process. The steps hold no state (the rows are
the record, the Optuna study is rebuilt for each decision, sweep_driver.py) and their
writes are conditional, so a worker dying mid-step loses nothing and several processes
stepping the same sweep at once agree. The reaper round is the floor (a sweep moves every
CLOZE_REAPER_INTERVAL_S whatever happens to its workers); the trial's own hooks make it
move at once in the normal case.
"""

import logging

from sqlalchemy import select

from service.db import session_scope
from service.domain import sweep_driver
from service.domain.lifecycle import JobStatus
from service.domain.tables import SweepRow, SweepTrialRow
from service.queue import enqueue_training
from service.settings import get_settings

log = logging.getLogger("cloze.sweeps")


def step_sweep(sweep_id: str) -> list[str]:
    """One committed step of the sweep, then its new trials sent to the queue."""
    with session_scope() as session:
        started = sweep_driver.step(session, sweep_id,
                                    max_active=get_settings().max_active_jobs)
    for job_id in started:
        try:
            enqueue_training(job_id)
        except Exception as exc:  # the job is marked sent: the reaper re-sends it
            log.warning("%s: trial %s not sent (%s); the reaper will send it", sweep_id,
                        job_id, exc.__class__.__name__)
        else:
            log.info("%s: started trial job %s", sweep_id, job_id)
    return started


def step_all() -> None:
    """A step for every running sweep; one failing sweep does not stop the others."""
    with session_scope() as session:
        running = list(session.scalars(select(SweepRow.id).where(
            SweepRow.status == JobStatus.RUNNING.value)))
    for sweep_id in running:
        try:
            step_sweep(sweep_id)
        except Exception:
            log.warning("%s: sweep step failed; trying again next round", sweep_id,
                        exc_info=True)


def after_trial_event(job_id: str) -> None:
    """A job reported an eval or ended: if it is a sweep's trial, step that sweep now.
    Never raises: the training or the task that called it goes on regardless."""
    try:
        with session_scope() as session:
            sweep_id = session.scalar(select(SweepTrialRow.sweep_id).where(
                SweepTrialRow.job_id == job_id))
        if sweep_id is not None:
            step_sweep(sweep_id)
    except Exception:
        log.warning("%s: sweep step after this job's event failed; the reaper's round "
                    "will take it", job_id, exc_info=True)
