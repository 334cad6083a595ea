"""Task registry: one room per task family (classification, segmentation; detection, generation and more later)."""
from ..registry import Registry
from .base import Prediction, Task
from .classification import ClassificationParams, ClassificationTask, build_classification, default_image_size
from .segmentation import SegmentationParams, SegmentationTask, build_segmentation

TASKS = Registry("task")
TASKS.register("classification", build_classification)
TASKS.register("segmentation", build_segmentation)
_CLASSES = {"classification": ClassificationTask, "segmentation": SegmentationTask}    # one row per registered task


def declared_metric(task: str) -> tuple[str, str]:
    """(primary metric, max|min) that ``task`` declares, known before any run exists (sweeps, compare defaults)."""
    TASKS.get(task)                             # ConfigError naming the valid tasks
    return _CLASSES[task].primary_metric

__all__ = ["TASKS", "Task", "Prediction", "ClassificationTask", "ClassificationParams", "SegmentationTask",
           "SegmentationParams", "declared_metric", "default_image_size"]
