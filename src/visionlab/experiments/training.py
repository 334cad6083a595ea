"""One run and its human view: the pipeline (run.train), the task's galleries and the report, as every mode wants it."""
from __future__ import annotations

from visionlab import run as _run
from visionlab.views.report import write_report
from visionlab.views.tasks import view_for


def train_and_report(cfg=None, overrides: list[str] | None = None, on_epoch_end: list | None = None,
                     report: bool = True) -> _run.RunResult:
    """Train a run, then (on rank 0, when ``report``) write the task's galleries (the classification CAM gallery)
    and report.md/report.html."""
    result = _run.train(cfg, overrides, on_epoch_end)
    if report and result.summary:       # the summary is empty on ranks other than 0 of a distributed run
        view_for(result.summary["task"]).after_train(result.run_dir)
        write_report(result.run_dir)
    return result
