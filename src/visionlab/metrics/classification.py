"""Streaming classification metrics: confusion matrix, top-1/top-k, loss, ECE and per-class precision/recall/F1."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def per_class_from_confusion(cm) -> list[dict]:
    """Per-class precision, recall, F1 and support from a confusion matrix (rows = true, cols = predicted).

    A class that is never predicted (or never present) gets 0.0 for the undefined ratio, like
    sklearn's ``zero_division=0``.
    """
    cm = np.asarray(cm, dtype=np.int64)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    # 2TP / (2TP + FP + FN) equals the harmonic mean and needs no special case when p + r == 0.
    denom = (predicted + support).astype(np.float64)
    f1 = np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)
    return [
        {"index": i, "precision": float(precision[i]), "recall": float(recall[i]),
         "f1": float(f1[i]), "support": int(support[i])}
        for i in range(cm.shape[0])
    ]


def ece_from_bins(counts, conf_sums, correct_sums) -> float:
    """Expected calibration error: sum over bins of (bin weight) * |mean confidence - accuracy|."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    if total == 0:
        return 0.0
    gap = np.abs(np.asarray(conf_sums, dtype=np.float64) - np.asarray(correct_sums, dtype=np.float64))
    # |sum_conf - sum_correct| / total == (n_b / N) * |mean_conf_b - acc_b|, summed over bins.
    return float(gap.sum() / total)


class ClassificationMetrics:
    """Accumulates classification metrics over batches; ``compute()`` returns plain Python types.

    ``update`` accepts raw logits or log-probabilities of any float dtype (softmax is applied; the
    cross-entropy of log-probs equals that of the logits they came from). All sums live on the CPU.
    """

    def __init__(self, num_classes: int, topk: int = 5, ece_bins: int = 15):
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if ece_bins < 1:
            raise ValueError(f"ece_bins must be >= 1, got {ece_bins}")
        self.num_classes = int(num_classes)
        self.k = min(int(topk), self.num_classes)  # top-k with k > C would always be 100%
        self.ece_bins = int(ece_bins)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen so far."""
        c, b = self.num_classes, self.ece_bins
        self.confusion = torch.zeros(c * c, dtype=torch.int64)
        self.topk_correct = 0
        self.loss_sum = 0.0
        self.n = 0
        self.bin_count = torch.zeros(b, dtype=torch.float64)
        self.bin_conf = torch.zeros(b, dtype=torch.float64)
        self.bin_correct = torch.zeros(b, dtype=torch.float64)

    @torch.no_grad()
    def update(self, logits: torch.Tensor, targets: torch.Tensor) -> None:
        """Add one batch: ``logits`` [N, C] (logits or log-probs), ``targets`` [N] integer class indices."""
        logits = logits.detach().to("cpu", torch.float32)
        targets = targets.detach().to("cpu", torch.int64).reshape(-1)
        c = self.num_classes
        if logits.ndim != 2 or logits.shape[1] != c:
            raise ValueError(f"logits must have shape [N, {c}], got {tuple(logits.shape)}")
        if logits.shape[0] != targets.shape[0]:
            raise ValueError(f"{logits.shape[0]} logits but {targets.shape[0]} targets")
        if targets.numel() == 0:
            return
        if int(targets.min()) < 0 or int(targets.max()) >= c:
            raise ValueError(f"targets must lie in [0, {c - 1}]")

        probs = logits.softmax(dim=1)
        conf, pred = probs.max(dim=1)
        self.confusion += torch.bincount(targets * c + pred, minlength=c * c)

        topk_idx = logits.topk(self.k, dim=1).indices
        self.topk_correct += int((topk_idx == targets[:, None]).any(dim=1).sum())
        self.loss_sum += float(F.cross_entropy(logits, targets, reduction="sum"))
        self.n += int(targets.numel())

        # Equal-width bins [i/B, (i+1)/B); confidence 1.0 goes into the last bin.
        b = self.ece_bins
        bins = (conf * b).to(torch.int64).clamp_(0, b - 1)
        correct = (pred == targets).to(torch.float64)
        self.bin_count += torch.bincount(bins, minlength=b).to(torch.float64)
        self.bin_conf += torch.bincount(bins, weights=conf.to(torch.float64), minlength=b)
        self.bin_correct += torch.bincount(bins, weights=correct, minlength=b)

    def compute(self) -> dict:
        """Return acc, top5 (k = min(topk, C)), mean loss, ece, macro_f1, confusion, per_class and n."""
        c = self.num_classes
        cm = self.confusion.reshape(c, c).numpy()
        n = self.n
        per_class = per_class_from_confusion(cm)
        return {
            "acc": float(np.trace(cm) / n) if n else 0.0,
            "top5": float(self.topk_correct / n) if n else 0.0,
            "loss": float(self.loss_sum / n) if n else 0.0,
            "ece": ece_from_bins(self.bin_count.numpy(), self.bin_conf.numpy(), self.bin_correct.numpy()),
            "macro_f1": float(np.mean([p["f1"] for p in per_class])),
            "confusion": cm.tolist(),
            "per_class": per_class,
            "n": int(n),
        }
