"""Refuse a job that cannot fit its worker, before it takes the worker down."""

from __future__ import annotations

import psutil
import torch

from jobspec.sizing import estimate_bytes
from workers.engine.failures import EngineError

__all__ = ["TooBig", "available_bytes", "check_fits", "estimate_bytes"]


class TooBig(EngineError):
    """The job needs more memory than its worker has."""


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
