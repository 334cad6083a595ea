"""Task registry: one room per task (classification now; segmentation, detection, generation later)."""
from ..registry import Registry
from .base import Task
from .classification import ClassificationParams, ClassificationTask, build_classification, default_image_size

TASKS = Registry("task")
TASKS.register("classification", build_classification)

__all__ = ["TASKS", "Task", "ClassificationTask", "ClassificationParams", "default_image_size"]
