"""Refuse a job that cannot fit its worker, before it takes the worker down."""

from __future__ import annotations

import psutil
import torch

from workers.engine.errors import EngineError


class TooBig(EngineError):
    """The job needs more memory than its worker has."""


def estimate_bytes(*, parameters: int, layers: int, hidden: int, intermediate: int, heads: int,
                   vocab: int, micro_batch: int, sequence_length: int) -> int:
    """A rough upper bound of training memory: fp32 weights, grads and two AdamW moments,
    plus activations and logits of one micro-batch (fp32, as if nothing were saved)."""
    tokens = micro_batch * sequence_length
    activations = tokens * layers * (16 * hidden + 2 * intermediate) * 4 + \
        micro_batch * heads * sequence_length ** 2 * layers * 4
    logits = tokens * vocab * 4 * 2
    return int(parameters * 16 + activations + logits)


def available_bytes(device: torch.device) -> int:
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    return int(psutil.virtual_memory().available)


def check_fits(need: int, device: torch.device) -> None:
    """TooBig, saying what to change, if need exceeds 90% of what the device has free."""
    have = available_bytes(device)
    if need <= 0.9 * have:
        return
    raise TooBig(f"the job needs about {need / 2**30:.1f} GiB but its worker has "
                 f"{have / 2**30:.1f} GiB free; use a smaller model, batch_size or "
                 "sequence_length, or set micro_batch_size")
