"""AdamW with BERT's weight-decay exclusions, and the learning-rate schedules."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BETAS = (0.9, 0.999)
EPS = 1e-6  # BERT's value; 1e-8 can make early updates of rarely seen embeddings too large


def resolve_optimizer_impl(impl: str, device: str) -> str:
    """auto -> fused: one kernel for all parameters, on CPU (torch >= 2.4) as on CUDA.

    On the 2-core benchmark CPU fused, foreach and loop were within noise of each other
    (the optimizer is < 10% of a BERT-mini step); on CUDA fused is clearly fastest.
    """
    return "fused" if impl == "auto" else impl


@dataclass(frozen=True)
class Schedule:
    """The learning-rate shape over a run of `total` steps (see lr_factor)."""

    total: int
    warmup: int
    kind: str = "linear"  # linear, cosine, one_cycle or wsd
    decay_fraction: float = 0.2  # wsd: the share of the run spent decaying
    min_lr_ratio: float = 0.0  # the rate ends at this share of the peak


def build_optimizer(model: torch.nn.Module, weight_decay: float, learning_rate: float,
                    impl: str) -> torch.optim.AdamW:
    """AdamW that decays matrices (incl. embeddings) but not biases or LayerNorm weights."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for param in model.parameters():
        if param.requires_grad:
            # Biases and LayerNorm weights are exactly the 1-D parameters of a BERT.
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    kwargs = {"fused": {"fused": True}, "foreach": {"foreach": True},
              "loop": {"foreach": False}}[impl]
    return torch.optim.AdamW(groups, lr=learning_rate, betas=BETAS, eps=EPS, **kwargs)


def lr_factor(step: int, schedule: Schedule) -> float:
    """Multiplier of the peak learning rate for the 0-based step about to be taken.

    Unlike transformers' schedules, step 0 gets a non-zero rate (1/warmup), so no step is
    wasted; the rate reaches its minimum only after the last step.
    """
    total, floor = schedule.total, schedule.min_lr_ratio
    done = step + 1  # steps taken once this one is
    if schedule.kind == "one_cycle":  # a triangle: up over the first half, down over the second
        peak = max(1, total // 2)
        if done <= peak:
            return done / peak
        return floor + (1 - floor) * (total - step) / max(1, total - peak)
    warmup = schedule.warmup
    if done <= warmup:
        return done / warmup
    if schedule.kind == "wsd":
        decay_steps = max(1, round(schedule.decay_fraction * total))
        start = max(warmup, total - decay_steps)
        if step < start:
            return 1.0
        return floor + (1 - floor) * (total - step) / max(1, total - start)
    progress = (step - warmup) / max(1, total - warmup)  # 0 at the end of warmup
    if schedule.kind == "cosine":
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))
    return floor + (1 - floor) * (1 - progress)  # linear
