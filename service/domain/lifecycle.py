"""A job's status and every move between its statuses, in one place.

    create -> queued -> running -> succeeded | failed | cancelled
                 ^         |
                 +---------+  (a retry, or the reaper reviving a job whose worker died)
    queued -> cancelled (cancel), queued -> failed (out of attempts)
    queued -> paused (pause); running -> paused (pause: its worker checkpoints, then lets
    go); paused -> queued (resume: the next attempt continues from that checkpoint);
    paused -> cancelled (cancel)

Every move is one conditional UPDATE (`WHERE status = <the state it leaves>`) whose row
count says whether it happened. Celery delivers at least once and several reapers (API
processes, workers) run at once, so a move may be tried twice at the same moment: the
database lets exactly one of them through, and the loser does nothing.
"""

import logging
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from service.db import rowcount
from service.domain import webhooks
from service.domain.tables import CheckpointRow, EventRow, JobRow, SweepRow, utcnow

log = logging.getLogger("cloze.jobs")


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    PAUSED = "paused"


# Plain strings (the enum's values) for SQL: drivers then bind them as text, whatever
# they make of Enum members.
ACTIVE: tuple[str, ...] = (JobStatus.QUEUED.value, JobStatus.RUNNING.value)
TERMINAL: tuple[str, ...] = (JobStatus.SUCCEEDED.value, JobStatus.FAILED.value,
                             JobStatus.CANCELLED.value)
# Not finished: what an owner's job limit counts and what keeps a dataset or base model in
# use. A paused job holds no worker, but its owner may resume it at any moment.
UNFINISHED: tuple[str, ...] = (*ACTIVE, JobStatus.PAUSED.value)


def _move(session: Session, job_id: str, leaving: JobStatus, *conditions: Any,
          **values: Any) -> bool:
    """The one way a status changes: only from `leaving` (and `conditions`), atomically."""
    if isinstance(values.get("status"), JobStatus):
        values["status"] = values["status"].value
    moved = session.execute(update(JobRow).where(
        JobRow.id == job_id, JobRow.status == leaving.value, *conditions).values(**values))
    if rowcount(moved) != 1:
        return False
    if "status" in values:  # the webhook's delivery commits (or not) with the change
        webhooks.record(session, job_id)
    return True


def is_running(row: JobRow) -> bool:
    return row.status == JobStatus.RUNNING.value


def new_job(**fields: Any) -> JobRow:
    """create -> queued: a job is born queued."""
    return JobRow(status=JobStatus.QUEUED.value, **fields)


def count_active(session: Session, owner: str) -> int:
    """The owner's unfinished jobs: queued, running and paused."""
    return session.scalar(select(func.count()).select_from(JobRow).where(
        JobRow.owner == owner, JobRow.status.in_(UNFINISHED))) or 0


class Claim(StrEnum):
    CLAIMED = "claimed"  # this delivery runs the job as a new attempt
    DUPLICATE = "duplicate"  # not queued: running elsewhere, finished or cancelled
    EXHAUSTED = "exhausted"  # it was queued with no attempts left: now failed


def active_job_naming(session: Session, owner: str, object_id: str,
                      spec_fields: tuple[str, ...]) -> str | None:
    """An unfinished job of the owner (a paused one will read it again) whose spec names
    object_id in one of spec_fields (a dataset it reads, a base model it starts from)."""
    jobs = session.execute(select(JobRow.id, JobRow.spec).where(
        JobRow.owner == owner, JobRow.status.in_(UNFINISHED))).all()
    for job_id, spec in jobs:
        # An evaluate job names its datasets in each task of its suite.
        readers = [spec or {}, *[t for t in (spec or {}).get("suite") or ()
                                 if isinstance(t, dict)]]
        if any(reader.get(field) == object_id for reader in readers for field in spec_fields):
            return str(job_id)
    return None


def claim(session: Session, job_id: str, *, max_attempts: int) -> Claim:
    """queued -> running as attempt n+1, or, with `max_attempts` used up, queued -> failed
    (a job that kills its worker every time must not loop forever). Each pause adds one
    to the budget: a paused attempt did not die, and a resume is the owner's say-so."""
    now = utcnow()
    budget = max_attempts + JobRow.pauses
    if _move(session, job_id, JobStatus.QUEUED, JobRow.attempts < budget,
             status=JobStatus.RUNNING, started_at=now, heartbeat_at=now,
             attempts=JobRow.attempts + 1):
        return Claim.CLAIMED
    if _move(session, job_id, JobStatus.QUEUED, JobRow.attempts >= budget,
             status=JobStatus.FAILED, finished_at=now, error_code="too_many_attempts",
             error_message=f"gave up after {max_attempts} attempts: the worker running it "
                           "stopped each time (crashed or was killed)"):
        log.error("%s: failed after %d attempts", job_id, max_attempts)
        return Claim.EXHAUSTED
    return Claim.DUPLICATE


def finish(session: Session, job_id: str, status: JobStatus, **values: Any) -> bool:
    """running -> succeeded | failed | cancelled; exactly one terminal state wins."""
    if status.value not in TERMINAL:
        raise ValueError(f"{status} is not a terminal status")
    return _move(session, job_id, JobStatus.RUNNING, status=status, finished_at=utcnow(),
                 pause_requested=False, **values)


def requeue(session: Session, job_id: str) -> bool:
    """running -> queued: the attempt failed in a way another attempt may heal."""
    return _move(session, job_id, JobStatus.RUNNING, status=JobStatus.QUEUED,
                 enqueued_at=utcnow())


def heartbeat(session: Session, job_id: str) -> bool:
    """Not a move: a running attempt says it lives (the reaper revives it once it stops)."""
    return _move(session, job_id, JobStatus.RUNNING, heartbeat_at=utcnow())


def cancel(session: Session, job_id: str) -> None:
    """queued or paused -> cancelled at once (no worker holds it); a running job is asked to
    stop and records `cancelled` itself at its next step. All are conditional, so a cancel
    racing completion leaves the one terminal state that committed first."""
    for idle in (JobStatus.QUEUED, JobStatus.PAUSED):
        _move(session, job_id, idle, status=JobStatus.CANCELLED, cancel_requested=True,
              finished_at=utcnow())
    _move(session, job_id, JobStatus.RUNNING, cancel_requested=True)


def pause(session: Session, job_id: str) -> None:
    """queued -> paused at once (no worker holds it); a running job that is not being
    cancelled is asked to pause, and its worker moves it to paused (pause_reached) once it
    has checkpointed the step it reached. Pausing a paused job does nothing."""
    if _move(session, job_id, JobStatus.QUEUED, status=JobStatus.PAUSED,
             pauses=JobRow.pauses + 1):
        _paused_event(session, job_id)
    _move(session, job_id, JobStatus.RUNNING, JobRow.cancel_requested.is_(False),
          pause_requested=True)


def pause_reached(session: Session, job_id: str) -> bool:
    """running (pause requested, not cancelled) -> paused: its worker checkpointed the step
    reached and lets the job go."""
    if not _move(session, job_id, JobStatus.RUNNING, JobRow.pause_requested.is_(True),
                 JobRow.cancel_requested.is_(False), status=JobStatus.PAUSED,
                 pause_requested=False, pauses=JobRow.pauses + 1):
        return False
    _paused_event(session, job_id)
    return True


def resume(session: Session, job_id: str) -> bool:
    """paused -> queued: the caller sends it to the training queue; its next attempt
    continues from the newest checkpoint (the reaper re-sends it if that message is lost)."""
    return _move(session, job_id, JobStatus.PAUSED, status=JobStatus.QUEUED,
                 enqueued_at=utcnow())


def _paused_event(session: Session, job_id: str) -> None:
    step = session.scalar(select(func.max(CheckpointRow.step))
                          .where(CheckpointRow.job_id == job_id)) or 0
    session.add(EventRow(job_id=job_id, level="info", message=f"paused at step {step}"))


# Lost messages re-sent in one reaper round at most, the longest-waiting first. A round's
# cost stays the same however long the queue: 1,000 waiting jobs re-sent at once took ~3 s
# of the API process (a Celery message each), during which its requests slowed (GET
# /v1/jobs/{id} p50 2.7x, bench/api_queued_jobs.py --stale). The rest go in the next rounds.
MAX_RESEND_PER_ROUND = 100


def reap(session: Session, *, heartbeat_timeout_s: float, requeue_after_s: float,
         max_resend: int = MAX_RESEND_PER_ROUND) -> list[str]:
    """Jobs to send to the queue again (committed): running ones whose worker died (stale
    heartbeat) go back to queued, and queued ones whose message may have been lost are
    re-sent (at most `max_resend` of them a round).

    Every change is conditional, so several reapers at once agree, and a duplicate message
    is harmless: the worker's claim lets only one delivery train.
    """
    now = utcnow()
    revived = _revive_stale(session, now, now - timedelta(seconds=heartbeat_timeout_s),
                            heartbeat_timeout_s)
    revived += _resend_lost(session, now, now - timedelta(seconds=requeue_after_s),
                            max_resend)
    session.commit()
    return revived


def _revive_stale(session: Session, now: datetime, stale: datetime,
                  heartbeat_timeout_s: float) -> list[str]:
    """running (no heartbeat since `stale`) -> queued."""
    revived = []
    for job_id in session.scalars(select(JobRow.id).where(
            JobRow.status == JobStatus.RUNNING.value, JobRow.heartbeat_at < stale)).all():
        # Its worker died while pausing it: paused at its newest checkpoint, not revived.
        if _move(session, job_id, JobStatus.RUNNING, JobRow.heartbeat_at < stale,
                 JobRow.pause_requested.is_(True), JobRow.cancel_requested.is_(False),
                 status=JobStatus.PAUSED, pause_requested=False, pauses=JobRow.pauses + 1):
            _paused_event(session, job_id)
        elif _move(session, job_id, JobStatus.RUNNING, JobRow.heartbeat_at < stale,
                 status=JobStatus.QUEUED, enqueued_at=now):
            session.add(EventRow(job_id=job_id, level="warning", message=(
                f"no heartbeat for {heartbeat_timeout_s:.0f} s: the worker died; "
                "re-queued to resume from the last checkpoint")))
            revived.append(job_id)
    return revived


def _resend_lost(session: Session, now: datetime, lost: datetime, limit: int) -> list[str]:
    """queued (sent before `lost`) stays queued, sent again: its message may be lost.

    One conditional UPDATE ... RETURNING for the `limit` that waited longest (a reaper
    racing it finds them fresh once their row locks are released, and skips them): it made
    a round trip per job in one transaction, 2.8 s on Postgres for 1,000 jobs, holding
    their row locks all along (a cancel of one of them waited that long).
    """
    oldest = (select(JobRow.id).where(JobRow.status == JobStatus.QUEUED.value,
                                      JobRow.enqueued_at < lost)
              .order_by(JobRow.enqueued_at).limit(limit))
    moved = session.execute(update(JobRow).where(
        JobRow.id.in_(oldest.scalar_subquery()), JobRow.status == JobStatus.QUEUED.value,
        JobRow.enqueued_at < lost).values(enqueued_at=now).returning(JobRow.id))
    return list(moved.scalars())


# ---- sweeps -----------------------------------------------------------------------------
# A sweep's status is moved here too, with JobStatus's values:
#
#     create -> running -> succeeded | failed | cancelled
#
# While running, its driver (sweep_driver.py) starts trials; it ends once: succeeded with
# its best trial's model, or failed, when every trial has ended; cancelled by its owner.
SWEEP_MOVES: dict[JobStatus, tuple[JobStatus, ...]] = {
    JobStatus.RUNNING: (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED),
}


def new_sweep(**fields: Any) -> SweepRow:
    """create -> running: a sweep is born running (its driver starts the first trials)."""
    return SweepRow(status=JobStatus.RUNNING.value, **fields)


def end_sweep(session: Session, sweep_id: str, status: JobStatus, **values: Any) -> bool:
    """running -> succeeded | failed | cancelled, as one conditional UPDATE: exactly one
    end wins (False when a racing driver or a cancel ended the sweep first)."""
    if status not in SWEEP_MOVES[JobStatus.RUNNING]:
        raise ValueError(f"a sweep does not move from running to {status}")
    moved = session.execute(update(SweepRow).where(
        SweepRow.id == sweep_id, SweepRow.status == JobStatus.RUNNING.value).values(
        status=status.value, finished_at=utcnow(), **values))
    return rowcount(moved) == 1
