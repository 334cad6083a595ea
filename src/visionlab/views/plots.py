"""Report figures (confusion matrix, training curves, error gallery) drawn with matplotlib's Agg canvas.

Figures are built as plain ``matplotlib.figure.Figure`` objects, never through pyplot, so nothing touches the
global backend or keeps figures alive after saving.
"""
from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from visionlab.utils import atomic_write_bytes

ANNOTATE_MAX_CLASSES = 20  # above this the numbers become unreadable
TICKS_MAX_CLASSES = 60     # above this class names overlap; show indices sparsely instead


def save_figure(fig: Figure, path: str | os.PathLike, dpi: int = 110) -> None:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())
    fig.clear()


def _short(name: str, width: int = 14) -> str:
    return name if len(name) <= width else name[: width - 1] + "\u2026"


def confusion_panel(ax, mat: np.ndarray, classes: Sequence[str], title: str, fmt: str, vmax: float) -> None:
    c = mat.shape[0]
    im = ax.imshow(mat, cmap="Blues", vmin=0, vmax=vmax if vmax > 0 else 1, interpolation="nearest")
    ax.figure.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    ax.set_title(title)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if c <= TICKS_MAX_CLASSES:
        labels = [_short(n) for n in classes]
        ax.set_xticks(range(c), labels, rotation=90 if c > 6 else 0, fontsize=8)
        ax.set_yticks(range(c), labels, fontsize=8)
    if c <= ANNOTATE_MAX_CLASSES:
        thresh = (vmax if vmax > 0 else 1) / 2
        for i in range(c):
            for j in range(c):
                v = mat[i, j]
                ax.text(j, i, format(v, fmt), ha="center", va="center", fontsize=7 if c > 10 else 9,
                        color="white" if v > thresh else "black")


def plot_confusion(confusion, classes: Sequence[str], path: str | os.PathLike) -> None:
    """Save two panels, raw counts and row-normalized rates, with class names on the axes."""
    cm = np.asarray(confusion, dtype=np.int64)
    rows = cm.sum(axis=1, keepdims=True)
    norm = np.divide(cm, rows, out=np.zeros(cm.shape, dtype=np.float64), where=rows > 0)
    side = min(max(4.0, 0.45 * cm.shape[0] + 2.5), 16.0)
    fig = Figure(figsize=(2 * side + 1, side), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    confusion_panel(ax1, cm, classes, "counts", "d", float(cm.max()) if cm.size else 0.0)
    confusion_panel(ax2, norm, classes, "row-normalized (recall)", ".2f", 1.0)
    save_figure(fig, path)


def plot_curves(rows: Sequence[dict], path: str | os.PathLike, metric: str = "acc") -> None:
    """Save loss and the task's primary ``metric`` (acc, miou, ...) per epoch, train and val; missing (None) values
    are left out."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, metric, scale, ylabel in ((ax_loss, "loss", 1.0, "loss"), (ax_acc, metric, 100.0, f"{metric} (%)")):
        for split, style in (("train", "-o"), ("val", "--s")):
            pts = [(r["epoch"], r[f"{split}/{metric}"] * scale) for r in rows
                   if r.get("epoch") is not None and r.get(f"{split}/{metric}") is not None]
            if pts:
                x, y = zip(*pts)
                ax.plot(x, y, style, markersize=3, label=split)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.set_title(ylabel)
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    save_figure(fig, path)


def _as_display(img: np.ndarray) -> tuple[np.ndarray, str | None]:
    if img.ndim == 3 and img.shape[-1] == 1:
        img = img[..., 0]
    return img, ("gray" if img.ndim == 2 else None)


def plot_errors(images, true, pred, conf, classes: Sequence[str], path: str | os.PathLike,
                names: Sequence[str] | None = None, max_images: int = 64) -> int:
    """Save a grid of misclassified images titled "true -> pred (conf)"; returns how many were drawn."""
    k = min(len(images), max_images)
    if k == 0:
        return 0
    cols = min(8, math.ceil(math.sqrt(k)))
    nrows = math.ceil(k / cols)
    fig = Figure(figsize=(1.9 * cols, 2.1 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, cols)).ravel()

    def label(i: int) -> str:
        return _short(classes[i], 10) if 0 <= i < len(classes) else str(i)

    for n, ax in enumerate(axes):
        ax.axis("off")
        if n >= k:
            continue
        img, cmap = _as_display(np.asarray(images[n]))
        ax.imshow(img, cmap=cmap, vmin=0, vmax=255, interpolation="nearest")
        title = f"{label(int(true[n]))} -> {label(int(pred[n]))} ({float(conf[n]):.2f})"
        if names is not None and n < len(names) and names[n]:
            title += "\n" + _short(str(names[n]), 18)
        ax.set_title(title, fontsize=7)
    save_figure(fig, path)
    return k
