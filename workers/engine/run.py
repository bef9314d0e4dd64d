"""run_pretraining: a masked-LM pretraining job from a corpus file to an exported model."""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.engine.blocks import BlockSampler, encode_corpus, pack_blocks, split_blocks
from workers.engine.checkpoint import (
    checkpoint_dir,
    encode_rng_state,
    save_checkpoint,
    save_export,
)
from workers.engine.config import PretrainConfig
from workers.engine.corpus import iter_documents
from workers.engine.errors import CorpusError, EngineError
from workers.engine.evaluate import Evaluator
from workers.engine.masking import Masker
from workers.engine.model import build_model, count_parameters, mlm_loss
from workers.engine.optim import build_optimizer, build_scheduler
from workers.engine.reporter import Reporter
from workers.engine.tokenizer import count_characters, train_tokenizer

STOP_POLL_DOCUMENTS = 256  # while reading the corpus, ask should_stop() this often


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


class _StopRequested(Exception):
    """should_stop() said yes while the corpus was being read."""


class _Documents:
    """Re-iterable corpus view that counts documents and polls for a stop request."""

    def __init__(self, path: str, corpus_format: str, reporter: Reporter) -> None:
        self.path, self.format, self.reporter = path, corpus_format, reporter
        self.count = 0

    def __iter__(self) -> Iterator[str]:
        self.count = 0
        for doc in iter_documents(self.path, self.format):
            if self.count % STOP_POLL_DOCUMENTS == 0 and self.reporter.should_stop():
                raise _StopRequested
            self.count += 1
            yield doc


@dataclass
class _Window:
    """Training metrics accumulated between two log points."""

    steps: int = 0
    loss: float = 0.0
    grad_norm: float = 0.0
    seconds: float = 0.0


def _check_finite(name: str, value: float, step: int) -> None:
    if not math.isfinite(value):
        raise EngineError(
            f"training diverged: {name} is {value} at step {step}; lower the learning rate"
        )


def run_pretraining(
    config: PretrainConfig,
    corpus_path: str,
    corpus_format: str,
    workdir: str,
    reporter: Reporter,
    device: str | None = None,
) -> PretrainResult:
    """Train a tokenizer and a BERT masked LM on the corpus; checkpoint and export under workdir."""
    started = time.perf_counter()
    hp = config.hyperparameters
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    documents = _Documents(corpus_path, corpus_format, reporter)

    # -- Tokenizer and data: three streaming passes over the corpus (characters, tokenizer
    # training, encoding); only the packed token ids are kept in memory.
    try:
        char_counts = count_characters(documents)
        if documents.count == 0:
            raise CorpusError("the corpus has no documents: the file is empty or has only "
                              "blank lines")
        reporter.event("info", f"training {config.tokenizer.type} tokenizer "
                               f"(vocab {config.tokenizer.vocab_size}) on {documents.count} "
                               "documents")
        tokenizer = train_tokenizer(documents, char_counts, config.tokenizer,
                                    config.model.max_position_embeddings)
        vocab_size = len(tokenizer)
        reporter.event("info", f"trained tokenizer: {vocab_size} tokens in the vocabulary")
        stream = encode_corpus(documents, tokenizer)
    except _StopRequested:
        reporter.event("info", "stopped while reading the corpus")
        return PretrainResult(None, 0, 0, True, elapsed_seconds=time.perf_counter() - started)

    seq = hp.sequence_length
    blocks = pack_blocks(stream, seq, tokenizer.cls_token_id, tokenizer.sep_token_id)
    if len(blocks) < 2:
        raise CorpusError(
            f"the corpus is too small: it has {len(stream)} tokens, but at least "
            f"{2 * (seq - 2)} are needed to make 2 blocks of sequence_length {seq}; "
            "add text or lower sequence_length"
        )
    train_blocks, valid_blocks = split_blocks(blocks, config.validation_fraction)
    corpus_info = {"documents": documents.count, "tokens": len(stream),
                   "train_blocks": len(train_blocks), "validation_blocks": len(valid_blocks)}
    tokenizer_info = {"type": config.tokenizer.type, "vocab_size": vocab_size,
                      "lowercase": config.tokenizer.lowercase}
    del stream, blocks
    reporter.event("info", f"tokenized {corpus_info['tokens']} tokens into "
                           f"{len(train_blocks) + len(valid_blocks)} blocks "
                           f"({len(train_blocks)} train / {len(valid_blocks)} validation)")
    epochs = hp.max_steps * hp.batch_size / len(train_blocks)
    reporter.event("info", f"{hp.max_steps} steps of {hp.batch_size} blocks cover "
                           f"{epochs:.2f} epochs of the training blocks")

    # -- Model, optimizer, masking. Masks are drawn on CPU from their own generator, so they
    # do not depend on the device; eval masks are drawn once, see Evaluator.
    model = build_model(config.model, vocab_size, tokenizer.pad_token_id, hp.seed).to(device)
    model.train()
    num_parameters = count_parameters(model)
    m = config.model
    reporter.event("info", f"model has {num_parameters:,} parameters ({m.num_layers} layers, "
                           f"hidden {m.hidden_size}, {m.num_heads} heads) on {device}")
    optimizer = build_optimizer(model, hp)
    scheduler = build_scheduler(optimizer, hp)
    masker = Masker(vocab_size, tokenizer.all_special_ids, tokenizer.mask_token_id,
                    hp.mask_probability)
    evaluator = Evaluator(valid_blocks, masker, hp.batch_size)
    sampler = BlockSampler(len(train_blocks), hp.batch_size, hp.seed)
    mask_generator = torch.Generator().manual_seed(hp.seed)

    tokens_per_step = hp.batch_size * seq
    step, tokens_seen, stopped = 0, 0, False
    window = _Window()
    final_eval: dict[str, Any] | None = None
    last_checkpoint: str | None = None
    workdir_path = Path(workdir)

    while step < hp.max_steps:
        if reporter.should_stop():
            stopped = True
            break
        t0 = time.perf_counter()

        # -- Batch: next blocks of the seeded shuffle, corrupted BERT-style.
        batch = torch.from_numpy(train_blocks[sampler.next_batch()].astype(np.int64))
        inputs, labels = masker(batch, mask_generator)
        inputs, labels = inputs.to(device), labels.to(device)

        # -- Forward/backward. .item() syncs with the device; we need it to stop on NaN at once.
        loss = mlm_loss(model, inputs, labels)
        loss.backward()
        loss_value = loss.item()
        _check_finite("loss", loss_value, step + 1)
        # clip_grad_norm_ returns the norm from before clipping, which is what we report.
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), hp.max_grad_norm).item()
        _check_finite("gradient norm", grad_norm, step + 1)

        # -- Update. The logged rate is the one this step used.
        learning_rate = scheduler.get_last_lr()[0]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_seen += tokens_per_step
        window.steps += 1
        window.loss += loss_value
        window.grad_norm += grad_norm
        # Training time only: eval and checkpoint pauses would read as throughput dips.
        window.seconds += time.perf_counter() - t0
        last = step == hp.max_steps

        # -- Log: means over the steps since the previous log point.
        if step % config.log_every == 0 or last:
            reporter.log({
                "step": step,
                "train_loss": window.loss / window.steps,
                "learning_rate": float(learning_rate),
                "grad_norm": window.grad_norm / window.steps,
                "tokens_per_second": window.steps * tokens_per_step / max(window.seconds, 1e-9),
                "tokens_seen": tokens_seen,
            })
            window = _Window()

        # -- Eval on the held-out blocks, always at the last step.
        if step % config.eval_every == 0 or last:
            metrics = evaluator(model, device)
            _check_finite("eval loss", metrics["eval_loss"], step)
            final_eval = {"step": step, **metrics}
            reporter.eval(final_eval)

        # -- Checkpoint, always at the last step; the manifest is written last.
        if step % config.checkpoint_every == 0 or last:
            rng = {"seed": hp.seed, "sampler": sampler.state(),
                   "mask_generator": encode_rng_state(mask_generator.get_state()),
                   "torch": encode_rng_state(torch.get_rng_state())}
            if torch.device(device).type == "cuda":
                rng["cuda"] = encode_rng_state(torch.cuda.get_rng_state(device))
            directory = save_checkpoint(
                checkpoint_dir(workdir_path, step), step=step, model=model, tokenizer=tokenizer,
                optimizer=optimizer, scheduler=scheduler,
                trainer_state={"tokens_seen": tokens_seen, "config": config.to_dict(),
                               "rng": rng, "corpus": corpus_info},
            )
            last_checkpoint = str(directory)
            reporter.checkpoint(step, last_checkpoint)

    # -- Export: only a finished run produces a model.
    export_dir = None
    if stopped:
        reporter.event("info", f"stopped at step {step} of {hp.max_steps}; no export written")
    else:
        export_dir = str(save_export(workdir_path / "export", model, tokenizer))
    elapsed = time.perf_counter() - started
    reporter.event("info", f"finished in {elapsed:.1f} s after {step} steps")
    return PretrainResult(
        export_dir=export_dir, steps=step, tokens_seen=tokens_seen, stopped=stopped,
        final_eval=final_eval, num_parameters=num_parameters, tokenizer_info=tokenizer_info,
        corpus_info=corpus_info, last_checkpoint=last_checkpoint, elapsed_seconds=elapsed,
    )
