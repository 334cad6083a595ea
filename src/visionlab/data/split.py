"""Seeded stratified splits (exact counts by largest remainder), split manifests, and assembling Splits."""
from __future__ import annotations

import csv
import io
import os
from fractions import Fraction
from pathlib import Path

import numpy as np

from ..utils import UserError, atomic_write_text
from .base import ImageSet, Splits, channel_stats

SPLIT_NAMES = ("train", "val", "test")


def parse_ratios(text: str) -> tuple[float, ...]:
    """'8:1:1' -> (0.8, 0.1, 0.1); two or three positive numbers separated by ':'."""
    parts = str(text).replace(",", ":").split(":")
    try:
        nums = [float(p) for p in parts]
    except ValueError:
        nums = []
    if len(nums) not in (2, 3) or any(not np.isfinite(n) or n < 0 for n in nums) or sum(nums) <= 0 \
            or nums[0] <= 0 or nums[-1] <= 0:
        raise UserError(f"data.split={text!r}: expected train:val:test like 8:1:1 (or train:test like 9:1), "
                        "positive numbers separated by ':'")
    total = sum(nums)
    return tuple(n / total for n in nums)


def _largest_remainder(total: int, ratios: list[Fraction]) -> np.ndarray:
    """Integer counts summing to ``total``, proportional to ``ratios`` (ties go to earlier parts)."""
    quotas = [total * r for r in ratios]
    counts = [int(q) for q in quotas]
    order = sorted(range(len(ratios)), key=lambda p: (-(quotas[p] - counts[p]), p))
    for p in order[: total - sum(counts)]:
        counts[p] += 1
    return np.array(counts, dtype=np.int64)


def _allocate(class_counts: np.ndarray, ratios: list[Fraction]) -> np.ndarray:
    """[classes, parts] counts: row sums = class sizes, column sums = largest-remainder part sizes."""
    k = len(ratios)
    part_totals = _largest_remainder(int(class_counts.sum()), ratios)
    quotas = [[int(n) * r for r in ratios] for n in class_counts]
    alloc = np.array([[int(q) for q in row] for row in quotas], dtype=np.int64).reshape(len(class_counts), k)
    need_c = class_counts - alloc.sum(1)
    need_p = part_totals - alloc.sum(0)
    cells = sorted(((quotas[c][p] - alloc[c, p], c, p) for c in range(len(class_counts)) for p in range(k)),
                   key=lambda t: (-t[0], t[1], t[2]))
    for frac, c, p in cells:              # one extra unit per cell, largest remainders first
        if frac > 0 and need_c[c] > 0 and need_p[p] > 0:
            alloc[c, p] += 1
            need_c[c] -= 1
            need_p[p] -= 1
    for c in range(len(class_counts)):    # leftovers (rare): any part that still needs samples
        for p in range(k):
            m = min(need_c[c], need_p[p])
            alloc[c, p] += m
            need_c[c] -= m
            need_p[p] -= m
    _ensure_one_each(alloc, class_counts, ratios)
    return alloc


def _ensure_one_each(alloc: np.ndarray, class_counts: np.ndarray, ratios: list[Fraction]) -> None:
    """Give every class with >= k samples one sample in each non-empty part, swapping to keep part sizes."""
    k = alloc.shape[1]
    for c in np.flatnonzero(class_counts >= k):
        for p in range(k):
            if alloc[c, p] > 0 or ratios[p] == 0:
                continue
            q = int(np.argmax(alloc[c]))
            alloc[c, q] -= 1
            alloc[c, p] += 1
            donors = [d for d in range(len(alloc)) if d != c and alloc[d, p] >= 2]
            if donors:                    # move one sample of the richest other class back, totals stay exact
                d = max(donors, key=lambda d: (alloc[d, p], -d))
                alloc[d, p] -= 1
                alloc[d, q] += 1


def stratified_split(labels, ratios: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Split indices of ``labels`` into parts with the given ratios, stratified by class.

    Part sizes and per-class counts follow largest-remainder rounding, so they are exact and deterministic;
    which samples go where is a permutation seeded by ``seed``. Returns sorted index arrays, one per part.
    """
    labels = np.asarray(labels)
    fr = [Fraction(float(r)).limit_denominator(10**6) for r in ratios]
    total = sum(fr)
    fr = [r / total for r in fr]
    classes, inverse = np.unique(labels, return_inverse=True)
    alloc = _allocate(np.bincount(inverse, minlength=len(classes)), fr)
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in fr]
    for c in range(len(classes)):
        idx = rng.permutation(np.flatnonzero(inverse == c))
        bounds = np.concatenate([[0], np.cumsum(alloc[c])])
        for p in range(len(fr)):
            parts[p].append(idx[bounds[p]:bounds[p + 1]])
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.zeros(0, np.int64) for p in parts]


def split_train_val_test(labels, split: str, val_fraction: float, seed: int):
    """Indices (train, val or None, test) from a 'train:val:test' (or 'train:test' + val_fraction) ratio."""
    ratios = parse_ratios(split)
    parts = stratified_split(labels, ratios, seed)
    if len(parts) == 3:
        return parts[0], (parts[1] if len(parts[1]) else None), parts[2]
    train, val = holdout(np.asarray(labels)[parts[0]], val_fraction, seed)
    return parts[0][train], (None if val is None else parts[0][val]), parts[1]


def split_names(labels, cfg) -> np.ndarray:
    """'train' / 'val' / 'test' per sample: the seeded, stratified cfg.split (cfg.val_fraction held out of train
    when the ratio has no val part), as a folder without split folders gets it."""
    out = np.empty(len(labels), dtype=object)
    tr, va, te = split_train_val_test(labels, cfg.split, cfg.val_fraction, cfg.split_seed)
    out[tr], out[te] = "train", "test"
    if va is not None:
        out[va] = "val"
    return out


def hold_out_val(split_of: np.ndarray, labels, cfg) -> np.ndarray:
    """Split folders without val/: hold cfg.val_fraction of train out as val (seeded, stratified), in place."""
    if "val" not in set(split_of.tolist()):
        tr = np.flatnonzero(split_of == "train")
        _, va = holdout(np.asarray(labels)[tr], cfg.val_fraction, cfg.split_seed)
        if va is not None:
            split_of[tr[va]] = "val"
    return split_of


def holdout(labels, val_fraction: float, seed: int):
    """(train_idx, val_idx or None): a stratified, seeded validation hold-out of ``val_fraction``."""
    if not 0 <= val_fraction < 1:
        raise UserError(f"data.val_fraction={val_fraction}: expected a number in [0, 1)")
    if val_fraction == 0:
        return np.arange(len(labels)), None
    train, val = stratified_split(labels, (1 - val_fraction, val_fraction), seed)
    return train, val


def limit_indices(labels, limit: int, seed: int) -> np.ndarray:
    """At most ``limit`` indices: a seeded, stratified subsample (all when limit is 0 or >= len)."""
    n = len(labels)
    if limit <= 0 or limit >= n:
        return np.arange(n)
    return stratified_split(labels, (limit / n, 1 - limit / n), seed)[0]


def write_manifest(manifest: list[dict], path_csv) -> None:
    """Write a split manifest as CSV with columns file,label,split (+ domain for domain datasets), atomically."""
    buf = io.StringIO()
    extra = ["domain"] if manifest and "domain" in manifest[0] else []
    w = csv.DictWriter(buf, fieldnames=["file", "label", "split", *extra], extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(manifest)
    atomic_write_text(path_csv, buf.getvalue())


def make_splits(train: ImageSet, val: ImageSet | None, test: ImageSet, classes: list[str], *, source: str,
                preprocess: dict, skipped=None, manifest=None, image_size=None, stats=None) -> Splits:
    """Assemble Splits, taking channels / size from the arrays and mean/std from the train split."""
    if train.images is not None:
        shape = train.images.shape
        channels, size = int(shape[3]), (int(shape[1]), int(shape[2]))
        mean, std = channel_stats(train.images)
    else:
        channels, size = (1 if preprocess.get("grayscale") else 3), tuple(image_size)
        mean, std = stats
    # preprocess records how any raw image becomes a sample of this dataset (predict() relies on it)
    final = {**preprocess, "grayscale": channels == 1, "image_size": size[0] if size[0] == size[1] else list(size)}
    return Splits(train=train, val=val, test=test, classes=list(classes), channels=channels, image_size=size,
                  mean=mean, std=std, source=source, skipped=list(skipped or []), manifest=manifest,
                  preprocess=final)


def missing_data_error(dataset: str, root: Path, files: list[str], folder: str, downloadable: bool = True,
                       extra: str = "") -> UserError:
    """A UserError naming the files expected, where they are looked for, and how to fix it."""
    env = os.environ.get("VISIONLAB_DATA")
    msg = (f"dataset {dataset!r} not found in {Path(root).resolve()}\n"
           f"  expected files: {', '.join(files)}\n"
           f"  location: data.root=PATH, else $VISIONLAB_DATA/{folder} (VISIONLAB_DATA={env or 'unset'}), "
           f"else ./data/{folder}\n"
           f"  fix: put the files there, or set data.root=PATH, or set VISIONLAB_DATA=DIR (the parent of {folder}/)")
    if downloadable:
        msg += "\n  or set data.download=true to fetch it (needs a network; nothing downloads otherwise)"
    return UserError(msg + (f"\n  {extra}" if extra else ""))


def _names(prefix: str, idx) -> list[str]:
    return [f"{prefix}[{i}]" for i in idx]


def splits_from_arrays(cfg, x_train, y_train, x_test, y_test, classes, source: str, preprocess: dict) -> Splits:
    """Splits for array sources with a given train/test split: val held out of train by cfg.val_fraction."""
    y_train = np.asarray(y_train, np.int64)
    tr, va = holdout(y_train, cfg.val_fraction, cfg.split_seed)
    train = ImageSet(labels=y_train[tr], images=x_train[tr], names=_names("train", tr))
    val = None if va is None else ImageSet(labels=y_train[va], images=x_train[va], names=_names("train", va))
    test = ImageSet(labels=np.asarray(y_test, np.int64), images=x_test, names=_names("test", range(len(y_test))))
    return make_splits(train, val, test, classes, source=source, preprocess=preprocess)


def splits_from_pool(cfg, x, y, classes, source: str, preprocess: dict) -> Splits:
    """Splits for array sources without a split: seeded stratified cfg.split (e.g. 8:1:1) by cfg.split_seed."""
    y = np.asarray(y, np.int64)
    tr, va, te = split_train_val_test(y, cfg.split, cfg.val_fraction, cfg.split_seed)
    sets = [None if i is None else ImageSet(labels=y[i], images=x[i], names=_names("sample", i)) for i in (tr, va, te)]
    return make_splits(*sets, classes, source=source, preprocess=preprocess)


def bootstrap(split: ImageSet, seed: int) -> ImageSet:
    """A bootstrap resample (n draws with replacement) of ``split``, seeded: one member of a bagging ensemble.
    About 63 % of the distinct images appear; the rest are that member's out-of-bag set."""
    rng = np.random.default_rng(10_007 + seed)      # its own stream: the same seed still shuffles the same way
    return split.subset(np.sort(rng.integers(0, len(split), len(split))))
