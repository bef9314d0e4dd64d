"""BERT's original pretraining: masked-LM plus next-sentence prediction on segment pairs."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from jobspec.metrics import EVAL_LOSS
from workers.engine.masking import IGNORE_INDEX, Masker
from workers.engine.objective import Batch
from workers.engine.objectives.mlm import (
    EVAL_MASK_PROBABILITY,
    EVAL_MASK_SEED,
    MaskedLM,
    masked_positions,
)
from workers.engine.objectives.pretrain_data import perplexity
from workers.engine.pairs import split_pair_rows


class MaskedLMWithNSP(MaskedLM):
    """Rows are [CLS] A [SEP] B [SEP] plus padding and a label (pairs.py); the loss is the
    masked-LM mean over masked tokens plus the NSP mean over pairs, as BertForPreTraining."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.nsp_head = self.model.cls.seq_relationship
        tok = self.tokenizer
        ids, types, mask, labels = self._split(self.valid)
        masker = Masker(len(tok), tok.all_special_ids, tok.mask_token_id, EVAL_MASK_PROBABILITY)
        generator = torch.Generator().manual_seed(EVAL_MASK_SEED)
        self.eval_pairs = []
        for start in range(0, len(ids), self.batch_size):
            part = slice(start, start + self.batch_size)
            inputs, mlm_labels = masker(ids[part], generator)
            self.eval_pairs.append({"input_ids": inputs, "labels": mlm_labels,
                                    "token_type_ids": types[part],
                                    "attention_mask": mask[part],
                                    "next_sentence_label": labels[part]})

    def _split(self, rows: np.ndarray) -> tuple[torch.Tensor, ...]:
        parts = split_pair_rows(rows, self.tokenizer.sep_token_id, self.tokenizer.pad_token_id)
        return tuple(torch.from_numpy(np.ascontiguousarray(p)) for p in parts)

    def next_batch(self) -> tuple[Batch, dict[str, int]]:
        ids, types, mask, labels = self._split(self.next_rows().numpy())
        # Padding is a special token: never masked.
        inputs, mlm_labels = self.masker(ids, self.generator)
        batch = {"input_ids": inputs, "labels": mlm_labels, "token_type_ids": types,
                 "attention_mask": mask, "next_sentence_label": labels}
        return batch, {"masked": int((mlm_labels != IGNORE_INDEX).sum()), "pairs": len(ids)}

    def tokens(self, batch: Batch) -> int:
        return int(batch["attention_mask"].sum())  # not the padding

    def _forward(self, micro: Batch, device: torch.device, sparse: bool
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(MLM logits, their gold tokens, NSP logits, NSP gold) of a batch, in fp32."""
        dev = {k: v.to(device, non_blocking=True) for k, v in micro.items()}
        encoder = self.forward_encoder if sparse else self.encoder
        out = encoder(input_ids=dev["input_ids"], token_type_ids=dev["token_type_ids"],
                      attention_mask=dev["attention_mask"])
        hidden = out.last_hidden_state
        if sparse:  # a fixed multiple of rows, see masked_positions
            positions, gold = masked_positions(micro["labels"])
            hidden = hidden.flatten(0, 1).index_select(0, positions.to(device))
            gold = gold.to(device)
        else:
            targets = dev["labels"] != IGNORE_INDEX
            hidden, gold = hidden[targets], dev["labels"][targets]
        logits = self.head(hidden).flatten(0, -2).float()
        nsp_logits = self.nsp_head(out.pooler_output).float()
        return logits, gold, nsp_logits, dev["next_sentence_label"]

    def loss(self, micro: Batch, norms: dict[str, int], device: torch.device) -> torch.Tensor:
        logits, gold, nsp_logits, nsp_gold = self._forward(micro, device, self.sparse)
        mlm = F.cross_entropy(logits, gold, reduction="sum")
        nsp = F.cross_entropy(nsp_logits, nsp_gold, reduction="sum")
        return mlm / norms["masked"] + nsp / norms["pairs"]

    @torch.no_grad()
    def evaluate(self, device: torch.device) -> dict[str, float]:
        """eval_loss = mlm_loss + nsp_loss (BertForPreTraining's loss), perplexity of the
        masked LM, masked-token accuracy and nsp_accuracy, in fp32."""
        was_training = self.model.training
        self.model.eval()
        mlm_sum = nsp_sum = 0.0
        correct = nsp_correct = masked = pairs = 0
        for batch in self.eval_pairs:
            logits, gold, nsp_logits, nsp_gold = self._forward(batch, device, sparse=False)
            mlm_sum += F.cross_entropy(logits, gold, reduction="sum").item()
            nsp_sum += F.cross_entropy(nsp_logits, nsp_gold, reduction="sum").item()
            correct += int((logits.argmax(-1) == gold).sum())
            nsp_correct += int((nsp_logits.argmax(-1) == nsp_gold).sum())
            masked += gold.numel()
            pairs += len(nsp_gold)
        self.model.train(was_training)
        mlm_loss, nsp_loss = mlm_sum / max(1, masked), nsp_sum / max(1, pairs)
        return {EVAL_LOSS: mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss,
                "perplexity": perplexity(mlm_loss), "accuracy": correct / max(1, masked),
                "nsp_accuracy": nsp_correct / max(1, pairs)}
