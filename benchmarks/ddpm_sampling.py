"""DDPM sampling throughput (images/s) with DDIM at 50 steps on the MNIST-size U-Net of configs/mnist_ddpm.yaml
(untrained unless run= names a ddpm run): eager fp32 NCHW, eager channels_last + bf16 autocast (only on a CPU with
bf16 instructions: avx512_bf16 / amx_bf16 in /proc/cpuinfo), and ONNX Runtime (the exported denoiser in the loop).

Each arm runs the task's own sampler (task.sample) with only the denoiser swapped; arms alternate over ``reps`` and
the median counts, so drift in the machine's load hits all of them. Ratios are against eager fp32 of this same run.

    .venv/bin/python benchmarks/ddpm_sampling.py [run=RUN_DIR] [steps=50] [n=16] [reps=3] [threads=N]
On a machine shared with other jobs pass threads=1: with 2 threads while another job held a core, eager fp32 fell to
0.26 img/s (4.0 at 1 thread; OpenMP workers spin-wait for the busy core), which flatters the other arms ~15x.
Last line: RESULT eager_fp32=<img/s> bf16_cl=<img/s|na> onnx=<img/s> bf16_cl_over_fp32=<x|na> onnx_over_fp32=<x>
"""
from __future__ import annotations

import copy
import dataclasses
import sys
import tempfile
import time
from pathlib import Path

from _common import ROOT, machine_peak, of_peak

import torch
from torch import nn

CONFIG = ROOT / "configs" / "mnist_ddpm.yaml"


class Bf16ChannelsLast(nn.Module):
    """The U-Net with channels_last weights under CPU bf16 autocast; predicted noise back in fp32."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = copy.deepcopy(unet).to(memory_format=torch.channels_last)

    def forward(self, x, t, labels=None):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return self.unet(x.contiguous(memory_format=torch.channels_last), t, labels).float()


def build_task(run_dir: str | None):
    """(task, description): the run's DDPM task on the CPU, or an untrained one from configs/mnist_ddpm.yaml."""
    from visionlab import config as C
    from visionlab.data.base import DataInfo
    from visionlab.run import load_run
    from visionlab.tasks import TASKS

    if run_dir:
        run = load_run(run_dir, device="cpu")
        if run.cfg.task != "ddpm":
            sys.exit(f"run={run_dir} is a {run.cfg.task} run; pass a ddpm run (or no run=)")
        return run.task, f"run {run_dir}"
    cfg = C.load_config(CONFIG)
    info = DataInfo([str(i) for i in range(10)], 1, (28, 28), (0.1307,), (0.3081,))
    task = TASKS.get("ddpm")(cfg, info, torch.Generator())
    task.model.eval()
    return task, f"untrained U-Net of {CONFIG.name}"


def sampler_with(task, unet: nn.Module):
    """A copy of the task whose sampler calls ``unet`` (DDIM), the run's task untouched."""
    s = copy.copy(task)
    s.model = nn.ModuleDict({"unet": unet})
    s.p = dataclasses.replace(task.p, sampler="ddim")
    return s


def arms(task, out_dir: Path) -> dict:
    """name -> sampler task; the bf16 arm only where the CPU has bf16 instructions."""
    from visionlab.deploy.latency import BF16_FLAGS, cpu_flags
    from visionlab.deploy.runtime import ort_session
    from visionlab.views.export_generative import OrtDenoiser, write_onnx

    path = write_onnx(task.unet, task.export_example(2), "noise", out_dir / "denoiser.onnx")
    out = {"eager fp32 NCHW": sampler_with(task, task.unet)}
    if set(BF16_FLAGS[:2]) & (cpu_flags() or set()):
        out["eager bf16 autocast channels_last"] = sampler_with(task, Bf16ChannelsLast(task.unet))
    out["onnxruntime fp32"] = sampler_with(task, OrtDenoiser(ort_session(path)))
    return out


@torch.inference_mode()
def bench(samplers: dict, n: int, steps: int, reps: int) -> tuple[dict, dict]:
    """(name -> median images/s, name -> max |difference| from eager fp32 in [-1, 1] units), same seed for all."""
    times = {k: [] for k in samplers}
    images = {}
    for k, s in samplers.items():                         # warm-up: allocator, oneDNN / ORT kernel choice
        images[k] = s.sample(n, torch.Generator().manual_seed(0), None, steps)
    for _ in range(reps):
        for k, s in samplers.items():
            t0 = time.perf_counter()
            s.sample(n, torch.Generator().manual_seed(0), None, steps)
            times[k].append(time.perf_counter() - t0)
    ref = images["eager fp32 NCHW"]
    speed = {k: n / sorted(v)[len(v) // 2] for k, v in times.items()}
    return speed, {k: float((im - ref).abs().max()) for k, im in images.items()}


def main(argv: list[str]) -> None:
    import onnxruntime

    from visionlab.deploy.latency import cpu_model

    kv = dict(a.split("=", 1) for a in argv)
    if "threads" in kv:
        torch.set_num_threads(int(kv["threads"]))
    steps, n, reps = int(kv.get("steps", 50)), int(kv.get("n", 16)), int(kv.get("reps", 3))
    task, what = build_task(kv.get("run"))
    peak = machine_peak()
    params = sum(p.numel() for p in task.unet.parameters())
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}, "
          f"onnxruntime {onnxruntime.__version__}")
    print(f"model: {what} ({params / 1e6:.2f} M parameters, {task.info.channels}x{task.input_size[0]}x"
          f"{task.input_size[1]}); DDIM {steps} steps, batch {n}, median of {reps}")
    with tempfile.TemporaryDirectory() as tmp:
        samplers = arms(task, Path(tmp))
        speed, diff = bench(samplers, n, steps, reps)
    base = speed["eager fp32 NCHW"]
    flops = task.flops_per_image() * steps                 # one denoiser call per DDIM step
    print(f"{'arm':<36} {'img/s':>8} {'ms/img':>8} {'x fp32':>7} {'max|diff|':>10} {'of peak':>8}")
    for k, v in speed.items():
        frac = of_peak(flops * v, "bf16" if "bf16" in k else "fp32", peak)
        print(f"{k:<36} {v:>8.2f} {1000 / v:>8.1f} {v / base:>7.2f} {diff[k]:>10.2e} {100 * frac:>7.1f}%")
    if "eager bf16 autocast channels_last" not in speed:
        print("bf16 arm skipped: no avx512_bf16 / amx_bf16 in /proc/cpuinfo (bf16 would be emulated)")
    bf16 = speed.get("eager bf16 autocast channels_last")
    onnx = speed["onnxruntime fp32"]
    print(f"RESULT eager_fp32={base:.2f} bf16_cl={f'{bf16:.2f}' if bf16 else 'na'} onnx={onnx:.2f} "
          f"bf16_cl_over_fp32={f'{bf16 / base:.2f}' if bf16 else 'na'} onnx_over_fp32={onnx / base:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
