"""One step of a sweep: stop the trials the pruner condemns, start trials while there is
room, and end the sweep with its best trial's model once every trial has ended.

A step holds no state of its own: it reads the sweep's rows, asks a study rebuilt from
them (sweep_study.py), and writes its decisions with conditional UPDATEs. So any process
may take a step at any time, several at once agree (only one of them makes trial n), and a
process dying mid-step leaves the rows as they were for the next one.
"""

from sqlalchemy import update
from sqlalchemy.orm import Session
from sqlalchemy.orm.attributes import set_committed_value

from jobspec import SpecError, names, parse_spec
from jobspec.sweep import SweepSpec, with_params
from service.db import rowcount
from service.domain import admission, jobs, lifecycle, sweeps
from service.domain.lifecycle import JobStatus
from service.domain.refusals import Invalid
from service.domain.sweep_study import TrialRecord, best, propose, to_prune
from service.domain.tables import EventRow, SweepRow, SweepTrialRow


def step(session: Session, sweep_id: str, *, max_active: int) -> list[str]:
    """Take one step of a running sweep (not committed); the new trials' job ids, to send
    to the queue once the caller has committed."""
    row = session.get(SweepRow, sweep_id)
    if row is None or row.status != JobStatus.RUNNING.value:
        return []
    spec = SweepSpec.model_validate(row.spec)
    trials = sweeps.trial_records(session, spec, sweeps.trial_rows(session, sweep_id))
    _prune(session, spec, trials)
    started = _launch(session, row, spec, trials, max_active)
    if row.trials_started >= spec.trials and not any(t.active for t in trials):
        _finish(session, row, spec, trials)
    return started


def _prune(session: Session, spec: SweepSpec, trials: list[TrialRecord]) -> None:
    for trial, at in to_prune(spec, trials):
        marked = session.execute(update(SweepTrialRow).where(
            SweepTrialRow.job_id == trial.job_id, SweepTrialRow.pruned.is_(False)).values(
            pruned=True, pruned_step=at))
        if rowcount(marked) != 1:  # another driver pruned it first
            continue
        trial.pruned = True
        lifecycle.cancel(session, trial.job_id)  # it stops at its next step
        session.add(EventRow(job_id=trial.job_id, level="warning", message=(
            f"pruned: {spec.metric} {trial.evals[at]:.4g} at step {at} is worse than the "
            "median of the sweep's earlier trials at that step; stopping")))


def _launch(session: Session, row: SweepRow, spec: SweepSpec, trials: list[TrialRecord],
            max_active: int) -> list[str]:
    started: list[str] = []
    # The owner's admission lock, held to the end of the step: the room counted here is
    # the room each trial's job is admitted into (jobs.create counts the same, so it never
    # refuses a trial this loop lets through).
    admission.hold(session, row.owner)
    while row.trials_started < spec.trials \
            and sum(t.active for t in trials) < spec.parallel \
            and admission.has_room(session, row.owner, max_active, besides_sweep=row.id):
        number = row.trials_started
        params = propose(spec, trials)
        # Claim trial `number`: a driver racing this one finds the count moved and stops.
        claimed = session.execute(update(SweepRow).where(
            SweepRow.id == row.id, SweepRow.status == JobStatus.RUNNING.value,
            SweepRow.trials_started == number).values(trials_started=number + 1))
        if rowcount(claimed) != 1:
            break
        set_committed_value(row, "trials_started", number + 1)  # as the UPDATE left it
        try:
            job_id = _make_trial(session, row, spec, number, params, max_active)
        except Invalid as exc:  # e.g. its dataset was deleted: no trial can run any more
            _end(session, row, JobStatus.FAILED, error_message=f"trial {number} could not "
                 f"start: {exc.message}")
            break
        trials.append(TrialRecord(number=number, job_id=job_id, params=params,
                                  status=JobStatus.QUEUED.value))
        started.append(job_id)
    return started


def _make_trial(session: Session, row: SweepRow, spec: SweepSpec, number: int,
                params: dict[str, object], max_active: int) -> str:
    base = with_params(spec.base, params)
    base["name"] = names.derived(row.name, f"-trial-{number}")  # within the limit
    try:
        job_in = parse_spec(base)
    except SpecError as exc:  # a rule across two searched fields (warmup vs max_steps)
        raise Invalid("invalid_request", exc.message, exc.param) from None
    admitted = jobs.admit(session=session, job_in=job_in, owner=row.owner,
                          max_active=max_active)
    job = jobs.create(session=session, admitted=admitted, owner=row.owner)
    # Marked sent now, before the message goes: if it is lost (the process dies before
    # sending it), the reaper re-sends it like any job's.
    jobs.mark_enqueued(session=session, job_id=job.id)
    session.add(SweepTrialRow(sweep_id=row.id, number=number, job_id=job.id, params=params,
                              pruned=False))
    session.add(EventRow(job_id=job.id, level="info", message=(
        f"trial {number} of sweep {row.id}: "
        + ", ".join(f"{k.split('.', 1)[1]}={v!r}" for k, v in params.items()))))
    session.flush()
    return job.id


def _finish(session: Session, row: SweepRow, spec: SweepSpec,
            trials: list[TrialRecord]) -> None:
    winner = best(spec, trials)
    if winner is None:
        _end(session, row, JobStatus.FAILED, error_message=(
            f"no trial succeeded with a {spec.metric} to compare (see each trial's job)"))
        return
    _end(session, row, JobStatus.SUCCEEDED, best_job_id=winner.job_id,
         best_value=winner.value(spec.direction == "minimize"), model_id=winner.model_id)


def _end(session: Session, row: SweepRow, status: JobStatus, **values: object) -> None:
    """running -> status, once (a racing driver or a cancel may have ended it first)."""
    lifecycle.end_sweep(session, row.id, status, **values)
    session.refresh(row)
