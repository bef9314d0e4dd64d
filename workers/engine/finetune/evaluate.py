"""Score a model on an encoded split: mean loss and the task's metrics, in fp32."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from jobspec.metrics import EVAL_LOSS
from workers.engine.finetune.dataset import Encoded, collate
from workers.engine.finetune.scores import (
    classification_metrics,
    multi_label_metrics,
    regression_metrics,
    tagging_metrics,
)
from workers.engine.masking import IGNORE_INDEX

# What a sequence model takes from a batch (pairs add the segment ids).
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def model_inputs(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: batch[k] for k in MODEL_INPUTS if k in batch}


def summed_loss(logits: torch.Tensor, gold: torch.Tensor, problem: str) -> torch.Tensor:
    """The batch's loss summed over its targets (fp32): cross-entropy over labels (or over
    labelled pieces), squared error of the one output (regression), or binary
    cross-entropy of each label (multi-label), as transformers' problem_type computes it."""
    logits = logits.float()
    if problem == "regression":
        return F.mse_loss(logits.squeeze(-1), gold.float(), reduction="sum")
    if problem == "multi_label_classification":
        return F.binary_cross_entropy_with_logits(logits, gold.float(), reduction="sum")
    return F.cross_entropy(logits.flatten(0, -2), gold.flatten(), ignore_index=IGNORE_INDEX,
                           reduction="sum")


@torch.no_grad()
def evaluate(model: torch.nn.Module, encoded: Encoded, labels: list[str], *, bio: bool,
             fallback: str, batch_size: int, pad_id: int, device: torch.device,
             threshold: float | None = None) -> dict[str, Any]:
    """eval_loss plus accuracy/f1 (text), token accuracy (+ entity P/R/F1 for BIO tags),
    mse/pearson/spearman (regression) or micro/macro F1 at a threshold (multi-label: the
    given one, else the best on this split).

    fp32, like the exported model a pipeline runs. Words with no piece (cut off a long
    sentence) are scored as predicted `fallback`, the most common training tag.
    """
    was_training = model.training
    model.eval()  # no dropout
    # Longest first, in batches of similar length: little padding; results go back by index.
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded.input_ids[i]))
    predicted: list[Any] = [None] * len(encoded)
    loss_sum, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        indices = order[start : start + batch_size]
        batch = {k: v.to(device) for k, v in collate(encoded, indices, pad_id).items()}
        logits = model(**model_inputs(batch)).logits.float()
        gold = batch["labels"]
        loss_sum += summed_loss(logits, gold, encoded.problem).item()
        if encoded.problem == "regression":
            count += len(indices)
            values = logits.squeeze(-1).cpu().tolist()
            for n, i in enumerate(indices):
                predicted[i] = values[n]
            continue
        if encoded.problem == "multi_label_classification":
            count += gold.numel()
            probabilities = torch.sigmoid(logits).cpu().tolist()
            for n, i in enumerate(indices):
                predicted[i] = probabilities[n]
            continue
        count += int((gold != IGNORE_INDEX).sum())
        best = logits.argmax(dim=-1).cpu()
        gold = gold.cpu()
        for n, i in enumerate(indices):
            if encoded.word_of_target is None:
                predicted[i] = labels[int(best[n])]
                continue
            tags = [fallback] * len(encoded.gold[i])  # type: ignore[arg-type]
            positions = (gold[n] != IGNORE_INDEX).nonzero().squeeze(1).tolist()
            for word, position in zip(encoded.word_of_target[i], positions, strict=True):
                tags[word] = labels[int(best[n, position])]
            predicted[i] = tags
    model.train(was_training)
    scores: dict[str, float]
    if encoded.problem == "regression":
        scores = regression_metrics(encoded.gold, predicted)  # type: ignore[arg-type]
    elif encoded.problem == "multi_label_classification":
        scores = multi_label_metrics(encoded.gold, predicted, labels,  # type: ignore[arg-type]
                                     threshold)
    elif encoded.word_of_target is None:
        scores = classification_metrics(encoded.gold, predicted)  # type: ignore[arg-type]
    else:
        scores = tagging_metrics(encoded.gold, predicted, bio)  # type: ignore[arg-type]
    return {EVAL_LOSS: loss_sum / max(1, count), **scores}
