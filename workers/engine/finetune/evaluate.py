"""Score a model on an encoded split: mean loss and the task's metrics, in fp32."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from jobspec.metrics import EVAL_LOSS
from workers.engine.finetune.dataset import Encoded, collate
from workers.engine.finetune.scores import classification_metrics, tagging_metrics
from workers.engine.masking import IGNORE_INDEX


@torch.no_grad()
def evaluate(model: torch.nn.Module, encoded: Encoded, labels: list[str], *, bio: bool,
             fallback: str, batch_size: int, pad_id: int, device: torch.device
             ) -> dict[str, Any]:
    """eval_loss plus accuracy/f1 (text) or token accuracy (+ entity P/R/F1 for BIO tags).

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
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits.float()
        gold = batch["labels"]
        loss_sum += F.cross_entropy(logits.flatten(0, -2), gold.flatten(),
                                    ignore_index=IGNORE_INDEX, reduction="sum").item()
        count += int((gold != IGNORE_INDEX).sum())
        best = logits.argmax(dim=-1).cpu()
        gold = gold.cpu()
        for n, i in enumerate(indices):
            if encoded.word_of_target is None:
                predicted[i] = labels[int(best[n])]
                continue
            tags = [fallback] * len(encoded.gold[i])
            positions = (gold[n] != IGNORE_INDEX).nonzero().squeeze(1).tolist()
            for word, position in zip(encoded.word_of_target[i], positions, strict=True):
                tags[word] = labels[int(best[n, position])]
            predicted[i] = tags
    model.train(was_training)
    if encoded.word_of_target is None:
        scores = classification_metrics(encoded.gold, predicted)  # type: ignore[arg-type]
    else:
        scores = tagging_metrics(encoded.gold, predicted, bio)
    return {EVAL_LOSS: loss_sum / max(1, count), **scores}
