"""Config: spec parsing, size presets, defaults and ConfigError for inconsistent values."""

from __future__ import annotations

import dataclasses

import pytest

from workers.engine import ConfigError, Hyperparameters, ModelConfig, PretrainConfig
from workers.engine.config import RECIPES
from workers.engine.optim import lr_factor

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
    ({"hyperparameters": {"micro_batch_size": 5}}, "must divide batch_size"),
    ({"hyperparameters": {"micro_batch_size": 0}}, "micro_batch_size must be at least 1"),
    ({"hyperparameters": {"precision": "fp16"}}, "precision must be one of"),
    ({"hyperparameters": {"schedule": "step"}}, "schedule must be one of"),
    ({"hyperparameters": {"optimizer_impl": "apex"}}, "optimizer_impl must be one of"),
    ({"hyperparameters": {"attention": "flash"}}, "attention must be one of"),
    ({"hyperparameters": {"sparse_prediction": 1}}, "sparse_prediction must be true or false"),
    ({"hyperparameters": {"decay_fraction": 0}}, "decay_fraction"),
    ({"hyperparameters": {"min_lr_ratio": 1.5}}, "min_lr_ratio"),
    ({"hyperparameters": {"dropout": 1.0}}, "dropout"),
    ({"recipe": "slow"}, "recipe must be one of"),
])
def test_inconsistent_values_raise_config_error(patch, message):
    with pytest.raises(ConfigError, match=message):
        PretrainConfig.from_spec({**SPEC, **patch})


def test_new_fields_have_defaults_and_old_specs_still_parse():
    hp = PretrainConfig.from_spec(SPEC).hyperparameters
    assert (hp.schedule, hp.precision, hp.attention, hp.optimizer_impl) == (
        "linear", "auto", "auto", "auto")
    assert hp.sparse_prediction and not hp.compile and not hp.whole_word_masking
    assert hp.micro_batch_size is None and hp.micro_batch == 32 and hp.dropout == 0.0
    assert Hyperparameters(batch_size=64, micro_batch_size=16).micro_batch == 16


def test_recipe_sets_unset_fields_and_explicit_values_win():
    config = PretrainConfig.from_spec({"type": "pretrain", "recipe": "fast"})
    hp = config.hyperparameters
    for name, value in RECIPES["fast"].items():
        assert getattr(hp, name) == value
    assert config.recipe == "fast"
    assert set(config.recipe_applied) == {f"hyperparameters.{k}={v}"
                                          for k, v in RECIPES["fast"].items()}
    explicit = PretrainConfig.from_spec({"type": "pretrain", "recipe": "fast",
                                         "hyperparameters": {"mask_probability": 0.2,
                                                             "schedule": None}})
    assert explicit.hyperparameters.mask_probability == 0.2
    assert explicit.hyperparameters.schedule == RECIPES["fast"]["schedule"]  # null = unset
    assert not any(s.startswith("hyperparameters.mask_probability")
                   for s in explicit.recipe_applied)
    assert PretrainConfig.from_spec({"type": "pretrain", "recipe": None}).recipe_applied == ()


def _rates(**hp) -> list[float]:
    config = Hyperparameters(max_steps=10, warmup_steps=2, **hp)
    return [round(lr_factor(step, config), 4) for step in range(10)]


def test_schedules():
    assert _rates() == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    cosine = _rates(schedule="cosine")
    assert cosine[:3] == [0.5, 1.0, 1.0] and cosine == sorted(cosine[:2]) + sorted(
        cosine[2:], reverse=True) and 0 < cosine[-1] < 0.125
    assert _rates(schedule="wsd", decay_fraction=0.3) == [
        0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.6667, 0.3333]
    assert _rates(schedule="one_cycle") == [
        0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2]
    assert _rates(min_lr_ratio=0.5)[-1] == 0.5625
