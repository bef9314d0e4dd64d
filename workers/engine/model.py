"""Build the BERT masked-language model and compute its training loss."""

from __future__ import annotations

import torch
from transformers import BertForMaskedLM

from workers.engine.config import ModelConfig


def build_model(config: ModelConfig, vocab_size: int, pad_token_id: int, seed: int
                ) -> BertForMaskedLM:
    """A freshly initialised BertForMaskedLM; the seed makes the initial weights reproducible."""
    torch.manual_seed(seed)
    return BertForMaskedLM(config.to_bert_config(vocab_size, pad_token_id))


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied input/output embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def mlm_loss(model: BertForMaskedLM, input_ids: torch.Tensor, labels: torch.Tensor
             ) -> torch.Tensor:
    """Mean cross-entropy over the masked positions of a batch."""
    # Blocks are never padded, so no attention mask: SDPA can take its fastest path.
    return model(input_ids=input_ids, labels=labels).loss
