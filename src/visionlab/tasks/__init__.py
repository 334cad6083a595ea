"""Task registry: one room per task family (classification, segmentation, generative models, semi-supervised
classification, domain generalization, object detection)."""
from ..registry import Registry
from .base import Prediction, Task
from .classification import ClassificationParams, ClassificationTask, build_classification, default_image_size
from .detection import DetectionTask, build_detection
from .domain import DomainGeneralizationTask, build_dg
from .generative.ddpm import DDPMTask, build_ddpm
from .generative.gan import DCGANTask, build_dcgan
from .generative.vae import VAETask, build_vae
from .segmentation import SegmentationParams, SegmentationTask, build_segmentation
from .semi_supervised import SemiSupervisedTask, build_ssl

TASKS = Registry("task")
TASKS.register("classification", build_classification)
TASKS.register("segmentation", build_segmentation)
TASKS.register("vae", build_vae)
TASKS.register("dcgan", build_dcgan)
TASKS.register("ddpm", build_ddpm)
TASKS.register("ssl", build_ssl)
TASKS.register("dg", build_dg)
TASKS.register("detection", build_detection)
_CLASSES = {"classification": ClassificationTask, "segmentation": SegmentationTask,    # one row per registered task
            "vae": VAETask, "dcgan": DCGANTask, "ddpm": DDPMTask, "ssl": SemiSupervisedTask,
            "dg": DomainGeneralizationTask, "detection": DetectionTask}


def declared_metric(task: str) -> tuple[str, str]:
    """(primary metric, max|min) that ``task`` declares, known before any run exists (sweeps, compare defaults)."""
    TASKS.get(task)                             # ConfigError naming the valid tasks
    return _CLASSES[task].primary_metric

__all__ = ["TASKS", "Task", "Prediction", "ClassificationTask", "ClassificationParams", "SegmentationTask",
           "SegmentationParams", "declared_metric", "default_image_size"]
