"""AdamW with BERT's weight-decay exclusions and a linear warmup/decay schedule."""

from __future__ import annotations

from functools import partial

import torch
from torch.optim.lr_scheduler import LambdaLR

from workers.engine.config import Hyperparameters

BETAS = (0.9, 0.999)
EPS = 1e-6  # BERT's value; 1e-8 can make early updates of rarely seen embeddings too large


def build_optimizer(model: torch.nn.Module, hp: Hyperparameters) -> torch.optim.AdamW:
    """AdamW that decays matrices (incl. embeddings) but not biases or LayerNorm weights."""
    decay, no_decay = [], []
    for param in model.parameters():
        if param.requires_grad:
            # Biases and LayerNorm weights are exactly the 1-D parameters of a BERT.
            (decay if param.ndim >= 2 else no_decay).append(param)
    groups = [
        {"params": decay, "weight_decay": hp.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=hp.learning_rate, betas=BETAS, eps=EPS)


def lr_factor(step: int, warmup_steps: int, max_steps: int) -> float:
    """Multiplier of the peak learning rate for the 0-based step about to be taken."""
    # Unlike transformers' get_linear_schedule_with_warmup, step 0 gets a non-zero rate
    # (1/warmup), so no step is wasted; the rate reaches 0 only after the last step.
    warmup = (step + 1) / warmup_steps if warmup_steps else 1.0
    decay = (max_steps - step) / max(1, max_steps - warmup_steps)
    return max(0.0, min(warmup, decay, 1.0))


def build_scheduler(optimizer: torch.optim.Optimizer, hp: Hyperparameters) -> LambdaLR:
    """Linear warmup to the peak learning rate, then linear decay to 0 at max_steps."""
    return LambdaLR(optimizer, partial(lr_factor, warmup_steps=hp.warmup_steps,
                                       max_steps=hp.max_steps))
