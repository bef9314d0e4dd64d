"""The metrics a job reports, in one table, and the two kinds of point that carry them.

A metric's name is its key everywhere: in the points the training loop reports, in the
database (a column of MetricRow, or a key of its `extra`), in GET /v1/jobs/{id}/metrics and
the job stream, in the dashboard. The training loop (workers/engine/loop.py) produces
TrainPoint and EvalPoint; the worker's reporter and service/domain/attempts.py store them;
the SVG and TensorBoard downloads (service/api/plots.py), the API's MetricPoint and the
dashboard's pages (the table is embedded in their shell page) read METRICS. cloze_client
installs without this package: it keeps its own names, tested against this table.

Adding a metric: a line in METRICS, and its key in the point that reports it. It is stored
in MetricRow.extra (JSON) and shown by the API with no migration; only one given a column of
its own (column=True: MetricRow, the API's MetricPoint and a migration) needs more.

Only stdlib and pydantic here (the rule of jobspec/).
"""

from dataclasses import asdict, dataclass
from typing import Any, Final, Literal, NotRequired, Required, TypedDict, cast

Side = Literal["train", "eval"]

# The two names code needs by name (the losses the job row keeps, what early stopping and
# sweeps watch by default); the others are read from the table.
TRAIN_LOSS: Final = "train_loss"
EVAL_LOSS: Final = "eval_loss"


@dataclass(frozen=True)
class Metric:
    name: str
    side: Side  # "train": in every log point; "eval": in the held-out evaluations
    tag: str  # its TensorBoard scalar tag
    label: str  # its name on a chart or in a table
    unit: str  # a chart's axis: what its values count ("" for a plain number)
    color: str = ""  # its line where a chart draws it by itself ("" lets the chart choose)
    column: bool = False  # a column of MetricRow (else a key of MetricRow.extra)


METRICS: tuple[Metric, ...] = (
    Metric(TRAIN_LOSS, "train", "train/loss", "train loss", "", "#1f77b4", column=True),
    Metric("learning_rate", "train", "train/learning_rate", "learning rate", "", "#2ca02c",
           column=True),
    Metric("grad_norm", "train", "train/grad_norm", "gradient norm", "", column=True),
    Metric("tokens_per_second", "train", "train/tokens_per_second", "tokens/s", "tokens/s",
           "#9467bd", column=True),
    Metric("tokens_seen", "train", "train/tokens_seen", "tokens seen", "tokens", column=True),
    # Model FLOP utilization (0-1), on CUDA GPUs of known peak FLOP/s. Its tag is the one
    # names outside the table used to get (eval/<name>): what TensorBoard files already
    # hold; train/mfu would be right, a change to make on purpose.
    Metric("mfu", "train", "eval/mfu", "MFU", ""),
    Metric(EVAL_LOSS, "eval", "eval/loss", "eval loss", "", "#ff7f0e", column=True),
    Metric("perplexity", "eval", "eval/perplexity", "perplexity", "", column=True),
    Metric("accuracy", "eval", "eval/accuracy", "accuracy", "", column=True),
    # The NSP objective's two losses (eval_loss is their sum) and its pair accuracy.
    Metric("mlm_loss", "eval", "eval/mlm_loss", "MLM loss", ""),
    Metric("nsp_loss", "eval", "eval/nsp_loss", "NSP loss", ""),
    Metric("nsp_accuracy", "eval", "eval/nsp_accuracy", "NSP accuracy", ""),
    # Fine-tuning: macro-F1 (text classification) or entity F1 with its precision and
    # recall (BIO tagging).
    Metric("f1", "eval", "eval/f1", "F1", ""),
    Metric("precision", "eval", "eval/precision", "precision", ""),
    Metric("recall", "eval", "eval/recall", "recall", ""),
    # Extractive QA: SQuAD's exact match (its F1 is "f1"), as fractions, not percentages.
    Metric("exact_match", "eval", "eval/exact_match", "exact match", ""),
    # Regression: mean squared error and the correlations of predictions with the gold
    # numbers (GLUE's STS-B reports Pearson and Spearman).
    Metric("mse", "eval", "eval/mse", "MSE", ""),
    Metric("pearson", "eval", "eval/pearson", "Pearson r", ""),
    Metric("spearman", "eval", "eval/spearman", "Spearman rho", ""),
    # Multi-label: F1 over every (example, label) decision and the mean of per-label F1s,
    # at the decision threshold with the best validation micro-F1 (reported with them).
    Metric("micro_f1", "eval", "eval/micro_f1", "micro-F1", ""),
    Metric("macro_f1", "eval", "eval/macro_f1", "macro-F1", ""),
    Metric("threshold", "eval", "eval/threshold", "decision threshold", ""),
)

BY_NAME: dict[str, Metric] = {m.name: m for m in METRICS}


def columns(side: Side) -> tuple[str, ...]:
    """The side's metrics that MetricRow keeps in columns, in the table's order."""
    return tuple(m.name for m in METRICS if m.side == side and m.column)


def tag(name: str) -> str:
    """TensorBoard's tag for a metric; a name outside the table (an objective's or task's
    own) goes under eval/ by its name."""
    metric = BY_NAME.get(name)
    return metric.tag if metric is not None else f"eval/{name}"


def minimized(name: str) -> bool:
    """Whether lower is better: losses, perplexity and mean squared error; every other
    metric is maximized (early stopping's and sweeps' default direction)."""
    return "loss" in name or name in ("perplexity", "mse")


def table() -> list[dict[str, Any]]:
    """The table as JSON, for the dashboard's pages."""
    return [asdict(m) for m in METRICS]


class TrainPoint(TypedDict):
    """A log point (every log_every steps): means over the steps since the previous one."""

    step: int
    total_steps: int
    train_loss: float
    learning_rate: float
    grad_norm: float
    tokens_per_second: float
    tokens_seen: int
    mfu: NotRequired[float]


class EvalPoint(TypedDict, total=False):
    """A held-out evaluation: eval_loss always, and the objective's or task's own metrics
    (those of the table's eval side; a task may add more, kept by name)."""

    step: Required[int]
    eval_loss: Required[float]
    perplexity: float
    accuracy: float
    mlm_loss: float
    nsp_loss: float
    nsp_accuracy: float
    f1: float
    precision: float
    recall: float
    exact_match: float
    mse: float
    pearson: float
    spearman: float
    micro_f1: float
    macro_f1: float
    threshold: float
    # Fill-mask probes of the model at this step (jobspec's probes), stored with the point.
    probes: list[dict[str, Any]]


def eval_point(values: dict[str, Any]) -> EvalPoint:
    """An evaluation as the loop holds it (a dict: an objective reports its own names) as
    the EvalPoint it is, once it has its step and eval_loss."""
    if "step" not in values or EVAL_LOSS not in values:
        raise ValueError(f"an evaluation needs a step and {EVAL_LOSS}: {sorted(values)}")
    return cast(EvalPoint, values)
