"""Fine-tuning jobs: a task on labelled data, from a base model."""

from typing import Any, Literal

from pydantic import Field

from jobspec.common import Finite, Seed, Strict

# The dataset kind each task reads.
FINETUNE_DATA = {"text_classification": "labelled_text", "token_classification": "tagged_tokens"}


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
    seed: Seed = 0
    # Hidden and attention dropout; None keeps the base model's (ours pretrain with 0).
    dropout: Finite | None = Field(default=None, ge=0, lt=1.0)
    # "auto": bf16 autocast where the device has native bf16, as in pretraining.
    precision: Literal["auto", "fp32", "bf16"] = "auto"


class AdapterSpec(Strict):
    """Parameter-efficient fine-tuning; the export is merged, so plain transformers loads it."""

    type: Literal["lora"] = "lora"
    r: int = Field(default=8, ge=1, le=256)
    alpha: Finite = Field(default=16.0, gt=0, le=4096)
    dropout: Finite = Field(default=0.05, ge=0, lt=1.0)


class FinetuneSpec(Strict):
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

    @property
    def pipeline_task(self) -> str:
        """The transformers pipeline task the export is for."""
        return self.task.replace("_", "-")

    def stored_spec(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def inconsistency(self) -> tuple[str, str] | None:
        if self.labels is not None:
            if len(set(self.labels)) != len(self.labels):
                return "labels", "labels must be distinct"
            if any(not label.strip() for label in self.labels):
                return "labels", "labels must not be blank"
        return None
