"""Fully sharded data parallel (resources.strategy fsdp): PyTorch's FSDP2 (fully_shard).

Each transformer layer is a unit of its own and the root unit holds the rest (embeddings,
head, final norms): between uses a rank keeps 1/N of every parameter, gradient and AdamW
moment; a unit's parameters are all-gathered just before it runs and freed after, and its
gradients reduce-scattered (summed: each rank's loss is its share of the global batch's)
in the backward pass, so the loop's own all-reduce is skipped. The batch is shared out as
under ddp (distributed.py), so the per-step numbers are the 1-process run's.

The objectives call parts of the model (encoder, head) rather than its forward, past the
root unit's forward hook, which is where FSDP gathers the root's parameters: every call
into the model goes through Through.forward, the root unit's (Parallel.call).

Checkpoints and the export are the files a 1-process run writes: the full state is gathered
to rank 0 (torch.distributed.checkpoint.state_dict, full_state_dict) into a plain copy of
the model, made from a parameter-less skeleton kept at sharding time. A resume loads those
files into a plain copy on every rank and shards them into the model and optimizer.

Every rank first builds the whole model (from the seed, or the base model) and shards it:
FSDP here is for a model whose training state (gradients, AdamW moments, activations) does
not fit one device, not for one that does not fit one host's memory.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, fully_shard
from torch.distributed.tensor import DTensor

from workers.engine.checkpoint import load_checkpoint
from workers.engine.distributed import Parallel
from workers.engine.failures import EngineError

FULL = StateDictOptions(full_state_dict=True)
TO_RANK0 = StateDictOptions(full_state_dict=True, cpu_offload=True)  # others get {}


class Through(nn.Module):
    """The root unit: its forward runs a function that uses the model (an objective's loss
    or evaluation), so FSDP's root hooks fire around calls to the model's parts."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)


def layers(model: nn.Module) -> list[nn.Module]:
    """The model's transformer layers: in its stack of layers (a ModuleList), the modules
    of the classes transformers names as never to be split across devices (BertLayer,
    GPT2Block, LlamaDecoderLayer, ...; not BertEmbeddings, also named, whose word
    embeddings are tied to the head's: tied parameters must share a unit)."""
    names: set[str] = set()
    for module in model.modules():
        names.update(getattr(module, "_no_split_modules", None) or ())
    found = [layer for stack in model.modules() if isinstance(stack, nn.ModuleList)
             for layer in stack if type(layer).__name__ in names]
    if not found:
        raise TypeError(f"{type(model).__name__}: no transformer layers found to shard")
    return found


@dataclass(frozen=True, eq=False)
class FullyShardedParallel(Parallel):
    """A rank of an fsdp run, once its model is sharded (Parallel.prepare)."""

    # (Defaults only because Parallel's fields have them: fully_shard_model sets them all.)
    root: nn.Module = field(default_factory=nn.Module)  # Through, the root unit
    device: torch.device = torch.device("cpu")
    # The model (and, with LoRA, its inner transformers model) with meta parameters: what a
    # plain copy is made from. Parameters tied in the model are tied in it.
    skeleton: tuple[nn.Module, nn.Module] = field(default_factory=lambda: (nn.Module(),) * 2)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return self.root(fn, *args, **kwargs)

    def reduce_gradients(self, model: nn.Module) -> None:
        """Nothing to do: FSDP reduce-scattered them in the backward pass."""

    def norm(self, value: torch.Tensor) -> torch.Tensor:
        """The gradient norm of all the shards (clip_grad_norm_ of DTensor gradients)."""
        return value.full_tensor() if isinstance(value, DTensor) else value

    def whole(self, weights: nn.Module, optimizer: torch.optim.Optimizer
              ) -> tuple[nn.Module, torch.optim.Optimizer] | None:
        """The full model and optimizer state, gathered into plain copies on rank 0 (None
        on the others); a collective."""
        model_state = get_model_state_dict(weights, options=TO_RANK0)
        optimizer_state = get_optimizer_state_dict(weights, optimizer, options=TO_RANK0)
        if not self.main:
            return None
        _, plain = _materialize(self.skeleton)
        plain.load_state_dict(model_state)
        plain_optimizer = _plain_optimizer(optimizer, weights, plain)
        names = _names(plain_optimizer, plain)
        gathered = optimizer_state["state"]
        if not set(gathered) <= set(names):  # e.g. a tied parameter under its other name
            raise EngineError(f"the gathered optimizer state has parameters the model "
                              f"does not name so: {sorted(set(gathered) - set(names))[:3]}")
        plain_optimizer.load_state_dict({
            "state": {i: gathered[n] for i, n in enumerate(names) if n in gathered},
            "param_groups": plain_optimizer.state_dict()["param_groups"]})
        return plain, plain_optimizer

    def load(self, directory: str | Path, state: dict[str, Any], weights: nn.Module,
             optimizer: torch.optim.Optimizer) -> None:
        """A checkpoint (of any strategy) into the sharded model and optimizer: each rank
        reads it into a plain copy and keeps its shards."""
        _, plain = _materialize(self.skeleton)
        plain_optimizer = _plain_optimizer(optimizer, weights, plain)
        load_checkpoint(directory, state, plain, plain_optimizer)
        set_model_state_dict(weights, plain.state_dict(), options=FULL)
        names = _names(plain_optimizer, plain)
        saved = plain_optimizer.state_dict()["state"]
        # The groups' settings are this run's (as restore_optimizer keeps them).
        own = {id(p): n for n, p in weights.named_parameters()}
        groups = [{**g, "params": [own[id(p)] for p in g["params"]]}
                  for g in optimizer.param_groups]
        set_optimizer_state_dict(weights, optimizer, options=FULL, optim_state_dict={
            "state": {names[i]: s for i, s in saved.items()}, "param_groups": groups})

    def unshard(self, objective: Any) -> None:
        """The run is over: rank 0's objective gets the whole model back, plain, for the
        export (and fine-tuning's test split); a collective."""
        state = get_model_state_dict(objective.weights, options=TO_RANK0)
        if self.main:
            objective.model, objective.weights = _materialize(self.skeleton)
            objective.weights.load_state_dict(state)
            objective.model.to(self.device)


def fully_shard_model(parallel: Parallel, model: nn.Module, weights: nn.Module,
                      device: torch.device) -> FullyShardedParallel:
    """Shard model (with LoRA: the adapter wrapper; weights, the transformers model in it)
    per transformer layer plus the root; gradients summed, not averaged, over ranks."""
    memo = {id(p): nn.Parameter(torch.empty_like(p, device="meta"), p.requires_grad)
            for p in model.parameters()}
    skeleton = copy.deepcopy((model, weights), memo)
    for module in skeleton[0].modules():  # plain copies are made on the CPU
        for name, buffer in module.named_buffers(recurse=False):
            setattr(module, name, buffer.cpu())
    mesh = init_device_mesh(device.type, (parallel.world,))
    for layer in layers(model):
        fully_shard(layer, mesh=mesh)
    root = fully_shard(Through(model), mesh=mesh)
    for unit in root.modules():
        if isinstance(unit, FSDPModule):  # a plain sum (gloo has no pre-scaled one)
            unit.set_gradient_divide_factor(1.0)
            unit.set_force_sum_reduction_for_comms(True)
    return FullyShardedParallel(rank=parallel.rank, world=parallel.world, strategy="fsdp",
                                root=root, device=device, skeleton=skeleton)


def _materialize(skeleton: tuple[nn.Module, nn.Module]) -> tuple[nn.Module, nn.Module]:
    """A plain copy of the skeleton on the CPU (parameters uninitialised, ties kept)."""
    memo = {id(p): nn.Parameter(torch.empty(p.shape, dtype=p.dtype), p.requires_grad)
            for p in skeleton[0].parameters()}
    model, weights = copy.deepcopy(skeleton, memo)
    return model, weights


def _plain_optimizer(optimizer: torch.optim.Optimizer, weights: nn.Module, plain: nn.Module
                     ) -> torch.optim.Optimizer:
    """An optimizer of the same kind and groups over the plain copy's parameters (it only
    holds state: it never steps)."""
    names = {id(p): n for n, p in weights.named_parameters()}
    params = dict(plain.named_parameters())
    groups = [{**g, "params": [params[names[id(p)]] for p in g["params"]]}
              for g in optimizer.param_groups]
    return type(optimizer)(groups)


def _names(optimizer: torch.optim.Optimizer, model: nn.Module) -> list[str]:
    """The names of the optimizer's parameters in its state_dict's index order."""
    names = {id(p): n for n, p in model.named_parameters()}
    return [names[id(p)] for g in optimizer.param_groups for p in g["params"]]
