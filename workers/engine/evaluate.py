"""Held-out masked-LM evaluation with a fixed masking, comparable across evals and runs."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from workers.engine.masking import IGNORE_INDEX, Masker

MAX_EVAL_BLOCKS = 128
# Constants, not the run's settings: every eval of every run masks the same positions at
# BERT's rate, so eval losses compare across seeds, masking rates and recipes.
EVAL_MASK_SEED = 1234
EVAL_MASK_PROBABILITY = 0.15
# exp(50) ~ 5e21: a perplexity beyond that says nothing more, and exp() must not overflow.
MAX_LOG_PERPLEXITY = 50.0


class Evaluator:
    """Scores a model on up to MAX_EVAL_BLOCKS held-out blocks, masked once up front."""

    def __init__(self, blocks: np.ndarray, vocab_size: int, special_ids: list[int],
                 mask_token_id: int, batch_size: int, max_blocks: int = MAX_EVAL_BLOCKS) -> None:
        masker = Masker(vocab_size, special_ids, mask_token_id, EVAL_MASK_PROBABILITY)
        blocks = np.asarray(blocks[:max_blocks], dtype=np.int64)
        generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
        self.batches = [
            masker(torch.from_numpy(blocks[i : i + batch_size]), generator)
            for i in range(0, len(blocks), batch_size)
        ]

    @torch.no_grad()
    def __call__(self, model: torch.nn.Module, device: str | torch.device) -> dict[str, float]:
        """eval_loss (mean over masked tokens), perplexity and masked-token accuracy, in fp32."""
        was_training = model.training
        model.eval()  # no dropout
        loss_sum, correct, count = 0.0, 0, 0
        for inputs, labels in self.batches:
            inputs, labels = inputs.to(device), labels.to(device)
            targets = labels != IGNORE_INDEX
            # The head on masked positions only: the same numbers as the full head, faster.
            hidden = model.bert(input_ids=inputs).last_hidden_state[targets]
            logits = model.cls(hidden).float()
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
