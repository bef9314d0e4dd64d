"""Causal LM (GPT-2, Llama): predict each next token of a packed block."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from workers.engine.objective import Batch
from workers.engine.objectives.common import PretrainData, perplexity


class CausalLM(PretrainData):
    """Next-token prediction on blocks with no padding; documents are separated by the
    end-of-text token inside a block, as GPT-2 was trained."""

    def __init__(self, *args: object, compile: bool, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.decoder = self.model.base_model
        self.forward_decoder = torch.compile(self.decoder) if compile else self.decoder
        self.head = self.model.get_output_embeddings()

    def next_batch(self) -> tuple[Batch, dict[str, int]]:
        rows = self.next_rows()
        # Every position but the last predicts the token after it.
        return {"input_ids": rows}, {"predicted": rows.shape[0] * (rows.shape[1] - 1)}

    def tokens(self, batch: Batch) -> int:
        return batch["input_ids"].numel()

    def _logits_and_targets(self, decoder: torch.nn.Module, ids: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
        # No attention mask: blocks are never padded, so attention takes its fastest path.
        hidden = decoder(input_ids=ids).last_hidden_state[:, :-1]
        return self.head(hidden).flatten(0, 1).float(), ids[:, 1:].flatten()

    def loss(self, micro: Batch, norms: dict[str, int], device: torch.device) -> torch.Tensor:
        ids = micro["input_ids"].to(device, non_blocking=True)
        logits, targets = self._logits_and_targets(self.forward_decoder, ids)
        return F.cross_entropy(logits, targets, reduction="sum") / norms["predicted"]

    @torch.no_grad()
    def evaluate(self, device: torch.device) -> dict[str, float]:
        """eval_loss (mean per predicted token), perplexity and next-token accuracy, fp32."""
        was_training = self.model.training
        self.model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        for rows in torch.from_numpy(self.valid).split(self.batch_size):
            logits, targets = self._logits_and_targets(self.decoder, rows.to(device))
            loss_sum += F.cross_entropy(logits, targets, reduction="sum").item()
            correct += int((logits.argmax(dim=-1) == targets).sum())
            count += targets.numel()
        self.model.train(was_training)
        eval_loss = loss_sum / count
        return {"eval_loss": eval_loss, "perplexity": perplexity(eval_loss),
                "accuracy": correct / count}
