"""What one attempt of a job records while it trains: its inputs, its events, its curve,
its progress and heartbeat, its checkpoints, and what it drops when it resumes or loses.

The worker (workers/runner.py, workers/db_reporter.py) writes the service's tables only
through these functions; it owns its transactions (each function takes the session the
caller commits) and never names a table. Status changes are not here: they go through
service/domain/lifecycle.py alone (`_move`).
"""

from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from jobspec import evaluation as ev
from jobspec.metrics import EVAL_LOSS, METRICS, TRAIN_LOSS, EvalPoint, TrainPoint, columns
from service.domain.ids import new_id
from service.domain.tables import (
    CheckpointRow,
    DatasetRow,
    EvaluationCellRow,
    EventRow,
    JobRow,
    MetricRow,
    ModelRow,
    utcnow,
)

# The spec fields naming the datasets an attempt reads, by split.
SPLIT_PARAMS = (("train", "dataset_id"), ("valid", "validation_dataset_id"),
                ("test", "test_dataset_id"))


@dataclass(frozen=True)
class Stored:
    """Where something the job reads lives in object storage."""

    id: str
    key: str  # a file for datasets, a prefix for models
    format: str
    tag_column: int | None = None  # CoNLL columns: which one holds the tags


@dataclass(frozen=True)
class Inputs:
    """What a claimed attempt reads: its number, its job's owner and spec, its data."""

    number: int
    owner: str
    spec: dict[str, Any]
    data: dict[str, Stored]  # split ("train", "valid", "test") -> dataset
    base_model: Stored | None  # fine-tuning starts from it; format = its architecture


def inputs(session: Session, job_id: str) -> Inputs:
    """The inputs of the job's current attempt (read right after lifecycle.claim); a
    dataset or base model deleted meanwhile is missing from them."""
    job = session.get(JobRow, job_id)
    assert job is not None
    spec = dict(job.spec)
    return Inputs(number=job.attempts, owner=job.owner, spec=spec, data=_data(session, spec),
                  base_model=_model(session, spec.get("base_model_id")))


def _data(session: Session, reader: dict[str, Any]) -> dict[str, Stored]:
    data = {}
    for split, param in SPLIT_PARAMS:
        if reader.get(param) and (row := session.get(DatasetRow, reader[param])) is not None:
            data[split] = Stored(row.id, row.storage_key, row.format, row.tag_column)
    return data


def _model(session: Session, model_id: str | None) -> Stored | None:
    if model_id and (m := session.get(ModelRow, model_id)) is not None:
        return Stored(m.id, m.storage_prefix, m.architecture)
    return None


@dataclass(frozen=True)
class SuiteInputs:
    """What an evaluate job's attempt reads: each task's data (split -> dataset) and the
    models it fine-tunes (variant -> model); a deleted one is missing."""

    tasks: list[dict[str, Stored]]
    models: dict[str, Stored]
    cells: list[ev.Cell]  # those finished by earlier attempts: not done again


def suite_inputs(session: Session, job_id: str, spec: ev.EvaluateSpec) -> SuiteInputs:
    models = {variant: stored for variant, model_id in (
        (ev.MODEL, spec.model_id), (ev.COMPARE_MODEL, spec.compare_model_id))
        if (stored := _model(session, model_id)) is not None}
    return SuiteInputs(tasks=[_data(session, task.model_dump()) for task in spec.tasks],
                       models=models, cells=cells(session, job_id))


def cells(session: Session, job_id: str) -> list[ev.Cell]:
    """An evaluate job's finished cells, in the order they finished."""
    rows = session.scalars(select(EvaluationCellRow).where(
        EvaluationCellRow.job_id == job_id).order_by(EvaluationCellRow.id))
    return [ev.Cell(task_index=r.task_index, variant=r.variant, metrics=r.metrics,
                    steps=r.steps, seconds=r.seconds) for r in rows]


def record_cell(session: Session, job_id: str, cell: ev.Cell) -> bool:
    """A finished cell, once (False if an earlier attempt racing this one recorded it
    first), and the job's progress: its cells done, with a fresh heartbeat."""
    done = session.scalar(select(EvaluationCellRow.id).where(
        EvaluationCellRow.job_id == job_id, EvaluationCellRow.task_index == cell.task_index,
        EvaluationCellRow.variant == cell.variant))
    if done is None:
        session.add(EvaluationCellRow(job_id=job_id, task_index=cell.task_index,
                                      variant=cell.variant, metrics=cell.metrics,
                                      steps=cell.steps, seconds=cell.seconds))
        session.flush()
    count = session.scalar(select(func.count()).select_from(EvaluationCellRow).where(
        EvaluationCellRow.job_id == job_id))
    session.execute(update(JobRow).where(JobRow.id == job_id).values(
        step=count, heartbeat_at=utcnow()))
    return done is None


def record_event(session: Session, job_id: str, level: str, message: str) -> None:
    """A line of the job's log ("info", "warning" or "error")."""
    session.add(EventRow(job_id=job_id, level=level, message=message))


def record_train(session: Session, job_id: str, point: TrainPoint,
                 gauges: dict[str, float]) -> dict[str, Any]:
    """A log point: merged into the job's curve row at its step, and the job's progress
    (step, tokens, the latest train loss, the gauges GET /metrics shows) with a fresh
    heartbeat. Returns the curve fields written."""
    values: dict[str, Any] = dict(point)
    fields = {name: values.get(name) for name in columns("train")}
    extra = {m.name: values[m.name] for m in METRICS
             if m.side == "train" and not m.column and m.name in values}  # mfu
    if extra:
        fields["extra"] = extra
    progress: dict[str, Any] = {"step": point["step"], "tokens_seen": point["tokens_seen"],
                                "tokens_per_second": point["tokens_per_second"],
                                TRAIN_LOSS: point[TRAIN_LOSS]}
    if point.get("total_steps"):  # fine-tuning knows its step count once it read the data
        progress["total_steps"] = point["total_steps"]
    progress["training_gauges"] = gauges
    _merge_point(session, job_id, point["step"], fields, progress)
    return fields


def record_eval(session: Session, job_id: str, point: EvalPoint) -> dict[str, Any]:
    """A held-out evaluation: merged into the job's curve row at its step (the metrics
    without a column, a task's own and the probes, under extra), and the job's latest
    eval loss with a fresh heartbeat. Returns the curve fields written."""
    named = columns("eval")
    fields: dict[str, Any] = {name: point.get(name) for name in named}
    extra = {k: v for k, v in point.items() if k not in (*named, "step")
             and (isinstance(v, int | float) or k == "probes")}
    if extra:
        fields["extra"] = extra
    _merge_point(session, job_id, point["step"], fields, {EVAL_LOSS: point[EVAL_LOSS]})
    return fields


def _merge_point(session: Session, job_id: str, step: int, fields: dict[str, Any],
                 progress: dict[str, Any]) -> None:
    """Merge `fields` into the job's one curve row at `step` (train and eval fields of a
    step arrive separately; `extra` dicts merge key by key), and write `progress` onto the
    job row with a fresh heartbeat."""
    row = session.scalar(select(MetricRow).where(MetricRow.job_id == job_id,
                                                 MetricRow.step == step))
    if row is None:
        session.add(MetricRow(job_id=job_id, step=step, **fields))
    else:
        for key, value in fields.items():
            if key == "extra" and row.extra:
                value = {**row.extra, **value}
            setattr(row, key, value)
    # Not a status move: the progress columns only, whatever the status (as the heartbeat
    # of poll_stop below).
    session.execute(update(JobRow).where(JobRow.id == job_id)
                    .values(heartbeat_at=utcnow(), **progress))


def poll_stop(session: Session, job_id: str) -> tuple[bool, bool]:
    """(cancel requested, pause requested) of the job, and a fresh heartbeat: the attempt
    polls this every stop_poll_s while it trains. The heartbeat is written whatever the
    status (unlike lifecycle.heartbeat, which only a running job takes)."""
    flags = session.execute(select(JobRow.cancel_requested, JobRow.pause_requested)
                            .where(JobRow.id == job_id)).one_or_none()
    session.execute(update(JobRow).where(JobRow.id == job_id).values(heartbeat_at=utcnow()))
    return (bool(flags[0]), bool(flags[1])) if flags else (False, False)


def checkpoints(session: Session, job_id: str) -> list[tuple[str, int, str]]:
    """(id, step, storage prefix) of the job's recorded checkpoints, the newest first."""
    rows = session.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job_id)
                           .order_by(CheckpointRow.step.desc())).all()
    return [(r.id, r.step, r.storage_prefix) for r in rows]


def newest_checkpoint_step(session: Session, job_id: str) -> int | None:
    return session.scalar(select(func.max(CheckpointRow.step))
                          .where(CheckpointRow.job_id == job_id))


def record_checkpoint(session: Session, job_id: str, *, step: int, prefix: str, size: int,
                      digest: str, metrics: dict[str, Any]) -> None:
    """A checkpoint whose files are all stored (its manifest last): from now on it may be
    resumed from or offered."""
    session.add(CheckpointRow(id=new_id("ckpt"), job_id=job_id, step=step,
                              storage_prefix=prefix, bytes=size, sha256=digest,
                              metrics=metrics))


def drop_checkpoint(session: Session, checkpoint_id: str) -> None:
    """Forget one checkpoint (its files failed verification)."""
    session.execute(delete(CheckpointRow).where(CheckpointRow.id == checkpoint_id))


def trim_checkpoints(session: Session, job_id: str, keep: int) -> list[tuple[int, str]]:
    """Delete the records of all but the newest `keep` checkpoints; (step, prefix) of each
    deleted, whose files the caller then removes."""
    old = session.scalars(select(CheckpointRow).where(CheckpointRow.job_id == job_id)
                          .order_by(CheckpointRow.step.desc()).offset(keep)).all()
    gone = [(row.step, row.storage_prefix) for row in old]
    for row in old:
        session.delete(row)
    return gone


def rewind_to(session: Session, job_id: str, step: int) -> None:
    """Drop the metric and checkpoint rows past `step`, where a resumed attempt starts
    again, so that the curve continues with exactly one row per step."""
    session.execute(delete(MetricRow).where(MetricRow.job_id == job_id,
                                            MetricRow.step > step))
    session.execute(delete(CheckpointRow).where(CheckpointRow.job_id == job_id,
                                                CheckpointRow.step > step))


def discard_model(session: Session, model_id: str) -> None:
    """Delete the row of a model the attempt published but which does not count (another
    attempt finished the job first); the caller deletes its files."""
    session.execute(delete(ModelRow).where(ModelRow.id == model_id))
