"""The machine's facts: CPU model and flags, its measured peak FLOP/s (what benchmarks divide by), and the
allocator setting that keeps a step's freed memory for the next step."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
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


# Page faults per training step of a small conv net on a batch whose activations exceed glibc's 32 MB mmap ceiling
STEP_FAULTS = """
import json, resource, torch
from visionlab.engine.machine import keep_freed_memory
mode = keep_freed_memory()
torch.set_num_threads(1)
torch.manual_seed(0)
m = torch.nn.Sequential(torch.nn.Conv2d(3, 64, 3, padding=1), torch.nn.ReLU())     # 34 MB of activations
x = torch.randn(128, 3, 32, 32)
faults = []
for _ in range(5):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    m(x).square().mean().backward()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps([mode, faults]))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt and minor-fault counts are Linux's")
def test_kept_memory_is_reused_without_page_faults_and_system_mode_opts_out():
    def faults(malloc: str) -> tuple[str, list[int]]:
        env = {**os.environ, "VISIONLAB_MALLOC": malloc}
        out = subprocess.run([sys.executable, "-c", STEP_FAULTS], env=env, capture_output=True, text=True, check=True)
        return tuple(json.loads(out.stdout.strip().splitlines()[-1]))

    keep_mode, keep = faults("keep")
    system_mode, system = faults("system")
    assert (keep_mode, system_mode) == ("keep", "system")
    # glibc's default maps the step's big blocks afresh each time: every page (~4 KB) faults again, every step
    assert min(system[1:]) > 0.5 * 128 * 64 * 32 * 32 * 4 / 4096
    # kept: after the first step the memory is reused (the occasional step still grows the heap)
    assert sum(keep[1:]) < 0.2 * sum(system[1:])


def test_an_unknown_malloc_mode_names_the_two_there_are(monkeypatch):
    from visionlab.utils import UserError

    monkeypatch.setattr(machine, "_malloc_mode", None)          # not applied yet in this process
    monkeypatch.setenv("VISIONLAB_MALLOC", "sytem")
    with pytest.raises(UserError, match="use keep .* or system"):
        machine.keep_freed_memory()
    assert machine._malloc_mode is None                           # nothing was set
