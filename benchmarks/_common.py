"""Shared bits of the benchmark scripts: where the data is, and quiet pipeline runs."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("VISIONLAB_DATA", ROOT.parent / "shared" / "data"))
os.environ["VISIONLAB_DATA"] = str(DATA)
sys.path.insert(0, str(ROOT / "src"))


def run_pipeline(config: str | None, overrides: list[str]) -> dict:
    """Train through visionlab's own pipeline (as `visionlab train` does) into a scratch folder; return summary."""
    from visionlab import run

    out = tempfile.mkdtemp(prefix="vl-bench-")
    result = run.train(config, [*overrides, f"out_dir={out}", "train.progress=false", "train.tensorboard=false"])
    return {**result.summary, "run_dir": str(result.run_dir)}


def build_arm(config: str | None, overrides: list[str]):
    """(task, train loader, precision, cfg) of a run of ``config`` + ``overrides`` on the CPU, as the pipeline builds
    them (channels_last when the config says so), nothing written: one arm of a training-step benchmark."""
    import torch

    from visionlab import config as C
    from visionlab.data import build_splits
    from visionlab.engine import build_optimizer
    from visionlab.engine.distributed import Dist
    from visionlab.engine.precision import resolve_precision
    from visionlab.run import _train_loader
    from visionlab.tasks import TASKS

    cfg = C.load_config(config, overrides)
    splits = build_splits(cfg.data)
    task = TASKS.get(cfg.task)(cfg, splits.info(), torch.Generator().manual_seed(0))
    if cfg.train.channels_last:
        task.model.to(memory_format=torch.channels_last)
    task.optimizers = {k: build_optimizer(g, cfg.optim) for k, g in task.optimizer_groups(cfg.optim).items()}
    loader = _train_loader(splits, task, cfg, task.info, Dist())
    return task, loader, resolve_precision(cfg.train.precision, torch.device("cpu")), cfg


def time_arms(arms: dict, steps: int, reps: int) -> dict:
    """Median ms per training step of each arm (name -> build_arm's tuple): one warm-up step each, then ``reps``
    rounds in which every arm takes ``steps`` steps on fresh batches of its loader, so that drift in the machine's
    load hits all arms alike."""

    iters = {m: iter(loader) for m, (_, loader, _, _) in arms.items()}
    times: dict[str, list[float]] = {m: [] for m in arms}
    for m, (task, _, precision, _) in arms.items():
        task.model.train()
        train_step(task, next(iters[m]), precision)
    for _ in range(reps):
        for m, (task, _, precision, _) in arms.items():
            batches = [next(iters[m]) for _ in range(steps)]
            t0 = time.perf_counter()
            for b in batches:
                train_step(task, b, precision)
            times[m].append((time.perf_counter() - t0) / steps)
    return {m: 1000 * sorted(v)[len(v) // 2] for m, v in times.items()}


def train_step(task, batch, precision: str) -> None:
    """One training step of ``task`` on the CPU as the engine takes it: the task's step under the run's precision,
    then backward and the "main" optimizer (a task under manual optimization has stepped its own)."""
    import torch

    from visionlab.engine.precision import autocast

    with autocast(torch.device("cpu"), precision):
        out = task.training_step(batch)
    if not task.manual_optimization:
        opt = task.optimizers["main"]
        opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        opt.step()


def timed_baseline_epoch(loader, model, optimizer, loss_fn, max_batches: int | None = None,
                         step_context=None) -> tuple[float, float]:
    """(img/s, fraction of the time outside the model step) of a plain training loop over ``loader`` (``model``: any
    callable, in training mode), the way the baselines train: wait for the next batch, then forward, backward and
    step under ``step_context()``, up to ``max_batches`` batches; the clock starts at the first batch's request."""
    import contextlib

    step_context = step_context or contextlib.nullcontext
    n, step_s, t0 = 0, 0.0, time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if max_batches is not None and i >= max_batches:
            break
        t = time.perf_counter()
        with step_context():
            loss = loss_fn(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        step_s += time.perf_counter() - t
        n += len(y)
    total = time.perf_counter() - t0
    return n / total, 1 - step_s / total


def machine_peak(seconds: float = 0.5) -> dict:
    """Measure this machine's peak FLOP/s with torch's current threads (engine.machine.measure_peak) and print it
    with the CPU model and flags: what the fractions of peak below divide by."""
    from visionlab.engine.machine import cpu_info, measure_peak

    info, peak = cpu_info(), measure_peak(seconds)
    gf = ", ".join(f"{k.replace('_', ' ')} {v / 1e9:.0f}" for k, v in peak.items() if isinstance(v, float))
    print(f"machine: {info['model']} [{' '.join(info['flags'] or ['flags unknown'])}], {peak['threads']} threads; "
          f"measured peak GFLOP/s: {gf}")
    return peak


def of_peak(flop_per_s: float, precision: str, peak: dict) -> float:
    """Achieved FLOP/s as a fraction of the measured conv peak in the precision used (bf16 runs: the bf16 peak)."""
    from visionlab.engine.machine import peak_for

    return flop_per_s / peak_for(peak, precision)


def training_flop_per_s(flops_per_image: float, img_per_s: float) -> float:
    """FLOP/s a training run achieved: forward FLOPs per image (summary.json) x 3 x images per second."""
    from visionlab.tasks.base import TRAIN_FLOPS_PER_FORWARD

    return TRAIN_FLOPS_PER_FORWARD * flops_per_image * img_per_s


def run_efficiency(summary: dict, peak: dict) -> str:
    """'X GFLOP/s = Y % of the <precision> conv peak; Z % of the time outside the model step' for a pipeline run."""
    img_per_s = summary["timings"]["train_img_per_s"]
    rate = (summary["train_flops_per_image"] * img_per_s if summary.get("train_flops_per_image")
            else training_flop_per_s(summary["flops_per_image"], img_per_s))      # a summary from before the key
    outside = summary["timings"].get("outside_step_fraction")
    return (f"{rate / 1e9:.1f} GFLOP/s = {100 * of_peak(rate, summary['precision'], peak):.1f} % of the "
            f"{summary['precision']} conv peak; "
            + (f"{100 * outside:.1f} % of the time outside the model step" if outside is not None else
               "time outside the step not recorded"))
