"""The masked-only MLM loss, FLOP counting for MFU, speed-setting resolution, recipe events."""

from __future__ import annotations

import torch

from workers.engine import PretrainConfig, run_pretraining
from workers.engine.config import ModelConfig
from workers.engine.masking import IGNORE_INDEX
from workers.engine.model import build_model, flops_per_token, mlm_loss, peak_flops
from workers.engine.speed import resolve_attention, resolve_precision


def test_sparse_loss_equals_the_stock_full_head_loss():
    model = build_model(ModelConfig(size="tiny"), vocab_size=300, pad_token_id=0, seed=0,
                        dropout=0.0)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randint(5, 300, (4, 16), generator=generator)
    labels = torch.where(torch.rand(4, 16, generator=generator) < 0.3, inputs, IGNORE_INDEX)
    flat = labels.flatten()
    positions = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    sparse = mlm_loss(model, model.bert, inputs, positions, flat[positions])
    full = mlm_loss(model, model.bert, inputs, None, labels)
    stock = model(input_ids=inputs, labels=labels).loss * len(positions)  # HF's mean
    torch.testing.assert_close(sparse, full)
    torch.testing.assert_close(sparse, stock)


def test_flops_per_token_and_peaks():
    model = build_model(ModelConfig(size="mini"), vocab_size=8192, pad_token_id=0, seed=0)
    layer = 4 * 256 * 256 + 4 * 256 + 2 * 256 * 1024 + 1024 + 256 + 4 * 256  # + LayerNorms
    head = 256 * 256 + 256 + 2 * 256 + 8192  # transform, its LayerNorm, decoder bias
    assert flops_per_token(model, 128) == 6 * (4 * layer + head) + 12 * 4 * 256 * 128
    assert peak_flops(torch.device("cpu")) is None


def test_auto_settings():
    cpu, cuda = torch.device("cpu"), torch.device("cuda", 0)
    assert resolve_attention("auto", cpu) == "eager" and resolve_attention("auto", cuda) == "sdpa"
    assert resolve_attention("sdpa", cpu) == "sdpa"
    assert resolve_precision("fp32", cpu) is False and resolve_precision("bf16", cpu) is True


def test_recipe_is_announced(en_data, tmp_path, make_reporter, make_spec):
    config = PretrainConfig.from_spec({**make_spec(max_steps=3, warmup_steps=1),
                                       "recipe": "fast"})
    reporter = make_reporter()
    run_pretraining(config, str(en_data), str(tmp_path), reporter)
    messages = [m for _, m in reporter.events if m.startswith("recipe 'fast' set")]
    assert len(messages) == 1 and "hyperparameters.schedule=wsd" in messages[0]


def test_masked_positions_are_padded_to_a_bucket_with_ignored_rows():
    from workers.engine.run import POSITION_BUCKET, masked_positions

    labels = torch.full((2, 50), IGNORE_INDEX)
    labels[0, 3], labels[1, 7] = 11, 12
    positions, targets = masked_positions(labels)
    assert len(positions) == len(targets) == POSITION_BUCKET
    assert positions[:2].tolist() == [3, 57] and targets[:2].tolist() == [11, 12]
    assert (targets[2:] == IGNORE_INDEX).all()
