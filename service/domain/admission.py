"""Admission as one step: an owner's check ("room for one more job?", "is this model in
use?") and the write it allows (the job's row, the model's delete) happen under one lock
on the owner, held until the transaction ends.

Without it, 16 concurrent submissions all counted 0 active jobs and 15 were admitted past
a limit of 4, and a model's delete and a job naming it as its base both succeeded.

The lock is the owner's row in admission_locks, taken by an upsert: on Postgres the upsert
holds the row lock until commit, so a second admission of the same owner waits at its
upsert and then counts what the first committed (READ COMMITTED reads afresh at each
statement); other owners never wait. On SQLite (the embedded default) the upsert is a
write and SQLite lets one writer at a time, so admissions are serialised altogether.
"""

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from service.domain import lifecycle
from service.domain.lifecycle import JobStatus
from service.domain.refusals import LimitReached
from service.domain.tables import AdmissionLockRow, SweepRow, utcnow

# How long an admission waits for the owner's lock on Postgres before it gives up (an
# OperationalError: 503, retry). Holders keep it for milliseconds; the bound is for a holder
# whose request failed and whose session waits to be closed (SQLite's is busy_timeout).
LOCK_TIMEOUT = "5s"


def hold(session: Session, owner: str) -> None:
    """Lock the owner's admissions until this transaction commits or rolls back (taking it
    again in the same transaction is free)."""
    postgres = session.get_bind().dialect.name == "postgresql"
    insert = pg_insert if postgres else sqlite_insert
    stmt = insert(AdmissionLockRow).values(owner=owner, locked_at=utcnow())
    if postgres:
        session.execute(text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    session.execute(stmt.on_conflict_do_update(index_elements=[AdmissionLockRow.owner],
                                               set_={"locked_at": stmt.excluded.locked_at}))
    if postgres:  # the rest of the transaction waits as it did before
        session.execute(text("SET LOCAL lock_timeout TO DEFAULT"))


def starting_sweeps(session: Session, owner: str, besides: str | None = None) -> int:
    """The owner's running sweeps that have not started a trial yet (but `besides`). Each
    holds one place among the owner's active jobs: a sweep is admitted in one transaction
    and makes its first trial in the next, and without it any number of sweeps submitted
    at once would be admitted while none had a job to count."""
    stmt = select(func.count()).select_from(SweepRow).where(
        SweepRow.owner == owner, SweepRow.status == JobStatus.RUNNING.value,
        SweepRow.trials_started == 0)
    if besides is not None:
        stmt = stmt.where(SweepRow.id != besides)
    return session.scalar(stmt) or 0


def has_room(session: Session, owner: str, max_active: int, *,
             besides_sweep: str | None = None) -> bool:
    """Whether one more job fits: a sweep making its trials passes its own id, as its own
    place is the one its first trial takes."""
    return lifecycle.count_active(session, owner) + \
        starting_sweeps(session, owner, besides_sweep) < max_active


def check_room(session: Session, owner: str, max_active: int) -> None:
    """Refuse (LimitReached) if the owner has max_active jobs or more unfinished (queued,
    running, paused) or sweeps about to make their first trial. Alone, a precheck for an
    early answer; as one step with an insert, through reserve."""
    if has_room(session, owner, max_active):
        return
    jobs, sweeps = lifecycle.count_active(session, owner), starting_sweeps(session, owner)
    held = f"{jobs} jobs queued, running or paused"
    if sweeps:
        held += f" and {sweeps} sweep{'s' if sweeps > 1 else ''} about to start a trial"
    raise LimitReached("too_many_jobs", f"you already have {held} (the limit is {max_active});"
                       " wait for one to finish or cancel one", retry_after_s=60)


def reserve(session: Session, owner: str, max_active: int) -> None:
    """The one admission step of a job or a sweep: hold the owner's lock, then check_room.
    The caller inserts the job's or sweep's row in this same transaction and commits."""
    hold(session, owner)
    try:
        check_room(session, owner, max_active)
    except LimitReached:
        release(session)
        raise


def release(session: Session) -> None:
    """Let go of the lock at once on a refusal: the request's session is closed later, by
    code that may run only after another admission of the same owner, which waits for this
    lock (on the event loop's thread, a wait that never ends)."""
    session.rollback()
