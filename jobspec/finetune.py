"""Fine-tuning jobs: a task on labelled data, from a base model."""

import math
from typing import Annotated, Any, Literal

from pydantic import Field, PlainValidator, StringConstraints, WithJsonSchema

from jobspec.common import KEEP_CHECKPOINTS, EarlyStopping, Finite, Seed, Strict
from jobspec.formats import (
    EXTRACTIVE_QA,
    LABELLED_TEXT,
    MAX_COLUMN_NAME_CHARS,
    MAX_LABEL_CHARS,
    MAX_LABELS,
    MULTI_LABELLED_TEXT,
    ROLES,
    TAGGED_TOKENS,
)
from jobspec.model_facts import FINETUNE_TASKS
from jobspec.names import Name
from jobspec.resources import (
    DEFAULT_PRIORITY,
    Priority,
    ResourcesSpec,
    batch_inconsistency,
    resources_inconsistency,
)
from jobspec.webhook import WebhookSpec


def auto_or(kind: type[int] | type[float], *, le: float, gt: float | None = None,
            ge: float | None = None) -> tuple[PlainValidator, WithJsonSchema]:
    """Field metadata: a number in range (strictly: no booleans, no strings) or "auto".

    One validator rather than a union, so an error's location is the field itself
    ("hyperparameters.epochs", not "hyperparameters.epochs.constrained-int"), in the API's
    answer as in parse_spec's.
    """
    integer = kind is int
    low = f"greater than {gt}" if gt is not None else f"at least {ge}"
    rule = f'must be {"an integer" if integer else "a number"} {low} and at most {le}, ' \
           'or "auto"'

    def check(value: Any) -> int | float | str:
        if isinstance(value, str) and value == "auto":
            return value
        if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
                or not math.isfinite(value) or value > le or \
                (gt is not None and value <= gt) or (ge is not None and value < ge):
            raise ValueError(rule)
        return kind(value)

    number: dict[str, Any] = {"type": "integer" if integer else "number", "maximum": le}
    if gt is not None:
        number["exclusiveMinimum"] = gt
    if ge is not None:
        number["minimum"] = ge
    return PlainValidator(check), WithJsonSchema({"anyOf": [number, {"const": "auto"}]})


# A label or tag, as a dataset may hold them (jobspec/formats.py).
Label = Annotated[str, StringConstraints(min_length=1, max_length=MAX_LABEL_CHARS)]
# A table's column, as a job's "columns" names it.
ColumnName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_COLUMN_NAME_CHARS)]
# Tables (CSV, TSV, Parquet): the column each field of a record is read from, by its role
# (jobspec/formats.py ROLES: "text", "text_pair", "label", ...). A role left out is read from
# the column named for it ("text", "sentence", "label", ...: formats.ROLE_NAMES).
Columns = Annotated[dict[str, ColumnName] | None,
                    Field(default=None, max_length=32, examples=[
                        {"text": "sentence1", "text_pair": "sentence2", "label": "gold_label"}])]


def columns_inconsistency(columns: dict[str, str] | None, roles: list[str] | None = None
                          ) -> tuple[str, str] | None:
    """(param, message) if `columns` names a role that is not one (of `roles`, by default
    every role) or reads two roles from one column."""
    allowed = ROLES if roles is None else roles
    read: dict[str, str] = {}
    for role, column in (columns or {}).items():
        if role not in allowed:
            return f"columns.{role}", f"{role!r} is not a role here; use {', '.join(allowed)}"
        if column in read:
            return f"columns.{role}", f"column {column!r} is already read as {read[column]!r}"
        read[column] = role
    return None

# The dataset kind each task reads. Texts may come in pairs ("text_pair") for the three
# sequence tasks; regression reads a number in "label".
FINETUNE_DATA = {"text_classification": LABELLED_TEXT, "token_classification": TAGGED_TOKENS,
                 "regression": LABELLED_TEXT, "multi_label_classification": MULTI_LABELLED_TEXT,
                 "question_answering": EXTRACTIVE_QA}


# "auto" hyperparameters are resolved by the engine once it has the base model and the data
# (the job's events say what they became; the stored spec keeps "auto"). The values were
# measured with models pretrained here (bench/README.md, "Fine-tuning quality").
AUTO_EPOCHS = 3
# Small training sets get more epochs, up to this many optimizer steps...
AUTO_MIN_STEPS = 150
# ...and large ones fewer (never less than one epoch) beyond this many.
AUTO_MAX_STEPS = 1000
# Peak learning rate by the base model's hidden size (the first row at or above it): BERT's
# 5e-5 is for BERT-base; small models pretrained briefly need far larger steps.
AUTO_LEARNING_RATES: tuple[tuple[int, float], ...] = (
    (128, 1e-3), (256, 5e-4), (512, 2e-4), (768, 1e-4))
AUTO_LEARNING_RATE_LARGER = 5e-5


def auto_learning_rate(hidden_size: int) -> float:
    """The "auto" learning rate for a base model of this hidden size."""
    for width, rate in AUTO_LEARNING_RATES:
        if hidden_size <= width:
            return rate
    return AUTO_LEARNING_RATE_LARGER


def auto_steps(train_examples: int, batch_size: int) -> int:
    """The "auto" number of optimizer steps: AUTO_EPOCHS epochs, raised to AUTO_MIN_STEPS
    for small training sets and cut to AUTO_MAX_STEPS (but one epoch at least) for large."""
    per_epoch = -(-train_examples // batch_size)
    return max(min(AUTO_EPOCHS * per_epoch, max(AUTO_MAX_STEPS, per_epoch)), AUTO_MIN_STEPS)


class FinetuneHyperparameters(Strict):
    # "auto": AUTO_EPOCHS, with at least AUTO_MIN_STEPS and at most AUTO_MAX_STEPS steps
    # (auto_steps).
    epochs: Annotated[int | Literal["auto"], *auto_or(int, ge=1, le=1000)] = "auto"
    # Stops after this many steps even if the epochs are not done.
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    # "auto": by the base model's hidden size (auto_learning_rate).
    learning_rate: Annotated[float | Literal["auto"], *auto_or(float, gt=0, le=1.0)] = "auto"
    sequence_length: int = Field(default=256, ge=8, le=8192)
    warmup_ratio: Finite = Field(default=0.1, ge=0, lt=1.0)
    weight_decay: Finite = Field(default=0.01, ge=0, le=1.0)
    max_grad_norm: Finite = Field(default=1.0, gt=0)
    seed: Seed = 0
    # Hidden and attention dropout; None keeps the base model's (ours pretrain with 0).
    dropout: Finite | None = Field(default=None, ge=0, lt=1.0)
    # "auto": bf16 autocast where the device has native bf16, as in pretraining.
    precision: Literal["auto", "fp32", "bf16"] = "auto"

    def steps_per_epoch(self, train_examples: int) -> int:
        return max(1, -(-train_examples // self.batch_size))

    def total_steps(self, train_examples: int) -> int:
        """max_steps, else the epochs' steps ("auto": auto_steps)."""
        if self.max_steps is not None:
            return self.max_steps
        if self.epochs == "auto":
            return auto_steps(train_examples, self.batch_size)
        return self.epochs * self.steps_per_epoch(train_examples)

    def resolve(self, train_examples: int, hidden_size: int) -> tuple[int, float, list[str]]:
        """The run's optimizer steps and peak learning rate, and what "auto" chose, said for
        the job's events (the engine's every fine-tuning task reads it; the dry run reads
        total_steps)."""
        total, notes = self.total_steps(train_examples), []
        if self.max_steps is None and self.epochs == "auto":
            notes.append(f"epochs auto: {total} steps "
                         f"({total / self.steps_per_epoch(train_examples):.2f} epochs)")
        if self.learning_rate == "auto":
            learning_rate = auto_learning_rate(hidden_size)
            notes.append(f"learning_rate auto: {learning_rate:g} (hidden size {hidden_size})")
        else:
            learning_rate = float(self.learning_rate)
        return total, learning_rate, notes


class AdapterSpec(Strict):
    """Parameter-efficient fine-tuning; the export is merged, so plain transformers loads it.

    "lora": adapters of rank r. "adalora" (AdaLoRA, peft): adapters start at rank init_r
    (default 1.5 x r) and are pruned during training to an average rank of r, the budget
    going to the weights that matter most; the first tenth of the steps only trains, the
    last fifth trains the final ranks."""

    type: Literal["lora", "adalora"] = "lora"
    r: int = Field(default=8, ge=1, le=256)
    alpha: Finite = Field(default=16.0, gt=0, le=4096)
    dropout: Finite = Field(default=0.05, ge=0, lt=1.0)
    init_r: int | None = Field(default=None, ge=1, le=384)  # adalora only


class FinetuneSpec(Strict):
    type: Literal["finetune"] = "finetune"
    # Text classification reads "text" (and "text_pair") with a "label"; regression a number
    # in "label"; multi-label classification a list in "labels".
    task: Literal["text_classification", "token_classification", "regression",
                  "multi_label_classification", "question_answering"]
    name: Name | None = None
    base_model_id: str = Field(min_length=1, max_length=64)
    dataset_id: str = Field(min_length=1, max_length=64)
    # Optional separate files for the validation and test splits (e.g. CoNLL train/dev/test).
    validation_dataset_id: str | None = Field(default=None, min_length=1, max_length=64)
    test_dataset_id: str | None = Field(default=None, min_length=1, max_length=64)
    columns: Columns = None
    # The label (or tag) set; by default the one found in the data.
    labels: list[Label] | None = Field(default=None, min_length=2, max_length=MAX_LABELS)
    validation_fraction: Finite = Field(default=0.1, gt=0, le=0.5)
    hyperparameters: FinetuneHyperparameters = Field(default_factory=FinetuneHyperparameters)
    adapter: AdapterSpec | None = None
    log_every: int = Field(default=10, ge=1)
    eval_every: int | None = Field(default=None, ge=1)  # None: once per epoch
    checkpoint_every: int | None = Field(default=None, ge=1)  # None: once per epoch
    # Checkpoints kept in storage: the newest N (older ones are deleted as new ones land);
    # null keeps every one (they count against the owner's storage).
    keep_checkpoints: int | None = Field(default=KEEP_CHECKPOINTS, ge=1, le=10_000)
    # Which workers may take the job (resources.device) and its place among the jobs
    # waiting for them (priority: higher first).
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    priority: Priority = DEFAULT_PRIORITY
    early_stopping: EarlyStopping | None = None
    # Status changes are POSTed here, signed (service/webhook_sender.py).
    webhook: WebhookSpec | None = None

    @property
    def pipeline_task(self) -> str:
        """The transformers pipeline task the export is for (jobspec/model_facts.py)."""
        return FINETUNE_TASKS[self.task]

    def stored_spec(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def inconsistency(self) -> tuple[str, str] | None:
        if (problem := resources_inconsistency(self.resources)) is not None:
            return problem
        if (problem := batch_inconsistency(self.resources,
                                           self.hyperparameters.batch_size)) is not None:
            return problem
        if (problem := columns_inconsistency(self.columns)) is not None:
            return problem
        if self.adapter is not None and self.adapter.init_r is not None:
            if self.adapter.type != "adalora":
                return "adapter.init_r", 'init_r is for "type": "adalora" only'
            if self.adapter.init_r < self.adapter.r:
                return "adapter.init_r", "init_r (the starting rank) must be at least r (the " \
                                         "average rank AdaLoRA prunes to)"
        if self.labels is not None:
            if self.task == "regression":
                return "labels", "regression predicts a number: it takes no labels"
            if self.task == "question_answering":
                return "labels", "question_answering predicts spans of the context: it takes " \
                                 "no labels"
            if len(set(self.labels)) != len(self.labels):
                return "labels", "labels must be distinct"
            if any(not label.strip() for label in self.labels):
                return "labels", "labels must not be blank"
        return None
