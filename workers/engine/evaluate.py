"""Held-out masked-LM evaluation with a fixed masking, comparable across evals and runs."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from workers.engine.masking import IGNORE_INDEX, Masker

MAX_EVAL_BLOCKS = 128
# A constant, not the run's seed: every eval of every run masks the same positions.
EVAL_MASK_SEED = 1234
# exp(50) ~ 5e21: a perplexity beyond that says nothing more, and exp() must not overflow.
MAX_LOG_PERPLEXITY = 50.0


class Evaluator:
    """Scores a model on up to MAX_EVAL_BLOCKS held-out blocks, masked once up front."""

    def __init__(self, blocks: np.ndarray, masker: Masker, batch_size: int) -> None:
        blocks = blocks[:MAX_EVAL_BLOCKS]
        generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
        self.batches = [
            masker(torch.from_numpy(blocks[i : i + batch_size].astype(np.int64)), generator)
            for i in range(0, len(blocks), batch_size)
        ]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, device: str) -> dict[str, float]:
        """eval_loss (mean over masked tokens), perplexity and masked-token accuracy."""
        was_training = model.training
        model.eval()  # no dropout
        loss_sum, correct, count = 0.0, 0, 0
        for inputs, labels in self.batches:
            inputs, labels = inputs.to(device), labels.to(device)
            targets = labels != IGNORE_INDEX
            logits = model(input_ids=inputs).logits[targets].float()
            gold = labels[targets]
            loss_sum += F.cross_entropy(logits, gold, reduction="sum").item()
            correct += int((logits.argmax(dim=-1) == gold).sum())
            count += gold.numel()
        model.train(was_training)
        eval_loss = loss_sum / count
        return {
            "eval_loss": eval_loss,
            "perplexity": math.exp(min(eval_loss, MAX_LOG_PERPLEXITY)),
            "accuracy": correct / count,
        }
