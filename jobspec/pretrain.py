"""Pretraining jobs: objective, model, tokenizer and hyperparameters."""

from typing import Any, Literal

from pydantic import Field, model_validator

from jobspec.common import KEEP_CHECKPOINTS, EarlyStopping, Finite, Seed, Strict
from jobspec.finetune import Columns, columns_inconsistency
from jobspec.model_facts import objective_task
from jobspec.model_shapes import DECODERS, ModelSpec
from jobspec.names import Name
from jobspec.resources import (
    DEFAULT_PRIORITY,
    Priority,
    ResourcesSpec,
    batch_inconsistency,
    resources_inconsistency,
)
from jobspec.webhook import WebhookSpec

# Which architectures each objective trains.
OBJECTIVES: dict[str, tuple[str, ...]] = {
    "mlm": ("bert", "roberta"),
    "mlm_nsp": ("bert",),
    "clm": ("gpt2", "llama"),
}
# What a tokenizer defaults to for each architecture (as its original was trained).
DEFAULT_TOKENIZER = {"bert": "wordpiece", "roberta": "bpe", "gpt2": "bpe", "llama": "unigram"}
# Presets of hyperparameters; a recipe fills the ones the request leaves out.
# "fast": the combination that reached a given held-out MLM loss soonest (bench/README.md).
RECIPES: dict[str, dict[str, Any]] = {
    "fast": {"schedule": "wsd", "mask_probability": 0.3, "learning_rate": 1e-3},
}
DEFAULT_WARMUP_STEPS = 100


# How a probe's text may write its blank; the model's own mask token replaces it.
MASK_SPELLINGS = ("[MASK]", "<mask>")


class Probe(Strict):
    """A cloze probe (workers/engine/probes.py): a text with one blank (masked models) or a
    prompt (causal models), and the expected answer."""
    text: str = Field(min_length=1, max_length=2000)
    expected: str = Field(min_length=1, max_length=200)


class TokenizerSpec(Strict):
    # None: the architecture's own kind (wordpiece for bert, byte-level bpe for roberta and
    # gpt2, unigram for llama); from_model when continuing a base model.
    type: Literal["wordpiece", "bpe", "unigram", "from_model"] | None = None
    # Below a few hundred entries there is no room for the alphabet plus the specials.
    vocab_size: int = Field(default=8192, ge=256, le=262_144)
    # None: true for wordpiece (as BERT uncased), false for the others.
    lowercase: bool | None = None


class PretrainHyperparameters(Strict):
    max_steps: int = Field(default=1000, ge=1, le=10_000_000)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    sequence_length: int = Field(default=128, ge=8, le=8192)
    learning_rate: Finite = Field(default=5e-4, gt=0, le=1.0)
    # None: 100 steps, or a tenth of max_steps when that is less.
    warmup_steps: int | None = Field(default=None, ge=0)
    weight_decay: Finite = Field(default=0.01, ge=0, le=1.0)
    # Masked-LM objectives only.
    mask_probability: Finite = Field(default=0.15, gt=0, lt=1.0)
    max_grad_norm: Finite = Field(default=1.0, gt=0)
    seed: Seed = 0
    # Learning-rate shape: linear or cosine decay after warmup, one_cycle (a triangle that
    # peaks mid-run) or wsd (warmup, stable, then decay over the last decay_fraction).
    schedule: Literal["linear", "cosine", "one_cycle", "wsd"] = "linear"
    decay_fraction: Finite = Field(default=0.2, gt=0, le=1.0)
    min_lr_ratio: Finite = Field(default=0.0, ge=0, le=1.0)
    # Mask every piece of a word together (at the same overall rate).
    whole_word_masking: bool = False
    # Hidden and attention dropout. 0: runs of a few epochs do not overfit, and on CPUs
    # dropout costs a third of a bf16 step (bench/README.md).
    dropout: Finite = Field(default=0.0, ge=0, lt=1.0)
    # Speed (defaults measured: bench/README.md). micro_batch_size below batch_size
    # accumulates gradients, for batches that do not fit at once.
    micro_batch_size: int | None = Field(default=None, ge=1, le=65_536)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    # Masked-LM: the output head runs on the masked positions only.
    sparse_prediction: bool = True
    compile: bool = False
    optimizer_impl: Literal["auto", "fused", "foreach", "loop"] = "auto"
    attention: Literal["auto", "sdpa", "eager"] = "auto"

    @property
    def warmup(self) -> int:
        if self.warmup_steps is not None:
            return self.warmup_steps
        return min(DEFAULT_WARMUP_STEPS, self.max_steps // 10)

    @property
    def micro_batch(self) -> int:
        """Examples per forward/backward pass."""
        return self.micro_batch_size or self.batch_size


class PretrainSpec(Strict):
    type: Literal["pretrain"] = "pretrain"
    # None: mlm for bert and roberta, clm for gpt2 and llama.
    objective: Literal["mlm", "mlm_nsp", "clm"] | None = None
    name: Name | None = None
    dataset_id: str = Field(min_length=1, max_length=64)
    # Continued pretraining: start from this model (trained here or imported), keeping its
    # architecture, shape and tokenizer; "model" then only names its architecture.
    base_model_id: str | None = Field(default=None, min_length=1, max_length=64)
    validation_fraction: Finite = Field(default=0.02, gt=0, le=0.5)
    # A table (CSV, TSV, Parquet): the column holding the text, {"text": "body"}; by default
    # the column named text, sentence, content, ... (jobspec/formats.py ROLE_NAMES).
    columns: Columns = None
    model: ModelSpec = Field(default_factory=ModelSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    hyperparameters: PretrainHyperparameters = Field(default_factory=PretrainHyperparameters)
    log_every: int = Field(default=10, ge=1)
    eval_every: int = Field(default=100, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)
    # Checkpoints kept in storage: the newest N (older ones are deleted as new ones land);
    # null keeps every one (they count against the owner's storage).
    keep_checkpoints: int | None = Field(default=KEEP_CHECKPOINTS, ge=1, le=10_000)
    # A preset of hyperparameters measured to converge fastest ("fast": bench/README.md);
    # it fills the hyperparameters the request leaves out.
    recipe: Literal["fast"] | None = None
    # Which workers may take the job (resources.device) and its place among the jobs
    # waiting for them (priority: higher first).
    resources: ResourcesSpec = Field(default_factory=ResourcesSpec)
    priority: Priority = DEFAULT_PRIORITY
    early_stopping: EarlyStopping | None = None
    # Status changes are POSTed here, signed (service/webhook_sender.py).
    webhook: WebhookSpec | None = None
    # Scored at every eval and stored with the eval point (metrics' "probes").
    probes: list[Probe] | None = Field(default=None, max_length=50)

    @model_validator(mode="before")
    @classmethod
    def _apply_recipe(cls, data: Any) -> Any:
        recipe = data.get("recipe") if isinstance(data, dict) else None
        if isinstance(recipe, str) and recipe in RECIPES:  # else the field's check says why
            given = data.get("hyperparameters")
            if given is None or isinstance(given, dict):
                data = {**data, "hyperparameters": {**RECIPES[recipe], **(given or {})}}
        return data

    @model_validator(mode="after")
    def _resolve_defaults(self) -> "PretrainSpec":
        # Filled in here, so the stored spec (what the job shows) says what will run.
        # object.__setattr__ keeps them out of model_fields_set: model_dump(exclude_unset=True)
        # still gives what the request said (the API re-validates it once it knows a base
        # model's architecture).
        arch = self.model.architecture
        tok, hp = self.tokenizer, self.hyperparameters
        if self.objective is None:
            object.__setattr__(self, "objective", "clm" if arch in DECODERS else "mlm")
        if tok.type is None:
            object.__setattr__(tok, "type",
                               "from_model" if self.base_model_id else DEFAULT_TOKENIZER[arch])
        if tok.lowercase is None:
            object.__setattr__(tok, "lowercase", tok.type == "wordpiece")
        if hp.warmup_steps is None:
            object.__setattr__(hp, "warmup_steps", hp.warmup)
        return self

    @property
    def pipeline_task(self) -> str:
        """The transformers pipeline task the export is for (jobspec/model_facts.py)."""
        return objective_task(self.objective)

    def stored_spec(self) -> dict[str, Any]:
        """The spec the worker reads (every default resolved)."""
        return self.model_dump(mode="json")

    def inconsistency(self) -> tuple[str, str] | None:
        """(param, message) for the first rule that spans several fields, else None."""
        if (problem := resources_inconsistency(self.resources)) is not None:
            return problem
        if (problem := batch_inconsistency(self.resources,
                                           self.hyperparameters.batch_size)) is not None:
            return problem
        if (problem := columns_inconsistency(self.columns, ["text"])) is not None:
            return problem
        hp, model, tok = self.hyperparameters, self.model, self.tokenizer
        arch, objective = model.architecture, self.objective or ""
        for i, probe in enumerate(self.probes or []):
            blanks = sum(probe.text.count(m) for m in MASK_SPELLINGS)
            if objective != "clm" and blanks != 1:
                return (f"probes.{i}.text", "a masked model's probe has exactly one blank, "
                        f"written {' or '.join(MASK_SPELLINGS)}")
        if arch not in OBJECTIVES.get(objective, (arch,)):
            return ("objective",
                    f"{objective} trains {' or '.join(OBJECTIVES[objective])}, not {arch}")
        if (tok.type == "from_model") != (self.base_model_id is not None):
            if self.base_model_id is None:
                return ("tokenizer.type", "from_model needs a base_model_id to take it from")
            return ("tokenizer.type", "a continued-pretraining job keeps its base model's "
                    "tokenizer; leave tokenizer.type out or set it to from_model")
        if tok.type == "wordpiece" and arch != "bert":
            return ("tokenizer.type", f"wordpiece is BERT's tokenizer; {arch} needs bpe or "
                    "unigram")
        if tok.type in ("bpe", "unigram") and arch == "bert":
            return ("tokenizer.type", "bert uses wordpiece (its [CLS]/[SEP]/## conventions)")
        if tok.type == "bpe" and tok.vocab_size < 320:
            return ("tokenizer.vocab_size",
                    "byte-level BPE needs at least 320 entries (256 bytes + specials + merges)")
        if self.base_model_id is None and (problem := model.inconsistency()) is not None:
            return problem
        if hp.micro_batch_size is not None and hp.batch_size % hp.micro_batch_size:
            return ("hyperparameters.micro_batch_size",
                    f"micro_batch_size {hp.micro_batch_size} must divide batch_size "
                    f"{hp.batch_size}")
        if self.base_model_id is None and hp.sequence_length > model.max_position_embeddings:
            return ("hyperparameters.sequence_length",
                    f"sequence_length {hp.sequence_length} exceeds the model's "
                    f"max_position_embeddings {model.max_position_embeddings}")
        if hp.warmup > hp.max_steps:
            return ("hyperparameters.warmup_steps",
                    f"warmup_steps {hp.warmup} exceeds max_steps {hp.max_steps}")
        if self.objective == "mlm_nsp" and hp.sequence_length < 16:
            return ("hyperparameters.sequence_length",
                    "mlm_nsp needs at least 16 tokens for a pair of segments")
        return None
