"""Typed, validated configuration for a fine-tuning run, built from the job's JSON spec."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from workers.engine.config import PRECISIONS, _choice, _float, _int, _known, _section
from workers.engine.errors import ConfigError

TASKS = ("text_classification", "token_classification")
# The transformers pipeline task each of ours exports for.
PIPELINE_TASKS = {"text_classification": "text-classification",
                  "token_classification": "token-classification"}


@dataclass(frozen=True)
class FinetuneHyperparameters:
    """Optimisation settings; max_steps, when set, replaces epochs as the length of the run."""

    epochs: int = 3
    max_steps: int | None = None
    batch_size: int = 32
    learning_rate: float = 5e-5
    sequence_length: int = 256
    warmup_ratio: float = 0.1
    weight_decay: float = 0.01
    seed: int = 0
    max_grad_norm: float = 1.0
    # Hidden and attention dropout; None keeps the base model's (ours pretrain with 0).
    dropout: float | None = None
    # "auto" = bf16 autocast where the device has native bf16, as in pretraining.
    precision: str = "auto"

    def __post_init__(self) -> None:
        _int("hyperparameters.epochs", self.epochs, 1)
        if self.max_steps is not None:
            _int("hyperparameters.max_steps", self.max_steps, 1)
        _int("hyperparameters.batch_size", self.batch_size, 1)
        _int("hyperparameters.sequence_length", self.sequence_length, 3)  # [CLS] x [SEP]
        if _int("hyperparameters.seed", self.seed, 0) >= 2**32:
            raise ConfigError(f"hyperparameters.seed must be below 2**32, got {self.seed}")
        floats = {"learning_rate": (0.0, 1.0, True), "warmup_ratio": (0.0, 1.0, False),
                  "weight_decay": (0.0, 1.0, False), "max_grad_norm": (0.0, float("inf"), True)}
        for name, (low, high, open_low) in floats.items():
            value = _float(f"hyperparameters.{name}", getattr(self, name), low, high,
                           open_low=open_low)
            object.__setattr__(self, name, value)  # frozen; store ints given as floats
        if self.dropout is not None:
            dropout = _float("hyperparameters.dropout", self.dropout, 0.0, 1.0)
            if dropout >= 1.0:
                raise ConfigError("hyperparameters.dropout must be below 1")
            object.__setattr__(self, "dropout", dropout)
        _choice("hyperparameters.precision", self.precision, PRECISIONS)


@dataclass(frozen=True)
class AdapterConfig:
    """LoRA adapters on the encoder's linear layers; the new head is trained in full."""

    type: str = "lora"
    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.05

    def __post_init__(self) -> None:
        _choice("adapter.type", self.type, ("lora",))
        _int("adapter.r", self.r, 1)
        object.__setattr__(self, "alpha",
                           _float("adapter.alpha", self.alpha, 0.0, 1e6, open_low=True))
        dropout = _float("adapter.dropout", self.dropout, 0.0, 1.0)
        if dropout >= 1.0:
            raise ConfigError("adapter.dropout must be below 1")
        object.__setattr__(self, "dropout", dropout)


def _labels(value: Any) -> tuple[str, ...] | None:
    """The spec's label list as strings (integers allowed, as in the data), unique, >= 2."""
    if value is None:
        return None
    if not isinstance(value, list | tuple) or any(
            isinstance(v, bool) or not isinstance(v, str | int) for v in value):
        raise ConfigError(f"labels must be a list of strings, got {value!r}")
    labels = tuple(str(v) for v in value)
    if len(labels) < 2:
        raise ConfigError(f"labels must list at least 2 labels, got {list(labels)}")
    if len(set(labels)) != len(labels) or any(not v.strip() for v in labels):
        raise ConfigError(f"labels must be distinct and not blank, got {list(labels)}")
    return labels


@dataclass(frozen=True)
class FinetuneConfig:
    """Everything a fine-tuning run needs, validated. eval/checkpoint None = once per epoch."""

    task: str
    hyperparameters: FinetuneHyperparameters = FinetuneHyperparameters()
    adapter: AdapterConfig | None = None
    labels: tuple[str, ...] | None = None
    validation_fraction: float = 0.1
    log_every: int = 10
    eval_every: int | None = None
    checkpoint_every: int | None = None

    def __post_init__(self) -> None:
        _choice("task", self.task, TASKS)
        object.__setattr__(self, "labels", _labels(self.labels))
        object.__setattr__(
            self, "validation_fraction",
            _float("validation_fraction", self.validation_fraction, 0.0, 0.5, open_low=True),
        )
        _int("log_every", self.log_every, 1)
        for name in ("eval_every", "checkpoint_every"):
            if getattr(self, name) is not None:
                _int(name, getattr(self, name), 1)

    @property
    def pipeline_task(self) -> str:
        """The transformers pipeline task the export is for."""
        return PIPELINE_TASKS[self.task]

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> FinetuneConfig:
        """Build from the API's JSON job spec; missing or null keys take defaults, unknown
        keys (base_model_id, dataset_id, ...) are ignored."""
        if not isinstance(spec, dict):
            raise ConfigError(f"spec must be an object, got {type(spec).__name__}")
        if spec.get("type", "finetune") != "finetune":
            raise ConfigError(f"spec type must be 'finetune', got {spec.get('type')!r}")
        if spec.get("task") is None:
            raise ConfigError(f"task is required: one of {', '.join(TASKS)}")
        adapter = spec.get("adapter")
        try:
            return cls(
                hyperparameters=FinetuneHyperparameters(
                    **_known(FinetuneHyperparameters, _section(spec, "hyperparameters"))),
                adapter=None if adapter is None else AdapterConfig(
                    **_known(AdapterConfig, _section(spec, "adapter"))),
                # eval_every/checkpoint_every: null means once per epoch, as does missing.
                **_known(cls, {k: v for k, v in spec.items()
                               if k not in ("hyperparameters", "adapter")}),
            )
        except TypeError as exc:  # e.g. a number where a section was expected
            raise ConfigError(f"invalid spec: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as a JSON-able spec."""
        out = asdict(self)
        out["labels"] = None if self.labels is None else list(self.labels)
        return {"type": "finetune", **out}
