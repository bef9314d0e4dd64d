"""Evaluate jobs: "did pretraining pay?", answered by the service.

One job takes a model (and optionally a second to compare with) and a suite of tasks. For
each task it fine-tunes the model with the fine-tuning defaults ("auto"), fine-tunes the
same architecture from random initialisation with the same budget, and trains a simple
baseline (TF-IDF + logistic regression; the most frequent tag for tagging; the training
mean for regression), each scored on the task's test split. Each of those is a *cell*
(task, variant); the worker records a cell as soon as it is done, so a resumed job skips
the finished ones. The table below is made from the cells, here, for every reader (the
job's API answer, the dashboard, `cloze jobs show`, the model card).

Pydantic only, like the rest of jobspec/.
"""

import math
from typing import Any, Literal

from pydantic import BaseModel, Field

from jobspec.common import Strict
from jobspec.finetune import Columns, FinetuneHyperparameters, columns_inconsistency
from jobspec.names import Name
from jobspec.resources import DEFAULT_PRIORITY, Priority, ResourcesSpec
from jobspec.webhook import WebhookSpec

TaskName = Literal["text_classification", "token_classification", "regression",
                   "multi_label_classification", "question_answering"]
MAX_SUITE_TASKS = 20
# The suite built from the caller's own datasets: every one whose records have labels
# (service/domain/jobs.py resolves it at submission; the stored spec lists the tasks).
UPLOADED = "uploaded"

# The variants of each task, in the order a worker trains them (the baseline first: it
# takes seconds, and a table with one column filled says early what to expect).
BASELINE, MODEL, COMPARE_MODEL, RANDOM_INIT = "baseline", "model", "compare_model", \
    "random_init"
VARIANTS = (BASELINE, MODEL, COMPARE_MODEL, RANDOM_INIT)

# The test metric a task is judged by (what its benchmarks report first), higher better.
# Entity tagging (BIO tags) is judged by entity F1, as CoNLL is; other tags by accuracy.
HEADLINE = {"text_classification": "accuracy", "token_classification": "accuracy",
            "regression": "pearson", "multi_label_classification": "micro_f1",
            "question_answering": "f1"}
ENTITY_HEADLINE = "f1"
# Differences smaller than this are a tie ("="): one seed, test sets of a few hundred.
TIE = 0.005
# What each task's baseline is, as the table names it (None: the task has none).
BASELINE_NAMES = {"text_classification": "TF-IDF + logistic regression",
                  "token_classification": "most frequent tag per word",
                  "regression": "training mean",
                  "multi_label_classification": "TF-IDF + logistic regression per label",
                  "question_answering": None}


class SuiteTask(Strict):
    """One task of a suite: a labelled dataset (with its own validation and test files if it
    comes split) read as a fine-tuning job of this task would read it."""

    task: TaskName
    dataset_id: str = Field(min_length=1, max_length=64)
    validation_dataset_id: str | None = Field(default=None, min_length=1, max_length=64)
    test_dataset_id: str | None = Field(default=None, min_length=1, max_length=64)
    columns: Columns = None
    # Shown in the table; by default the dataset's name.
    name: Name | None = None


class EvaluateSpec(Strict):
    type: Literal["evaluate"]
    name: Name | None = None
    model_id: str = Field(min_length=1, max_length=64)
    # A second model fine-tuned the same way on every task, in a column of its own.
    compare_model_id: str | None = Field(default=None, min_length=1, max_length=64)
    # The tasks, or "uploaded": one task per dataset of yours that holds labels.
    suite: list[SuiteTask] | Literal["uploaded"] = Field(min_length=1,
                                                         max_length=MAX_SUITE_TASKS)
    # For every fine-tune of the job (the model's, the comparison's, random init's): the
    # defaults ("auto" epochs and learning rate) unless given.
    hyperparameters: FinetuneHyperparameters = Field(default_factory=FinetuneHyperparameters)
    # Leave out the random-initialisation fine-tunes (half the job's time).
    random_init: bool = True
    # resources.processes: how many of the job's fine-tunes run at once, each in its own
    # process on the worker's machine (the CPU's cores or the GPU shared among them).
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    priority: Priority = DEFAULT_PRIORITY
    webhook: WebhookSpec | None = None

    def stored_spec(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @property
    def tasks(self) -> list[SuiteTask]:
        """The suite's tasks (a stored spec always lists them: "uploaded" is resolved at
        submission)."""
        if isinstance(self.suite, str):
            raise ValueError('an "uploaded" suite is resolved at submission')
        return self.suite

    @property
    def dataset_id(self) -> str:
        """The job row's dataset: the suite's first task's."""
        return self.tasks[0].dataset_id

    def variants(self) -> list[str]:
        """The variants each task trains, in order."""
        return [v for v in VARIANTS if (v != COMPARE_MODEL or self.compare_model_id)
                and (v != RANDOM_INIT or self.random_init)]

    def inconsistency(self) -> tuple[str, str] | None:
        if self.resources.strategy != "ddp":
            return ("resources.strategy", "an evaluate job runs each fine-tune in one "
                    "process; resources.processes is how many run at once")
        if self.compare_model_id is not None and self.compare_model_id == self.model_id:
            return "compare_model_id", "compare_model_id is the model itself"
        if isinstance(self.suite, list):
            seen: set[tuple[Any, ...]] = set()
            for i, task in enumerate(self.suite):
                if (problem := columns_inconsistency(task.columns)) is not None:
                    return f"suite.{i}.{problem[0]}", problem[1]
                key = (task.task, task.dataset_id, task.validation_dataset_id,
                       task.test_dataset_id, tuple(sorted((task.columns or {}).items())))
                if key in seen:
                    return f"suite.{i}", "the same task on the same data is already in the suite"
                seen.add(key)
        return None


def finetune_spec(spec: EvaluateSpec, index: int) -> dict[str, Any]:
    """The fine-tuning job spec (its JSON form) each fine-tune of task `index` runs, the
    model's, the comparison's and random init's alike (base_model_id: the model's; the
    worker starts each variant from its own)."""
    task = spec.tasks[index]
    return {"type": "finetune", "task": task.task, "base_model_id": spec.model_id,
            "dataset_id": task.dataset_id,
            **{k: v for k, v in (("validation_dataset_id", task.validation_dataset_id),
                                 ("test_dataset_id", task.test_dataset_id),
                                 ("columns", task.columns)) if v is not None},
            "hyperparameters": spec.hyperparameters.model_dump(mode="json"),
            # Only the final weights are scored: a checkpoint per epoch would be storage
            # for nothing (a resumed job redoes an unfinished fine-tune from its start).
            **dict(checkpoint_every=10**9, keep_checkpoints=1)}


def headline(task: str, scores: dict[str, Any]) -> str:
    """The metric a task's row shows (HEADLINE; entity F1 for entity tags)."""
    if task == "token_classification" and ENTITY_HEADLINE in scores:
        return ENTITY_HEADLINE
    return HEADLINE[task]


class Cell(BaseModel):
    """A finished (task, variant): its test scores, as the worker recorded them."""

    task_index: int
    variant: str
    metrics: dict[str, float]
    steps: int | None = None  # fine-tunes only
    seconds: float


class Row(BaseModel):
    """One task's line of the table; a score is None while its cell is not done."""

    task: str  # the suite task's name
    task_type: str
    dataset_id: str
    metric: str
    model: float | None
    compare_model: float | None = None
    random_init: float | None = None
    baseline: float | None = None
    baseline_name: str | None = None
    # model - random init (did pretraining pay?), and its sign: "+", "-", or "=" (a tie).
    difference: float | None = None
    sign: Literal["+", "-", "="] | None = None
    # model - compare model, when a model to compare with was given.
    compare_difference: float | None = None
    compare_sign: Literal["+", "-", "="] | None = None
    # Each finished cell's cost, by variant: its optimizer steps (fine-tunes) and seconds.
    steps: dict[str, int] = Field(default_factory=dict)
    seconds: dict[str, float] = Field(default_factory=dict)


class Table(BaseModel):
    rows: list[Row]
    cells_done: int
    cells_total: int
    tie: float = TIE


def sign(difference: float) -> Literal["+", "-", "="]:
    return "=" if abs(difference) < TIE else "+" if difference > 0 else "-"


def _score(metrics: dict[str, float] | None, metric: str) -> float | None:
    value = (metrics or {}).get(metric)
    return value if value is not None and math.isfinite(value) else None


def task_names(spec: EvaluateSpec) -> list[str]:
    """Each task's name as the table and the events show it (admission fills in the
    dataset's name; a spec written without one shows the dataset's id)."""
    return [t.name or t.dataset_id for t in spec.tasks]


def table(spec: EvaluateSpec, cells: list[Cell]) -> Table:
    """The table from the cells done so far."""
    names = task_names(spec)
    done = {(c.task_index, c.variant): c for c in cells}
    rows = []
    for i, task in enumerate(spec.tasks):
        found = {v: done[(i, v)].metrics for v in VARIANTS if (i, v) in done}
        metric = headline(task.task, found.get(MODEL) or found.get(RANDOM_INIT) or {})
        score = {v: _score(found.get(v), metric) for v in VARIANTS}
        row = Row(task=names[i], task_type=task.task, dataset_id=task.dataset_id,
                  metric=metric, model=score[MODEL], compare_model=score[COMPARE_MODEL],
                  random_init=score[RANDOM_INIT], baseline=score[BASELINE],
                  baseline_name=BASELINE_NAMES[task.task],
                  steps={v: c.steps for v in VARIANTS if (c := done.get((i, v)))
                         and c.steps is not None},
                  seconds={v: c.seconds for v in VARIANTS if (c := done.get((i, v)))})
        if row.model is not None and row.random_init is not None:
            row.difference = row.model - row.random_init
            row.sign = sign(row.difference)
        if row.model is not None and row.compare_model is not None:
            row.compare_difference = row.model - row.compare_model
            row.compare_sign = sign(row.compare_difference)
        rows.append(row)
    return Table(rows=rows, cells_done=len(done),
                 cells_total=len(spec.tasks) * len(spec.variants()))


def markdown(result: Table, *, compare: bool) -> str:
    """The table as Markdown (the model card's section)."""
    def cell(value: float | None) -> str:
        return "" if value is None else f"{value:.4f}"

    def diff(value: float | None, mark: str | None) -> str:
        return "" if value is None else f"{value:+.4f} ({mark})"

    head = ["task", "metric", "model", *(["compare model"] if compare else []), "random init",
            "baseline", "model - random init", *(["model - compare"] if compare else [])]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * 2 + "---:|" * (len(head) - 2)]
    for row in result.rows:
        baseline = f"{cell(row.baseline)} ({row.baseline_name})" \
            if row.baseline is not None else ""
        values = [row.task, row.metric, cell(row.model),
                  *([cell(row.compare_model)] if compare else []), cell(row.random_init),
                  baseline, diff(row.difference, row.sign),
                  *([diff(row.compare_difference, row.compare_sign)] if compare else [])]
        lines.append("| " + " | ".join(v.replace("|", "\\|") for v in values) + " |")
    return "\n".join(lines) + "\n"
