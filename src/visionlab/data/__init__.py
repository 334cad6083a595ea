"""Dataset sources behind one registry, and build_splits(cfg) -> Splits (train/val/test + dataset info)."""
from __future__ import annotations

import numpy as np

from ..registry import Registry
from . import cifar, detection, domains, embedded, folder, idx, neu_det, segmentation
from .base import ImageSet, Splits, channel_stats
from .fewlabel import labeled_indices, per_class_indices
from .split import limit_indices

DATASETS = Registry("dataset")
DATASETS.register("mnist", idx.build_mnist)
DATASETS.register("fashion_mnist", idx.build_fashion_mnist)
DATASETS.register("cifar10", cifar.build_cifar10)
DATASETS.register("cifar100", cifar.build_cifar100)
DATASETS.register("folder", folder.build_folder)
DATASETS.register("trashnet", folder.build_trashnet)
DATASETS.register("neu_det", neu_det.build_neu_det)
DATASETS.register("mnist5k", embedded.build_mnist5k)
DATASETS.register("digits", embedded.build_digits)
DATASETS.register("camvid", segmentation.build_camvid)            # segmentation: images + masks
DATASETS.register("coco128_seg", segmentation.build_coco128_seg)
DATASETS.register("mask_folder", segmentation.build_mask_folder)
DATASETS.register("pacs", domains.build_pacs)                     # domain generalization: <domain>/<class>/
DATASETS.register("domain_folder", domains.build_domain_folder)
DATASETS.register("neu_det_boxes", detection.build_neu_det_boxes)  # detection: images + boxes, letterboxed
DATASETS.register("coco128", detection.build_coco128)
DATASETS.register("box_folder", detection.build_box_folder)
# sources whose images may differ in size: with data.image_size=0 they take the size to use from build_splits
MIXED_SIZES = {"folder", "trashnet", "neu_det", "pacs", "domain_folder"}

__all__ = ["DATASETS", "ImageSet", "Splits", "build_splits", "channel_stats", "per_class_indices"]


def build_splits(cfg, default_size: int | None = None) -> Splits:
    """Build the dataset named by ``cfg.name`` (a DataConfig) and apply ``cfg.limit`` to every split.

    ``default_size``: the square size for images of several sizes when cfg.image_size is 0 (the model's input
    size, handed in by the pipeline; None = folder.DEFAULT_IMAGE_SIZE); the size chosen is written to cfg.image_size.

    The limit keeps a seeded (cfg.split_seed), stratified subsample of at most ``limit`` images per split.
    Array sources compute mean/std on the full train split; folder sources apply the same limit before
    decoding (only the kept files are read), so their mean/std come from the kept train images.
    The few-label protocol (``labels_per_class``, ``labels_total`` or ``labeled_indices``) then keeps the chosen
    train images as ``train`` and the rest as ``unlabeled`` (their labels hidden from training; val and test
    untouched); ``labeled_index`` records the positions for ``labeled_indices.csv``.
    """
    build = DATASETS.get(cfg.name)
    splits = build(cfg, default_size) if cfg.name in MIXED_SIZES else build(cfg)
    if cfg.limit and cfg.limit > 0 and not splits.domains:       # domain sources cut each domain themselves
        for name in ("train", "val", "test"):
            part = getattr(splits, name)
            if part is not None and len(part) > cfg.limit:
                setattr(splits, name, part.subset(limit_indices(part.labels, cfg.limit, cfg.split_seed)))
    labeled = labeled_indices(splits.train, cfg)
    if labeled is not None:
        rest = np.setdiff1d(np.arange(len(splits.train)), labeled)
        splits.labeled_index = labeled
        splits.unlabeled = splits.train.subset(rest) if len(rest) else None
        splits.train = splits.train.subset(labeled)
    if (cfg.limit or labeled is not None) and splits.manifest is not None:
        kept = {n for s in (splits.train, splits.val, splits.test) if s is not None for n in (s.names or [])}
        splits.manifest = [m for m in splits.manifest if m["file"] in kept]
    return splits

