"""Causal LM (GPT-2, Llama): predict each next token of a packed block."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.activations import NewGELUActivation

from jobspec.metrics import EVAL_LOSS
from workers.engine.objective import Batch
from workers.engine.objectives.pretrain_data import PretrainData, perplexity

# Rows of the [tokens, vocabulary] logits made at a time by linear_cross_entropy: a chunk's
# logits (512 x 8192 in fp32: 16 MiB) stay near the cache instead of a [B*S, V] copy per
# dtype going through memory several times. On the benchmark CPU (GPT-2 mini, vocab 8192,
# 4,064 rows) 512 was the fastest: 1024 ~6% and 256 ~9% slower, 64 twice as slow.
LOGIT_CHUNK_ROWS = 512


class TanhGELU(torch.nn.Module):
    """GPT-2's "gelu_new" (0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3)))) as torch's one
    fused kernel: the same function; transformers composes it of eight elementwise ops, each
    a pass over the [B*S, 4H] activations forward and backward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(x, approximate="tanh")


def fuse_activations(model: torch.nn.Module) -> None:
    """Swap transformers' composed tanh-GELU for TanhGELU, in place. A training-time choice
    only: the module has no weights, and config.json still says gelu_new."""
    for module in list(model.modules()):
        for name, child in module.named_children():
            if type(child) is NewGELUActivation:
                setattr(module, name, TanhGELU())


class _LinearCrossEntropy(torch.autograd.Function):
    """sum(cross_entropy(hidden @ weight.T, targets)), made LOGIT_CHUNK_ROWS rows at a time.

    The numbers are those of the plain path under autocast (logits in the autocast dtype,
    softmax and loss in fp32, gradients through the same low-precision matmuls); the
    gradients are made in the forward pass, chunk by chunk, so the full logits are never
    held, and the weight's gradient is summed over the chunks in fp32.
    """

    @staticmethod
    def forward(ctx: Any, hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                dtype: torch.dtype) -> torch.Tensor:
        with torch.autocast(hidden.device.type, enabled=False):
            h, w = hidden.to(dtype), weight.to(dtype)
            wide = torch.promote_types(dtype, torch.float32)  # softmax, loss and sums
            grad_h = torch.empty_like(h)
            grad_w = torch.zeros(weight.shape, dtype=wide, device=weight.device)
            loss = torch.zeros((), dtype=wide, device=hidden.device)
            for start in range(0, len(h), LOGIT_CHUNK_ROWS):
                rows = slice(start, start + LOGIT_CHUNK_ROWS)
                h_rows, gold = h[rows], targets[rows]
                # One fused log-softmax kernel, in fp32; the loss is its value at the gold
                # token, and d loss / d logits = softmax - one-hot, made in place of it.
                log_p = torch.log_softmax(h_rows @ w.t(), dim=-1, dtype=wide)
                loss -= log_p.gather(1, gold[:, None]).sum()
                grad = log_p.exp_()
                grad[torch.arange(len(gold), device=gold.device), gold] -= 1.0
                grad_low = grad.to(dtype)
                grad_h[rows] = grad_low @ w
                grad_w += (grad_low.t() @ h_rows).to(wide)
        ctx.save_for_backward(grad_h, grad_w)
        ctx.dtypes = (hidden.dtype, weight.dtype)
        return loss

    @staticmethod
    def backward(ctx: Any, *grad_outputs: torch.Tensor) -> tuple[Any, ...]:
        (scale,) = grad_outputs
        grad_h, grad_w = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        return (grad_h * scale).to(hidden_dtype), (grad_w * scale).to(weight_dtype), None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor
                         ) -> torch.Tensor:
    """Summed next-token cross-entropy of a bias-free output layer, in chunks (training)."""
    device = hidden.device.type
    dtype = (torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device)
             else hidden.dtype)
    loss: torch.Tensor = _LinearCrossEntropy.apply(hidden, weight, targets, dtype)
    return loss


class CausalLM(PretrainData):
    """Next-token prediction on blocks with no padding; documents are separated by the
    end-of-text token inside a block, as GPT-2 was trained."""

    def __init__(self, *args: object, compile: bool, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        fuse_activations(self.model)
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
        hidden = self.forward_decoder(input_ids=ids).last_hidden_state[:, :-1].flatten(0, 1)
        targets = ids[:, 1:].flatten()
        if getattr(self.head, "bias", None) is None:
            summed = linear_cross_entropy(hidden, self.head.weight, targets)
        else:
            summed = F.cross_entropy(self.head(hidden).float(), targets, reduction="sum")
        return summed / norms["predicted"]

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
        return {EVAL_LOSS: eval_loss, "perplexity": perplexity(eval_loss),
                "accuracy": correct / count}
