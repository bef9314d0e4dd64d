"""Build the BERT masked-language model and compute its training loss."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import BertForMaskedLM

from workers.engine.config import ModelConfig

# Peak dense bf16 FLOP/s by GPU name (substring, first match wins), for MFU. Sparsity-free
# figures from the vendors' data sheets.
PEAK_BF16_FLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756e12),
    ("H200", 989e12),
    ("H100", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
)


def build_model(config: ModelConfig, vocab_size: int, pad_token_id: int, seed: int,
                attention: str = "sdpa", dropout: float = 0.1) -> BertForMaskedLM:
    """A freshly initialised BertForMaskedLM; the seed makes the initial weights reproducible."""
    torch.manual_seed(seed)
    bert_config = config.to_bert_config(vocab_size, pad_token_id)
    bert_config.hidden_dropout_prob = bert_config.attention_probs_dropout_prob = dropout
    # Training-time choice only: config.json does not record it, so the export is unaffected.
    bert_config._attn_implementation = attention
    return BertForMaskedLM(bert_config)


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied input/output embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def flops_per_token(model: BertForMaskedLM, sequence_length: int) -> float:
    """Training FLOPs per token: 6 x non-embedding parameters + attention (PaLM's count)."""
    embeddings = sum(p.numel() for p in model.bert.embeddings.parameters())
    config = model.config
    attention = 12 * config.num_hidden_layers * config.hidden_size * sequence_length
    return 6 * (count_parameters(model) - embeddings) + attention


def peak_flops(device: torch.device) -> float | None:
    """The GPU's peak dense bf16 FLOP/s, if it is in the table."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS if key in name), None)


def mlm_loss(model: BertForMaskedLM, encoder: torch.nn.Module, input_ids: torch.Tensor,
             positions: torch.Tensor | None, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy over the masked positions of a micro-batch.

    positions (flat indices of the masked tokens) selects the sparse path: the MLM head runs
    on those rows only, not on every position, as the stock model does; rows whose target is
    IGNORE_INDEX (padding) add nothing. Without positions, targets is the full label grid.
    encoder is model.bert, maybe compiled.
    """
    # Blocks are never padded, so no attention mask: SDPA can take its fastest path.
    hidden = encoder(input_ids=input_ids).last_hidden_state
    if positions is not None:
        hidden = hidden.flatten(0, 1).index_select(0, positions)
    logits = model.cls(hidden).flatten(0, -2)
    return F.cross_entropy(logits.float(), targets.flatten(), reduction="sum")
