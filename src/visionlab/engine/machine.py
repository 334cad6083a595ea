"""What this machine is and what it can do: the CPU's model and flags (recorded in every run's env.json), its
measured peak FLOP/s for a matmul and a 3x3 convolution in fp32 and bf16 (what benchmarks divide achieved FLOP/s by),
and how the C allocator keeps the memory a CPU training step frees (``keep_freed_memory``).

Absolute img/s differ 3x between the machines we run on; a fraction of the machine's own measured peak does not.
"""
from __future__ import annotations

import ctypes
import os
import platform
import sys
import time
from functools import lru_cache

import torch

from ..utils import UserError, cpu_flags, cpu_model
from .precision import cpu_supports_bf16

# CPU flags that decide which kernels PyTorch can use (the rest of /proc/cpuinfo's long list is noise here)
SPEED_FLAGS = ("sse4_2", "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16",
               "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni")


@lru_cache(maxsize=1)
def cpu_info() -> dict:
    """{"model", "flags", "cores", "arch"}: the CPU's model name, its speed-relevant flags (from /proc/cpuinfo on
    Linux; None where unreadable), the logical cores and the architecture."""
    flags = cpu_flags()
    return {"model": cpu_model(), "flags": None if flags is None else [f for f in SPEED_FLAGS if f in flags],
            "cores": os.cpu_count(), "arch": platform.machine()}


def _best_rate(fn, flops: float, seconds: float) -> float:
    """Peak FLOP/s of ``fn`` (which does ``flops`` FLOPs): the fastest of repeated calls within ``seconds``, after
    two warm-up calls (the first builds oneDNN kernels)."""
    fn(), fn()
    best, deadline = float("inf"), time.perf_counter() + seconds
    while True:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        if time.perf_counter() > deadline:
            return flops / best


@torch.no_grad()
def measure_peak(seconds: float = 0.5, matmul_n: int = 2048, conv_shape: tuple = (32, 128, 32)) -> dict:
    """Measured peak FLOP/s of this CPU with torch's current threads: {"matmul_fp32", "conv_fp32", "matmul_bf16",
    "conv_bf16"} (bf16 keys only where the CPU has native bf16), plus "threads" and the shapes used.

    matmul: a square ``matmul_n`` product (2 n^3 FLOP). conv: a 3x3, stride-1 convolution of a channels_last batch
    ``(batch, channels, size)`` with as many output channels as input (2 * 9 * C_in * C_out * H * W * batch FLOP),
    the shape of a mid-network layer of a small-image CNN. Each is the fastest call within ``seconds``."""
    n = matmul_n
    b, c, s = conv_shape
    dtypes = [torch.float32] + ([torch.bfloat16] if cpu_supports_bf16() else [])
    out = {"threads": torch.get_num_threads(), "matmul_n": n, "conv_shape": list(conv_shape)}
    for dtype in dtypes:
        name = "fp32" if dtype == torch.float32 else "bf16"
        a, m = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out[f"matmul_{name}"] = _best_rate(lambda: torch.mm(a, m), 2.0 * n ** 3, seconds)
        x = torch.randn(b, c, s, s, dtype=dtype).contiguous(memory_format=torch.channels_last)
        conv = torch.nn.Conv2d(c, c, 3, padding=1, bias=False).to(dtype=dtype, memory_format=torch.channels_last)
        out[f"conv_{name}"] = _best_rate(lambda: conv(x), 2.0 * 9 * c * c * s * s * b, seconds)
    return out


def peak_for(peak: dict, precision: str) -> float:
    """The conv peak that bounds a training run in ``precision`` (fp32 unless bf16 was measured and used)."""
    return peak.get("conv_bf16", peak["conv_fp32"]) if precision == "bf16" else peak["conv_fp32"]


_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4         # glibc's mallopt parameters (malloc.h)
_malloc_mode: str | None = None


def keep_freed_memory() -> str:
    """Make glibc's malloc keep the memory a training step frees, for the next step to reuse; returns the mode now in
    force, "keep" or "system" (recorded in env.json as "malloc").

    By default glibc serves every block over 32 MB with its own mmap and unmaps it on free; a CPU training step at a
    large batch frees its activations (airbench94 at batch 1024: 30-130 MB each) and the next step maps them afresh,
    so the kernel zero-fills every page again, on every step (aten::fill_ and first touches in the profile).
    Turning that off (no mmap for big blocks, no trimming of the heap's top) leaves the process holding its peak
    memory, as PyTorch's CUDA caching allocator does on a GPU. Once per process; Linux with glibc only (elsewhere
    "system"). ``VISIONLAB_MALLOC=system`` keeps glibc's defaults (benchmarks/malloc_keep.py measures both)."""
    global _malloc_mode
    if _malloc_mode is None:
        asked = os.environ.get("VISIONLAB_MALLOC", "keep")
        if asked not in ("keep", "system"):
            raise UserError(f"VISIONLAB_MALLOC={asked!r}: use keep (the default) or system (glibc's own settings)")
        _malloc_mode = "system"
        if asked == "keep" and sys.platform == "linux":
            try:
                libc = ctypes.CDLL(None)
                ok = libc.mallopt(_M_MMAP_MAX, 0) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 2 ** 31 - 1) == 1
            except (OSError, AttributeError):   # not glibc (musl has no mallopt)
                ok = False
            _malloc_mode = "keep" if ok else "system"
    return _malloc_mode
