"""Architectures and the masked-only MLM loss, FLOP counting for MFU, speed settings."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer

from jobspec import ModelSpec, parse_spec
from workers.engine import run_pretraining
from workers.engine.architectures import build_model, flops_per_token, peak_flops
from workers.engine.masking import IGNORE_INDEX
from workers.engine.objectives.mlm import POSITION_BUCKET, MaskedLM, masked_positions
from workers.engine.speed import resolve_attention, resolve_precision


@pytest.fixture(scope="module")
def tokenizer(en_data):
    return AutoTokenizer.from_pretrained(en_data / "tokenizer")


def test_sparse_loss_equals_the_stock_full_head_loss(tokenizer):
    model = build_model(ModelSpec(size="tiny"), "mlm", tokenizer, seed=0, attention="eager",
                        dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(5, len(tokenizer), (4, 16), generator=generator)
    labels = torch.where(torch.rand(4, 16, generator=generator) < 0.3, inputs, IGNORE_INDEX)
    masked = int((labels != IGNORE_INDEX).sum())
    losses = []
    for sparse in (True, False):
        objective = MaskedLM.__new__(MaskedLM)  # only the loss: no data needed
        objective.encoder, objective.head = model.bert, model.cls
        objective.forward_encoder, objective.sparse = model.bert, sparse
        losses.append(objective.loss({"input_ids": inputs, "labels": labels},
                                     {"masked": masked}, torch.device("cpu")))
    stock = model(input_ids=inputs, labels=labels).loss  # HF's mean
    torch.testing.assert_close(losses[0], losses[1])
    torch.testing.assert_close(losses[0], stock)


@pytest.mark.parametrize("architecture", ["bert", "roberta", "gpt2", "llama"])
def test_every_architecture_builds_with_the_preset(tokenizer, architecture):
    objective = "clm" if architecture in ("gpt2", "llama") else "mlm"
    model = build_model(ModelSpec(architecture=architecture, size="tiny"), objective, tokenizer,
                        seed=0, attention="eager", dropout=0.0)
    config = model.config
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (
        2, 128, 2)
    assert model.get_input_embeddings().num_embeddings == len(tokenizer)


def test_flops_per_token_and_peaks(tokenizer):
    model = build_model(ModelSpec(size="mini"), "mlm", tokenizer, seed=0, attention="eager",
                        dropout=0.0)
    vocab = len(tokenizer)
    layer = 4 * 256 * 256 + 4 * 256 + 2 * 256 * 1024 + 1024 + 256 + 4 * 256  # + LayerNorms
    head = 256 * 256 + 256 + 2 * 256 + vocab  # transform, its LayerNorm, decoder bias
    embedding_norm = 2 * 256
    assert flops_per_token(model, 128) == 6 * (4 * layer + head + embedding_norm) + \
        12 * 4 * 256 * 128
    assert peak_flops(torch.device("cpu")) is None


def test_auto_settings():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_attention("auto", cpu) == "eager" and resolve_attention("auto", cuda) == "sdpa"
    assert resolve_attention("sdpa", cpu) == "sdpa"
    assert resolve_precision("fp32", cpu) is False and resolve_precision("bf16", cpu) is True


def test_recipe_is_announced(en_data, tmp_path, make_reporter, make_spec):
    spec = parse_spec({**make_spec(max_steps=3, warmup_steps=1), "recipe": "fast"})
    reporter = make_reporter()
    run_pretraining(spec, str(en_data), str(tmp_path), reporter)
    messages = [m for _, m in reporter.events if m.startswith("recipe 'fast'")]
    assert len(messages) == 1 and "schedule wsd" in messages[0]


def test_masked_positions_are_padded_to_a_bucket_with_ignored_rows():
    labels = torch.full((2, 50), IGNORE_INDEX)
    labels[0, 3], labels[1, 7] = 11, 12
    positions, targets = masked_positions(labels)
    assert len(positions) == len(targets) == POSITION_BUCKET
    assert positions[:2].tolist() == [3, 57] and targets[:2].tolist() == [11, 12]
    assert (targets[2:] == IGNORE_INDEX).all()


@pytest.mark.parametrize("architecture,given,tied", [
    ("bert", None, False), ("roberta", None, False), ("gpt2", None, True), ("llama", None, True),
    ("bert", True, True), ("llama", False, False)])
def test_masked_lms_are_untied_by_default(tokenizer, architecture, given, tied):
    """Untied, a masked LM's word embeddings are not grown by the output layer's gradient
    (bench/README.md, "Untied embeddings"); the head's bias transformers leaves unused is
    frozen, so the optimizer (and a sharded resume) holds state only for what trains."""
    objective = "clm" if architecture in ("gpt2", "llama") else "mlm"
    spec = ModelSpec(architecture=architecture, size="tiny", tie_embeddings=given)
    model = build_model(spec, objective, tokenizer, seed=0, attention="eager", dropout=0.0)
    output = model.get_output_embeddings()
    assert (output.weight is model.get_input_embeddings().weight) is tied
    assert model.config.tie_word_embeddings is tied
    frozen = [n for n, p in model.named_parameters() if not p.requires_grad]
    assert frozen == ([] if tied or objective == "clm" else
                      ["cls.predictions.bias" if architecture == "bert" else "lm_head.bias"])
    ids = torch.randint(5, len(tokenizer), (2, 8))
    logits = model(input_ids=ids).logits
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
