"""Refuses a job that cannot fit its worker, before it takes the worker down."""

from typing import Any

import psutil

from service.domain.specs import SIZE_PRESETS


def estimate_bytes(spec: dict[str, Any]) -> int:
    """A rough upper bound of training memory: fp32 weights, grads and two AdamW moments,
    plus activations and logits of one micro-batch (fp32, as if nothing were saved)."""
    model, tok, hp = spec["model"], spec["tokenizer"], spec["hyperparameters"]
    layers, hidden = SIZE_PRESETS[model["size"]]
    layers = model.get("num_layers") or layers
    hidden = model.get("hidden_size") or hidden
    ffn = model.get("intermediate_size") or 4 * hidden
    vocab = tok["vocab_size"]
    params = vocab * hidden + layers * (4 * hidden * hidden + 2 * hidden * ffn) + \
        model.get("max_position_embeddings", 512) * hidden
    micro = hp.get("micro_batch_size") or hp["batch_size"]
    tokens = micro * hp["sequence_length"]
    heads = model.get("num_heads") or max(1, hidden // 64)
    activations = tokens * layers * (16 * hidden + 2 * ffn) * 4 + \
        micro * heads * hp["sequence_length"] ** 2 * layers * 4
    logits = tokens * vocab * 4 * 2
    return params * 16 + activations + logits


def available_bytes() -> int:
    try:
        import torch

        if torch.cuda.is_available():
            free, _ = torch.cuda.mem_get_info()
            return int(free)
    except ImportError:  # pragma: no cover
        pass
    return int(psutil.virtual_memory().available)


def too_big(spec: dict[str, Any]) -> str | None:
    """Why the job cannot fit this worker, or None if it can."""
    need, have = estimate_bytes(spec), available_bytes()
    if need <= 0.9 * have:
        return None
    return (f"the job needs about {need / 2**30:.1f} GiB but its worker has "
            f"{have / 2**30:.1f} GiB free; use a smaller model, batch_size or sequence_length, "
            "or set micro_batch_size")
