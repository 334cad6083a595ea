"""Mixed precision: which dtype 'auto' means on this device, and the matching autocast context."""
from __future__ import annotations

import contextlib

import torch

from ..utils import ConfigError


def cpu_supports_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    """'auto' -> bf16 on CPUs with native bf16 and on CUDA GPUs that support it, fp16 on older GPUs, else fp32."""
    if name not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"train.precision: expected auto, fp32, bf16 or fp16, got {name!r}")
    if name == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        if device.type == "cpu" and cpu_supports_bf16():
            return "bf16"
        return "fp32"
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs a CUDA device; use bf16 or fp32 on CPU")
    return name


def autocast(device: torch.device, precision: str):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)
