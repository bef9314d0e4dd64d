"""run_pretraining: a pretraining run (mlm, clm or mlm_nsp) from prepared data to an export."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from jobspec import PretrainSpec
from jobspec.model_facts import run_fingerprint
from jobspec.pooling import base_pooling
from jobspec.resources import shards
from jobspec.sizing import ROBERTA_POSITION_OFFSET, estimate_pretrain_bytes, rank_micro_batch
from workers.engine.architectures import build_model, describe, flops_per_token, load_model
from workers.engine.blocks import ShardedBlocks
from workers.engine.data import VALID_FILE, data_key, load_data_tokenizer, load_meta
from workers.engine.distributed import SINGLE, Parallel
from workers.engine.failures import ConfigError, EngineError
from workers.engine.fit_check import check_fits, estimate_bytes
from workers.engine.loop import LoopResult, LoopSettings, pick_device, train
from workers.engine.objectives.clm import CausalLM
from workers.engine.objectives.mlm import MaskedLM
from workers.engine.objectives.nsp import MaskedLMWithNSP
from workers.engine.objectives.pretrain_data import PretrainData
from workers.engine.optim import Schedule
from workers.engine.probes import run_probes
from workers.engine.reporter import Reporter
from workers.engine.speed import resolve_attention


@dataclass
class PretrainResult(LoopResult):
    tokenizer_info: dict[str, Any] = field(default_factory=dict)
    corpus_info: dict[str, int] = field(default_factory=dict)


def run_pretraining(spec: PretrainSpec, data_dir: str, workdir: str, reporter: Reporter,
                    device: str | None = None, resume_from: str | None = None,
                    base_model_dir: str | None = None,
                    parallel: Parallel = SINGLE) -> PretrainResult:
    """Train on data made by prepare_data; checkpoint and export under workdir.

    base_model_dir continues a model (its shape and weights) instead of a fresh one;
    resume_from, a checkpoint of a run with this spec, continues that run exactly.
    parallel: this process's rank when torchrun runs it on several (workers/multiprocess.py).
    """
    reporter = parallel.reporter(reporter)
    hp = spec.hyperparameters
    dev = pick_device(device)

    # -- Data: memory-mapped token shards, tokenized once by prepare_data.
    meta = load_meta(data_dir)
    if meta["data_key"] != data_key(spec):
        raise EngineError("the prepared data was made with other tokenizer or sequence "
                          "settings than this run's")
    tokenizer = load_data_tokenizer(data_dir)
    train_rows = ShardedBlocks([Path(data_dir) / shard["file"] for shard in meta["shards"]])
    valid = np.load(Path(data_dir) / VALID_FILE, mmap_mode="r")
    corpus_info = {k: meta[k] for k in ("documents", "tokens", "train_blocks",
                                        "validation_blocks")}
    unit = "segment pairs" if spec.objective == "mlm_nsp" else "blocks"
    reporter.event("info", f"training data: {len(train_rows)} {unit} of {hp.sequence_length} "
                           f"tokens in {len(train_rows.sizes)} shards, {len(valid)} held out")
    epochs = hp.max_steps * hp.batch_size / len(train_rows)
    reporter.event("info", f"{hp.max_steps} steps of {hp.batch_size} {unit} cover "
                           f"{epochs:.2f} epochs of the training data")
    if spec.recipe:
        reporter.event("info", f"recipe {spec.recipe!r}: schedule {hp.schedule}, learning rate "
                               f"{hp.learning_rate}, mask probability {hp.mask_probability}")

    # -- Model: fresh from the spec's shape, or the base model continued.
    attention = resolve_attention(hp.attention, dev)
    if base_model_dir is not None:
        model, notes = load_model(base_model_dir, spec.objective or "mlm",
                                  attention=attention, dropout=hp.dropout, seed=hp.seed)
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            raise EngineError("the base model's tokenizer has more tokens than its embeddings")
        positions = getattr(model.config, "max_position_embeddings", None) or \
            getattr(model.config, "n_positions", None)
        if spec.model.architecture == "roberta" and positions:
            positions -= ROBERTA_POSITION_OFFSET
        if positions and hp.sequence_length > positions:
            raise ConfigError(f"hyperparameters.sequence_length ({hp.sequence_length}) exceeds "
                              f"the base model's {positions} positions")
        origin = "continuing the base model"
    else:
        memory = estimate_pretrain_bytes(spec, len(tokenizer))
        check_fits(memory, dev)  # before allocating the model
        model = build_model(spec.model, spec.objective or "mlm", tokenizer, seed=hp.seed,
                            attention=attention, dropout=hp.dropout)
        origin, notes = "initialised from the seed", []
    reporter.event("info", f"{type(model).__name__} ({describe(model)}), {origin}; "
                           f"{attention} attention")
    for note in notes:
        reporter.event("info", note)

    # -- The objective: how batches are made, the loss and what eval reports.
    common: dict[str, Any] = dict(model=model, tokenizer=tokenizer, train=train_rows,
                                  valid=valid, batch_size=hp.batch_size, seed=hp.seed,
                                  fingerprint=run_fingerprint(spec, data_key=meta["data_key"]))
    objective: PretrainData
    if spec.objective == "clm":
        objective = CausalLM(**common, compile=hp.compile)
    else:
        cls = MaskedLMWithNSP if spec.objective == "mlm_nsp" else MaskedLM
        objective = cls(**common, mask_probability=hp.mask_probability,
                        whole_word_masking=hp.whole_word_masking,
                        sparse_prediction=hp.sparse_prediction, compile=hp.compile)
    config: Any = model.config
    settings = LoopSettings(
        schedule=Schedule(total=hp.max_steps, warmup=hp.warmup, kind=hp.schedule,
                          decay_fraction=hp.decay_fraction, min_lr_ratio=hp.min_lr_ratio),
        batch_size=hp.batch_size, micro_batch=hp.micro_batch, learning_rate=hp.learning_rate,
        weight_decay=hp.weight_decay, max_grad_norm=hp.max_grad_norm, precision=hp.precision,
        optimizer_impl=hp.optimizer_impl, log_every=spec.log_every,
        eval_every=spec.eval_every, checkpoint_every=spec.checkpoint_every,
        early_stopping=spec.early_stopping,
        pooling=None if base_model_dir is None else base_pooling(base_model_dir),
        probes=None if not spec.probes else partial(
            run_probes, model, tokenizer, spec.probes, causal=spec.objective == "clm"),
        flops_per_token=flops_per_token(model, hp.sequence_length),
        memory_bytes=estimate_bytes(
            parameters=sum(p.numel() for p in model.parameters()),
            layers=config.num_hidden_layers, hidden=config.hidden_size,
            intermediate=getattr(config, "intermediate_size", None)
            or getattr(config, "n_inner", None) or 4 * config.hidden_size,
            heads=config.num_attention_heads,
            vocab=len(tokenizer), micro_batch=rank_micro_batch(spec),
            sequence_length=hp.sequence_length, shards=shards(spec.resources)),
        eval_at_start=base_model_dir is not None,
    )
    result = train(objective, settings, workdir, reporter, dev, resume_from, parallel)
    return PretrainResult(**vars(result), tokenizer_info=meta["tokenizer"],
                          corpus_info=corpus_info)
