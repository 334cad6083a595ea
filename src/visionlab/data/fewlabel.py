"""The few-label protocol: a seeded, class-balanced labelled subset of the train split, the rest as the unlabelled
stream, and ``labeled_indices.csv`` so that other runs (other methods, other seeds) train on the exact same labels.

Indices are positions in the train split as the dataset builds it (after the validation hold-out and
``data.limit``), so a file is only valid for the same data settings: reading checks every row's label."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from ..utils import ConfigError, UserError

INDEX_FILE = "labeled_indices.csv"


def per_class_counts(labels, total: int, seed: int) -> dict[int, int]:
    """``total`` labels spread evenly over the classes; the remainder goes to seeded random classes."""
    classes = np.unique(np.asarray(labels))
    base, extra = divmod(total, len(classes))
    lucky = set(np.random.default_rng(seed).permutation(classes)[:extra].tolist())
    return {int(c): base + (1 if c in lucky else 0) for c in classes}


def per_class_indices(labels, k, seed: int) -> np.ndarray:
    """Sorted indices of ``k`` seeded picks per class (``k`` an int, or a dict class -> count; all of a class with
    fewer): the labelled few of a few-label experiment, the same for every training seed."""
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    picks = [rng.permutation(np.flatnonzero(labels == c))[:(k[int(c)] if isinstance(k, dict) else k)]
             for c in np.unique(labels)]
    return np.sort(np.concatenate(picks)).astype(np.int64) if picks else np.zeros(0, dtype=np.int64)


def labeled_indices(train, cfg) -> np.ndarray | None:
    """The labelled positions in ``train`` that ``cfg`` (a DataConfig) asks for, or None (all labelled)."""
    asked = [k for k in ("labels_per_class", "labels_total", "labeled_indices") if getattr(cfg, k)]
    if len(asked) > 1:
        raise ConfigError(f"{' and '.join('data.' + k for k in asked)} both choose the labelled images: set one")
    if cfg.labeled_indices:
        return read_indices(cfg.labeled_indices, train)
    if cfg.labels_total:
        n_cls = len(np.unique(train.labels))
        if cfg.labels_total < n_cls:
            raise ConfigError(f"data.labels_total={cfg.labels_total} is fewer than the {n_cls} classes: give every "
                              f"class at least one label (data.labels_total>={n_cls})")
        return per_class_indices(train.labels, per_class_counts(train.labels, cfg.labels_total, cfg.split_seed),
                                 cfg.split_seed)
    if cfg.labels_per_class:
        return per_class_indices(train.labels, cfg.labels_per_class, cfg.split_seed)
    return None


def write_indices(path: Path, labeled, positions: np.ndarray) -> None:
    """index,label,name rows of the labelled images ``labeled`` (an ImageSet) at ``positions`` in the train split."""
    from ..utils import atomic_write_text

    names = labeled.names or [f"train[{i}]" for i in positions]
    rows = ["index,label,name"] + [f"{i},{int(y)},{n}" for i, y, n in zip(positions, labeled.labels, names)]
    atomic_write_text(Path(path), "\n".join(rows) + "\n")


def read_indices(path: str | Path, train) -> np.ndarray:
    """Labelled positions from a ``labeled_indices.csv`` (a file or a run directory holding one), checked against
    ``train``'s labels so a file from other data settings fails loudly instead of training on the wrong images."""
    path = Path(path)
    if path.is_dir():
        path = path / INDEX_FILE
    if not path.is_file():
        raise UserError(f"data.labeled_indices={path}: no such file; give a run directory or its {INDEX_FILE}")
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or "index" not in rows[0] or "label" not in rows[0]:
        raise UserError(f"{path}: expected a CSV with columns index,label[,name] (a run's {INDEX_FILE})")
    idx = np.array([int(r["index"]) for r in rows], dtype=np.int64)
    bad = [int(r["index"]) for r in rows if not 0 <= int(r["index"]) < len(train)
           or int(train.labels[int(r["index"])]) != int(r["label"])]
    if bad:
        raise UserError(f"{path}: {len(bad)} of {len(rows)} rows do not match this train split (e.g. index {bad[0]}); "
                        "the file belongs to other data settings (dataset, data.val_fraction, data.limit, "
                        "data.split_seed): use the same ones as the run that wrote it")
    return np.unique(idx)
