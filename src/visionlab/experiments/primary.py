"""The primary metric of a set of runs (summary.json: task, primary_metric, mode; older summaries mean
classification, val/acc, max), its test-split key and direction, and how its numbers print (percent or decimals)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from visionlab.run import test_key
from visionlab.utils import UserError, read_json

LEGACY = ("classification", "val/acc", "max")       # what a summary.json without "primary_metric" was
FRACTIONS = ("acc", "top5", "miou", "pixel_acc", "mean_acc", "fwiou", "map")   # print as percent without a view
LOWER_IS_BETTER = ("loss", "ece", "fid", "kid")


@dataclass(frozen=True)
class Primary:
    """A task's primary metric: ``metric`` is the logged val/<m> key, ``mode`` max or min."""

    task: str
    metric: str
    mode: str

    @property
    def test(self) -> str:
        """The test-split figure of the metric (val/miou -> test/miou)."""
        return test_key(self.metric)

    @property
    def direction(self) -> str:
        """optuna's word for the mode."""
        return "maximize" if self.mode == "max" else "minimize"


def of_summary(summary: dict) -> Primary:
    """The primary metric a summary.json declares (val/acc, max for summaries written before it did)."""
    if "primary_metric" not in summary:
        return Primary(summary.get("task") or LEGACY[0], LEGACY[1], LEGACY[2])
    return Primary(summary.get("task") or LEGACY[0], summary["primary_metric"], summary.get("mode") or "max")


def of_runs(run_dirs) -> Primary:
    """The primary metric shared by the runs that have a summary.json; UserError when they disagree (a
    comparison of a classification and a segmentation run has no common yardstick). No summary at all: val/acc."""
    found: dict[tuple, tuple[Primary, Path]] = {}
    for d in map(Path, run_dirs):
        if (d / "summary.json").is_file():
            p = of_summary(read_json(d / "summary.json"))
            found.setdefault((p.metric, p.mode), (p, d))       # tasks sharing a yardstick compare (VAE vs DDPM FID)
    if len(found) > 1:
        (a, da), (b, db) = list(found.values())[:2]
        raise UserError(f"these runs report different primary metrics ({da}: {a.task} {a.metric}, {db}: {b.task} "
                        f"{b.metric}); compare runs of one task, or pass metric=test/<name> explicitly")
    return next(iter(found.values()), (Primary(*LEGACY), None))[0]


def of_task(task: str) -> Primary:
    """The primary metric a task declares, before any run exists (a sweep must know its direction up front)."""
    from visionlab.tasks import declared_metric

    metric, mode = declared_metric(task)      # ConfigError naming the valid tasks
    return Primary(task, metric, mode)


def mode_of(metric: str, primary: Primary) -> str:
    """max or min for any metric key: the primary metric's own mode, min for losses and calibration errors."""
    name = metric.split("/", 1)[-1]
    if name == primary.metric.split("/", 1)[-1]:
        return primary.mode
    return "min" if name in LOWER_IS_BETTER or name.endswith("loss") else "max"


def _headline(task: str | None) -> dict:
    from visionlab.views.tasks import TASK_VIEWS

    view = TASK_VIEWS.get(task or LEGACY[0])
    return {m: (label, kind) for m, label, kind in (view.headline if view else ())}


def metric_kind(metric: str, task: str | None = None) -> str:
    """'pct' for fractions (accuracy, IoU: printed as %, differences in points), else 'f4': from the task's
    headline table (views/tasks.py), else by name."""
    name = metric.split("/", 1)[-1]
    found = _headline(task).get(name)
    if found:
        return found[1]
    return "pct" if name in FRACTIONS else "f4"


def metric_label(metric: str, task: str | None = None) -> str:
    """'test mean IoU' for test/miou of a segmentation run; the key itself where no view names it."""
    split, _, name = metric.rpartition("/")
    found = _headline(task).get(name)
    return f"{split} {found[0]}".strip() if found and split in ("test", "val", "") else metric
