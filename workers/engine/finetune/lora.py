"""LoRA adapters through peft, imported here only: full fine-tuning never needs it."""

from __future__ import annotations

import torch

from jobspec import AdapterSpec as AdapterConfig
from workers.engine.failures import ConfigError


def add_lora(model: torch.nn.Module, adapter: AdapterConfig, head: list[str]) -> torch.nn.Module:
    """Freeze the model, put adapters on every linear layer of the encoder (attention and
    FFN) and keep the new head modules trainable in full (modules_to_save)."""
    from peft import LoraConfig, get_peft_model

    def in_head(name: str) -> bool:
        return any(name == h or name.startswith(h + ".") for h in head)

    targets = [name for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and not in_head(name)]
    if not targets:
        raise ConfigError("the base model has no linear layers to put LoRA adapters on")
    config = LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                        target_modules=targets, modules_to_save=head or None)
    return get_peft_model(model, config)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside add_lora's wrapper, adapters injected.

    Checkpoints save this one: every weight, adapters included, under stable names.
    """
    return model.get_base_model()


def merge(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model with the adapters folded into the weights they adapt."""
    return model.merge_and_unload()
