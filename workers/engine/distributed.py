"""Data-parallel training over torch.distributed: the few hooks the loop calls.

Every rank builds the same model from the same seed and draws the same global batch (same
sampler, same masking generator) as a 1-process run would, then trains on its own slice of
it (rank r: rows r*B/N .. (r+1)*B/N). The normalisers (masked tokens, predicted tokens) are
those of the global batch, so each rank's loss is its share of the global batch mean; the
gradients are summed over ranks with all_reduce, which makes them the 1-process run's up to
float summation order. Gradients are reduced here rather than by the DDP wrapper because
the objectives call parts of the model (encoder, head), past DDP's forward hook.

Rank 0 reports, checkpoints and exports; it alone polls for a stop (cancel, pause) and
broadcasts its decision to all ranks every step, so every rank stops at the same step.
Every rank evaluates the same held-out rows (the same numbers), so early stopping and
divergence checks decide alike on all of them without another broadcast.

With resources.strategy fsdp the model is sharded among the ranks (fsdp.py): prepare()
returns a Parallel whose hooks (call, norm, whole, load, unshard) do what sharding needs;
the loop calls the same hooks either way.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from jobspec.metrics import EvalPoint, TrainPoint
from workers.engine.checkpoint import load_checkpoint
from workers.engine.objective import Batch
from workers.engine.reporter import Reporter

# Gradients are all-reduced in buckets of this many elements (DDP's default is 25 MB):
# one flat copy of the whole model's gradients would double their memory.
BUCKET_ELEMENTS = 25 * 2**20 // 4


@dataclass(frozen=True)
class Parallel:
    """This process's place in the run: rank 0 of 1 for an ordinary run."""

    rank: int = 0
    world: int = 1
    # How the ranks hold the model (resources.strategy): ddp, a whole copy each; fsdp,
    # sharded among them (fsdp.py, once prepare() sharded it).
    strategy: str = "ddp"

    @property
    def main(self) -> bool:
        """Whether this rank reports, checkpoints and exports."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    def prepare(self, model: torch.nn.Module, weights: torch.nn.Module,
                device: torch.device) -> Parallel:
        """This rank's Parallel for the run of model (on its device; weights: what
        checkpoints hold, see Objective): under fsdp, one that holds the model sharded."""
        if self.strategy != "fsdp" or not self.active:
            return self
        from workers.engine.fsdp import fully_shard_model  # which subclasses Parallel

        return fully_shard_model(self, model, weights, device)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """fn(*args, **kwargs), a function that runs the model (a loss, an evaluation)."""
        return fn(*args, **kwargs)

    def norm(self, value: torch.Tensor) -> torch.Tensor:
        """The gradient norm clip_grad_norm_ returned, as a plain tensor."""
        return value

    def whole(self, weights: torch.nn.Module, optimizer: torch.optim.Optimizer
              ) -> tuple[torch.nn.Module, torch.optim.Optimizer] | None:
        """What rank 0 checkpoints (the model and optimizer); None on the other ranks."""
        return (weights, optimizer) if self.main else None

    def load(self, directory: str | Path, state: dict[str, Any], weights: torch.nn.Module,
             optimizer: torch.optim.Optimizer) -> None:
        """A checkpoint's weights and optimizer state (read_trainer_state's state)."""
        load_checkpoint(directory, state, weights, optimizer)

    def unshard(self, objective: Any) -> None:
        """The run is over: rank 0's objective holds the whole model, to export."""

    def shard(self, batch: Batch) -> Batch:
        """This rank's rows of the global batch (batch_size / processes of them: the spec
        makes it a multiple; were it not, the first ranks would take one row more)."""
        if not self.active:
            return batch
        return {k: v.tensor_split(self.world)[self.rank] for k, v in batch.items()}

    def reduce_gradients(self, model: torch.nn.Module) -> None:
        """Sum the gradients over ranks: each rank's are of its share of the global loss."""
        if not self.active:
            return
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        for bucket in _buckets(grads):
            flat = torch.cat([g.flatten() for g in bucket])
            dist.all_reduce(flat)
            offset = 0
            for g in bucket:
                g.copy_(flat[offset:offset + g.numel()].view_as(g))
                offset += g.numel()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """The sum of a rank-local tensor over ranks (a loss's shares: the global loss)."""
        if self.active:
            value = value.clone()
            dist.all_reduce(value)
        return value

    def gather(self, value: Any) -> list[Any]:
        """Every rank's value (a JSON-able object), in rank order, on every rank."""
        if not self.active:
            return [value]
        values: list[Any] = [None] * self.world
        dist.all_gather_object(values, value)
        return values

    def decorrelate_dropout(self) -> None:
        """Every rank starts from the model seed's generator; ranks past 0 move off it, so
        their dropout masks differ from rank 0's (rank 0 keeps the 1-process run's)."""
        if self.rank > 0:
            torch.manual_seed(torch.initial_seed() + self.rank)

    def started(self) -> str:
        """The event that says where a multi-process run trains."""
        return (f"training on {self.world} processes ({dist.get_backend()}), "
                "each on its slice of every batch" +
                (", the model sharded among them (fsdp)" if self.strategy == "fsdp" else ""))

    def reporter(self, reporter: Reporter) -> Reporter:
        """What the loop reports to on this rank (see RankReporter)."""
        if not self.active or isinstance(reporter, RankReporter):
            return reporter
        return RankReporter(self, reporter)


def _buckets(grads: list[torch.Tensor]) -> list[list[torch.Tensor]]:
    buckets: list[list[torch.Tensor]] = [[]]
    size = 0
    for g in grads:
        full = size + g.numel() > BUCKET_ELEMENTS
        if buckets[-1] and (full or g.dtype != buckets[-1][0].dtype):
            buckets.append([])
            size = 0
        buckets[-1].append(g)
        size += g.numel()
    return [b for b in buckets if b]


class RankReporter:
    """The loop's reporter on one rank of a multi-process run: rank 0's reports go to the job's
    reporter, other ranks' nowhere; should_stop() is rank 0's answer, broadcast to all ranks
    (a collective: every rank calls it once per step, at the same point of the loop)."""

    def __init__(self, parallel: Parallel, inner: Reporter | None) -> None:
        """inner: the job's reporter; only rank 0's is ever called (others may pass None)."""
        self.parallel, self.inner = parallel, inner
        self._pausing = False

    def event(self, level: str, message: str) -> None:
        if self.inner is not None and self.parallel.main:
            self.inner.event(level, message)

    def log(self, point: TrainPoint) -> None:
        if self.inner is not None and self.parallel.main:
            self.inner.log(point)

    def eval(self, point: EvalPoint) -> None:
        if self.inner is not None and self.parallel.main:
            self.inner.eval(point)

    def checkpoint(self, step: int, directory: str) -> None:
        if self.inner is not None and self.parallel.main:
            self.inner.checkpoint(step, directory)

    def should_stop(self) -> bool:
        flags = [False, False]
        if self.inner is not None and self.parallel.main:
            stop = self.inner.should_stop()
            pausing = getattr(self.inner, "pausing", None)
            flags = [stop, bool(stop and pausing is not None and pausing())]
        dist.broadcast_object_list(flags, src=0)
        self._pausing = bool(flags[1])
        return bool(flags[0])

    def pausing(self) -> bool:
        return self._pausing


def init_from_env(strategy: str = "ddp") -> tuple[Parallel, torch.device]:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT): NCCL with one GPU per rank where GPUs are, else gloo."""
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return Parallel(rank=dist.get_rank(), world=dist.get_world_size(),
                    strategy=strategy), device


SINGLE = Parallel()
