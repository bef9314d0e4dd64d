"""Resolve the "auto" speed settings for the device a run trains on.

The choices were measured on BERT-mini (batch 32 x 128) on a 2-core AVX512-BF16 CPU; the
figures are in bench/README.md.
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Iterator

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


# glibc mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3


def _libc() -> ctypes.CDLL | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt, libc.malloc_trim  # noqa: B018  (glibc only)
    except (OSError, AttributeError):
        return None
    return libc


@contextlib.contextmanager
def host_memory_kept() -> Iterator[None]:
    """Within: the process reuses the host memory it frees instead of giving it back.

    A training step frees and allocates the same large tensors (activations, logits
    chunks) every step. By default glibc serves big blocks with fresh mmap'd pages and
    returns the top of its heap past 128 KiB, and the first touch of each fresh 4 KiB page
    is a page fault: a bf16 -> fp32 copy of 1024 x 8192 values took 6.6 ms into a new
    tensor, 1.0 ms with this; the GPT-2 mini clm step ~12% less (bench/README.md). The
    process stays at its peak size while it trains; on the way out the heap's free memory
    goes back to the OS (a worker lives on after the job). A no-op off glibc.
    """
    libc = _libc()
    if libc is None:
        yield
        return
    libc.mallopt(_M_MMAP_THRESHOLD, 1 << 30)
    libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30)
    libc.mallopt(_M_TOP_PAD, 64 << 20)
    try:
        yield
    finally:
        # Back to glibc's defaults (a fixed mmap threshold stays fixed: 128 KiB is its
        # starting value), then hand back what is free.
        libc.mallopt(_M_MMAP_THRESHOLD, 128 << 10)
        libc.mallopt(_M_TRIM_THRESHOLD, 128 << 10)
        libc.mallopt(_M_TOP_PAD, 0)
        libc.malloc_trim(0)
