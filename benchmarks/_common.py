"""Shared bits of the benchmark scripts: where the data is, and quiet pipeline runs."""
from __future__ import annotations

import os
import sys
import tempfile
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


def build_arm(config: str, overrides: list[str]):
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
