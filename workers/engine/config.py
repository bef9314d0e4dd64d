"""Typed, validated configuration for a pretraining run, built from the job's JSON spec."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

from transformers import BertConfig

from workers.engine.errors import ConfigError

# BERT miniatures (Turc et al., 2019): size -> (num_layers, hidden_size).
SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (2, 128),
    "mini": (4, 256),
    "small": (4, 512),
    "medium": (8, 512),
    "base": (12, 768),
}
HEAD_DIM = 64


def _int(name: str, value: Any, minimum: int) -> int:
    # bool is an int subclass; a JSON true is never a valid count.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    return value


def _float(name: str, value: Any, low: float, high: float, *, open_low: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    if value < low or (open_low and value == low) or value > high:
        bracket = "(" if open_low else "["
        raise ConfigError(f"{name} must be in {bracket}{low}, {high}], got {value}")
    return float(value)


def _choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ConfigError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")
    return value


def _section(spec: dict[str, Any], key: str) -> dict[str, Any]:
    value = spec.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be an object, got {value!r}")
    return value


def _known(cls: type, section: dict[str, Any]) -> dict[str, Any]:
    """Keep the keys the dataclass knows and drop nulls, so missing and null both mean default."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in section.items() if k in names and v is not None}


PRECISIONS = ("auto", "fp32", "bf16")
OPTIMIZER_IMPLS = ("auto", "fused", "foreach", "loop")
ATTENTIONS = ("auto", "sdpa", "eager")
SCHEDULES = ("linear", "cosine", "one_cycle", "wsd")


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{name} must be true or false, got {value!r}")
    return value


@dataclass(frozen=True)
class Hyperparameters:
    """Optimisation, masking and speed settings (speed defaults: see bench/README.md)."""

    max_steps: int = 1000
    batch_size: int = 32
    sequence_length: int = 128
    learning_rate: float = 5e-4
    warmup_steps: int = 100
    weight_decay: float = 0.01
    mask_probability: float = 0.15
    seed: int = 0
    max_grad_norm: float = 1.0
    # Learning-rate shape: linear/cosine decay after warmup, one_cycle (a triangle peaking at
    # mid-run; warmup_steps unused) or wsd (warmup, constant, decay over the last
    # decay_fraction of the steps). The rate ends at min_lr_ratio x learning_rate.
    schedule: str = "linear"
    decay_fraction: float = 0.2
    min_lr_ratio: float = 0.0
    whole_word_masking: bool = False
    # Hidden and attention-probability dropout. 0 (BERT used 0.1): for runs of a few epochs
    # at most it only slows training down, on CPUs a lot (bench/README.md).
    dropout: float = 0.0
    # Speed: None = the whole batch in one micro-batch; smaller ones accumulate gradients.
    micro_batch_size: int | None = None
    precision: str = "auto"
    sparse_prediction: bool = True
    compile: bool = False
    optimizer_impl: str = "auto"
    attention: str = "auto"

    def __post_init__(self) -> None:
        _int("hyperparameters.max_steps", self.max_steps, 1)
        _int("hyperparameters.batch_size", self.batch_size, 1)
        # [CLS] + at least one corpus token + [SEP]
        _int("hyperparameters.sequence_length", self.sequence_length, 3)
        _int("hyperparameters.warmup_steps", self.warmup_steps, 0)
        if _int("hyperparameters.seed", self.seed, 0) >= 2**32:
            raise ConfigError(f"hyperparameters.seed must be below 2**32, got {self.seed}")
        floats = {  # name -> (low, high, low excluded)
            "learning_rate": (0.0, 1.0, True),
            "weight_decay": (0.0, 1.0, False),
            "mask_probability": (0.0, 1.0, True),
            "max_grad_norm": (0.0, math.inf, True),
            "decay_fraction": (0.0, 1.0, True),
            "min_lr_ratio": (0.0, 1.0, False),
            "dropout": (0.0, 1.0, False),
        }
        for name, (low, high, open_low) in floats.items():
            value = _float(f"hyperparameters.{name}", getattr(self, name), low, high,
                           open_low=open_low)
            object.__setattr__(self, name, value)  # frozen; store ints given as floats
        if self.warmup_steps > self.max_steps:
            raise ConfigError(
                f"hyperparameters.warmup_steps ({self.warmup_steps}) must not exceed "
                f"max_steps ({self.max_steps})"
            )
        if self.mask_probability >= 1.0:
            raise ConfigError("hyperparameters.mask_probability must be below 1")
        if self.dropout >= 1.0:
            raise ConfigError("hyperparameters.dropout must be below 1")
        _choice("hyperparameters.schedule", self.schedule, SCHEDULES)
        _choice("hyperparameters.precision", self.precision, PRECISIONS)
        _choice("hyperparameters.optimizer_impl", self.optimizer_impl, OPTIMIZER_IMPLS)
        _choice("hyperparameters.attention", self.attention, ATTENTIONS)
        for name in ("whole_word_masking", "sparse_prediction", "compile"):
            _bool(f"hyperparameters.{name}", getattr(self, name))
        if self.micro_batch_size is not None:
            _int("hyperparameters.micro_batch_size", self.micro_batch_size, 1)
            if self.batch_size % self.micro_batch_size:
                raise ConfigError(
                    f"hyperparameters.micro_batch_size ({self.micro_batch_size}) must divide "
                    f"batch_size ({self.batch_size})"
                )

    @property
    def micro_batch(self) -> int:
        """Blocks per forward/backward pass."""
        return self.micro_batch_size or self.batch_size


@dataclass(frozen=True)
class TokenizerConfig:
    """Tokenizer to train on the corpus."""

    type: str = "wordpiece"
    vocab_size: int = 8192
    lowercase: bool = True

    def __post_init__(self) -> None:
        _choice("tokenizer.type", self.type, ("wordpiece",))
        _int("tokenizer.vocab_size", self.vocab_size, 100)
        if self.vocab_size > 1_000_000:
            raise ConfigError(
                f"tokenizer.vocab_size must be at most 1000000, got {self.vocab_size}"
            )
        if not isinstance(self.lowercase, bool):
            raise ConfigError(f"tokenizer.lowercase must be true or false, got {self.lowercase!r}")


@dataclass(frozen=True)
class ModelConfig:
    """Model shape; after construction every size field holds its resolved value."""

    architecture: str = "bert"
    size: str | None = "mini"
    hidden_size: int | None = None
    num_layers: int | None = None
    num_heads: int | None = None
    intermediate_size: int | None = None
    max_position_embeddings: int = 512

    def __post_init__(self) -> None:
        _choice("model.architecture", self.architecture, ("bert",))
        layers, hidden = None, None
        if self.size is not None:
            _choice("model.size", self.size, tuple(SIZE_PRESETS))
            layers, hidden = SIZE_PRESETS[self.size]
        # Explicit values override the preset; heads and FFN follow the resolved hidden size.
        hidden = self.hidden_size if self.hidden_size is not None else hidden
        layers = self.num_layers if self.num_layers is not None else layers
        if hidden is None or layers is None:
            raise ConfigError("model.size is required unless hidden_size and num_layers are given")
        hidden = _int("model.hidden_size", hidden, 1)
        layers = _int("model.num_layers", layers, 1)
        heads = self.num_heads if self.num_heads is not None else max(1, hidden // HEAD_DIM)
        heads = _int("model.num_heads", heads, 1)
        ffn = self.intermediate_size if self.intermediate_size is not None else 4 * hidden
        ffn = _int("model.intermediate_size", ffn, 1)
        _int("model.max_position_embeddings", self.max_position_embeddings, 3)
        if hidden % heads:
            raise ConfigError(
                f"model.hidden_size ({hidden}) must be divisible by num_heads ({heads})"
            )
        for name, value in (("hidden_size", hidden), ("num_layers", layers),
                            ("num_heads", heads), ("intermediate_size", ffn)):
            object.__setattr__(self, name, value)

    def to_bert_config(self, vocab_size: int, pad_token_id: int) -> BertConfig:
        """The transformers config for a BertForMaskedLM of this shape."""
        return BertConfig(
            vocab_size=vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            max_position_embeddings=self.max_position_embeddings,
            pad_token_id=pad_token_id,
            attn_implementation="sdpa",
        )


# Presets of hyperparameters, applied by PretrainConfig.from_spec under values the spec sets.
# "fast": the combination that reached a given held-out loss soonest on BERT-mini
# (measurements in bench/README.md).
RECIPES: dict[str, dict[str, Any]] = {
    "fast": {
        "schedule": "wsd",
        "mask_probability": 0.3,
        "learning_rate": 1e-3,
    },
}


@dataclass(frozen=True)
class PretrainConfig:
    """Everything a masked-language-model pretraining run needs, validated."""

    model: ModelConfig = ModelConfig()
    tokenizer: TokenizerConfig = TokenizerConfig()
    hyperparameters: Hyperparameters = Hyperparameters()
    objective: str = "mlm"
    validation_fraction: float = 0.02
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 500
    recipe: str | None = None
    # What the recipe set, as "hyperparameters.name=value" (explicit spec values win).
    recipe_applied: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _choice("objective", self.objective, ("mlm",))
        if self.recipe is not None:
            _choice("recipe", self.recipe, tuple(RECIPES))
        object.__setattr__(
            self, "validation_fraction",
            _float("validation_fraction", self.validation_fraction, 0.0, 0.5),
        )
        _int("log_every", self.log_every, 1)
        _int("eval_every", self.eval_every, 1)
        _int("checkpoint_every", self.checkpoint_every, 1)
        seq = self.hyperparameters.sequence_length
        if seq > self.model.max_position_embeddings:
            raise ConfigError(
                f"hyperparameters.sequence_length ({seq}) must not exceed "
                f"model.max_position_embeddings ({self.model.max_position_embeddings})"
            )

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> PretrainConfig:
        """Build from the API's JSON job spec.

        Missing or null keys take defaults; unknown keys (name, dataset_id, ...) are ignored.
        """
        if not isinstance(spec, dict):
            raise ConfigError(f"spec must be an object, got {type(spec).__name__}")
        if spec.get("type", "pretrain") != "pretrain":
            raise ConfigError(f"spec type must be 'pretrain', got {spec.get('type')!r}")
        recipe = spec.get("recipe")
        if recipe is not None:
            _choice("recipe", recipe, tuple(RECIPES))
        explicit = _known(Hyperparameters, _section(spec, "hyperparameters"))
        preset = {k: v for k, v in RECIPES.get(recipe, {}).items() if k not in explicit}
        try:
            return cls(
                model=ModelConfig(**_known(ModelConfig, _section(spec, "model"))),
                tokenizer=TokenizerConfig(**_known(TokenizerConfig, _section(spec, "tokenizer"))),
                hyperparameters=Hyperparameters(**{**preset, **explicit}),
                recipe_applied=tuple(f"hyperparameters.{k}={v}" for k, v in preset.items()),
                **_known(cls, {k: v for k, v in spec.items()
                               if k not in ("model", "tokenizer", "hyperparameters",
                                            "recipe_applied")}),
            )
        except TypeError as exc:  # e.g. a number where a section was expected
            raise ConfigError(f"invalid spec: {exc}") from exc

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as a JSON-able spec (model sizes filled in)."""
        return {"type": "pretrain", **asdict(self)}
