"""Text and token classification as a plug-in of the one loop (loop.py)."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from workers.engine.checkpoint import save_export
from workers.engine.finetune.dataset import Encoded, collate, most_frequent
from workers.engine.finetune.evaluate import evaluate, model_inputs, summed_loss
from workers.engine.finetune.lora import adalora_penalty, adalora_step, merge
from workers.engine.masking import IGNORE_INDEX
from workers.engine.objective import Batch

# Examples are shuffled, then sorted by length within runs of this many batches: a batch
# holds examples of similar length, so little of it is padding (short texts mixed with long
# ones tripled the tokens of a step on the Chinese reviews of bench/finetune_quality.py).
GROUP_BATCHES = 16


class GroupedSampler:
    """Indices of examples in batches: a seeded shuffle per epoch, each run of GROUP_BATCHES
    batches sorted by length (longest first; ties keep the shuffle's order). The whole state
    is (epoch, position), as for BlockSampler, so a run resumes exactly."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int, epoch: int = 0,
                 position: int = 0) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size, self.seed = batch_size, seed
        self.epoch, self.position = epoch, position
        self._order: tuple[int, np.ndarray] | None = None

    def order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            shuffled = np.random.default_rng([self.seed, epoch]).permutation(len(self.lengths))
            run = self.batch_size * GROUP_BATCHES
            parts = [chunk[np.argsort(-self.lengths[chunk], kind="stable")]
                     for chunk in (shuffled[i:i + run] for i in range(0, len(shuffled), run))]
            self._order = (epoch, np.concatenate(parts))
        return self._order[1]

    def next_batch(self) -> np.ndarray:
        """The next batch_size example indices; a batch may span two epochs."""
        parts, need = [], self.batch_size
        while need:
            part = self.order(self.epoch)[self.position:self.position + need]
            parts.append(part)
            need -= len(part)
            self.position += len(part)
            if self.position == len(self.lengths):
                self.epoch, self.position = self.epoch + 1, 0
        return np.concatenate(parts)

    def state(self) -> dict[str, int]:
        return {"seed": self.seed, "epoch": self.epoch, "position": self.position}


# The export's config.json field holding a multi-label model's decision threshold (the
# probability at which a label is on), chosen on the validation split.
THRESHOLD_FIELD = "cloze_threshold"


class Classification:
    """Batches of examples of similar length from a seeded shuffle per epoch (state: epoch
    and position), padded to the longest; the loss is the mean over examples (text,
    regression), labelled first pieces (tagging) or example-label decisions (multi-label);
    eval scores the validation split with the task's metrics.

    With AdaLoRA adapters the loss carries their orthogonal regularisation and after_step
    lets peft reallocate their ranks after each optimizer step. A multi-label model's
    export keeps the decision threshold of the best validation micro-F1 (THRESHOLD_FIELD),
    and the test split is scored at it."""

    def __init__(self, model: torch.nn.Module, weights: torch.nn.Module, tokenizer: Any,
                 encoded: dict[str, Encoded], labels: list[str], *, bio: bool,
                 batch_size: int, seed: int, lora: bool, fingerprint: dict[str, Any],
                 adalora: bool = False) -> None:
        self.model, self.weights, self.tokenizer = model, weights, tokenizer
        self.train, self.valid = encoded["train"], encoded["valid"]
        self.batch_size, self.seed, self.lora, self.adalora = batch_size, seed, lora, adalora
        self.steps = 0  # optimizer steps taken (AdaLoRA's schedule reads it)
        self.threshold: float | None = None  # multi-label: chosen at export
        self.sampler = GroupedSampler([len(ids) for ids in self.train.input_ids], batch_size,
                                      seed)
        self.score = partial(evaluate, labels=labels, bio=bio,
                             fallback=most_frequent(self.train), batch_size=batch_size,
                             pad_id=tokenizer.pad_token_id)
        self._fingerprint = fingerprint
        self.final: torch.nn.Module | None = None  # the exported model, once exported

    def next_batch(self) -> tuple[Batch, dict[str, int]]:
        batch = collate(self.train, self.sampler.next_batch().tolist(),
                        self.tokenizer.pad_token_id)
        return batch, {"targets": int((batch["labels"] != IGNORE_INDEX).sum()),
                       "rows": len(batch["input_ids"])}

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())  # real tokens, not padding

    def loss(self, micro: Batch, norms: dict[str, int], device: torch.device) -> torch.Tensor:
        micro = {k: v.to(device, non_blocking=True) for k, v in micro.items()}
        logits = self.model(**model_inputs(micro)).logits
        loss = summed_loss(logits, micro["labels"], self.train.problem) / norms["targets"]
        if self.adalora:  # its share of the batch's one penalty
            loss = loss + adalora_penalty(self.model) * (len(micro["input_ids"]) /
                                                          norms["rows"])
        return loss

    def after_step(self) -> None:
        """Called by the loop after each optimizer step, before the gradients are cleared."""
        self.steps += 1
        if self.adalora:
            adalora_step(self.model, self.steps)

    def evaluate(self, device: torch.device, split: Encoded | None = None,
                 model: torch.nn.Module | None = None) -> dict[str, Any]:
        # The validation split picks its own threshold; another is scored at the model's.
        return self.score(model or self.model, split or self.valid, device=device,
                          threshold=None if split is None else self.threshold)

    def state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state(), "steps": self.steps}

    def restore(self, state: dict[str, Any]) -> None:
        self.steps = int(state.get("steps", 0))
        position = state["sampler"]
        self.sampler = GroupedSampler([len(ids) for ids in self.train.input_ids],
                                      self.batch_size, self.seed, position["epoch"],
                                      position["position"])

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint

    def export(self, directory: Path) -> Path:
        # With LoRA the adapters are folded in: a plain model that transformers loads alone.
        self.final = merge(self.model) if self.lora else self.model
        if self.valid.problem == "multi_label_classification":
            device = next(self.final.parameters()).device
            self.threshold = float(self.evaluate(device, model=self.final)["threshold"])
            setattr(self.final.config, THRESHOLD_FIELD, self.threshold)
        return save_export(directory, self.final, self.tokenizer)
