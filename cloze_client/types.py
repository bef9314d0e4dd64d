"""The API's resources as typed dictionaries: what the JSON holds, checked by mypy and
still plain dicts (json.dumps, indexing) for scripts."""

from typing import Any, Literal, NotRequired, TypedDict

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled", "paused"]
TERMINAL: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


class Dataset(TypedDict):
    id: str
    object: Literal["dataset"]
    name: str
    format: str
    bytes: int
    sha256: str
    documents: int
    kind: str
    labels: list[str] | None
    splits: dict[str, int] | None
    columns: int | None
    tag_column: int | None
    column_samples: list[list[str]] | None
    fields: NotRequired[list[dict[str, str]] | None]  # tables: column names and types
    created_at: str


class DatasetPreview(TypedDict):
    """GET /v1/datasets/{id}/preview: the first records and, per column, its type, role,
    empty cells, text-length histogram ("lengths") and label counts ("labels")."""

    object: Literal["dataset.preview"]
    dataset_id: str
    format: str
    kind: str
    rows: int | None
    records: list[dict[str, Any]]
    columns: list[dict[str, Any]]
    truncated: bool


class Progress(TypedDict):
    step: int
    total_steps: int
    tokens_seen: int
    tokens_per_second: float | None
    eta_seconds: float | None


class JobError(TypedDict):
    code: str
    message: str


class EvaluationRow(TypedDict):
    """One task of an evaluate job's table: each way of training it scored on the task's
    test split by `metric` (None while that cell is not done). jobspec/evaluation.py's Row,
    which the client cannot import (tests/test_evaluation_views.py checks they match)."""

    task: str
    task_type: str
    dataset_id: str
    metric: str
    model: float | None
    compare_model: float | None
    random_init: float | None
    baseline: float | None
    baseline_name: str | None
    # model - random init (did pretraining pay?), "+", "-" or "=" (closer than `tie`).
    difference: float | None
    sign: Literal["+", "-", "="] | None
    compare_difference: float | None
    compare_sign: Literal["+", "-", "="] | None
    # Each finished cell's cost, by variant: optimizer steps (fine-tunes) and seconds.
    steps: dict[str, int]
    seconds: dict[str, float]


class Evaluation(TypedDict):
    """An evaluate job's table (jobspec/evaluation.py's Table), filled in as cells finish."""

    rows: list[EvaluationRow]
    cells_done: int
    cells_total: int
    tie: float


class Job(TypedDict):
    id: str
    object: Literal["job"]
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
    pause_requested: NotRequired[bool]
    error: JobError | None
    # Queued and no live worker serves its queue: why it waits (else None).
    waiting_reason: NotRequired[str | None]
    created_at: str
    started_at: str | None
    finished_at: str | None
    # An evaluate job's table; None for the other types.
    evaluation: NotRequired[Evaluation | None]


class MetricPoint(TypedDict):
    """One logged step; only the fields measured at that step are present (and task
    metrics such as f1 as further keys). The fields are the columns of jobspec/metrics.py's
    table, which the client cannot import (tests/test_project.py checks they match)."""

    step: int
    train_loss: NotRequired[float]
    learning_rate: NotRequired[float]
    grad_norm: NotRequired[float]
    tokens_per_second: NotRequired[float]
    tokens_seen: NotRequired[int]
    eval_loss: NotRequired[float]
    perplexity: NotRequired[float]
    accuracy: NotRequired[float]


class EstimateData(TypedDict):
    """What a job would read. source: "tokenized" (exact: an earlier job made its token
    shards), "estimated" (from a sample of the text) or "records" (a labelled dataset's
    record counts); a figure that could not be worked out is None."""

    source: Literal["tokenized", "estimated", "records"]
    documents: int
    tokens: int | None
    vocab_size: int | None
    train_blocks: int | None
    validation_blocks: int | None
    train_examples: int | None
    validation_examples: int | None
    labels: int | None


class EstimateTime(TypedDict):
    seconds: float
    tokens: int  # the tokens the training steps go through
    tokens_per_second: float
    # "measured" on this model size, "scaled" from another measured size, or "default".
    source: Literal["measured", "scaled", "default"]
    worker_kind: str | None


class JobEstimate(TypedDict):
    """What a job would do (POST /v1/jobs?dry_run=true); nothing is created."""

    object: Literal["job_estimate"]
    dry_run: Literal[True]
    type: str
    name: str
    spec: dict[str, Any]
    steps: int
    epochs: float | None
    parameters: int | None
    memory_bytes: int | None
    data: EstimateData
    time: EstimateTime | None


class Event(TypedDict):
    id: int
    level: str
    message: str
    created_at: str


class Model(TypedDict):
    id: str
    object: Literal["model"]
    name: str
    job_id: str | None
    checkpoint_step: int | None
    task: str
    architecture: str
    mask_token: str | None
    bytes: int
    details: dict[str, Any]
    created_at: str


class FillMaskResult(TypedDict):
    score: float
    token: int
    token_str: str
    sequence: str


class Trial(TypedDict):
    """One trial of a sweep: a job of its own with the hyperparameters it was given."""

    number: int
    job_id: str
    params: dict[str, Any]
    status: JobStatus
    pruned: bool
    pruned_step: int | None
    step: int
    # What the trial scored (its model's eval; None until it succeeded) and its best eval.
    value: float | None
    best_metric: float | None


class Sweep(TypedDict):
    id: str
    object: Literal["sweep"]
    name: str
    status: JobStatus
    spec: dict[str, Any]
    trials_started: int
    trials: list[Trial]
    best_job_id: str | None
    best_value: float | None
    # The best trial's model, published as the sweep's once every trial has ended.
    model_id: str | None
    error: JobError | None
    created_at: str
    finished_at: str | None
