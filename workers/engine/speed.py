"""Resolve the "auto" speed settings for the device a run trains on.

The choices were measured on BERT-mini (batch 32 x 128) on a 2-core AVX512-BF16 CPU; the
figures are in bench/README.md.
"""

from __future__ import annotations

import torch


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bf16 matrix instructions (AVX512-BF16 or AMX)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def resolve_precision(precision: str, device: torch.device) -> bool:
    """True to train under bf16 autocast: explicit "bf16", or "auto" where the device has it."""
    if precision != "auto":
        return precision == "bf16"
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    # Emulated bf16 (no native instructions) is slower than fp32 on a CPU.
    return device.type == "cpu" and cpu_has_bf16()


def resolve_attention(attention: str, device: torch.device) -> str:
    """auto -> SDPA on GPUs (flash/memory-efficient kernels), the eager matmuls on CPUs.

    On the benchmark CPU, torch's SDPA CPU kernel was slower than the eager attention's
    two batched matmuls at sequence 128 in bf16 (and with dropout it falls back to math).
    """
    if attention != "auto":
        return attention
    return "sdpa" if device.type == "cuda" else "eager"
