"""Config: spec parsing, size presets, defaults and ConfigError for inconsistent values."""

from __future__ import annotations

import dataclasses

import pytest

from workers.engine import ConfigError, ModelConfig, PretrainConfig

SPEC = {
    "type": "pretrain", "objective": "mlm", "name": "my-bert", "dataset_id": "ds_1",
    "validation_fraction": 0.02,
    "model": {"architecture": "bert", "size": "mini", "hidden_size": None, "num_layers": None,
              "num_heads": None, "intermediate_size": None, "max_position_embeddings": 512},
    "tokenizer": {"type": "wordpiece", "vocab_size": 8192, "lowercase": True},
    "hyperparameters": {"max_steps": 1000, "batch_size": 32, "sequence_length": 128,
                        "learning_rate": 5e-4, "warmup_steps": 100, "weight_decay": 0.01,
                        "mask_probability": 0.15, "seed": 0, "max_grad_norm": 1.0},
    "log_every": 10, "eval_every": 100, "checkpoint_every": 500,
}


def test_full_spec_and_defaults_agree():
    assert PretrainConfig.from_spec(SPEC) == PretrainConfig.from_spec({"type": "pretrain"})
    config = PretrainConfig.from_spec({**SPEC, "some_future_key": 1})
    assert config.hyperparameters.learning_rate == 5e-4 and config.eval_every == 100
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.log_every = 1  # type: ignore[misc]


@pytest.mark.parametrize(("size", "layers", "hidden"), [
    ("tiny", 2, 128), ("mini", 4, 256), ("small", 4, 512), ("medium", 8, 512), ("base", 12, 768),
])
def test_size_presets(size, layers, hidden):
    m = ModelConfig(size=size)
    assert (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size) == (
        layers, hidden, hidden // 64, 4 * hidden)


def test_explicit_values_override_preset():
    m = ModelConfig(size="mini", hidden_size=384, num_layers=3)
    assert (m.num_layers, m.hidden_size, m.num_heads, m.intermediate_size) == (3, 384, 6, 1536)
    m = ModelConfig(size="tiny", num_heads=4, intermediate_size=300)
    assert (m.num_heads, m.intermediate_size) == (4, 300)


def test_to_bert_config():
    bert = ModelConfig(size="tiny").to_bert_config(vocab_size=2000, pad_token_id=0)
    assert (bert.vocab_size, bert.hidden_size, bert.num_hidden_layers) == (2000, 128, 2)
    assert bert.num_attention_heads == 2 and bert.intermediate_size == 512
    assert bert._attn_implementation == "sdpa"


@pytest.mark.parametrize(("patch", "message"), [
    ({"hyperparameters": {"sequence_length": 1024}}, "max_position_embeddings"),
    ({"model": {"size": "tiny", "num_heads": 3}}, "divisible by num_heads"),
    ({"model": {"size": "huge"}}, "model.size"),
    ({"model": {"architecture": "gpt2"}}, "model.architecture"),
    ({"hyperparameters": {"learning_rate": -1}}, "learning_rate"),
    ({"hyperparameters": {"warmup_steps": 2000}}, "warmup_steps"),
    ({"hyperparameters": {"batch_size": "32"}}, "batch_size must be an integer"),
    ({"hyperparameters": {"max_steps": True}}, "max_steps must be an integer"),
    ({"hyperparameters": {"mask_probability": 1.0}}, "mask_probability"),
    ({"tokenizer": {"type": "bpe"}}, "tokenizer.type"),
    ({"tokenizer": {"vocab_size": 10}}, "vocab_size"),
    ({"objective": "clm"}, "objective"),
    ({"validation_fraction": 0.9}, "validation_fraction"),
    ({"eval_every": 0}, "eval_every"),
    ({"model": 5}, "model must be an object"),
    ({"type": "finetune"}, "type"),
])
def test_inconsistent_values_raise_config_error(patch, message):
    with pytest.raises(ConfigError, match=message):
        PretrainConfig.from_spec({**SPEC, **patch})
