"""run_pretraining: a masked-LM pretraining run from prepared data to an exported model."""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.engine.blocks import BlockSampler, ShardedBlocks
from workers.engine.checkpoint import (
    checkpoint_dir,
    decode_rng_state,
    encode_rng_state,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
    save_export,
)
from workers.engine.config import PretrainConfig
from workers.engine.data import VALID_FILE, data_key, load_meta, load_tokenizer
from workers.engine.errors import ConfigError, EngineError
from workers.engine.evaluate import Evaluator
from workers.engine.masking import IGNORE_INDEX, Masker, continuation_ids
from workers.engine.model import (
    build_model,
    count_parameters,
    flops_per_token,
    mlm_loss,
    peak_flops,
)
from workers.engine.optim import build_optimizer, lr_factor, resolve_optimizer_impl
from workers.engine.reporter import Reporter
from workers.engine.speed import resolve_attention, resolve_precision

POSITION_BUCKET = 64  # the sparse head runs on a multiple of this many rows (masked_positions)


@dataclass
class PretrainResult:
    """What a run produced; export_dir is None when it was stopped."""

    export_dir: str | None
    steps: int
    tokens_seen: int
    stopped: bool
    final_eval: dict[str, Any] | None = None
    num_parameters: int = 0
    tokenizer_info: dict[str, Any] = field(default_factory=dict)
    corpus_info: dict[str, int] = field(default_factory=dict)
    last_checkpoint: str | None = None
    elapsed_seconds: float = 0.0


@dataclass
class _Window:
    """Training metrics accumulated between two log points (on the device: no sync per step)."""

    steps: int = 0
    loss: Any = 0.0
    grad_norm: Any = 0.0
    seconds: float = 0.0


def masked_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the masked tokens and their labels, padded to a multiple of
    POSITION_BUCKET rows (padding: position 0, label IGNORE_INDEX, so it adds no loss).

    Without the padding the head's matmuls take a new shape every step, and oneDNN caches a
    primitive per shape: on CPU the process grew by ~4 MB a step up to ~2 GB (BERT-mini).
    """
    flat = labels.flatten()
    positions = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    targets = flat[positions]
    pad = -len(positions) % POSITION_BUCKET
    if pad:
        positions = torch.cat([positions, positions.new_zeros(pad)])
        targets = torch.cat([targets, targets.new_full((pad,), IGNORE_INDEX)])
    return positions, targets


def _check_finite(name: str, value: float, step: int) -> None:
    if not math.isfinite(value):
        raise EngineError(
            f"training diverged: {name} is {value} at step {step}; lower the learning rate"
        )


def _rng_state(sampler: BlockSampler, mask_generator: torch.Generator,
               device: torch.device) -> dict[str, Any]:
    """Every source of randomness, so a resumed run draws exactly what this one would have."""
    rng = {"sampler": sampler.state(),
           "mask_generator": encode_rng_state(mask_generator.get_state()),
           "torch": encode_rng_state(torch.get_rng_state())}  # dropout on CPU
    if device.type == "cuda":
        rng["cuda"] = encode_rng_state(torch.cuda.get_rng_state(device))
    return rng


def _restore_rng(rng: dict[str, Any], mask_generator: torch.Generator,
                 device: torch.device) -> None:
    mask_generator.set_state(decode_rng_state(rng["mask_generator"]))
    torch.set_rng_state(decode_rng_state(rng["torch"]))
    if device.type == "cuda" and "cuda" in rng:
        torch.cuda.set_rng_state(decode_rng_state(rng["cuda"]), device)


def run_pretraining(
    config: PretrainConfig,
    data_dir: str,
    workdir: str,
    reporter: Reporter,
    device: str | None = None,
    resume_from: str | None = None,
) -> PretrainResult:
    """Train a BERT masked LM on data made by prepare_data; checkpoint and export under workdir.

    resume_from, a checkpoint directory of a run with this config, continues that run
    exactly where it stopped: same weights, optimizer, rates, random draws and data order.
    """
    started = time.perf_counter()
    hp = config.hyperparameters
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())

    # -- Data: memory-mapped token shards, tokenized once by prepare_data.
    meta = load_meta(data_dir)
    if meta["data_key"] != data_key(config):
        raise EngineError("the prepared data was made with other tokenizer or sequence "
                          "settings than this run's")
    tokenizer = load_tokenizer(data_dir)
    train = ShardedBlocks([Path(data_dir) / shard["file"] for shard in meta["shards"]])
    valid = np.load(Path(data_dir) / VALID_FILE, mmap_mode="r")
    vocab_size = len(tokenizer)
    corpus_info = {k: meta[k] for k in ("documents", "tokens", "train_blocks",
                                        "validation_blocks")}
    seq = hp.sequence_length
    reporter.event("info", f"training data: {len(train)} blocks of {seq} tokens in "
                           f"{len(train.sizes)} shards, {len(valid)} validation blocks")
    epochs = hp.max_steps * hp.batch_size / len(train)
    reporter.event("info", f"{hp.max_steps} steps of {hp.batch_size} blocks cover "
                           f"{epochs:.2f} epochs of the training blocks")
    if config.recipe_applied:
        reporter.event("info", f"recipe {config.recipe!r} set " + ", ".join(config.recipe_applied))

    # -- Model, optimizer, masking. Masks are drawn on CPU from their own generator, so they
    # do not depend on the device; eval masks are drawn once, see Evaluator.
    bf16 = resolve_precision(hp.precision, dev)
    attention = resolve_attention(hp.attention, dev)
    impl = resolve_optimizer_impl(hp.optimizer_impl, dev.type)
    model = build_model(config.model, vocab_size, tokenizer.pad_token_id, hp.seed, attention,
                        hp.dropout).to(dev)
    model.train()
    num_parameters = count_parameters(model)
    m = config.model
    reporter.event("info", f"model has {num_parameters:,} parameters ({m.num_layers} layers, "
                           f"hidden {m.hidden_size}, {m.num_heads} heads) on {dev}; "
                           f"{'bf16' if bf16 else 'fp32'}, {attention} attention, {impl} AdamW, "
                           f"{'masked-only' if hp.sparse_prediction else 'full'} MLM head, "
                           f"micro-batch {hp.micro_batch}")
    optimizer = build_optimizer(model, hp, impl)
    masker = Masker(vocab_size, tokenizer.all_special_ids, tokenizer.mask_token_id,
                    hp.mask_probability,
                    continuation_ids(tokenizer.get_vocab()) if hp.whole_word_masking else None)
    evaluator = Evaluator(valid, vocab_size, tokenizer.all_special_ids, tokenizer.mask_token_id,
                          hp.batch_size)
    sampler = BlockSampler(train.sizes, hp.batch_size, hp.seed)
    mask_generator = torch.Generator().manual_seed(hp.seed)
    step, tokens_seen = 0, 0

    if resume_from is not None:
        state = read_trainer_state(resume_from)
        saved = state["config"]
        if state.get("data_key") != meta["data_key"] or saved["model"] != config.to_dict()["model"]:
            raise ConfigError("the checkpoint was trained on other data or another model shape")
        load_checkpoint(resume_from, state, model, optimizer)
        step, tokens_seen = state["step"], state["tokens_seen"]
        position = state["rng"]["sampler"]
        sampler = BlockSampler(train.sizes, hp.batch_size, hp.seed,
                               position["epoch"], position["position"])
        _restore_rng(state["rng"], mask_generator, dev)
        reporter.event("info", f"resumed from the checkpoint of step {step} "
                               f"({tokens_seen} tokens seen)")

    encoder = model.bert
    if hp.compile:
        # Only the encoder: its shapes are fixed; the sparse head's row count varies.
        encoder = torch.compile(model.bert)
        reporter.event("info", "compiling the encoder (the first step takes longer)")
    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    tokens_per_step = hp.batch_size * seq
    flops = flops_per_token(model, seq)
    peak = peak_flops(dev)
    window = _Window()
    stopped = False
    final_eval: dict[str, Any] | None = None
    last_checkpoint: str | None = None
    workdir_path = Path(workdir)

    while step < hp.max_steps:
        if reporter.should_stop():
            stopped = True
            break
        t0 = time.perf_counter()
        learning_rate = hp.learning_rate * lr_factor(step, hp)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate

        # -- Batch: next blocks of the seeded shuffle, corrupted BERT-style on the CPU.
        batch = torch.from_numpy(train.take(sampler.next_batch()))
        inputs, labels = masker(batch, mask_generator)
        num_targets = int((labels != IGNORE_INDEX).sum())

        # -- Forward/backward per micro-batch. Summed losses over the whole batch's target
        # count make the accumulated gradient that of the full batch.
        loss_sum = torch.zeros((), device=dev)
        for i in range(0, hp.batch_size, hp.micro_batch):
            micro_inputs = inputs[i : i + hp.micro_batch].to(dev, non_blocking=True)
            micro_labels = labels[i : i + hp.micro_batch]
            positions = None
            targets = micro_labels
            if hp.sparse_prediction:
                # Found on the CPU, where the labels are, so the device never waits on it.
                positions, targets = masked_positions(micro_labels)
                positions = positions.to(dev, non_blocking=True)
            with autocast:
                loss = mlm_loss(model, encoder, micro_inputs, positions,
                                targets.to(dev, non_blocking=True))
            (loss / num_targets).backward()
            loss_sum += loss.detach()
        # clip_grad_norm_ returns the norm from before clipping, which is what we report.
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        window.steps += 1
        window.loss = window.loss + loss_sum / num_targets
        window.grad_norm = window.grad_norm + grad_norm.detach()
        last = step == hp.max_steps

        # -- Log: means over the steps since the previous log point. .item() waits for the
        # device, so the step's time below includes all the work queued since the last log.
        if step % config.log_every == 0 or last:
            train_loss = float(window.loss) / window.steps
            mean_grad_norm = float(window.grad_norm) / window.steps
            window.seconds += time.perf_counter() - t0
            _check_finite("loss", train_loss, step)
            _check_finite("gradient norm", mean_grad_norm, step)
            tokens_per_second = window.steps * tokens_per_step / max(window.seconds, 1e-9)
            point = {
                "step": step,
                "train_loss": train_loss,
                "learning_rate": float(learning_rate),
                "grad_norm": mean_grad_norm,
                "tokens_per_second": tokens_per_second,
                "tokens_seen": tokens_seen,
            }
            if peak is not None:
                point["mfu"] = tokens_per_second * flops / peak
            reporter.log(point)
            window = _Window()
        else:
            # Training time only: eval and checkpoint pauses would read as throughput dips.
            window.seconds += time.perf_counter() - t0

        # -- Eval on the held-out blocks, always at the last step.
        if step % config.eval_every == 0 or last:
            final_eval = {"step": step, **evaluator(model, dev)}
            _check_finite("eval loss", final_eval["eval_loss"], step)
            reporter.eval(final_eval)

        # -- Checkpoint, always at the last step; the manifest is written last.
        if step % config.checkpoint_every == 0 or last:
            directory = save_checkpoint(
                checkpoint_dir(workdir_path, step), step=step, model=model, tokenizer=tokenizer,
                optimizer=optimizer,
                trainer_state={"tokens_seen": tokens_seen, "config": config.to_dict(),
                               "data_key": meta["data_key"], "corpus": corpus_info,
                               "rng": _rng_state(sampler, mask_generator, dev)},
            )
            last_checkpoint = str(directory)
            reporter.checkpoint(step, last_checkpoint)

    # -- Export: only a finished run produces a model.
    export_dir = None
    if stopped:
        reporter.event("info", f"stopped at step {step} of {hp.max_steps}; no export written")
    else:
        if final_eval is None:  # resumed from the last step's checkpoint
            final_eval = {"step": step, **evaluator(model, dev)}
            reporter.eval(final_eval)
        export_dir = str(save_export(workdir_path / "export", model, tokenizer))
    elapsed = time.perf_counter() - started
    reporter.event("info", f"finished in {elapsed:.1f} s after {step} steps")
    return PretrainResult(
        export_dir=export_dir, steps=step, tokens_seen=tokens_seen, stopped=stopped,
        final_eval=final_eval, num_parameters=num_parameters, tokenizer_info=meta["tokenizer"],
        corpus_info=corpus_info, last_checkpoint=last_checkpoint, elapsed_seconds=elapsed,
    )
