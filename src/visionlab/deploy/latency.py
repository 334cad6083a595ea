"""Latency measurement: p50/p95 milliseconds per batch and images per second of any callable, plus a record of
the machine (CPU model, threads, library versions) the numbers belong to."""
from __future__ import annotations

import platform
import time
from typing import Callable

import numpy as np
import torch

from ..utils import cpu_flags, cpu_model  # noqa: F401  (re-exported: benchmarks read them here)


def measure(fn: Callable[[np.ndarray], object], batch: np.ndarray, iters: int = 50, warmup: int = 5,
            max_seconds: float = 0.0) -> dict:
    """Time ``fn(batch)``: ``warmup`` untimed calls (allocator, oneDNN/ORT kernel choice), then ``iters`` timed
    ones (fewer when ``max_seconds`` > 0 runs out, at least 3). Returns p50/p95/mean ms per batch and img/s
    at the median."""
    for _ in range(max(0, warmup)):
        fn(batch)
    times, start = [], time.perf_counter()
    for i in range(max(1, iters)):
        t0 = time.perf_counter()
        fn(batch)
        times.append(time.perf_counter() - t0)
        if max_seconds and i >= 2 and time.perf_counter() - start > max_seconds:
            break
    ms = np.array(times) * 1e3
    p50 = float(np.percentile(ms, 50))
    return {"batch_size": int(len(batch)), "iters": len(times), "p50_ms": p50, "p95_ms": float(np.percentile(ms, 95)),
            "mean_ms": float(ms.mean()), "img_per_s": float(len(batch) / (p50 / 1e3))}


BF16_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")   # x86 AVX-512 BF16 / AMX, Arm BF16: bf16 matmuls in hardware


def bf16_native(flags: set[str] | None = None) -> bool | None:
    """True when the CPU computes bf16 in hardware, False when it only emulates it (AVX2, or AVX-512 without BF16:
    bf16 autocast then runs slower than fp32), None when the flags cannot be read."""
    flags = cpu_flags() if flags is None else flags
    return None if flags is None else any(f in flags for f in BF16_FLAGS)


def bf16_note(native: bool | None) -> str | None:
    """One sentence for a bf16 timing on a CPU without native bf16, else None."""
    if native is False:
        return (f"bf16 is emulated on this CPU (none of the flags {', '.join(BF16_FLAGS)} in /proc/cpuinfo): "
                "bf16 autocast converts in software and is expected to run slower than fp32 here")
    return None


def machine_info() -> dict:
    """What a latency number depends on: CPU, cores and threads used, and library versions."""
    import os

    info = {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform()}
    try:
        import onnxruntime

        info["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        info["onnxruntime"] = None
    if hasattr(os, "getloadavg"):                     # busy neighbours distort latency; say how busy the box was
        info["load_avg_1m"] = round(os.getloadavg()[0], 2)
    info["bf16_native"] = bf16_native()               # None: flags unreadable (not Linux)
    return info
