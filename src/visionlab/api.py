"""The public Python API, mirroring the CLI: the pipeline (run.py) plus the human report (experiments/)."""
from __future__ import annotations

from pathlib import Path

from . import run as _run
from .experiments.cam_gallery import write_cam_gallery
from .experiments.report import render_any, write_report


def train(cfg=None, overrides: list[str] | None = None, on_epoch_end: list | None = None) -> _run.RunResult:
    """Train a run (``cfg``: Config, dict, YAML path or None for the embedded default) and write its report."""
    result = _run.train(cfg, overrides, on_epoch_end)
    if result.summary:                  # empty on ranks other than 0 of a distributed run
        write_cam_gallery(result.run_dir)
        write_report(result.run_dir)
    return result


def evaluate(run_dir: str | Path, split: str = "test") -> dict:
    """Re-evaluate a run's best checkpoint on ``split`` (writes eval_<split>.json) and refresh its report."""
    metrics = _run.evaluate(run_dir, split)
    write_report(run_dir)
    return metrics


def report(path: str | Path) -> Path:
    """Regenerate the report of a run, seeds, compare or sweep folder; returns the HTML path."""
    return render_any(path)


load_run = _run.load_run
predict = _run.predict
RunResult = _run.RunResult
