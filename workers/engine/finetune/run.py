"""run_finetune: fine-tune a base model for text or token classification and export it."""

from __future__ import annotations

import contextlib
import json
import math
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from workers.engine.blocks import BlockSampler
from workers.engine.checkpoint import (
    checkpoint_dir,
    decode_rng_state,
    encode_rng_state,
    load_checkpoint,
    read_trainer_state,
    save_checkpoint,
    save_export,
)
from workers.engine.config import Hyperparameters
from workers.engine.errors import ConfigError
from workers.engine.finetune.config import FinetuneConfig
from workers.engine.finetune.dataset import collate, encode_tagged, encode_texts, most_frequent
from workers.engine.finetune.evaluate import evaluate
from workers.engine.finetune.lora import add_lora, merge, unwrap
from workers.engine.finetune.metrics import is_bio
from workers.engine.finetune.model import load_base
from workers.engine.finetune.records import load_splits
from workers.engine.model import count_parameters
from workers.engine.optim import build_optimizer, lr_factor, resolve_optimizer_impl
from workers.engine.reporter import Reporter
from workers.engine.run import _check_finite
from workers.engine.speed import resolve_attention, resolve_precision


@dataclass
class FinetuneResult:
    """What a run produced; export_dir is None when it was stopped."""

    export_dir: str | None
    task: str  # the transformers pipeline task of the export
    steps: int
    stopped: bool
    labels: list[str]
    final_eval: dict[str, Any] | None = None
    test_metrics: dict[str, Any] | None = None
    num_parameters: int = 0
    trainable_parameters: int = 0
    last_checkpoint: str | None = None
    elapsed_seconds: float = 0.0


@dataclass
class _Window:
    """Training metrics accumulated between two log points."""

    steps: int = 0
    loss: Any = 0.0
    grad_norm: Any = 0.0
    tokens: int = 0
    seconds: float = 0.0


def _describe(scores: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if k != "step")


def run_finetune(
    config: FinetuneConfig,
    base_model_dir: str | None,
    data: dict[str, tuple[str, str]],
    workdir: str,
    reporter: Reporter,
    device: str | None = None,
    resume_from: str | None = None,
    base_config: dict[str, Any] | None = None,
) -> FinetuneResult:
    """Fine-tune base_model_dir (or a random model of base_config) on data: split name ->
    (path, format); checkpoint and export under workdir. resume_from continues exactly."""
    started = time.perf_counter()
    hp = config.hyperparameters
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())

    # -- Data: every split read and checked before a model is loaded, so bad data fails fast.
    splits = load_splits(config.task, data, config.labels, config.validation_fraction)
    for note in splits.notes:
        reporter.event("info", note)
    labels = splits.labels

    # -- Model: the base encoder with a new head (or all random), LoRA adapters if asked.
    bf16 = resolve_precision(hp.precision, dev)
    base = load_base(config.task, labels, base_model_dir, base_config, dropout=hp.dropout,
                     attention=resolve_attention("auto", dev), seed=hp.seed)
    if hp.sequence_length > base.max_length:
        raise ConfigError(f"hyperparameters.sequence_length ({hp.sequence_length}) exceeds "
                          f"what the base model takes ({base.max_length})")
    tokenizer, model = base.tokenizer, base.model
    num_parameters = count_parameters(model)
    origin = "randomly initialised" if base_model_dir is None else "from the base model"
    reporter.event("info", f"{type(model).__name__} for {len(labels)} labels {origin}, new "
                           f"head: {', '.join(base.head)}" +
                           (f"; unused base weights: {len(base.unused)} (e.g. "
                            f"{base.unused[0]})" if base.unused else ""))
    if config.adapter is not None:
        model = add_lora(model, config.adapter, base.head)
    # Checkpoints hold the transformers model itself (with LoRA: adapters injected).
    weights = unwrap(model) if config.adapter is not None else model
    model.to(dev)
    model.train()
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    reporter.event("info", f"{num_parameters:,} parameters, {trainable:,} trained "
                           f"({'LoRA r=' + str(config.adapter.r) if config.adapter else 'all'})"
                           f" on {dev}, {'bf16' if bf16 else 'fp32'}")

    # -- Tokenize every split once; word tags go on each word's first piece.
    encode = encode_texts if config.task == "text_classification" else encode_tagged
    label_ids = {label: i for i, label in enumerate(labels)}
    encoded = {name: encode(examples, tokenizer, label_ids, hp.sequence_length)
               for name, examples in (("train", splits.train), ("valid", splits.valid),
                                      ("test", splits.test)) if examples is not None}
    train = encoded["train"]
    for name, split in encoded.items():
        if split.truncated:
            unit = "texts" if config.task == "text_classification" else "sentences"
            reporter.event("warning" if name == "train" else "info",
                           f"{split.truncated} of {len(split)} {name} {unit} were cut to "
                           f"sequence_length ({hp.sequence_length} tokens)")
    bio = config.task == "token_classification" and is_bio(labels)
    score = partial(evaluate, labels=labels, bio=bio, fallback=most_frequent(train),
                    batch_size=hp.batch_size, pad_id=tokenizer.pad_token_id, device=dev)

    # -- Schedule and optimizer: the pretraining engine's AdamW and warmup + linear decay.
    steps_per_epoch = math.ceil(len(train) / hp.batch_size)
    total = hp.max_steps or hp.epochs * steps_per_epoch
    eval_every = config.eval_every or steps_per_epoch
    checkpoint_every = config.checkpoint_every or steps_per_epoch
    schedule = Hyperparameters(
        max_steps=total, batch_size=hp.batch_size, sequence_length=hp.sequence_length,
        learning_rate=hp.learning_rate, warmup_steps=round(hp.warmup_ratio * total),
        weight_decay=hp.weight_decay, seed=hp.seed, max_grad_norm=hp.max_grad_norm)
    optimizer = build_optimizer(model, schedule, resolve_optimizer_impl("auto", dev.type))
    reporter.event("info", f"{total} steps of {hp.batch_size} examples: "
                           f"{total * hp.batch_size / len(train):.2f} epochs of {len(train)} "
                           f"training examples; {len(encoded['valid'])} validation examples")
    # A seeded shuffle per epoch, whose whole state is (epoch, position): exact resume.
    sampler = BlockSampler([len(train)], hp.batch_size, hp.seed)
    step, tokens_seen = 0, 0
    # What must be the same for a checkpoint to continue this run.
    settings = {k: v for k, v in config.to_dict().items()
                if k not in ("log_every", "eval_every", "checkpoint_every")}
    fingerprint = json.loads(json.dumps({
        "config": settings, "labels": labels, "base_model": base_model_dir is not None,
        "examples": {name: len(split) for name, split in encoded.items()},
        "tokens": {name: split.tokens() for name, split in encoded.items()},
    }))

    if resume_from is not None:
        state = read_trainer_state(resume_from)
        if state.get("fingerprint") != fingerprint:
            raise ConfigError("the checkpoint was made by another fine-tuning run (other data, "
                              "labels or settings)")
        load_checkpoint(resume_from, state, weights, optimizer)
        step, tokens_seen = state["step"], state["tokens_seen"]
        position = state["rng"]["sampler"]
        sampler = BlockSampler([len(train)], hp.batch_size, hp.seed,
                               position["epoch"], position["position"])
        torch.set_rng_state(decode_rng_state(state["rng"]["torch"]))  # dropout
        if dev.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(decode_rng_state(state["rng"]["cuda"]), dev)
        reporter.event("info", f"resumed from the checkpoint of step {step}")

    autocast = (torch.autocast(dev.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    window = _Window()
    stopped = False
    final_eval: dict[str, Any] | None = None
    last_checkpoint: str | None = None
    workdir_path = Path(workdir)

    while step < total:
        if reporter.should_stop():
            stopped = True
            break
        t0 = time.perf_counter()
        learning_rate = hp.learning_rate * lr_factor(step, schedule)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate

        # -- Batch: the next examples of this epoch's shuffle, padded to the longest.
        batch = collate(train, sampler.next_batch().tolist(), tokenizer.pad_token_id)
        tokens = int(batch["attention_mask"].sum())  # real tokens, not padding
        batch = {k: v.to(dev, non_blocking=True) for k, v in batch.items()}

        # -- Forward/backward: the model's own loss, a mean over the batch's examples
        # (text) or labelled first pieces (tagging).
        with autocast:
            loss = model(**batch).loss
        loss.backward()
        # clip_grad_norm_ returns the norm from before clipping, which is what we report.
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens
        window.steps += 1
        window.tokens += tokens
        window.loss = window.loss + loss.detach()
        window.grad_norm = window.grad_norm + grad_norm.detach()
        last = step == total

        # -- Log: means over the steps since the previous log point.
        if step % config.log_every == 0 or last:
            train_loss = float(window.loss) / window.steps
            mean_grad_norm = float(window.grad_norm) / window.steps
            window.seconds += time.perf_counter() - t0
            _check_finite("loss", train_loss, step)
            _check_finite("gradient norm", mean_grad_norm, step)
            reporter.log({
                "step": step,
                "train_loss": train_loss,
                "learning_rate": float(learning_rate),
                "grad_norm": mean_grad_norm,
                "tokens_per_second": window.tokens / max(window.seconds, 1e-9),
                "tokens_seen": tokens_seen,
            })
            window = _Window()
        else:
            # Training time only: eval and checkpoint pauses would read as throughput dips.
            window.seconds += time.perf_counter() - t0

        # -- Eval on the validation split: once per epoch by default, always at the end.
        if step % eval_every == 0 or last:
            final_eval = {"step": step, **score(model, encoded["valid"])}
            _check_finite("eval loss", final_eval["eval_loss"], step)
            reporter.eval(final_eval)

        # -- Checkpoint, always at the last step; the manifest is written last.
        if step % checkpoint_every == 0 or last:
            directory = save_checkpoint(
                checkpoint_dir(workdir_path, step), step=step, model=weights,
                tokenizer=tokenizer, optimizer=optimizer,
                trainer_state={"tokens_seen": tokens_seen,
                               "config": config.to_dict(), "fingerprint": fingerprint,
                               "rng": _rng_state(sampler, dev)},
            )
            last_checkpoint = str(directory)
            reporter.checkpoint(step, last_checkpoint)

    # -- Export (only a finished run makes a model) and the test split, scored on it.
    export_dir, test_metrics = None, None
    if stopped:
        reporter.event("info", f"stopped at step {step} of {total}; no export written")
    else:
        if final_eval is None:  # resumed from the last step's checkpoint
            final_eval = {"step": step, **score(model, encoded["valid"])}
            reporter.eval(final_eval)
        # With LoRA the adapters are folded in: a plain model that transformers loads alone.
        final = merge(model) if config.adapter is not None else model
        export_dir = str(save_export(workdir_path / "export", final, tokenizer))
        if "test" in encoded:
            test_metrics = score(final, encoded["test"])
            reporter.event("info", f"test ({len(encoded['test'])} examples): "
                                   f"{_describe(test_metrics)}")
    elapsed = time.perf_counter() - started
    reporter.event("info", f"finished in {elapsed:.1f} s after {step} steps")
    return FinetuneResult(
        export_dir=export_dir, task=config.pipeline_task, steps=step, stopped=stopped,
        labels=labels, final_eval=final_eval, test_metrics=test_metrics,
        num_parameters=num_parameters, trainable_parameters=trainable,
        last_checkpoint=last_checkpoint, elapsed_seconds=elapsed,
    )


def _rng_state(sampler: BlockSampler, device: torch.device) -> dict[str, Any]:
    """The data position and the dropout RNG, so a resumed run draws what this one would."""
    rng = {"sampler": sampler.state(), "torch": encode_rng_state(torch.get_rng_state())}
    if device.type == "cuda":
        rng["cuda"] = encode_rng_state(torch.cuda.get_rng_state(device))
    return rng
