"""CIFAR-10 / CIFAR-100 from the official python-pickle batches, or from train/<class>/ test/<class>/ image folders."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np

from ..config import data_root
from ..utils import UserError
from . import cache
from .decode import convert_array, preprocess_dict
from .split import missing_data_error, splits_from_arrays

LAYOUT = {
    "cifar10": {"dir": "cifar-10-batches-py", "train": [f"data_batch_{i}" for i in range(1, 6)],
                "test": ["test_batch"], "meta": "batches.meta", "labels": b"labels", "names": b"label_names",
                "tv": "CIFAR10"},
    "cifar100": {"dir": "cifar-100-python", "train": ["train"], "test": ["test"], "meta": "meta",
                 "labels": b"fine_labels", "names": b"fine_label_names", "tv": "CIFAR100"},
}
_ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}


class _RestrictedUnpickler(pickle.Unpickler):
    """Unpickle only plain containers and numpy arrays: the CIFAR batches need nothing else."""

    def find_class(self, module, name):
        if (module, name) in _ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset pickle")


def read_batch(path) -> dict:
    """Load one CIFAR pickle batch (keys are bytes, as in the official format)."""
    try:
        with open(path, "rb") as f:
            return _RestrictedUnpickler(f, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise UserError(f"{path}: not a valid CIFAR python batch ({e})") from e


def _pickle_dir(root: Path, spec: dict) -> Path | None:
    for d in (root / spec["dir"], root):
        if all((d / n).is_file() for n in spec["train"] + spec["test"] + [spec["meta"]]):
            return d
    return None


def _image_folder(root: Path) -> bool:
    return (root / "train").is_dir() and (root / "test").is_dir()


def _download(kind: str, root: Path) -> None:
    try:
        from torchvision import datasets       # only for data.download=true
        cls = getattr(datasets, LAYOUT[kind]["tv"])
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
    except Exception as e:
        raise UserError(f"data.download=true: fetching {kind} into {root} failed ({type(e).__name__}: {e}). "
                        f"Without a network, unpack the python version of {kind} "
                        f"({LAYOUT[kind]['dir']}/) into {root} by hand.") from e


def _from_pickles(cfg, kind: str, d: Path):
    spec = LAYOUT[kind]
    files = [d / n for n in spec["train"] + spec["test"] + [spec["meta"]]]

    def build():
        def load(names):
            batches = [read_batch(d / n) for n in names]
            x = np.concatenate([np.asarray(b[b"data"], np.uint8) for b in batches])
            y = np.concatenate([np.asarray(b[spec["labels"]], np.int64) for b in batches])
            return x.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1).copy(), y
        (x_tr, y_tr), (x_te, y_te) = load(spec["train"]), load(spec["test"])
        names = [n.decode() if isinstance(n, bytes) else str(n) for n in read_batch(d / spec["meta"])[spec["names"]]]
        return {"x_train": x_tr, "y_train": y_tr, "x_test": x_te, "y_test": y_te}, {"classes": names}

    a, meta = cache.cached_source(cfg, kind, files, build)
    classes = meta["classes"]
    pre = preprocess_dict(cfg)
    return splits_from_arrays(cfg, convert_array(a["x_train"], pre), a["y_train"], convert_array(a["x_test"], pre),
                              a["y_test"], classes, f"{kind} python batches in {d}", pre)


def load_cifar(cfg, kind: str):
    """Splits for kind 'cifar10' or 'cifar100' from pickles or image folders under data_root."""
    spec = LAYOUT[kind]
    root = data_root(cfg, kind)
    d = _pickle_dir(root, spec)
    if d is None and not _image_folder(root) and cfg.download:
        _download(kind, root)
        d = _pickle_dir(root, spec)
    if d is not None:
        return _from_pickles(cfg, kind, d)
    if _image_folder(root):
        from .folder import load_folder
        return load_folder(dataclasses.replace(cfg, root=str(root)), name=kind)
    files = [f"{spec['dir']}/{n}" for n in spec["train"] + spec["test"] + [spec["meta"]]]
    raise missing_data_error(kind, root, files, kind,
                             extra=f"(image folders {root}/train/<class>/*.png|jpg and {root}/test/<class>/* work too)")


def build_cifar10(cfg):
    """CIFAR-10: 50,000 / 10,000 RGB 32x32 images in 10 classes; val held out of train by data.val_fraction."""
    return load_cifar(cfg, "cifar10")


def build_cifar100(cfg):
    """CIFAR-100 (fine labels): 50,000 / 10,000 RGB 32x32 images in 100 classes."""
    return load_cifar(cfg, "cifar100")
