"""The reaper: a thread in each API process and in each worker's main process that
re-queues jobs whose worker died, and collects crash leftovers (service/orphans.py). Its
re-queue is a conditional UPDATE (lifecycle.reap), so any number of reapers may run at
once and each job is revived once; collecting twice removes nothing twice."""

import contextlib
import logging
import threading
import time

from service import orphans, sweeper
from service.db import session_scope
from service.domain import lifecycle
from service.queue import enqueue_training
from service.settings import get_settings

log = logging.getLogger("cloze.reaper")
# Past this many jobs in one round, one log line for them all.
SUMMARY_AFTER = 10


def reap_once() -> list[str]:
    settings = get_settings()
    with session_scope() as session:
        revived = lifecycle.reap(session, heartbeat_timeout_s=settings.heartbeat_timeout_s,
                                 requeue_after_s=settings.requeue_after_s)
    for job_id in revived:
        enqueue_training(job_id)
        if len(revived) <= SUMMARY_AFTER:
            log.warning("re-queued %s", job_id)
    if len(revived) > SUMMARY_AFTER:  # one line, not one per job of a long queue
        log.warning("re-queued %d jobs (%s, ...)", len(revived), ", ".join(revived[:5]))
    return revived


def start(guard: contextlib.AbstractContextManager[object] | None = None) -> threading.Event:
    """Run reap_once every reaper_interval_s until the returned event is set, and collect
    crash leftovers at once and then every orphan_interval_s; each round inside `guard` (a
    worker's main process: no fork in the middle of a round)."""
    stop = threading.Event()
    settings = get_settings()
    interval = settings.reaper_interval_s

    def loop() -> None:
        orphans_due = 0.0  # at once: what a crash before this start left
        while True:
            if time.monotonic() >= orphans_due:  # at the reaper's pace, or slower
                orphans_due = time.monotonic() + settings.orphan_interval_s
                try:
                    with guard or contextlib.nullcontext():
                        orphans.collect()
                except Exception as exc:  # storage or database down: the next time
                    log.warning("collecting crash leftovers failed: %s",
                                exc.__class__.__name__)
            if stop.wait(interval):
                return
            try:
                with guard or contextlib.nullcontext():
                    reap_once()
                    sweeper.step_all()  # sweeps move even when no trial reports
            except Exception as exc:  # a database or broker outage: try again next round
                log.warning("reaper round failed: %s", exc.__class__.__name__)

    threading.Thread(target=loop, name="cloze-reaper", daemon=True).start()
    return stop
