"""Task registry: one room per task family (classification, segmentation; detection, generation and more later)."""
from ..registry import Registry
from .base import Prediction, Task
from .classification import ClassificationParams, ClassificationTask, build_classification, default_image_size
from .segmentation import SegmentationParams, SegmentationTask, build_segmentation

TASKS = Registry("task")
TASKS.register("classification", build_classification)
TASKS.register("segmentation", build_segmentation)

__all__ = ["TASKS", "Task", "Prediction", "ClassificationTask", "ClassificationParams", "SegmentationTask",
           "SegmentationParams", "default_image_size"]
