"""One explicit table: which view pieces belong to which task (report sections, headline metrics, what runs after
training, how predictions are shown). A new task adds one module here and one row below; nothing else branches on
task names."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from visionlab.utils import ConfigError
from visionlab.views import classification, detection, domain, generative, segmentation, semi_supervised


@dataclass(frozen=True)
class TaskView:
    headline: tuple                  # (metric, label, format) in the order the report's results table shows them
    sections: Callable               # (report info, classes) -> [(heading, blocks)]: the task's own report sections
    after_train: Callable            # (run_dir) -> None: galleries that need the trained model
    show_predictions: Callable       # (results, image names, out_dir) -> lines the CLI prints
    seed_metrics: tuple = ()         # headline metrics a seeds report shows besides the primary (e.g. detection's AP50)


TASK_VIEWS = {
    "classification": TaskView(classification.HEADLINE, classification.sections, classification.after_train,
                               classification.show_predictions),
    "segmentation": TaskView(segmentation.HEADLINE, segmentation.sections, segmentation.after_train,
                             segmentation.show_predictions),
    "detection": TaskView(detection.HEADLINE, detection.sections, detection.after_train, detection.show_predictions,
                          seed_metrics=("map50", "map75")),
    "dg": TaskView(domain.HEADLINE, domain.sections, domain.after_train, domain.show_predictions),
    "ssl": TaskView(semi_supervised.HEADLINE, semi_supervised.sections, semi_supervised.after_train,
                    semi_supervised.show_predictions),
    **{task: TaskView(generative.HEADLINE, generative.sections, generative.after_train, generative.show_predictions)
       for task in ("vae", "dcgan", "ddpm")},
}


def view_for(task: str) -> TaskView:
    if task not in TASK_VIEWS:
        raise ConfigError(f"no views for task {task!r}; known: {', '.join(TASK_VIEWS)}")
    return TASK_VIEWS[task]
