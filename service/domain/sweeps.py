"""Sweeps: submit, read, list and cancel; the trials are jobs (sweep_driver.py makes them)."""

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from sqlalchemy import select
from sqlalchemy.orm import Session

from jobspec import EvaluateSpec, FinetuneSpec, PretrainSpec, SpecError, names, parse_spec
from jobspec.metrics import columns
from jobspec.sweep import SweepSpec, corner_specs
from service.domain import jobs, lifecycle, webhooks
from service.domain.ids import new_id
from service.domain.lifecycle import JobStatus
from service.domain.pagination import newest_first, owned
from service.domain.refusals import Invalid, not_found
from service.domain.schemas import Timestamp
from service.domain.sweep_study import TrialRecord, minimizes
from service.domain.tables import JobRow, MetricRow, SweepRow, SweepTrialRow

# The metrics stored in columns of an eval point; the others are in its `extra`.
COLUMN_METRICS = columns("eval")


class TrialPublic(BaseModel):
    number: int
    job_id: str
    params: dict[str, Any]
    status: JobStatus
    pruned: bool
    pruned_step: int | None
    step: int
    # What the trial scored (its model's eval; null until it succeeded) and its best eval.
    value: float | None
    best_metric: float | None


class SweepError(BaseModel):
    code: str
    message: str


class SweepPublic(BaseModel):
    id: str
    object: Literal["sweep"] = "sweep"
    name: str
    status: JobStatus
    spec: dict[str, Any]
    trials_started: int
    trials: list[TrialPublic]
    best_job_id: str | None
    best_value: float | None
    # The best trial's model, published as the sweep's once every trial has ended.
    model_id: str | None
    error: SweepError | None
    created_at: Timestamp
    finished_at: Timestamp | None

    @classmethod
    def of(cls, row: SweepRow, trials: list[TrialRecord],
           rows: dict[int, tuple[SweepTrialRow, JobRow]]) -> "SweepPublic":
        minimize = minimizes(SweepSpec.model_validate(row.spec))
        public = [TrialPublic(
            number=t.number, job_id=t.job_id, params=t.params, status=JobStatus(t.status),
            pruned=t.pruned and t.status != JobStatus.SUCCEEDED.value,
            pruned_step=rows[t.number][0].pruned_step, step=rows[t.number][1].step,
            value=t.value(minimize), best_metric=t.best_eval(minimize)) for t in trials]
        error = SweepError(code="no_trial_succeeded", message=row.error_message) \
            if row.error_message else None
        return cls(id=row.id, name=row.name, status=JobStatus(row.status),
                   spec=public_spec(row.spec),
                   trials_started=row.trials_started, trials=public,
                   best_job_id=row.best_job_id, best_value=row.best_value,
                   model_id=row.model_id, error=error, created_at=row.created_at,
                   finished_at=row.finished_at)


def public_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """The sweep's spec as the API shows it: its base as a job's spec is shown (the
    webhook's secret replaced by whether one is set). The stored spec keeps the secret:
    each trial's job is made from it and signs its deliveries with it."""
    base = spec.get("base")
    return {**spec, "base": webhooks.public_spec(base)} if isinstance(base, dict) else spec


def _invalid(param: str, message: str) -> Invalid:
    return Invalid("invalid_request", f"{param}: {message}", param)


@dataclass(frozen=True)
class AdmittedSweep:
    """A sweep that passed every check of the spec, with its name and its base job spec
    (read: the route checks the base's webhook target as a job's is checked)."""

    name: str
    base: PretrainSpec | FinetuneSpec


def admit(*, session: Session, sweep_in: SweepSpec, owner: str, max_active: int
          ) -> AdmittedSweep:
    """Every check of a submission, as jobs.admit makes for a job.

    Each end of every range (and each choice) is put in the base spec and checked by the
    job schema, so a trial the schema would refuse is refused now, not hours later."""
    if (problem := sweep_in.inconsistency()) is not None:
        raise _invalid(*problem)
    if sweep_in.parallel > max_active:
        raise _invalid("parallel", f"parallel {sweep_in.parallel} exceeds the {max_active} "
                       "jobs one owner may have queued or running")
    try:
        base = parse_spec(sweep_in.base)
    except SpecError as exc:
        raise _invalid(f"base.{exc.param}" if exc.param else "base", exc.message) from None
    if isinstance(base, EvaluateSpec):  # it has no metric of its own to compare trials by
        raise _invalid("base.type", "a sweep's trials are pretraining or fine-tuning jobs; "
                       "an evaluate job fine-tunes with the defaults on every task of its suite")
    fields = type(base.hyperparameters).model_fields
    for path in sweep_in.search_space:
        if path.split(".", 1)[1] not in fields:
            raise _invalid(f"search_space.{path}", f"a {base.type} job has no such "
                           f"hyperparameter; it has {', '.join(sorted(fields))}")
    for path, value, spec in corner_specs(sweep_in):
        try:
            parse_spec(spec)
        except SpecError as exc:
            param = "search_space" if path == "search_space" else f"search_space.{path}"
            raise _invalid(param, f"a trial with {path} = {value!r} would be refused: "
                           f"{exc.message}") from None
    admitted = jobs.admit(session=session, job_in=base, owner=owner, max_active=max_active)
    return AdmittedSweep(sweep_in.name or names.derived(admitted.name, "-sweep"), base)


def create(*, session: Session, sweep_in: SweepSpec, name: str, owner: str) -> SweepRow:
    row = lifecycle.new_sweep(id=new_id("swp"), owner=owner, name=name,
                              spec={**sweep_in.model_dump(mode="json"), "name": name},
                              trials_started=0)
    session.add(row)
    session.flush()
    return row


def get(*, session: Session, sweep_id: str, scope: str | None) -> SweepRow:
    row = session.get(SweepRow, sweep_id)
    if row is None or (scope is not None and row.owner != scope):
        raise not_found("sweep", sweep_id)
    return row


def list_(*, session: Session, scope: str | None, limit: int, after: str | None
          ) -> tuple[list[SweepRow], bool]:
    return newest_first(session, owned(select(SweepRow), SweepRow, scope), SweepRow,
                        limit=limit, after=after, scope=scope)


def cancel(*, session: Session, sweep_id: str, scope: str | None) -> SweepRow:
    """The sweep ends as cancelled and so do its trials (a running one at its next step).
    Idempotent; a finished sweep stays as it finished."""
    get(session=session, sweep_id=sweep_id, scope=scope)
    # The conditional UPDATE also orders this cancel after a driver's trial launch that
    # holds the row: the trials read below then include that trial.
    lifecycle.end_sweep(session, sweep_id, JobStatus.CANCELLED)
    for job_id in session.scalars(select(SweepTrialRow.job_id).where(
            SweepTrialRow.sweep_id == sweep_id)):
        lifecycle.cancel(session, job_id)
    session.flush()
    row = get(session=session, sweep_id=sweep_id, scope=scope)
    session.refresh(row)
    return row


def trial_rows(session: Session, sweep_id: str) -> dict[int, tuple[SweepTrialRow, JobRow]]:
    """Trial number -> (its trial row, its job row)."""
    pairs = session.execute(select(SweepTrialRow, JobRow).join(
        JobRow, JobRow.id == SweepTrialRow.job_id).where(SweepTrialRow.sweep_id == sweep_id)
        .order_by(SweepTrialRow.number)).all()
    return {trial.number: (trial, job) for trial, job in pairs}


def trial_records(session: Session, spec: SweepSpec,
                  rows: dict[int, tuple[SweepTrialRow, JobRow]]) -> list[TrialRecord]:
    """The trials with their eval points of the sweep's metric, as the study reads them."""
    evals = _evals(session, [job.id for _, job in rows.values()], spec.metric)
    return [TrialRecord(number=n, job_id=job.id, params=dict(trial.params),
                        status=job.status, pruned=trial.pruned, evals=evals.get(job.id, {}),
                        keeps_best=bool((job.spec or {}).get("early_stopping")),
                        model_id=job.model_id)
            for n, (trial, job) in sorted(rows.items())]


def _evals(session: Session, job_ids: list[str], metric: str) -> dict[str, dict[int, float]]:
    if not job_ids:
        return {}
    # Every eval point has eval_loss; a task's own metrics sit in its extra.
    points = session.scalars(select(MetricRow).where(
        MetricRow.job_id.in_(job_ids), MetricRow.eval_loss.is_not(None))).all()
    out: dict[str, dict[int, float]] = {}
    for point in points:
        value = getattr(point, metric) if metric in COLUMN_METRICS \
            else (point.extra or {}).get(metric)
        if isinstance(value, int | float) and not isinstance(value, bool):
            out.setdefault(point.job_id, {})[point.step] = float(value)
    return out


def public(session: Session, row: SweepRow) -> SweepPublic:
    spec = SweepSpec.model_validate(row.spec)
    rows = trial_rows(session, row.id)
    return SweepPublic.of(row, trial_records(session, spec, rows), rows)
