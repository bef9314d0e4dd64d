"""LoRA and AdaLoRA adapters through peft, imported here only: full fine-tuning never needs
it."""

from __future__ import annotations

import torch

from jobspec import AdapterSpec as AdapterConfig
from workers.engine.failures import ConfigError

# AdaLoRA's schedule, as fractions of the run's steps: train at init_r first (tinit), then
# prune ranks every step down to the budget, and train the final ranks last (tfinal).
ADALORA_INIT, ADALORA_FINAL = 0.1, 0.2


def add_lora(model: torch.nn.Module, adapter: AdapterConfig, head: list[str],
             total_steps: int = 0) -> torch.nn.Module:
    """Freeze the model, put adapters on every linear layer of the encoder (attention and
    FFN) and keep the new head modules trainable in full (modules_to_save). AdaLoRA's
    budget schedule needs the run's total_steps."""
    from peft import AdaLoraConfig, LoraConfig, get_peft_model

    def in_head(name: str) -> bool:
        return any(name == h or name.startswith(h + ".") for h in head)

    targets = [name for name, module in model.named_modules()
               if isinstance(module, torch.nn.Linear) and not in_head(name)]
    if not targets:
        raise ConfigError("the base model has no linear layers to put LoRA adapters on")
    if adapter.type == "adalora":
        if total_steps < 3:
            raise ConfigError("AdaLoRA needs at least 3 steps (it trains, prunes ranks, then "
                              "trains the final ranks)")
        tinit = int(ADALORA_INIT * total_steps)
        tfinal = int(ADALORA_FINAL * total_steps)
        init_r = adapter.init_r or max(adapter.r, round(1.5 * adapter.r))
        ada = AdaLoraConfig(target_r=adapter.r, init_r=init_r, tinit=tinit, tfinal=tfinal,
                            total_step=total_steps, lora_alpha=adapter.alpha,
                            lora_dropout=adapter.dropout, target_modules=targets,
                            modules_to_save=head or None)
        return get_peft_model(model, ada)
    config = LoraConfig(r=adapter.r, lora_alpha=adapter.alpha, lora_dropout=adapter.dropout,
                        target_modules=targets, modules_to_save=head or None)
    return get_peft_model(model, config)


def adalora_step(model: torch.nn.Module, step: int) -> None:
    """AdaLoRA's rank (re)allocation after optimizer step `step` (1-based), gradients still
    in place, as peft asks: sensitivity scores, the budget, the masks."""
    model.base_model.update_and_allocate(step)


def adalora_penalty(model: torch.nn.Module) -> torch.Tensor:
    """AdaLoRA's orthogonal regularisation of its P and Q factors (orth_reg_weight x the
    mean Frobenius distance of PP^T and Q^TQ from the identity), as peft adds it to a
    transformers loss: here the tasks compute their own loss."""
    config = model.peft_config[model.active_adapter]
    terms = []
    for name, p in model.named_parameters():
        if ("lora_A" in name or "lora_B" in name) and p.requires_grad:
            cov = p @ p.T if "lora_A" in name else p.T @ p
            eye = torch.eye(*cov.shape, device=cov.device, dtype=cov.dtype)
            terms.append(torch.linalg.matrix_norm(cov.float() - eye.float()))
    if not terms:
        return torch.zeros(())
    return config.orth_reg_weight * torch.stack(terms).mean()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside add_lora's wrapper, adapters injected.

    Checkpoints save this one: every weight, adapters included, under stable names.
    """
    return model.get_base_model()


def merge(model: torch.nn.Module) -> torch.nn.Module:
    """A plain transformers model with the adapters folded into the weights they adapt."""
    return model.merge_and_unload()
