"""What every dataset source returns: splits of uint8 images (in memory or as file paths) plus dataset info."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class ImageSet:
    """One split. Either ``images`` (uint8 [N, H, W, C], decoded once) or ``paths`` (decoded lazily by workers).

    ``labels`` is each image's class; for a box dataset (``boxes`` set) it is the image's dominant class (the class
    with the most boxes, ties -> the lowest id), and num_classes (one extra stratum) for an image without boxes (a
    negative): seeded splits and data.limit stratify on it.
    """

    labels: np.ndarray                       # int64 [N]
    images: np.ndarray | None = None         # uint8 [N, H, W, C]
    paths: list[str] | None = None           # one file per sample, when not in memory
    names: list[str] | None = None           # a readable id per sample (file name or "train[123]") for galleries
    masks: np.ndarray | None = None          # uint8 [N, H, W] class ids, 255 = ignore (segmentation sources)
    domains: np.ndarray | None = None        # int64 [N] domain index (domain-folder sources, Splits.domains names)
    # detection sources: float32 [N, M, 5], per image its boxes as rows (x0, y0, x1, y1, class) in pixels of the
    # stored image, padded with rows of -1 (class -1 = padding); M is the same for every split of a dataset
    boxes: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def in_memory(self) -> bool:
        return self.images is not None

    def subset(self, idx) -> "ImageSet":
        idx = np.asarray(idx)
        return ImageSet(
            labels=self.labels[idx],
            images=None if self.images is None else self.images[idx],
            paths=None if self.paths is None else [self.paths[i] for i in idx],
            names=None if self.names is None else [self.names[i] for i in idx],
            masks=None if self.masks is None else self.masks[idx],
            domains=None if self.domains is None else self.domains[idx],
            boxes=None if self.boxes is None else self.boxes[idx],
        )

    @staticmethod
    def concat(parts: list["ImageSet"]) -> "ImageSet":
        """One set of several in-memory sets, in order (names, domains and boxes kept; boxes padded to a common M)."""
        def cat(field):
            values = [getattr(p, field) for p in parts]
            return None if any(v is None for v in values) else np.concatenate(values)
        names = None if any(p.names is None for p in parts) else [n for p in parts for n in p.names]
        boxes = None
        if all(p.boxes is not None for p in parts):
            m = max(p.boxes.shape[1] for p in parts)
            boxes = np.concatenate([np.pad(p.boxes, ((0, 0), (0, m - p.boxes.shape[1]), (0, 0)), constant_values=-1)
                                    for p in parts])
        return ImageSet(labels=cat("labels"), images=cat("images"), names=names, masks=cat("masks"),
                        domains=cat("domains"), boxes=boxes)


@dataclass
class DataInfo:
    """What a model and its preprocessing need to know about a dataset; stored in every checkpoint sidecar."""

    classes: list[str]
    channels: int
    image_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    preprocess: dict = field(default_factory=dict)
    target: str = "label"                    # what the samples carry: label (an int), mask (per-pixel classes), boxes
    domains: list[str] = field(default_factory=list)    # domain names by index (domain-folder sources)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @classmethod
    def from_dict(cls, d: dict) -> "DataInfo":
        return cls(list(d["classes"]), int(d["channels"]), tuple(d["image_size"]), tuple(d["mean"]), tuple(d["std"]),
                   dict(d.get("preprocess", {})), str(d.get("target", "label")), list(d.get("domains") or []))


@dataclass
class Splits:
    """train / val / test splits of one dataset and what a model needs to know about it."""

    train: ImageSet
    val: ImageSet | None
    test: ImageSet
    classes: list[str]
    channels: int                            # 1 or 3
    image_size: tuple[int, int]              # (H, W) after preprocessing
    mean: tuple[float, ...]                  # per channel, in [0, 1] units
    std: tuple[float, ...]
    source: str = ""                         # human description, e.g. "MNIST IDX files in ../shared/data/mnist"
    skipped: list[dict] = field(default_factory=list)   # [{"file": ..., "reason": ...}] unreadable inputs
    manifest: list[dict] | None = None       # [{"file", "label", "split"}] for folder datasets
    preprocess: dict = field(default_factory=dict)      # how a raw image becomes a sample (size, pad_square, grayscale)
    domains: list[str] = field(default_factory=list)    # domain names (domain-folder sources), by index
    unlabeled: ImageSet | None = None        # few-label protocol: the train images whose labels training never sees
    labeled_index: np.ndarray | None = None  # few-label protocol: positions of ``train`` in the whole train split
    # box sources: labels fixed, dropped or missing, [{"file", "issue", "action", "count" or "box"}] (data/detection.py)
    label_issues: list[dict] = field(default_factory=list)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def info(self) -> DataInfo:
        target = "mask" if self.train.masks is not None else "boxes" if self.train.boxes is not None else "label"
        return DataInfo(list(self.classes), self.channels, tuple(self.image_size), tuple(self.mean), tuple(self.std),
                        dict(self.preprocess), target, list(self.domains))


def channel_stats(images: np.ndarray, max_images: int = 10000) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units from (a subsample of) uint8 NHWC images."""
    x = images[:max_images].astype(np.float64) / 255.0
    mean = x.mean(axis=(0, 1, 2))
    std = x.std(axis=(0, 1, 2))
    return tuple(float(m) for m in mean), tuple(float(max(s, 1e-6)) for s in std)
