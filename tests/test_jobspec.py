"""The one job spec: presets for every architecture, defaults that fit every job, clear
errors naming the field, and the same schema read by the API and by the engine."""

from __future__ import annotations

import pytest

from jobspec import RECIPES, ModelSpec, PretrainSpec, SpecError, parse_spec
from workers.engine.optim import Schedule, lr_factor

BASE = {"dataset_id": "ds_1"}


@pytest.mark.parametrize(("size", "layers", "hidden"), [
    ("tiny", 2, 128), ("mini", 4, 256), ("small", 4, 512), ("medium", 8, 512), ("base", 12, 768),
])
@pytest.mark.parametrize("architecture", ["bert", "roberta", "gpt2", "llama"])
def test_size_presets_apply_to_every_architecture(size, layers, hidden, architecture):
    shape = ModelSpec(architecture=architecture, size=size).shape()
    ffn = -(-8 * hidden // 3 // 32) * 32 if architecture == "llama" else 4 * hidden
    assert (shape.layers, shape.hidden, shape.heads, shape.kv_heads, shape.intermediate) == (
        layers, hidden, hidden // 64, hidden // 64, ffn)


def test_explicit_values_override_preset():
    shape = ModelSpec(size="mini", hidden_size=384, num_layers=3).shape()
    assert (shape.layers, shape.hidden, shape.heads, shape.intermediate) == (3, 384, 6, 1536)
    gqa = ModelSpec(architecture="llama", size="mini", num_key_value_heads=2).shape()
    assert (gqa.heads, gqa.kv_heads) == (4, 2)


def test_defaults_follow_the_architecture():
    bert = parse_spec(BASE)
    assert (bert.objective, bert.tokenizer.type, bert.tokenizer.lowercase) == (
        "mlm", "wordpiece", True)
    gpt2 = parse_spec({**BASE, "model": {"architecture": "gpt2"}})
    assert (gpt2.objective, gpt2.tokenizer.type, gpt2.tokenizer.lowercase) == (
        "clm", "bpe", False)
    llama = parse_spec({**BASE, "model": {"architecture": "llama"}})
    assert (llama.objective, llama.tokenizer.type) == ("clm", "unigram")
    roberta = parse_spec({**BASE, "model": {"architecture": "roberta"}})
    assert (roberta.objective, roberta.tokenizer.type) == ("mlm", "bpe")
    cont = parse_spec({**BASE, "base_model_id": "m_1"})
    assert cont.tokenizer.type == "from_model"


def test_default_warmup_fits_short_jobs():
    # The old default of 100 warmup steps refused a 40-step job.
    assert parse_spec({**BASE, "hyperparameters": {"max_steps": 40}}) \
        .hyperparameters.warmup_steps == 4
    assert parse_spec(BASE).hyperparameters.warmup_steps == 100
    with pytest.raises(SpecError, match="warmup_steps"):
        parse_spec({**BASE, "hyperparameters": {"max_steps": 40, "warmup_steps": 41}})


@pytest.mark.parametrize(("patch", "param"), [
    ({"hyperparameters": {"sequence_length": 1024}}, "hyperparameters.sequence_length"),
    ({"model": {"size": "tiny", "num_heads": 3}}, "model.num_heads"),
    ({"model": {"size": "huge"}}, "model.size"),
    ({"model": {"architecture": "t5"}}, "model.architecture"),
    ({"model": {"num_key_value_heads": 2}}, "model.num_key_value_heads"),
    ({"model": {"architecture": "llama", "num_key_value_heads": 3}},
     "model.num_key_value_heads"),
    ({"hyperparameters": {"learning_rate": -1}}, "hyperparameters.learning_rate"),
    ({"hyperparameters": {"batch_size": "x"}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"mask_probability": 1.0}}, "hyperparameters.mask_probability"),
    ({"hyperparameters": {"micro_batch_size": 5}}, "hyperparameters.micro_batch_size"),
    ({"hyperparameters": {"precision": "fp16"}}, "hyperparameters.precision"),
    ({"tokenizer": {"type": "bpe"}}, "tokenizer.type"),
    ({"tokenizer": {"type": "from_model"}}, "tokenizer.type"),
    ({"model": {"architecture": "gpt2"}, "tokenizer": {"type": "wordpiece"}}, "tokenizer.type"),
    ({"model": {"architecture": "gpt2"}, "tokenizer": {"vocab_size": 300}},
     "tokenizer.vocab_size"),
    ({"tokenizer": {"vocab_size": 10}}, "tokenizer.vocab_size"),
    ({"objective": "clm"}, "objective"),
    ({"objective": "mlm_nsp", "model": {"architecture": "roberta"}}, "objective"),
    ({"model": {"architecture": "gpt2"}, "objective": "mlm"}, "objective"),
    ({"validation_fraction": 0.9}, "validation_fraction"),
    ({"eval_every": 0}, "eval_every"),
    ({"keep_checkpoints": 0}, "keep_checkpoints"),
    ({"keep_checkpoints": True}, "keep_checkpoints"),
    ({"typo": 1}, "typo"),
    ({"recipe": "slow"}, "recipe"),
    ({"recipe": {}}, "recipe"),
    ({"recipe": ["fast"]}, "recipe"),
    ({"hyperparameters": []}, "hyperparameters"),
])
def test_bad_values_name_the_field(patch, param):
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, **patch})
    assert info.value.param == param and info.value.message.startswith(param)


def test_checkpoints_kept_are_bounded_by_default():
    assert parse_spec(BASE).keep_checkpoints == 5
    assert parse_spec({**BASE, "keep_checkpoints": None}).keep_checkpoints is None
    finetune = {"type": "finetune", "task": "text_classification", "base_model_id": "m",
                "dataset_id": "d"}
    assert parse_spec(finetune).keep_checkpoints == 5


@pytest.mark.parametrize("labels", [["a", "b" * 101], ["a", ""], ["a"]])
def test_finetune_labels_are_bounded(labels):
    with pytest.raises(SpecError) as info:
        parse_spec({"type": "finetune", "task": "text_classification", "base_model_id": "m",
                    "dataset_id": "d", "labels": labels})
    assert info.value.param.startswith("labels")


def test_recipe_fills_only_what_the_request_left_out():
    spec = parse_spec({**BASE, "recipe": "fast",
                       "hyperparameters": {"learning_rate": 3e-4, "max_steps": 50}})
    assert isinstance(spec, PretrainSpec)
    assert spec.hyperparameters.learning_rate == 3e-4  # explicit wins
    assert spec.hyperparameters.schedule == RECIPES["fast"]["schedule"]
    assert spec.hyperparameters.mask_probability == RECIPES["fast"]["mask_probability"]
    # the stored spec says what runs, and reads back the same
    assert parse_spec(spec.stored_spec()) == spec


def test_finetune_spec_takes_dropout_precision_and_float_alpha():
    spec = parse_spec({"type": "finetune", "task": "text_classification", "base_model_id": "m",
                       "dataset_id": "d", "adapter": {"alpha": 8.5},
                       "hyperparameters": {"dropout": 0.1, "precision": "fp32"}})
    assert spec.adapter is not None and spec.adapter.alpha == 8.5
    with pytest.raises(SpecError, match="labels"):
        parse_spec({"type": "finetune", "task": "text_classification", "base_model_id": "m",
                    "dataset_id": "d", "labels": ["a", "a"]})


def test_api_and_engine_read_the_same_schema():
    """The API's request bodies are the engine's specs: one class, one set of limits."""
    from service.domain import specs
    from workers.engine import finetune, pretrain

    assert specs.PretrainJobCreate is PretrainSpec
    assert pretrain.run_pretraining.__annotations__["spec"] == "PretrainSpec"
    assert pretrain.PretrainSpec is PretrainSpec
    assert finetune.run.FinetuneSpec is specs.FinetuneJobCreate


def _rates(**schedule) -> list[float]:
    plan = Schedule(total=10, warmup=2, **schedule)
    return [round(lr_factor(step, plan), 4) for step in range(10)]


def test_schedules():
    assert _rates() == [0.5, 1.0, 1.0, 0.875, 0.75, 0.625, 0.5, 0.375, 0.25, 0.125]
    cosine = _rates(kind="cosine")
    assert cosine[:3] == [0.5, 1.0, 1.0] and cosine == sorted(cosine[:2]) + sorted(
        cosine[2:], reverse=True) and 0 < cosine[-1] < 0.125
    assert _rates(kind="wsd", decay_fraction=0.3) == [
        0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 0.6667, 0.3333]
    assert _rates(kind="one_cycle") == [0.2, 0.4, 0.6, 0.8, 1.0, 1.0, 0.8, 0.6, 0.4, 0.2]
    assert _rates(min_lr_ratio=0.5)[-1] == 0.5625
