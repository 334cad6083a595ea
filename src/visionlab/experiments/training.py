"""One run and its human view: the pipeline (run.train), the CAM gallery and the report, as every mode wants it."""
from __future__ import annotations

from visionlab import run as _run
from visionlab.experiments.cam_gallery import write_cam_gallery
from visionlab.experiments.report import write_report


def train_and_report(cfg=None, overrides: list[str] | None = None, on_epoch_end: list | None = None,
                     report: bool = True) -> _run.RunResult:
    """Train a run, then (on rank 0, when ``report``) write its CAM gallery and report.md/report.html."""
    result = _run.train(cfg, overrides, on_epoch_end)
    if report and result.summary:       # the summary is empty on ranks other than 0 of a distributed run
        write_cam_gallery(result.run_dir)
        write_report(result.run_dir)
    return result
