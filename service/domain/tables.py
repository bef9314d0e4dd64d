"""The database tables. A class here is a table row, not a neural network."""

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The owner of everything made without an API key (the embedded default on loopback).
LOCAL_OWNER = "local"


def utcnow() -> datetime:
    return datetime.now(UTC)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: DateTime(timezone=True), dict[str, Any]: JSON}


class DatasetRow(Base):
    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True, default=LOCAL_OWNER)
    name: Mapped[str] = mapped_column(String(255))
    # What the content is: one of jobspec/formats.py's FORMATS (a .txt of CoNLL columns is
    # "conll").
    format: Mapped[str] = mapped_column(String(16))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    documents: Mapped[int] = mapped_column(BigInteger)
    # What it holds: one of jobspec/formats.py's DATASET_KINDS.
    kind: Mapped[str] = mapped_column(String(32), default="text")
    labels: Mapped[list[str] | None] = mapped_column(JSON)
    splits: Mapped[dict[str, Any] | None]
    # CoNLL column files: columns per token line, the tag column (0-based; the engine reads
    # the tags from it) and the first distinct values of each column. Null for other kinds.
    column_count: Mapped[int | None] = mapped_column(Integer)
    tag_column: Mapped[int | None] = mapped_column(Integer)
    column_samples: Mapped[list[list[str]] | None] = mapped_column(JSON)
    # Tables (CSV, TSV, Parquet): each column's name and type, in file order. Null for others.
    fields: Mapped[list[dict[str, str]] | None] = mapped_column(JSON)
    # What the data holds, found by the upload's inspection (upload_inspection.profile): per
    # column its type, a histogram of text lengths and the count of each label. The preview's.
    profile: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    storage_key: Mapped[str] = mapped_column(String(512))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class JobRow(Base):
    __tablename__ = "jobs"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True, default=LOCAL_OWNER)
    type: Mapped[str] = mapped_column(String(32))
    name: Mapped[str] = mapped_column(String(255))
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]]
    dataset_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    enqueued_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # A running job asked to pause: its worker checkpoints the step it reached, then lets go.
    pause_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    # How many times it was paused (each adds an attempt to its max_attempts budget).
    pauses: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    tokens_seen: Mapped[int] = mapped_column(BigInteger, default=0)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    train_loss: Mapped[float | None] = mapped_column(Float)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    model_id: Mapped[str | None] = mapped_column(String(40))
    # Training time estimated at submission (what a dry run answers); the job's eta until
    # its first steps are measured.
    estimated_seconds: Mapped[float | None] = mapped_column(Float)
    error_code: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    # The newest log point's step time, MFU and device memory, for GET /metrics only (they
    # are not part of the curve); written with the step by the worker's reporter.
    training_gauges: Mapped[dict[str, Any] | None]


class MetricRow(Base):
    """One point of a job's curve: exactly one row per (job, step)."""

    __tablename__ = "metrics"
    __table_args__ = (UniqueConstraint("job_id", "step", name="uq_metrics_job_step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    step: Mapped[int] = mapped_column(Integer)
    train_loss: Mapped[float | None] = mapped_column(Float)
    learning_rate: Mapped[float | None] = mapped_column(Float)
    grad_norm: Mapped[float | None] = mapped_column(Float)
    tokens_per_second: Mapped[float | None] = mapped_column(Float)
    tokens_seen: Mapped[int | None] = mapped_column(BigInteger)
    eval_loss: Mapped[float | None] = mapped_column(Float)
    perplexity: Mapped[float | None] = mapped_column(Float)
    accuracy: Mapped[float | None] = mapped_column(Float)
    # Metrics particular to a task (f1, precision, recall, nsp_accuracy, ...), by name.
    extra: Mapped[dict[str, Any] | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class EventRow(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_job_id_id", "job_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    level: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class WebhookDeliveryRow(Base):
    """One status change of a job to POST to its webhook (the outbox: written in the
    transaction that changes the status), with its last attempt's outcome."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (Index("ix_webhook_deliveries_due", "state", "next_attempt_at"),
                      Index("ix_webhook_deliveries_job_id_id", "job_id", "id"))

    # Ordered by creation (the sender keeps a job's deliveries in this order).
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # What receivers dedupe on (X-Cloze-Delivery); the same for every attempt.
    delivery_id: Mapped[str] = mapped_column(String(40), unique=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    event: Mapped[str] = mapped_column(String(32))
    # The exact bytes signed and sent (UTF-8 JSON), fixed when the status changed.
    body: Mapped[str] = mapped_column(Text)
    # pending, delivered or exhausted (service/domain/webhooks.py).
    state: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    last_attempt_at: Mapped[datetime | None]
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    # Whether the API that accepted the webhook let it reach private addresses (keys not
    # required on a loopback API, or CLOZE_WEBHOOK_ALLOW_PRIVATE): the API process that
    # sends it may run with other settings.
    private_ok: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class CheckpointRow(Base):
    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    step: Mapped[int] = mapped_column(Integer)
    storage_prefix: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    metrics: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class TokenizedRow(Base):
    """Token shards a pretraining job stored for a dataset and tokenizer (a cache that
    later jobs on the same data reuse), with their bytes: they count in the quota of the
    dataset's owner, and go with the dataset."""

    __tablename__ = "tokenized_data"

    prefix: Mapped[str] = mapped_column(String(512), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id", ondelete="CASCADE"),
                                            index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class AdmissionLockRow(Base):
    """One row per owner, locked by every step that admits work or removes what work reads
    (service/domain/admission.py): a job's or sweep's check and its insert, or a model's
    in-use check and its delete, are then one step, never two interleaved ones."""

    __tablename__ = "admission_locks"

    owner: Mapped[str] = mapped_column(String(64), primary_key=True)
    locked_at: Mapped[datetime] = mapped_column(default=utcnow)


class ModelRow(Base):
    __tablename__ = "models"
    # One model per checkpoint: publishing a step twice finds the first (final models have
    # no checkpoint_step, and NULLs never collide).
    __table_args__ = (Index("ix_models_job_checkpoint", "job_id", "checkpoint_step",
                            unique=True),)

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True, default=LOCAL_OWNER)
    name: Mapped[str] = mapped_column(String(255))
    job_id: Mapped[str | None] = mapped_column(String(40))
    # Set when the model was published from a checkpoint of job_id, not its final export.
    checkpoint_step: Mapped[int | None] = mapped_column(Integer)
    task: Mapped[str] = mapped_column(String(32))
    architecture: Mapped[str] = mapped_column(String(32))
    mask_token: Mapped[str | None] = mapped_column(String(32))
    storage_prefix: Mapped[str] = mapped_column(String(512))
    archive_key: Mapped[str] = mapped_column(String(512))
    bytes: Mapped[int] = mapped_column(BigInteger)
    details: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)


class ApiKeyRow(Base):
    """An API key: only its SHA-256 is stored; the secret is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True)
    name: Mapped[str] = mapped_column(String(255))
    prefix: Mapped[str] = mapped_column(String(16))
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    is_admin: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    revoked_at: Mapped[datetime | None]


class IdempotencyRow(Base):
    """The first answer to a create carrying an Idempotency-Key, replayed on retries."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("owner", "key", name="uq_idempotency_owner_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    owner: Mapped[str] = mapped_column(String(64))
    key: Mapped[str] = mapped_column(String(255))
    route: Mapped[str] = mapped_column(String(255))
    request_sha256: Mapped[str] = mapped_column(String(64))
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class ThroughputRow(Base):
    """A kind of worker's measured training speed for one architecture, objective (or
    fine-tuning task) and model size: what a dry run's time estimate is made from."""

    __tablename__ = "throughput"
    __table_args__ = (UniqueConstraint("worker_kind", "architecture", "objective",
                                       "parameters", name="uq_throughput_key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # The device as the worker describes it ("cuda NVIDIA H200", "cpu ... x2 threads").
    worker_kind: Mapped[str] = mapped_column(String(255))
    architecture: Mapped[str] = mapped_column(String(32))
    objective: Mapped[str] = mapped_column(String(32))
    parameters: Mapped[int] = mapped_column(BigInteger)
    # Tokens trained per second of the whole training loop (evals and checkpoints
    # included), a running mean over `jobs` measurements.
    tokens_per_second: Mapped[float] = mapped_column(Float)
    # Seconds of the job outside that loop (base model download and load, reading or
    # tokenizing the data, publishing the export), the same running mean: a short
    # fine-tune spends about as long on these as on training.
    setup_seconds: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    jobs: Mapped[int] = mapped_column(Integer, default=1)
    worker: Mapped[str] = mapped_column(String(255))  # the host that measured last
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class SweepRow(Base):
    """A hyperparameter sweep: its trials are jobs (sweep_trials); the Optuna study that
    proposes and prunes them is rebuilt from these rows, never stored (sweep_driver.py)."""

    __tablename__ = "sweeps"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64), index=True, default=LOCAL_OWNER)
    name: Mapped[str] = mapped_column(String(255))
    # A job status: running from submission, then succeeded, failed or cancelled.
    status: Mapped[str] = mapped_column(String(16), index=True)
    spec: Mapped[dict[str, Any]]
    # Trials made so far; bumped by a conditional UPDATE, so two drivers never both make
    # trial n.
    trials_started: Mapped[int] = mapped_column(Integer, default=0)
    best_job_id: Mapped[str | None] = mapped_column(String(40))
    best_value: Mapped[float | None] = mapped_column(Float)
    model_id: Mapped[str | None] = mapped_column(String(40))
    error_message: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(default=utcnow, index=True)
    finished_at: Mapped[datetime | None]


class SweepTrialRow(Base):
    """Trial `number` of a sweep: the job that trains it and the values it was given."""

    __tablename__ = "sweep_trials"
    __table_args__ = (UniqueConstraint("sweep_id", "number", name="uq_sweep_trials_number"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sweep_id: Mapped[str] = mapped_column(ForeignKey("sweeps.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"),
                                        unique=True)
    params: Mapped[dict[str, Any]]
    # Stopped by the pruner at `pruned_step` (its job is then cancelled).
    pruned: Mapped[bool] = mapped_column(Boolean, default=False)
    pruned_step: Mapped[int | None] = mapped_column(Integer)


class EvaluationCellRow(Base):
    """A finished cell of an evaluate job (a task of its suite, trained one way: the model,
    the model to compare, random init or the baseline) with its test scores; the job's
    table is made from them (jobspec/evaluation.py), and a resumed job skips them."""

    __tablename__ = "evaluation_cells"
    __table_args__ = (UniqueConstraint("job_id", "task_index", "variant",
                                       name="uq_evaluation_cells_job_task_variant"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    task_index: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(32))
    metrics: Mapped[dict[str, Any]]
    steps: Mapped[int | None] = mapped_column(Integer)
    seconds: Mapped[float] = mapped_column(Float)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
