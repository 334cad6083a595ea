"""The machine's facts: CPU model and flags, and its measured peak FLOP/s (what benchmarks divide by)."""
from __future__ import annotations

import torch

from visionlab.engine import machine
from visionlab.engine.precision import cpu_supports_bf16


def test_cpu_info_names_the_model_and_speed_flags():
    info = machine.cpu_info()
    assert info["model"] and info["cores"] >= 1 and info["arch"]
    if info["flags"] is not None:                       # Linux: /proc/cpuinfo readable
        assert set(info["flags"]) <= set(machine.SPEED_FLAGS)
        assert ("avx512_bf16" in info["flags"] or "amx_bf16" in info["flags"]) == cpu_supports_bf16()


def test_best_rate_divides_flops_by_the_fastest_call():
    import time

    calls = iter([0.05, 0.05] + [0.01] * 1000)          # two slow warm-ups, then 10 ms calls

    rate = machine._best_rate(lambda: time.sleep(next(calls)), flops=1e9, seconds=0.05)
    assert 1e10 < rate <= 1e11                           # "1 GFLOP" in >= 10 ms: at most 100 GFLOP/s


def test_measure_peak_is_positive_and_a_conv_is_no_faster_than_physics_allows():
    torch.set_num_threads(1)
    peak = machine.measure_peak(seconds=0.05, matmul_n=256, conv_shape=(2, 32, 16))
    assert peak["threads"] == 1 and peak["matmul_n"] == 256 and peak["conv_shape"] == [2, 32, 16]
    for key in ("matmul_fp32", "conv_fp32"):
        assert 1e8 < peak[key] < 1e13, (key, peak[key])   # one core: well above 0.1 and below 10,000 GFLOP/s
    assert ("conv_bf16" in peak) == cpu_supports_bf16()
    assert machine.peak_for(peak, "fp32") == peak["conv_fp32"]
    assert machine.peak_for(peak, "bf16") == peak.get("conv_bf16", peak["conv_fp32"])
