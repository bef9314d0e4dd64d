"""Refuses a job that cannot fit its worker, before it takes the worker down."""

import psutil

from workers.engine import PretrainConfig


def estimate_bytes(config: PretrainConfig) -> int:
    """A rough upper bound of training memory: fp32 weights, grads and two AdamW moments,
    plus activations and logits of one micro-batch (fp32, as if nothing were saved)."""
    m, hp = config.model, config.hyperparameters
    # ModelConfig resolves every size at construction; int() only satisfies the type checker.
    layers, hidden = int(m.num_layers or 0), int(m.hidden_size or 0)
    ffn, heads = int(m.intermediate_size or 0), int(m.num_heads or 0)
    vocab = config.tokenizer.vocab_size
    params = (vocab + m.max_position_embeddings) * hidden + \
        layers * (4 * hidden * hidden + 2 * hidden * ffn)
    micro = hp.micro_batch_size or hp.batch_size
    tokens = micro * hp.sequence_length
    activations = tokens * layers * (16 * hidden + 2 * ffn) * 4 + \
        micro * heads * hp.sequence_length ** 2 * layers * 4
    logits = tokens * vocab * 4 * 2
    return int(params * 16 + activations + logits)


def available_bytes() -> int:
    import torch

    if torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info()
        return int(free)
    return int(psutil.virtual_memory().available)


def too_big(config: PretrainConfig) -> str | None:
    """Why the job cannot fit this worker, or None if it can."""
    need, have = estimate_bytes(config), available_bytes()
    if need <= 0.9 * have:
        return None
    return (f"the job needs about {need / 2**30:.1f} GiB but its worker has "
            f"{have / 2**30:.1f} GiB free; use a smaller model, batch_size or sequence_length, "
            "or set micro_batch_size")
