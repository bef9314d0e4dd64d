"""The one training loop: every job runs it, with its objective or task as a plug-in.

The loop owns the clock: optimizer and learning rate, precision and micro-batches, logging,
evaluation, checkpoints and exact resume, cancellation, divergence and capacity checks,
progress, export. What differs between jobs lives in the Objective (objective.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from jobspec.common import EarlyStopping
from jobspec.metrics import EVAL_LOSS, TrainPoint, eval_point
from jobspec.pooling import Pooling, write_pooling
from workers.engine.architectures import count_parameters, peak_flops
from workers.engine.checkpoint import (
    checkpoint_dir,
    decode_rng_state,
    encode_rng_state,
    read_best_weights,
    read_trainer_state,
    save_checkpoint,
)
from workers.engine.distributed import SINGLE, Parallel
from workers.engine.early_stop import BestSoFar
from workers.engine.failures import ConfigError, EngineError
from workers.engine.fit_check import check_fits
from workers.engine.model_card import model_card, serves_embeddings
from workers.engine.objective import Batch, Objective
from workers.engine.optim import Schedule, build_optimizer, lr_factor, resolve_optimizer_impl
from workers.engine.reporter import Pausable, Reporter
from workers.engine.speed import host_memory_kept, resolve_precision


@dataclass(frozen=True)
class LoopSettings:
    """How the loop runs; built from the job spec by the pretraining or fine-tuning entry."""

    schedule: Schedule
    batch_size: int
    micro_batch: int
    learning_rate: float
    weight_decay: float
    max_grad_norm: float
    precision: str = "auto"
    optimizer_impl: str = "auto"
    log_every: int = 10
    eval_every: int = 100
    checkpoint_every: int = 500
    # Training FLOPs per token, for MFU on GPUs of known peak; 0 = not reported.
    flops_per_token: float = 0.0
    # A rough upper bound of training memory; the loop refuses to start beyond the worker's.
    memory_bytes: int = 0
    # Evaluate before the first step (continued pretraining: where the base model stands).
    eval_at_start: bool = False
    # End the run when an eval metric stops improving; export the best eval's weights.
    early_stopping: EarlyStopping | None = None
    # Cloze probes scored at every eval (workers/engine/probes.py), given the device.
    probes: Callable[..., list[dict[str, Any]]] | None = None
    # How an encoder's export embeds texts: the base model's pooling when it had its own
    # (a sentence-transformers model continued or fine-tuned keeps it), else mean pooling.
    pooling: Pooling | None = None

    @property
    def total_steps(self) -> int:
        return self.schedule.total


@dataclass
class LoopResult:
    """What a run produced; export_dir is None when it was stopped."""

    export_dir: str | None
    steps: int
    tokens_seen: int
    stopped: bool
    final_eval: dict[str, Any] | None = None
    num_parameters: int = 0
    trainable_parameters: int = 0
    last_checkpoint: str | None = None
    elapsed_seconds: float = 0.0
    # With early stopping: the step whose weights were exported (the best eval's).
    best_step: int | None = None


@dataclass
class _Window:
    """Training metrics accumulated between two log points (on the device: no sync per step)."""

    steps: int = 0
    loss: Any = 0.0
    grad_norm: Any = 0.0
    tokens: int = 0
    seconds: float = 0.0

    def state(self) -> dict[str, Any]:
        """For a checkpoint between two log points: the resumed run's next point then
        averages the same steps, to the bit (a float32 sum restored as a float is exact)."""
        return {"steps": self.steps, "loss": float(self.loss),
                "grad_norm": float(self.grad_norm), "tokens": self.tokens,
                "seconds": self.seconds}


def check_finite(name: str, value: float, step: int) -> None:
    """EngineError (the job fails at once) if a loss or norm is NaN or infinite."""
    if not math.isfinite(value):
        raise EngineError(
            f"training diverged: {name} is {value} at step {step}; lower the learning rate"
        )


def pick_device(device: str | None) -> torch.device:
    """The requested device, else the current CUDA device, else the CPU."""
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def _micro_batches(batch: Batch, size: int) -> list[Batch]:
    n = len(next(iter(batch.values())))
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


def _rng_state(objective: Objective, device: torch.device, parallel: Parallel
               ) -> dict[str, Any]:
    """Every source of randomness, so a resumed run draws exactly what this one would have.
    The objective's (data order, masks) is the same on every rank; dropout's is each rank's
    own (a collective under torch.distributed: every rank calls it)."""
    rng = {"torch": encode_rng_state(torch.get_rng_state())}  # dropout on CPU
    if device.type == "cuda":
        rng["cuda"] = encode_rng_state(torch.cuda.get_rng_state(device))
    ranks = parallel.gather(rng)
    return {"objective": objective.state(), **ranks[0],
            **({"ranks": ranks} if parallel.active else {})}


def _restore_rng(rng: dict[str, Any], objective: Objective, device: torch.device,
                 parallel: Parallel) -> None:
    objective.restore(rng["objective"])
    own = rng["ranks"][parallel.rank] if parallel.active else rng
    torch.set_rng_state(decode_rng_state(own["torch"]))
    if device.type == "cuda" and "cuda" in own:
        torch.cuda.set_rng_state(decode_rng_state(own["cuda"]), device)


def _log_point(window: _Window, step: int, total: int, learning_rate: float,
               tokens_seen: int, flops_per_token: float, peak: float | None
               ) -> TrainPoint:
    """The metrics of a log point: means over the steps since the previous one."""
    train_loss = float(window.loss) / window.steps
    grad_norm = float(window.grad_norm) / window.steps
    check_finite("loss", train_loss, step)
    check_finite("gradient norm", grad_norm, step)
    tokens_per_second = window.tokens / max(window.seconds, 1e-9)
    point = TrainPoint(step=step, total_steps=total, train_loss=train_loss,
                       learning_rate=float(learning_rate), grad_norm=grad_norm,
                       tokens_per_second=tokens_per_second, tokens_seen=tokens_seen)
    if peak is not None and flops_per_token:
        point["mfu"] = tokens_per_second * flops_per_token / peak
    return point


def _resume(directory: str, fingerprint: dict[str, Any], objective: Objective,
            optimizer: torch.optim.Optimizer, device: torch.device, parallel: Parallel
            ) -> tuple[int, int, dict[str, Any] | None, _Window]:
    """Load a checkpoint of this run into the model, optimizer and random generators;
    returns (step, tokens seen, early stopping's counters, the open log window) at the
    checkpoint."""
    state = read_trainer_state(directory)
    if state.get("fingerprint") != fingerprint:
        raise ConfigError("the checkpoint was made by another run (other data, model "
                          "or settings)")
    parallel.load(directory, state, objective.weights, optimizer)
    _restore_rng(state["rng"], objective, device, parallel)
    return (state["step"], state["tokens_seen"], state.get("early_stopping"),
            _Window(**state.get("log_window") or {}))


def _architecture(objective: Objective) -> str:
    config = getattr(objective.model, "config", None)
    return str(getattr(config, "model_type", "transformer"))


def _card(objective: Objective, step: int, total: int, tokens_seen: int, num_parameters: int,
          evaluation: dict[str, Any] | None, pooling: Pooling | None = None) -> str:
    return model_card(spec=objective.fingerprint().get("spec", {}), step=step,
                      total_steps=total, tokens_seen=tokens_seen,
                      num_parameters=num_parameters, evaluation=evaluation,
                      mask_token=getattr(objective.tokenizer, "mask_token", None),
                      architecture=_architecture(objective), pooling=pooling)


def _write_pooling(objective: Objective, export_dir: Path, pooling: Pooling | None
                   ) -> Pooling | None:
    """An encoder's export says how it embeds texts (its base's pooling, else mean pooling,
    as Cloze serves it) in sentence-transformers' files, so SentenceTransformer(export)
    embeds alike; the pooling written, if any."""
    hidden = getattr(getattr(objective.model, "config", None), "hidden_size", None)
    spec = objective.fingerprint().get("spec", {})
    if not isinstance(hidden, int) or not serves_embeddings(spec, _architecture(objective)):
        return None
    pooling = pooling or Pooling()
    write_pooling(export_dir, pooling, hidden)
    return pooling


def train(objective: Objective, settings: LoopSettings, workdir: str, reporter: Reporter,
          device: torch.device, resume_from: str | None = None,
          parallel: Parallel = SINGLE) -> LoopResult:
    """Train objective.model for settings.total_steps; checkpoint and export under workdir.

    resume_from, a checkpoint directory of a run with the same fingerprint, continues that
    run exactly where it stopped: same weights, optimizer, rates, random draws and data order.
    parallel: this process's rank in a multi-process run (workers/engine/distributed.py).
    """
    with host_memory_kept():
        return _train(objective, settings, workdir, parallel.reporter(reporter), device,
                      resume_from, parallel)


def _step(objective: Objective, settings: LoopSettings, optimizer: torch.optim.Optimizer,
          autocast: contextlib.AbstractContextManager[Any], device: torch.device,
          parallel: Parallel) -> tuple[torch.Tensor, torch.Tensor, int]:
    """One optimizer step on the next batch: its loss, the gradient norm before clipping,
    and its tokens."""
    # Forward/backward per micro-batch; each loss is its share of the batch mean, so the
    # accumulated gradient is that of the whole batch. Under torch.distributed each rank
    # takes its rows of the global batch, and the norms stay the global batch's
    # (distributed.py).
    model = objective.model
    batch, norms = objective.next_batch()
    loss_sum = torch.zeros((), device=device)
    for micro in _micro_batches(parallel.shard(batch), settings.micro_batch):
        with autocast:
            loss = parallel.call(objective.loss, micro, norms, device)
        loss.backward()
        loss_sum += loss.detach()
    parallel.reduce_gradients(model)
    loss_sum = parallel.sum(loss_sum)
    # clip_grad_norm_ returns the norm from before clipping, which is what we report.
    grad_norm = parallel.norm(
        torch.nn.utils.clip_grad_norm_(model.parameters(), settings.max_grad_norm))
    optimizer.step()
    # An objective may act between the step and the clearing of its gradients (AdaLoRA
    # reallocates adapter ranks by them): its optional after_step (objective.py).
    after_step = getattr(objective, "after_step", None)
    if after_step is not None:
        after_step()
    optimizer.zero_grad(set_to_none=True)
    return loss_sum, grad_norm, objective.tokens(batch)


def _evaluate(objective: Objective, settings: LoopSettings, device: torch.device, step: int,
              total: int, reporter: Reporter, best: BestSoFar | None, parallel: Parallel
              ) -> tuple[dict[str, Any], bool]:
    """The held-out evaluation at `step`, with the probes, reported; True when early
    stopping ends the run here."""
    evaluation: dict[str, Any] = {"step": step, **parallel.call(objective.evaluate, device)}
    if settings.probes is not None:
        evaluation["probes"] = parallel.call(settings.probes, device=device)
    check_finite("eval loss", evaluation[EVAL_LOSS], step)
    reporter.eval(eval_point(evaluation))
    if best is None or not best.update(evaluation, objective.weights):
        return evaluation, False
    rule = best.rule
    reporter.event("info", f"early stopping at step {step} of {total}: {rule.metric} has "
                   f"not improved by more than {rule.min_delta} for {rule.patience} "
                   f"evaluations; the best, {best.value:.6g} at step {best.step}, is the model")
    return evaluation, True


def _keep_best(objective: Objective, best: BestSoFar | None, step: int,
               final_eval: dict[str, Any], reporter: Reporter) -> dict[str, Any]:
    """With early stopping, the best eval's weights become the model's; its evaluation."""
    if best is None or best.step is None or best.step == step:
        return final_eval
    if best.weights is None:  # the best's weights were in the memory of an attempt that ended
        reporter.event("warning", f"the weights of the best eval (step {best.step}) did not "
                       "survive the restart; the model is the last step's")
        return final_eval
    objective.weights.load_state_dict(best.weights)
    return best.evaluation or final_eval  # set whenever best.step is


def _train(objective: Objective, settings: LoopSettings, workdir: str, reporter: Reporter,
           device: torch.device, resume_from: str | None, parallel: Parallel) -> LoopResult:
    started = time.perf_counter()
    total = settings.total_steps
    check_fits(settings.memory_bytes, device)
    model = objective.model
    model.to(device)
    model.train()
    num_parameters = count_parameters(model)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    bf16 = resolve_precision(settings.precision, device)
    impl = resolve_optimizer_impl(settings.optimizer_impl, device.type)
    parallel = parallel.prepare(model, objective.weights, device)  # fsdp: sharded now
    optimizer = build_optimizer(model, settings.weight_decay, settings.learning_rate, impl)
    reporter.event("info", f"{num_parameters:,} parameters, {trainable:,} trained, on "
                           f"{device}; {'bf16' if bf16 else 'fp32'}, {impl} AdamW, "
                           f"{settings.micro_batch} examples per micro-batch; {total} steps")
    if parallel.active:
        reporter.event("info", parallel.started())
        parallel.decorrelate_dropout()
    # Checkpoints are only continued by a run of the same data, shape and settings.
    fingerprint = json.loads(json.dumps(objective.fingerprint()))
    step, tokens_seen = 0, 0
    window = _Window()
    best = BestSoFar(settings.early_stopping) if settings.early_stopping else None
    if resume_from is not None:
        step, tokens_seen, counters, window = _resume(resume_from, fingerprint, objective,
                                                      optimizer, device, parallel)
        reporter.event("info", f"resumed from the checkpoint of step {step} "
                               f"({tokens_seen} tokens seen)")
        if best is not None:
            best.restore(counters, objective.weights, step, read_best_weights(resume_from))

    autocast = (torch.autocast(device.type, dtype=torch.bfloat16) if bf16
                else contextlib.nullcontext())
    peak = peak_flops(device)
    if peak is not None:  # tokens/s are the global batch's: MFU is over all the devices
        peak *= parallel.world
    stopped = False
    final_eval: dict[str, Any] | None = None
    last_checkpoint: str | None = None
    checkpointed = step  # the step of the newest checkpoint (or the start)
    workdir_path = Path(workdir)

    def save() -> str:
        """Checkpoint the step reached (rank 0 writes it); the manifest is written last."""
        rng = _rng_state(objective, device, parallel)
        whole = parallel.whole(objective.weights, optimizer)  # fsdp: gathered to rank 0
        if whole is None:
            return ""
        directory = save_checkpoint(
            checkpoint_dir(workdir_path, step), step=step, model=whole[0],
            tokenizer=objective.tokenizer, optimizer=whole[1],
            trainer_state={"tokens_seen": tokens_seen, "fingerprint": fingerprint,
                           "rng": rng,
                           "early_stopping": best.state() if best else None,
                           "log_window": window.state()},
            card=_card(objective, step, total, tokens_seen, num_parameters, final_eval),
            # Under fsdp the best weights are each rank's shards: kept in memory only.
            best_weights=best.saved(step) if best and parallel.strategy != "fsdp" else None,
        )
        reporter.checkpoint(step, str(directory))
        return str(directory)

    early = False
    if settings.eval_at_start and step == 0:
        final_eval, _ = _evaluate(objective, settings, device, step, total, reporter, best,
                                  parallel)

    while step < total:
        if reporter.should_stop():
            stopped = True
            # A pause keeps the step reached, to be resumed exactly by a later run.
            if isinstance(reporter, Pausable) and reporter.pausing() and step > checkpointed:
                last_checkpoint = save()
            break
        t0 = time.perf_counter()
        learning_rate = settings.learning_rate * lr_factor(step, settings.schedule)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate

        loss_sum, grad_norm, tokens = _step(objective, settings, optimizer, autocast, device,
                                            parallel)
        step += 1
        tokens_seen += tokens
        window.steps += 1
        window.tokens += tokens
        window.loss = window.loss + loss_sum
        window.grad_norm = window.grad_norm + grad_norm.detach()
        last = step == total

        # -- Log: means over the steps since the previous log point. .item() waits for the
        # device, so the step's time below includes all the work queued since the last log.
        if step % settings.log_every == 0 or last:
            window.seconds += time.perf_counter() - t0
            reporter.log(_log_point(window, step, total, learning_rate, tokens_seen,
                                    settings.flops_per_token, peak))
            window = _Window()
        else:
            # Training time only: eval and checkpoint pauses would read as throughput dips.
            window.seconds += time.perf_counter() - t0

        # -- Eval on the held-out data, always at the last step.
        if step % settings.eval_every == 0 or last:
            final_eval, early = _evaluate(objective, settings, device, step, total, reporter,
                                          best, parallel)
            last = last or early

        # -- Checkpoint, always at the last step.
        if step % settings.checkpoint_every == 0 or last:
            last_checkpoint, checkpointed = save(), step
        if early:
            break

    # -- Export: only a finished run produces a model.
    export_dir = None
    if stopped:
        reporter.event("info", f"stopped at step {step} of {total}; no export written")
    else:
        if final_eval is None:  # resumed from the last step's checkpoint
            final_eval = {"step": step, **parallel.call(objective.evaluate, device)}
            reporter.eval(eval_point(final_eval))
        final_eval = _keep_best(objective, best, step, final_eval, reporter)
        parallel.unshard(objective)  # fsdp: the whole model back on rank 0
    if not stopped and parallel.main:  # the other ranks hold the same weights
        export_dir = str(objective.export(workdir_path / "export"))
        pooling = _write_pooling(objective, Path(export_dir), settings.pooling)
        (Path(export_dir) / "README.md").write_text(
            _card(objective, step, total, tokens_seen, num_parameters, final_eval,
                  pooling), encoding="utf-8")
    elapsed = time.perf_counter() - started
    reporter.event("info", f"finished in {elapsed:.1f} s after {step} steps")
    return LoopResult(
        export_dir=export_dir, steps=step, tokens_seen=tokens_seen, stopped=stopped,
        final_eval=final_eval, num_parameters=num_parameters, trainable_parameters=trainable,
        last_checkpoint=last_checkpoint, elapsed_seconds=elapsed,
        best_step=None if best is None or best.weights is None else best.step,
    )
