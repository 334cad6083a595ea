"""Streaming semantic-segmentation metrics from one accumulated confusion matrix: mIoU, pixel accuracy, mean class
accuracy, frequency-weighted IoU and per-class IoU, with an ignore index (void pixels)."""
from __future__ import annotations

import numpy as np
import torch


def iou_from_confusion(cm) -> np.ndarray:
    """Per-class IoU = TP / (TP + FP + FN) from a confusion matrix (rows = true, cols = predicted); NaN for a class
    whose union is 0 (neither in the target nor in the prediction)."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    union = cm.sum(axis=1) + cm.sum(axis=0) - tp
    return np.divide(tp, union, out=np.full_like(tp, np.nan), where=union > 0)


def scores_from_confusion(cm) -> dict:
    """miou, pixel_acc, mean_acc, fwiou, per_class_iou (NaN -> None) and n (pixels) from a confusion matrix.

    mIoU averages only the classes present in the target or the prediction (union > 0), as mmseg's nanmean does:
    a class absent from an evaluation set says nothing about the model, so it neither scores 0 nor 1. A class that
    is predicted but never present has IoU 0 and does count. mean_acc averages recall over classes present in the
    target; fwiou weights each class's IoU by its share of target pixels. With no pixels seen everything is 0.0.
    """
    cm = np.asarray(cm, dtype=np.int64)
    n = int(cm.sum())
    iou = iou_from_confusion(cm)
    if n == 0:
        return {"miou": 0.0, "pixel_acc": 0.0, "mean_acc": 0.0, "fwiou": 0.0,
                "per_class_iou": [None] * len(iou), "n": 0}
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1).astype(np.float64)
    present = support > 0
    freq = support / n
    return {
        "miou": float(np.nanmean(iou)),     # at least one class has a union > 0 when n > 0
        "pixel_acc": float(tp.sum() / n),
        "mean_acc": float(np.mean(tp[present] / support[present])),
        "fwiou": float(np.sum(freq[present] * iou[present])),
        "per_class_iou": [None if np.isnan(v) else float(v) for v in iou],
        "n": n,
    }


class SegmentationMetrics:
    """Accumulates a ``num_classes`` x ``num_classes`` confusion matrix (int64, CPU; rows = true class, columns =
    predicted) over batches; pixels whose target equals ``ignore_index`` are skipped.

    For DDP, all-reduce (sum) ``confusion`` across ranks before ``compute()``, or ``merge`` another instance or
    matrix: every score is a function of the summed matrix alone.
    """

    def __init__(self, num_classes: int, ignore_index: int = 255):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if 0 <= ignore_index < num_classes:
            raise ValueError(f"ignore_index={ignore_index} is a real class (0..{num_classes - 1})")
        self.num_classes = int(num_classes)
        self.ignore_index = int(ignore_index)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)

    def _labels(self, pred: torch.Tensor) -> torch.Tensor:
        """Logits [B, C, H, W] -> argmax labels [B, H, W]; integer labels [B, H, W] pass through."""
        if pred.is_floating_point():
            if pred.ndim != 4 or pred.shape[1] != self.num_classes:
                raise ValueError(f"logits must have shape [B, {self.num_classes}, H, W], got {tuple(pred.shape)}")
            return pred.argmax(1)
        if pred.ndim != 3:
            raise ValueError(f"integer predictions must have shape [B, H, W], got {tuple(pred.shape)}")
        return pred

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add one batch: ``pred`` logits [B, C, H, W] or integer labels [B, H, W]; ``target`` integer [B, H, W]
        with values in 0..C-1 or ``ignore_index``. The counting runs on the inputs' device; only C*C counts move."""
        labels = self._labels(pred.detach())
        target = target.detach().to(labels.device)
        if labels.shape != target.shape:
            raise ValueError(f"prediction {tuple(labels.shape)} and target {tuple(target.shape)} differ in shape "
                             f"(resize the logits to the mask size first)")
        keep = target != self.ignore_index
        t = target[keep].to(torch.int64)
        p = labels[keep].to(torch.int64)
        if t.numel() == 0:
            return
        c = self.num_classes
        if int(t.min()) < 0 or int(t.max()) >= c:
            raise ValueError(f"target values must lie in 0..{c - 1} or be ignore_index={self.ignore_index}")
        if int(p.min()) < 0 or int(p.max()) >= c:
            raise ValueError(f"predicted labels must lie in 0..{c - 1}")
        counts = torch.bincount(t * c + p, minlength=c * c)
        self.confusion += counts.reshape(c, c).cpu()

    def merge(self, other: "SegmentationMetrics | torch.Tensor") -> None:
        """Add another instance's (or a raw) confusion matrix, e.g. one gathered from another process."""
        cm = other.confusion if isinstance(other, SegmentationMetrics) else torch.as_tensor(other)
        if tuple(cm.shape) != tuple(self.confusion.shape):
            raise ValueError(f"confusion matrix {tuple(cm.shape)} does not match {tuple(self.confusion.shape)}")
        self.confusion += cm.to("cpu", torch.int64)

    def compute(self) -> dict:
        """miou, pixel_acc, mean_acc, fwiou, per_class_iou (list, None for classes absent from target and
        prediction), confusion (list of lists) and n (pixels counted); see ``scores_from_confusion``."""
        cm = self.confusion.numpy()
        return {**scores_from_confusion(cm), "confusion": cm.tolist()}
