"""The public Python API, mirroring the CLI: the pipeline (run/) plus the human views (views/, experiments/)."""
from __future__ import annotations

from pathlib import Path

from . import run as _run
from .experiments.render import render_any
from .views.report import write_report
from .experiments.training import train_and_report


def train(cfg=None, overrides: list[str] | None = None, on_epoch_end: list | None = None) -> _run.RunResult:
    """Train a run (``cfg``: Config, dict, YAML path or None for the embedded default) and write its report."""
    return train_and_report(cfg, overrides, on_epoch_end)


def evaluate(run_dir: str | Path, split: str = "test", overrides: list[str] | None = None, tag: str = "") -> dict:
    """Re-evaluate a run's best checkpoint on ``split`` (writes eval_<split>[-<tag>].json) and refresh its report;
    ``overrides``: evaluation-time settings (run.EVAL_KEYS and the task's section), e.g. the native resolution."""
    metrics = _run.evaluate(run_dir, split, overrides, tag)
    write_report(run_dir)
    return metrics


def report(path: str | Path) -> Path:
    """Regenerate the report of a run, seeds, compare or sweep folder; returns the HTML path."""
    return render_any(path)


load_run = _run.load_run
predict = _run.predict
generate = _run.generate
RunResult = _run.RunResult
