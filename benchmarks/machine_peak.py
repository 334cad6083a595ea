"""This machine's measured peak: fp32 and bf16 (where the CPU has it natively) FLOP/s of a 2048 matmul and of a 3x3
convolution (batch 32, 128 -> 128 channels, 32x32, channels_last), at 1 thread and at all threads, with the CPU model
and its speed flags. The other benchmarks divide achieved FLOP/s by the same measurement (engine.machine).

    .venv/bin/python benchmarks/machine_peak.py [seconds=1.0]
Last line: RESULT conv_fp32_gflops=<x> conv_bf16_gflops=<y> matmul_fp32_gflops=<z> ... threads=<n> cpu=<model>
"""
from __future__ import annotations

import sys

from _common import machine_peak

import torch


def main(argv: list[str]) -> None:
    from visionlab.engine.machine import cpu_info

    seconds = float(dict(a.split("=", 1) for a in argv).get("seconds", 1.0))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    one = machine_peak(seconds)
    torch.set_num_threads(threads)
    peak = machine_peak(seconds) if threads > 1 else one
    for k in (k for k, v in peak.items() if isinstance(v, float)):
        print(f"{k:<12} {peak[k] / 1e9:8.1f} GFLOP/s at {threads} threads, {one[k] / 1e9:8.1f} at 1 thread "
              f"(scaling {peak[k] / one[k]:.2f}x)")
    print("RESULT " + " ".join(f"{k}_gflops={v / 1e9:.1f}" for k, v in peak.items() if isinstance(v, float))
          + f" threads={threads} cpu={cpu_info()['model']!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
