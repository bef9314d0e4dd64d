"""Jobs: a typed spec, a row that is the record of the run, and its curve, events, checkpoints."""

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from jobspec import ARCHITECTURES, SpecError, parse_spec
from jobspec import evaluation as ev
from jobspec.field_errors import error_param
from jobspec.formats import (
    EXTRACTIVE_QA,
    KIND_HOLDS,
    LABELLED_TEXT,
    MULTI_LABELLED_TEXT,
    SPLITS,
    TAGGED_TOKENS,
    TEXT,
    FormatError,
    number,
)
from jobspec.metrics import columns
from jobspec.model_facts import FEATURE_EXTRACTION
from service.domain import admission, attempts, datasets, lifecycle, webhooks
from service.domain.ids import new_id
from service.domain.lifecycle import JobStatus
from service.domain.pagination import newest_first, owned
from service.domain.refusals import Conflict, Invalid, not_found
from service.domain.schemas import Timestamp
from service.domain.specs import (
    FINETUNE_DATA,
    EvaluateJobCreate,
    FinetuneJobCreate,
    JobCreate,
    PretrainJobCreate,
)
from service.domain.tables import (
    CheckpointRow,
    DatasetRow,
    EventRow,
    JobRow,
    MetricRow,
    ModelRow,
    utcnow,
)
from service.queue import live_queues
from service.routing import waiting_reason
from service.settings import get_settings
from service.storage import ObjectStore


class Progress(BaseModel):
    step: int
    total_steps: int
    tokens_seen: int
    tokens_per_second: float | None
    eta_seconds: float | None


class JobError(BaseModel):
    code: str
    message: str


class JobPublic(BaseModel):
    id: str
    object: Literal["job"] = "job"
    type: str
    name: str
    status: JobStatus
    dataset_id: str
    spec: dict[str, Any]
    progress: Progress
    train_loss: float | None
    eval_loss: float | None
    model_id: str | None
    attempts: int
    cancel_requested: bool
    # Running, asked to pause: `paused` once its worker has checkpointed the step reached.
    pause_requested: bool = False
    error: JobError | None
    # A queued job that no live worker can take says why ("waiting: no worker serves
    # train.cuda; ..."); null otherwise (running, finished, or waiting its turn).
    waiting_reason: str | None = None
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    # An evaluate job's table (jobspec/evaluation.py), filled in as its cells finish; null
    # for the other job types and in lists.
    evaluation: ev.Table | None = None

    @classmethod
    def of(cls, row: JobRow, evaluation: ev.Table | None = None) -> "JobPublic":
        eta = None
        if lifecycle.is_running(row) and row.tokens_per_second and row.total_steps > row.step \
                and row.step:
            # Tokens per step as measured so far (fine-tuning batches vary in length).
            tokens_left = (row.total_steps - row.step) * row.tokens_seen / row.step
            eta = round(tokens_left / row.tokens_per_second, 1)
        elif lifecycle.is_running(row) and not row.step and row.estimated_seconds is not None:
            # Nothing measured yet (tokenizing, the first steps): the submission's estimate
            # of the training time, what its dry run answered.
            eta = row.estimated_seconds
        error = JobError(code=row.error_code, message=row.error_message or "") \
            if row.error_code else None
        waiting = None
        if row.status == JobStatus.QUEUED.value:  # live workers: from heartbeats, cached
            waiting = waiting_reason(row.spec, live_queues(), get_settings())
        return cls(
            id=row.id, type=row.type, name=row.name, status=JobStatus(row.status),
            dataset_id=row.dataset_id, spec=webhooks.public_spec(row.spec),
            progress=Progress(step=row.step, total_steps=row.total_steps,
                              tokens_seen=row.tokens_seen,
                              tokens_per_second=row.tokens_per_second, eta_seconds=eta),
            train_loss=row.train_loss, eval_loss=row.eval_loss, model_id=row.model_id,
            attempts=row.attempts, cancel_requested=row.cancel_requested,
            pause_requested=row.pause_requested, error=error,
            waiting_reason=waiting, evaluation=evaluation,
            created_at=row.created_at, started_at=row.started_at, finished_at=row.finished_at)


class MetricPoint(BaseModel):
    # Task-specific metrics (f1, precision, recall, ...) appear as further keys.
    model_config = ConfigDict(extra="allow")

    step: int
    train_loss: float | None = None
    learning_rate: float | None = None
    grad_norm: float | None = None
    tokens_per_second: float | None = None
    tokens_seen: int | None = None
    eval_loss: float | None = None
    perplexity: float | None = None
    accuracy: float | None = None

    @classmethod
    def of(cls, row: MetricRow) -> "MetricPoint":
        # The fields above are the metric table's columns (jobspec/metrics.py), as
        # MetricRow's are (test_project checks all three agree); the others come from extra.
        stored = {name: getattr(row, name) for name in (*columns("train"), *columns("eval"))}
        return cls(step=row.step, **stored, **(row.extra or {}))


class EventPublic(BaseModel):
    id: int
    level: str
    message: str
    created_at: Timestamp


class CheckpointPublic(BaseModel):
    id: str
    object: Literal["checkpoint"] = "checkpoint"
    job_id: str
    step: int
    bytes: int
    sha256: str
    metrics: dict[str, Any]
    created_at: Timestamp


def _invalid(param: str, message: str) -> Invalid:
    return Invalid("invalid_request", f"{param}: {message}", param)


def _own_dataset(session: Session, owner: str, param: str, dataset_id: str | None
                 ) -> DatasetRow | None:
    if dataset_id is None:
        return None
    dataset = session.get(DatasetRow, dataset_id)
    if dataset is None or dataset.owner != owner:
        raise _invalid(param, f"no dataset with id {dataset_id!r}")
    return dataset


def _check_pretrain(session: Session, owner: str, job_in: PretrainJobCreate
                    ) -> PretrainJobCreate:
    """The job, checked against its dataset and base model; with a base model, re-read
    with the base's architecture (which decides the objective's default)."""
    dataset = _own_dataset(session, owner, "dataset_id", job_in.dataset_id)
    if dataset is not None and (job_in.columns or dataset.fields is not None):  # a table
        datasets.read_as(dataset, TEXT, job_in.columns, param="dataset_id", task="pretraining")
    elif dataset is not None and dataset.kind == TAGGED_TOKENS:
        raise _invalid("dataset_id", f"{dataset.id} holds tagged tokens; pretraining needs "
                       f"text ({KIND_HOLDS[TEXT]})")
    if job_in.base_model_id is None:
        return job_in
    base = session.get(ModelRow, job_in.base_model_id)
    if base is None or base.owner != owner:
        raise _invalid("base_model_id", f"no model with id {job_in.base_model_id!r}")
    given = job_in.model_dump(mode="json", exclude_unset=True)
    if "model" in given:
        raise _invalid("model", "a continued-pretraining job keeps its base model's "
                       "architecture and shape; leave model out")
    if base.architecture not in ARCHITECTURES:
        raise _invalid("base_model_id", f"continued pretraining supports "
                       f"{', '.join(ARCHITECTURES)}; {base.id} is a {base.architecture}")
    try:
        job_in = PretrainJobCreate.model_validate(
            {**given, "model": {"architecture": base.architecture}})
    except ValidationError as exc:  # valid alone; e.g. a tokenizer the base cannot use
        first = exc.errors()[0]
        raise _invalid(error_param(first) or "base_model_id", str(first["msg"])) from None
    if (problem := job_in.inconsistency()) is not None:
        raise _invalid(*problem)
    # A continued-pretraining base has the objective's own task, or none: a base model
    # without a head (BertModel, GPT2Model, a sentence-transformers encoder) is continued
    # by any objective of its architecture (the engine creates the objective's head).
    needed = job_in.pipeline_task
    if base.task not in (needed, FEATURE_EXTRACTION):
        raise _invalid("base_model_id", f"{job_in.objective} continues a {needed} model "
                       f"or a {FEATURE_EXTRACTION} one (a base model without a head); "
                       f"{base.id} is a {base.task} model")
    return job_in


def _is_number(label: str) -> bool:
    try:
        number(label)
        return True
    except FormatError:
        return False


def _check_finetune(session: Session, owner: str, job_in: FinetuneJobCreate) -> None:
    base = session.get(ModelRow, job_in.base_model_id)
    if base is None or base.owner != owner:
        raise _invalid("base_model_id", f"no model with id {job_in.base_model_id!r}")
    needed = FINETUNE_DATA[job_in.task]
    for param in ("dataset_id", "validation_dataset_id", "test_dataset_id"):
        dataset = _own_dataset(session, owner, param, getattr(job_in, param))
        if dataset is None:
            continue
        # Its label set as the job reads it (a table's, through the job's columns).
        labels = datasets.read_as(dataset, needed, job_in.columns, param=param,
                                  task=job_in.task)
        if job_in.task == "regression":
            # The labels an upload records are its classes; scores (fractions) are not
            # listed, so any listed label must be an integer.
            words = [label for label in labels or () if not _is_number(label)]
            if words:
                raise _invalid(param, f'regression needs a number in every record\'s "label"; '
                               f"{dataset.id} holds labels that are not numbers: "
                               f"{', '.join(repr(w) for w in words[:5])}")
        if job_in.labels is not None:
            extra = sorted(set(labels or ()) - set(job_in.labels))
            if extra:
                raise _invalid("labels", f"{dataset.id} has labels that are not in labels: "
                               f"{', '.join(extra[:10])}")


# The task an "uploaded" suite gives each kind of labelled dataset.
UPLOADED_TASKS = {LABELLED_TEXT: "text_classification", TAGGED_TOKENS: "token_classification",
                  MULTI_LABELLED_TEXT: "multi_label_classification",
                  EXTRACTIVE_QA: "question_answering"}


# The newest labelled datasets an "uploaded" suite looks through (a bound on the read).
UPLOADED_READ = 1000


def _check_evaluate(session: Session, owner: str, job_in: EvaluateJobCreate
                    ) -> EvaluateJobCreate:
    """The evaluate job checked as each of its fine-tunes would be (a refusal names the
    suite's task: "suite.1.columns.label"), with an "uploaded" suite resolved and every
    task named, as the stored spec keeps them."""
    for param in ("model_id", "compare_model_id"):
        model_id = getattr(job_in, param)
        if model_id is not None and ((model := session.get(ModelRow, model_id)) is None
                                     or model.owner != owner):
            raise _invalid(param, f"no model with id {model_id!r}")
    suite = _uploaded_suite(session, owner) if isinstance(job_in.suite, str) \
        else job_in.suite
    named = []
    for i, task in enumerate(suite):
        dataset = _own_dataset(session, owner, f"suite.{i}.dataset_id", task.dataset_id)
        assert dataset is not None
        named.append(task.model_copy(update={"name": task.name or dataset.name}))
        if task.test_dataset_id is None and dataset.splits is not None \
                and "test" not in {SPLITS.get(k) for k in dataset.splits}:
            raise _invalid(f"suite.{i}.dataset_id", "an evaluate job scores every task on "
                           f"its test split; {dataset.id} has none (its records' splits: "
                           f"{', '.join(f'{k} {v}' for k, v in dataset.splits.items())}): "
                           'give test_dataset_id, or records with "split": "test"')
    job_in = job_in.model_copy(update={"suite": named})
    for i in range(len(named)):
        try:
            finetune = parse_spec(ev.finetune_spec(job_in, i))
            assert isinstance(finetune, FinetuneJobCreate)
            _check_finetune(session, owner, finetune)
        except SpecError as exc:
            raise _in_suite(i, exc.param, exc.message) from None
        except Invalid as exc:
            raise _in_suite(i, exc.param, exc.message) from None
    return job_in


def _in_suite(index: int, param: str | None, message: str) -> Invalid:
    """A fine-tune's refusal as the evaluate job's: its field within suite.<index> (the
    base model is the evaluated one: model_id)."""
    if param in (None, "hyperparameters") or (param or "").startswith("hyperparameters."):
        return Invalid("invalid_request", message, param)
    if param == "base_model_id":
        return _invalid("model_id", message.split(": ", 1)[-1])
    return _invalid(f"suite.{index}.{param}", message.split(": ", 1)[-1])


def _uploaded_suite(session: Session, owner: str) -> list[ev.SuiteTask]:
    """One task per labelled dataset of the owner, newest first (at most MAX_SUITE_TASKS)
    whose records carry a test split; tables are left out (their columns need a map)."""
    rows = session.scalars(select(DatasetRow).where(
        DatasetRow.owner == owner, DatasetRow.kind.in_(UPLOADED_TASKS))
        .order_by(DatasetRow.created_at.desc()).limit(UPLOADED_READ))
    # (fields: in Python, as a JSON column stores None as JSON null, not SQL NULL)
    suite = [ev.SuiteTask.model_validate({"task": UPLOADED_TASKS[row.kind],
                                          "dataset_id": row.id, "name": row.name})
             for row in rows if row.fields is None
             and "test" in {SPLITS.get(k) for k in row.splits or {}}]
    if not suite:
        raise _invalid("suite", 'the "uploaded" suite takes every dataset of yours with labels '
                       "and a test split (records with \"split\": \"test\"); you have none: "
                       "upload one, or list the suite's tasks")
    return suite[:ev.MAX_SUITE_TASKS]


@dataclass(frozen=True)
class Admitted:
    """A spec that passed every check a submission makes, with what the job row records."""

    # re-read with a base model's architecture; an evaluate job's suite resolved
    job_in: PretrainJobCreate | FinetuneJobCreate | EvaluateJobCreate
    name: str
    total_steps: int
    max_active: int  # checked again, under the owner's lock, when the row is inserted


def admit(*, session: Session, job_in: JobCreate, owner: str, max_active: int) -> Admitted:
    """Every check of a submission (a dry run makes the same ones, so it refuses what a
    submission would, with the same errors); nothing is written. The room it sees is
    checked again by create, under the owner's lock (admission.reserve)."""
    # A continued-pretraining spec is checked once re-read with its base's architecture
    # (_check_pretrain): before, it reads as a BERT's ("clm trains gpt2 or llama, not bert"
    # for a GPT-2 base given "objective": "clm").
    continued = isinstance(job_in, PretrainJobCreate) and job_in.base_model_id is not None
    if not continued and (problem := job_in.inconsistency()) is not None:
        raise _invalid(*problem)
    if isinstance(job_in, PretrainJobCreate):
        job_in = _check_pretrain(session, owner, job_in)
        shape = job_in.base_model_id or f"{job_in.model.architecture}-{job_in.model.size}"
        name = job_in.name or f"{shape}-{job_in.objective}"
        total_steps = job_in.hyperparameters.max_steps
    elif isinstance(job_in, EvaluateJobCreate):
        job_in = _check_evaluate(session, owner, job_in)
        name = job_in.name or f"evaluate-{job_in.model_id}"
        # Its progress counts cells (a task trained one way), not steps.
        total_steps = len(job_in.tasks) * len(job_in.variants())
    else:
        _check_finetune(session, owner, job_in)
        name = job_in.name or f"{job_in.task.replace('_', '-')}-{job_in.base_model_id}"
        # The worker sets the exact count once it has read the data.
        total_steps = job_in.hyperparameters.max_steps or 0
    admission.check_room(session, owner, max_active)  # the early answer
    return Admitted(job_in, name, total_steps, max_active)


def _still_there(session: Session, owner: str,
                 job_in: PretrainJobCreate | FinetuneJobCreate | EvaluateJobCreate) -> None:
    """The datasets and base model the job reads exist (checked under the owner's lock:
    a delete racing this submission either finds the job, or is found to have won)."""
    # Queries, not session.get: the session may hold the rows admit read, deleted since.
    readers: list[tuple[str, Any]] = [("", job_in)] if not isinstance(
        job_in, EvaluateJobCreate) else [(f"suite.{i}.", t) for i, t in enumerate(job_in.tasks)]
    for where, reader in readers:
        for param in ("dataset_id", "validation_dataset_id", "test_dataset_id"):
            dataset_id = getattr(reader, param, None)
            if dataset_id is not None and session.scalar(select(DatasetRow.id).where(
                    DatasetRow.id == dataset_id, DatasetRow.owner == owner)) is None:
                raise _invalid(where + param, f"no dataset with id {dataset_id!r}")
    models = [("model_id", job_in.model_id), ("compare_model_id", job_in.compare_model_id)] \
        if isinstance(job_in, EvaluateJobCreate) else [("base_model_id", job_in.base_model_id)]
    for param, model_id in models:
        if model_id is not None and session.scalar(select(ModelRow.id).where(
                ModelRow.id == model_id, ModelRow.owner == owner)) is None:
            raise _invalid(param, f"no model with id {model_id!r}")


def create(*, session: Session, admitted: Admitted, owner: str,
           estimated_seconds: float | None = None) -> JobRow:
    """Insert the admitted job: room and what it reads are checked again under the owner's
    lock, in the transaction that inserts it (admit's checks may be seconds old: the time
    estimate runs between them)."""
    job_in = admitted.job_in
    admission.reserve(session, owner, admitted.max_active)
    try:
        _still_there(session, owner, job_in)
    except Invalid:
        admission.release(session)
        raise
    spec = job_in.stored_spec()
    spec["name"] = admitted.name
    row = lifecycle.new_job(id=new_id("job"), owner=owner, type=job_in.type,
                            name=admitted.name, spec=spec, dataset_id=job_in.dataset_id,
                            total_steps=admitted.total_steps,
                            estimated_seconds=estimated_seconds)
    session.add(row)
    session.flush()
    # Its first status, queued; the address policy its webhook was accepted under.
    webhooks.record(session, row.id, private_ok=get_settings().webhook_private_addresses)
    return row


def get(*, session: Session, job_id: str, scope: str | None) -> JobRow:
    row = session.get(JobRow, job_id)
    if row is None or (scope is not None and row.owner != scope):
        raise not_found("job", job_id)
    return row


def evaluation(session: Session, row: JobRow) -> ev.Table | None:
    """An evaluate job's table from the cells finished so far; None for other jobs."""
    if row.type != "evaluate":
        return None
    spec = ev.EvaluateSpec.model_validate(row.spec)
    return ev.table(spec, attempts.cells(session, row.id))


def list_(*, session: Session, scope: str | None, limit: int, after: str | None,
          status: JobStatus | None = None) -> tuple[list[JobRow], bool]:
    stmt = owned(select(JobRow), JobRow, scope)
    if status:
        stmt = stmt.where(JobRow.status == status.value)
    return newest_first(session, stmt, JobRow, limit=limit, after=after, scope=scope)


def cancel(*, session: Session, job_id: str, scope: str | None) -> JobRow:
    """Cancel cooperatively: a queued job never starts; a running one stops at its next step
    (see lifecycle.cancel)."""
    get(session=session, job_id=job_id, scope=scope)
    lifecycle.cancel(session, job_id)
    session.flush()
    row = get(session=session, job_id=job_id, scope=scope)
    session.refresh(row)
    return row


def pause(*, session: Session, job_id: str, scope: str | None) -> JobRow:
    """Pause: a queued job at once, a running one at its next step, once its worker has
    checkpointed it (see lifecycle.pause); a paused job stays paused."""
    row = get(session=session, job_id=job_id, scope=scope)
    if row.status in lifecycle.TERMINAL:
        raise Conflict("job_finished", f"job {job_id} is {row.status}; only a queued or "
                       "running job can be paused")
    if row.cancel_requested:
        raise Conflict("job_cancelling", f"job {job_id} is being cancelled; it cannot be "
                       "paused")
    lifecycle.pause(session, job_id)
    return _reread(session, row)


def resume(*, session: Session, job_id: str, scope: str | None) -> JobRow:
    """paused -> queued; the caller sends it to the training queue once committed."""
    row = get(session=session, job_id=job_id, scope=scope)
    if not lifecycle.resume(session, job_id):
        session.refresh(row)
        pausing = " (it is still pausing: resume it once it is paused)" \
            if row.pause_requested and lifecycle.is_running(row) else ""
        raise Conflict("job_not_paused", f"job {job_id} is {row.status}{pausing}; only a "
                       "paused job can be resumed")
    return _reread(session, row)


def _reread(session: Session, row: JobRow) -> JobRow:
    """The row as a conditional UPDATE left it (the session holds the old values)."""
    session.flush()
    session.refresh(row)
    return row


def metrics(*, session: Session, job_id: str, scope: str | None, since_step: int | None,
            max_points: int | None) -> list[MetricRow]:
    get(session=session, job_id=job_id, scope=scope)
    stmt = select(MetricRow).where(MetricRow.job_id == job_id).order_by(MetricRow.step)
    if since_step is not None:
        stmt = stmt.where(MetricRow.step > since_step)
    rows = list(session.scalars(stmt))
    if max_points and len(rows) > max_points:
        # Keep every eval point and the last point; thin the train-only points evenly.
        stride = -(-len(rows) // max_points)
        rows = [r for i, r in enumerate(rows)
                if i % stride == 0 or r.eval_loss is not None or i == len(rows) - 1]
    return rows


def events(*, session: Session, job_id: str, scope: str | None, limit: int,
           after: int | None) -> list[EventRow]:
    get(session=session, job_id=job_id, scope=scope)
    stmt = select(EventRow).where(EventRow.job_id == job_id)
    if after is not None:
        stmt = stmt.where(EventRow.id > after)
    return list(session.scalars(stmt.order_by(EventRow.id).limit(limit)))


def checkpoints(*, session: Session, job_id: str, scope: str | None) -> list[CheckpointRow]:
    get(session=session, job_id=job_id, scope=scope)
    return list(session.scalars(
        select(CheckpointRow).where(CheckpointRow.job_id == job_id).order_by(CheckpointRow.step)))


class CheckpointsDeleted(BaseModel):
    object: Literal["checkpoints.deleted"] = "checkpoints.deleted"
    job_id: str
    deleted: int  # checkpoints
    bytes: int  # freed of the owner's storage quota


def delete_checkpoints(*, session: Session, store: ObjectStore, job_id: str,
                       scope: str | None) -> CheckpointsDeleted:
    """Delete a finished job's checkpoints, records then files, which frees their bytes
    of the owner's quota (models published from them are copies, and stay). A queued,
    running or paused job resumes from its checkpoints: 409."""
    row = get(session=session, job_id=job_id, scope=scope)
    if row.status not in lifecycle.TERMINAL:
        raise Conflict("job_not_finished", f"job {job_id} is {row.status}; a job's "
                       "checkpoints are what it resumes from, so they can be deleted once it "
                       "has finished (cancel it first)")
    count, size = session.execute(
        select(func.count(), func.coalesce(func.sum(CheckpointRow.bytes), 0))
        .where(CheckpointRow.job_id == job_id)).one()
    session.execute(delete(CheckpointRow).where(CheckpointRow.job_id == job_id))
    session.commit()  # the records go first: nothing offers a checkpoint that is going away
    store.delete_prefix(checkpoints_prefix(job_id))
    return CheckpointsDeleted(job_id=job_id, deleted=int(count), bytes=int(size))


def checkpoints_prefix(job_id: str) -> str:
    """Where a job's checkpoints are stored (step-XXXXXXXX under it)."""
    return f"jobs/{job_id}/checkpoints"


def mark_enqueued(*, session: Session, job_id: str) -> None:
    session.execute(update(JobRow).where(JobRow.id == job_id).values(enqueued_at=utcnow()))
