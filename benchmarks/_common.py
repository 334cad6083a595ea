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
