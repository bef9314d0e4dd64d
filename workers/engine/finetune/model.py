"""Load a base model with a new task head (or initialise the architecture), and its tokenizer."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from transformers import (
    AutoConfig,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from jobspec import ModelSpec
from jobspec.model_facts import PROBLEM_TYPES
from workers.engine.architectures import check_confined, model_config
from workers.engine.failures import ConfigError, EngineError

HEADS = {"text_classification": AutoModelForSequenceClassification,
         "token_classification": AutoModelForTokenClassification,
         "regression": AutoModelForSequenceClassification,
         "multi_label_classification": AutoModelForSequenceClassification,
         "question_answering": AutoModelForQuestionAnswering}
# Config fields that hold dropout rates, across BERT-like architectures.
DROPOUT_FIELDS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout",
                  "attention_dropout")


@dataclass
class Base:
    """The model to fine-tune, its tokenizer, and which of its modules are new."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    head: list[str]  # modules initialised here: trained in full even with LoRA adapters
    unused: list[str]  # base weights the task model has no place for (e.g. the MLM head)
    max_length: int  # the longest sequence the model takes


def load_tokenizer(directory: str | Path) -> PreTrainedTokenizerBase:
    """The base model's tokenizer; it must be a fast one (word alignment needs offsets)."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(directory))
    except (OSError, ValueError) as exc:
        raise EngineError(f"cannot load the base model's tokenizer: {exc}") from None
    if not tokenizer.is_fast:
        raise EngineError("the base model's tokenizer has no fast (tokenizers) version")
    if tokenizer.pad_token_id is None:
        raise EngineError("the base model's tokenizer has no padding token")
    return tokenizer


def _label_config(config: PretrainedConfig, task: str, labels: list[str],
                  dropout: float | None) -> None:
    config.id2label = dict(enumerate(labels))
    config.label2id = {label: i for i, label in enumerate(labels)}
    # What the pipeline applies to the outputs: softmax, none (regression) or a sigmoid
    # per label (multi-label); None for the other tasks (a base tuned otherwise: not kept).
    config.problem_type = PROBLEM_TYPES.get(task)
    if dropout is not None:
        for name in DROPOUT_FIELDS:
            if isinstance(getattr(config, name, None), float):
                setattr(config, name, dropout)


def _head(model: PreTrainedModel, new_keys: set[str]) -> list[str]:
    """Modules outside the base encoder, plus any whose weights were newly initialised."""
    outside = [name for name, child in model.named_children()
               if name != model.base_model_prefix and any(True for _ in child.parameters())]
    fresh = {key.rsplit(".", 1)[0] for key in new_keys}
    covered = {m for m in fresh for o in outside if m == o or m.startswith(o + ".")}
    return sorted(set(outside) | (fresh - covered))


def _random_model(task: str, labels: list[str], base_config: dict[str, Any] | None, *,
                  dropout: float | None, attention: str
                  ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A randomly initialised task model: of a model directory's own architecture
    ({"config_dir": ...}: its config.json and tokenizer, any architecture transformers
    knows, imported ones included) or of a ModelSpec shape ({"architecture": "bert",
    sizes..., "tokenizer_dir"})."""
    auto = HEADS[task]
    if isinstance(base_config, dict) and base_config.get("config_dir"):
        directory = base_config["config_dir"]
        check_confined(directory)
        tokenizer = load_tokenizer(directory)
        try:
            config = AutoConfig.from_pretrained(directory)
            _label_config(config, task, labels, dropout)
            # fp32 as a loaded base (from_config would take the config's "dtype").
            model = auto.from_config(config, attn_implementation=attention,
                                     dtype=torch.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise EngineError(f"cannot initialise the base model's architecture for {task}: "
                              f"{exc}") from None
        return model, tokenizer
    if not isinstance(base_config, dict) or not base_config.get("tokenizer_dir"):
        raise ConfigError("without a base model, base_config with a tokenizer_dir (or a "
                          "config_dir) is needed to initialise one")
    tokenizer = load_tokenizer(base_config["tokenizer_dir"])
    shape = {k: v for k, v in base_config.items() if k in ModelSpec.model_fields}
    config = model_config(ModelSpec(**shape), tokenizer, dropout or 0.0)
    _label_config(config, task, labels, dropout)
    return auto.from_config(config, attn_implementation=attention), tokenizer


def load_base(task: str, labels: list[str], base_model_dir: str | None,
              base_config: dict[str, Any] | None, *, dropout: float | None, attention: str,
              seed: int) -> Base:
    """The task model from base_model_dir (its encoder reused, a new head), or randomly
    initialised from base_config: {"config_dir": a model directory} (that model's
    architecture and tokenizer, random weights: an evaluate job's random-init baseline) or
    {"architecture": "bert", sizes..., "tokenizer_dir"} (a ModelSpec shape)."""
    torch.manual_seed(seed)  # the new head's (or the whole model's) initial weights
    auto = HEADS[task]
    unused: list[str] = []
    if base_model_dir is not None:
        check_confined(base_model_dir)
        tokenizer = load_tokenizer(base_model_dir)
        try:
            config = AutoConfig.from_pretrained(base_model_dir)
            _label_config(config, task, labels, dropout)
            model, info = auto.from_pretrained(
                base_model_dir, config=config, output_loading_info=True,
                ignore_mismatched_sizes=True,  # a base with a head for other labels
                use_safetensors=True,  # never unpickle weights
                # fp32 master weights, as the loop's mixed precision expects: transformers
                # would keep a checkpoint's own bf16/fp16 (Hub models often are), where
                # updates below the format's precision are lost, and an evaluate job's
                # random init (fp32) would not train on the same terms.
                dtype=torch.float32, attn_implementation=attention)
        except (OSError, ValueError, KeyError) as exc:
            raise EngineError(f"cannot load the base model for {task}: {exc}") from None
        new = set(info["missing_keys"]) | {k[0] if isinstance(k, tuple) else k
                                           for k in info["mismatched_keys"]}
        unused = sorted(info["unexpected_keys"])
    else:
        model, tokenizer = _random_model(task, labels, base_config, dropout=dropout,
                                         attention=attention)
        new = set()  # everything is new; the head is what lies outside the encoder
    limits = [getattr(model.config, "max_position_embeddings", None),
              tokenizer.model_max_length if tokenizer.model_max_length < 1e9 else None]
    max_length = min(v for v in limits if v is not None) if any(limits) else 512
    return Base(model, tokenizer, _head(model, new), unused, max_length)
