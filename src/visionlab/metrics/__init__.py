"""Streaming metrics (update / compute / reset); they see tensors, never models."""
from visionlab.metrics.classification import ClassificationMetrics, ece_from_bins, per_class_from_confusion

__all__ = ["ClassificationMetrics", "ece_from_bins", "per_class_from_confusion"]
