"""Masked-LM (BERT, RoBERTa): predict the corrupted tokens of a block, on those rows only."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel

from jobspec.metrics import EVAL_LOSS
from workers.engine.checkpoint import decode_rng_state, encode_rng_state
from workers.engine.masking import IGNORE_INDEX, Masker
from workers.engine.objective import Batch
from workers.engine.objectives.pretrain_data import PretrainData, perplexity
from workers.engine.tokenizer import word_continuations

POSITION_BUCKET = 64  # the sparse head runs on a multiple of this many rows (masked_positions)
# Constants, not the run's settings: every eval of every run masks the same positions at
# BERT's rate, so eval losses compare across seeds, masking rates and recipes.
EVAL_MASK_SEED = 1234
EVAL_MASK_PROBABILITY = 0.15


def mlm_parts(model: PreTrainedModel) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(encoder, MLM head) of a BertForMaskedLM, BertForPreTraining or RobertaForMaskedLM."""
    head = getattr(model, "cls", None) or getattr(model, "lm_head", None)
    if head is not None and hasattr(head, "predictions"):  # BertForPreTraining: MLM + NSP
        head = head.predictions
    if head is None:
        raise TypeError(f"{type(model).__name__} has no masked-LM head")
    return model.base_model, head


def masked_positions(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Flat indices of the masked tokens and their labels, padded to a multiple of
    POSITION_BUCKET rows (padding: position 0, label IGNORE_INDEX, so it adds no loss).

    Without the padding the head's matmuls take a new shape every step, and oneDNN caches a
    primitive per shape: on CPU the process grew by ~4 MB a step up to ~2 GB (BERT-mini).
    """
    flat = labels.flatten()
    positions = (flat != IGNORE_INDEX).nonzero().squeeze(1)
    targets = flat[positions]
    pad = -len(positions) % POSITION_BUCKET
    if pad:
        positions = torch.cat([positions, positions.new_zeros(pad)])
        targets = torch.cat([targets, targets.new_full((pad,), IGNORE_INDEX)])
    return positions, targets


class MaskedLM(PretrainData):
    """BERT masking (80/10/10, optionally whole words) drawn on the CPU from its own
    generator, so masks do not depend on the device; eval masks are drawn once, up front."""

    def __init__(self, *args: Any, mask_probability: float, whole_word_masking: bool,
                 sparse_prediction: bool, compile: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        tok = self.tokenizer
        self.encoder, self.head = mlm_parts(self.model)
        self.forward_encoder = torch.compile(self.encoder) if compile else self.encoder
        special = tok.all_special_ids
        self.masker = Masker(len(tok), special, tok.mask_token_id, mask_probability,
                             word_continuations(tok) if whole_word_masking else None)
        self.sparse = sparse_prediction
        self.generator = torch.Generator().manual_seed(self.seed)
        eval_masker = Masker(len(tok), special, tok.mask_token_id, EVAL_MASK_PROBABILITY)
        eval_generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
        self.eval_batches = [eval_masker(rows, eval_generator)
                             for rows in torch.from_numpy(self.valid).split(self.batch_size)]

    def next_batch(self) -> tuple[Batch, dict[str, int]]:
        inputs, labels = self.masker(self.next_rows(), self.generator)
        return ({"input_ids": inputs, "labels": labels},
                {"masked": int((labels != IGNORE_INDEX).sum())})

    def tokens(self, batch: Batch) -> int:
        return batch["input_ids"].numel()  # blocks are never padded

    def loss(self, micro: Batch, norms: dict[str, int], device: torch.device) -> torch.Tensor:
        return self.mlm_loss(micro, device) / norms["masked"]

    def mlm_loss(self, micro: Batch, device: torch.device,
                 **encoder_inputs: torch.Tensor) -> torch.Tensor:
        """Summed cross-entropy over the masked positions of a micro-batch.

        With sparse prediction the head runs on the masked rows only, not on every position
        as the stock model does; padding rows (label IGNORE_INDEX) add nothing.
        """
        labels = micro["labels"]
        positions = None
        if self.sparse:
            # Found on the CPU, where the labels are, so the device never waits on it.
            positions, labels = masked_positions(labels)
            positions = positions.to(device, non_blocking=True)
        hidden = self.forward_encoder(
            input_ids=micro["input_ids"].to(device, non_blocking=True),
            **{k: v.to(device, non_blocking=True) for k, v in encoder_inputs.items()},
        ).last_hidden_state
        if positions is not None:
            hidden = hidden.flatten(0, 1).index_select(0, positions)
        logits = self.head(hidden).flatten(0, -2)
        return F.cross_entropy(logits.float(), labels.to(device).flatten(), reduction="sum")

    def state(self) -> dict[str, Any]:
        return {**super().state(), "mask_generator": encode_rng_state(self.generator.get_state())}

    def restore(self, state: dict[str, Any]) -> None:
        super().restore(state)
        self.generator.set_state(decode_rng_state(state["mask_generator"]))

    @torch.no_grad()
    def evaluate(self, device: torch.device) -> dict[str, float]:
        """eval_loss (mean over masked tokens), perplexity and masked-token accuracy, in fp32."""
        was_training = self.model.training
        self.model.eval()  # no dropout
        loss_sum, correct, count = 0.0, 0, 0
        for inputs, labels in self.eval_batches:
            inputs, labels = inputs.to(device), labels.to(device)
            targets = labels != IGNORE_INDEX
            # The head on masked positions only: the same numbers as the full head, faster.
            hidden = self.encoder(input_ids=inputs).last_hidden_state[targets]
            logits = self.head(hidden).float()
            gold = labels[targets]
            loss_sum += F.cross_entropy(logits, gold, reduction="sum").item()
            correct += int((logits.argmax(dim=-1) == gold).sum())
            count += gold.numel()
        self.model.train(was_training)
        eval_loss = loss_sum / count
        return {EVAL_LOSS: eval_loss, "perplexity": perplexity(eval_loss),
                "accuracy": correct / count}
