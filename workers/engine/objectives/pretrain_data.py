"""What the pretraining objectives share: their data, its order and the held-out rows."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from workers.engine.blocks import BlockSampler, ShardedBlocks
from workers.engine.checkpoint import save_export

MAX_EVAL_ROWS = 128
# exp(50) ~ 5e21: a perplexity beyond that says nothing more, and exp() must not overflow.
MAX_LOG_PERPLEXITY = 50.0


def perplexity(loss: float) -> float:
    return math.exp(min(loss, MAX_LOG_PERPLEXITY))


class PretrainData:
    """Training rows in a seeded order whose whole state is (epoch, position), and up to
    MAX_EVAL_ROWS held-out rows; plus the parts every pretraining objective has alike."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase,
                 train: ShardedBlocks, valid: np.ndarray, batch_size: int, seed: int,
                 fingerprint: dict[str, Any]) -> None:
        self.model = self.weights = model
        self.tokenizer = tokenizer
        self.train, self.batch_size, self.seed = train, batch_size, seed
        self.valid = np.asarray(valid[:MAX_EVAL_ROWS], dtype=np.int64)
        self.sampler = BlockSampler(train.sizes, batch_size, seed)
        self._fingerprint = fingerprint

    def next_rows(self) -> torch.Tensor:
        return torch.from_numpy(self.train.take(self.sampler.next_batch()))

    def state(self) -> dict[str, Any]:
        return {"sampler": self.sampler.state()}

    def restore(self, state: dict[str, Any]) -> None:
        position = state["sampler"]
        self.sampler = BlockSampler(self.train.sizes, self.batch_size, self.seed,
                                    position["epoch"], position["position"])

    def fingerprint(self) -> dict[str, Any]:
        return self._fingerprint

    def export(self, directory: Path) -> Path:
        return save_export(directory, self.model, self.tokenizer)
