"""What the training loop asks of an objective (mlm, clm, mlm_nsp) or a fine-tuning task."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import torch

Batch = dict[str, torch.Tensor]  # every tensor's first dimension is the example


class Objective(Protocol):
    """A plug-in of the loop: builds batches, computes the loss, says what eval reports and
    what is exported. The loop owns everything else (the clock)."""

    model: torch.nn.Module  # what is trained (with LoRA: the adapter wrapper)
    weights: torch.nn.Module  # what checkpoints hold: the transformers model itself
    tokenizer: Any

    def next_batch(self) -> tuple[Batch, dict[str, int]]:
        """The next training batch on the CPU and its normalisers (e.g. masked tokens);
        advances the data position and the objective's random draws."""

    def tokens(self, batch: Batch) -> int:
        """Tokens in the batch (no padding), for tokens/s."""

    def loss(self, micro: Batch, norms: dict[str, int], device: torch.device) -> torch.Tensor:
        """This micro-batch's share of the whole batch's mean loss (shares sum to it)."""

    def evaluate(self, device: torch.device) -> dict[str, float]:
        """Held-out metrics: eval_loss and the objective's own."""

    def state(self) -> dict[str, Any]:
        """The data position and random generators, JSON-able, for exact resume."""

    def restore(self, state: dict[str, Any]) -> None:
        """Continue from what state() returned."""

    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must share with this run to continue it (data, shape, settings)."""

    def export(self, directory: Path) -> Path:
        """Write the final model (plain transformers layout) and its tokenizer."""

    # Optional: `after_step(self) -> None`, called after each optimizer step before the
    # gradients are cleared (AdaLoRA's rank allocation, finetune/task.py).
