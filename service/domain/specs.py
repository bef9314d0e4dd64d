"""Typed job specifications. The API validates them; the worker reads the stored dump."""

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag

# The BERT miniatures (Turc et al. 2019): layers, hidden size. Heads = hidden/64, FFN = 4x.
SIZE_PRESETS: dict[str, tuple[int, int]] = {
    "tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512), "base": (12, 768),
}

Finite = Annotated[float, Field(allow_inf_nan=False)]


class Strict(BaseModel):
    # A misspelt field is an error the user wants to hear about, not a silent default.
    model_config = ConfigDict(extra="forbid")


class ModelSpec(Strict):
    architecture: Literal["bert"] = "bert"
    size: Literal["tiny", "mini", "small", "medium", "base"] = "mini"
    hidden_size: int | None = Field(default=None, ge=16, le=4096)
    num_layers: int | None = Field(default=None, ge=1, le=48)
    num_heads: int | None = Field(default=None, ge=1, le=64)
    intermediate_size: int | None = Field(default=None, ge=16, le=16384)
    max_position_embeddings: int = Field(default=512, ge=16, le=8192)

    def resolved(self) -> tuple[int, int, int, int]:
        """(layers, hidden, heads, intermediate) after applying explicit overrides."""
        layers, hidden = SIZE_PRESETS[self.size]
        layers = self.num_layers or layers
        hidden = self.hidden_size or hidden
        heads = self.num_heads or max(1, hidden // 64)
        return layers, hidden, heads, self.intermediate_size or 4 * hidden


class TokenizerSpec(Strict):
    type: Literal["wordpiece"] = "wordpiece"
    # Below a few hundred entries there is no room for the alphabet plus the specials.
    vocab_size: int = Field(default=8192, ge=256, le=262_144)
    lowercase: bool = True


class PretrainHyperparameters(Strict):
    max_steps: int = Field(default=1000, ge=1, le=10_000_000)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    sequence_length: int = Field(default=128, ge=8, le=8192)
    learning_rate: Finite = Field(default=5e-4, gt=0, le=1.0)
    warmup_steps: int = Field(default=100, ge=0)
    weight_decay: Finite = Field(default=0.01, ge=0, le=1.0)
    mask_probability: Finite = Field(default=0.15, gt=0, lt=1.0)
    max_grad_norm: Finite = Field(default=1.0, gt=0)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    # Learning-rate shape: linear or cosine decay after warmup, one_cycle (a triangle that
    # peaks mid-run) or wsd (warmup, stable, then decay over the last decay_fraction).
    schedule: Literal["linear", "cosine", "one_cycle", "wsd"] = "linear"
    decay_fraction: Finite = Field(default=0.2, gt=0, le=1.0)
    min_lr_ratio: Finite = Field(default=0.0, ge=0, le=1.0)
    # Mask every WordPiece of a word together (at the same overall rate).
    whole_word_masking: bool = False
    dropout: Finite = Field(default=0.0, ge=0, lt=1.0)
    # Speed (defaults measured: bench/README.md). micro_batch_size below batch_size
    # accumulates gradients, for batches that do not fit at once.
    micro_batch_size: int | None = Field(default=None, ge=1, le=65_536)
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    sparse_prediction: bool = True
    compile: bool = False
    optimizer_impl: Literal["auto", "fused", "foreach", "loop"] = "auto"
    attention: Literal["auto", "sdpa", "eager"] = "auto"


class PretrainJobCreate(Strict):
    type: Literal["pretrain"] = "pretrain"
    objective: Literal["mlm"] = "mlm"
    name: str | None = Field(default=None, min_length=1, max_length=255)
    dataset_id: str = Field(min_length=1, max_length=64)
    validation_fraction: Finite = Field(default=0.02, gt=0, le=0.5)
    model: ModelSpec = Field(default_factory=ModelSpec)
    tokenizer: TokenizerSpec = Field(default_factory=TokenizerSpec)
    hyperparameters: PretrainHyperparameters = Field(default_factory=PretrainHyperparameters)
    log_every: int = Field(default=10, ge=1)
    eval_every: int = Field(default=100, ge=1)
    checkpoint_every: int = Field(default=500, ge=1)
    # A preset of hyperparameters measured to converge fastest ("fast": bench/README.md);
    # it fills the hyperparameters the request leaves out.
    recipe: Literal["fast"] | None = None

    def stored_spec(self) -> dict[str, Any]:
        """The spec the worker reads. With a recipe, hyperparameters the request left out
        stay out, so the engine can fill them from the recipe."""
        spec = self.model_dump(mode="json")
        if self.recipe is not None:
            spec["hyperparameters"] = self.hyperparameters.model_dump(mode="json",
                                                                      exclude_unset=True)
        return spec

    def inconsistency(self) -> tuple[str, str] | None:
        """(param, message) for the first rule that spans several fields, else None."""
        hp, model = self.hyperparameters, self.model
        if hp.micro_batch_size is not None and hp.batch_size % hp.micro_batch_size:
            return ("hyperparameters.micro_batch_size",
                    f"micro_batch_size {hp.micro_batch_size} must divide batch_size "
                    f"{hp.batch_size}")
        _, hidden, heads, _ = model.resolved()
        if hidden % heads:
            return ("model.num_heads",
                    f"hidden size {hidden} is not a multiple of the number of heads {heads}")
        if hp.sequence_length > model.max_position_embeddings:
            return ("hyperparameters.sequence_length",
                    f"sequence_length {hp.sequence_length} exceeds the model's "
                    f"max_position_embeddings {model.max_position_embeddings}")
        if hp.warmup_steps > hp.max_steps:
            return ("hyperparameters.warmup_steps",
                    f"warmup_steps {hp.warmup_steps} exceeds max_steps {hp.max_steps}")
        return None


class FinetuneHyperparameters(Strict):
    epochs: int = Field(default=3, ge=1, le=1000)
    # Stops after this many steps even if the epochs are not done.
    max_steps: int | None = Field(default=None, ge=1, le=10_000_000)
    batch_size: int = Field(default=32, ge=1, le=65_536)
    learning_rate: Finite = Field(default=5e-5, gt=0, le=1.0)
    sequence_length: int = Field(default=256, ge=8, le=8192)
    warmup_ratio: Finite = Field(default=0.1, ge=0, lt=1.0)
    weight_decay: Finite = Field(default=0.01, ge=0, le=1.0)
    max_grad_norm: Finite = Field(default=1.0, gt=0)
    seed: int = Field(default=0, ge=0, le=2**32 - 1)


class AdapterSpec(Strict):
    """Parameter-efficient fine-tuning; the export is merged, so plain transformers loads it."""

    type: Literal["lora"] = "lora"
    r: int = Field(default=8, ge=1, le=256)
    alpha: int = Field(default=16, ge=1, le=4096)
    dropout: Finite = Field(default=0.05, ge=0, lt=1.0)


FINETUNE_DATA = {"text_classification": "labelled_text", "token_classification": "tagged_tokens"}


class FinetuneJobCreate(Strict):
    type: Literal["finetune"] = "finetune"
    task: Literal["text_classification", "token_classification"]
    name: str | None = Field(default=None, min_length=1, max_length=255)
    base_model_id: str = Field(min_length=1, max_length=64)
    dataset_id: str = Field(min_length=1, max_length=64)
    # Optional separate files for the validation and test splits (e.g. CoNLL train/dev/test).
    validation_dataset_id: str | None = Field(default=None, min_length=1, max_length=64)
    test_dataset_id: str | None = Field(default=None, min_length=1, max_length=64)
    # The label (or tag) set; by default the one found in the data.
    labels: list[str] | None = Field(default=None, min_length=2, max_length=1000)
    validation_fraction: Finite = Field(default=0.1, gt=0, le=0.5)
    hyperparameters: FinetuneHyperparameters = Field(default_factory=FinetuneHyperparameters)
    adapter: AdapterSpec | None = None
    log_every: int = Field(default=10, ge=1)
    eval_every: int | None = Field(default=None, ge=1)  # None: once per epoch
    checkpoint_every: int | None = Field(default=None, ge=1)  # None: once per epoch

    def stored_spec(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def inconsistency(self) -> tuple[str, str] | None:
        if self.labels is not None and len(set(self.labels)) != len(self.labels):
            return "labels", "labels must be distinct"
        return None


def _job_type(value: Any) -> str:
    # "type" may be left out: a job is a pretraining job unless it says otherwise.
    if isinstance(value, dict):
        return str(value.get("type", "pretrain"))
    return str(getattr(value, "type", "pretrain"))


JobCreate = Annotated[
    Annotated[PretrainJobCreate, Tag("pretrain")] | Annotated[FinetuneJobCreate, Tag("finetune")],
    Discriminator(_job_type),
]
