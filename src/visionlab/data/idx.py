"""MNIST and Fashion-MNIST from the standard IDX files (gzipped or not), parsed with numpy."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ..config import data_root
from ..utils import UserError
from . import cache
from .decode import convert_array, preprocess_dict
from .split import missing_data_error, splits_from_arrays

FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]
FASHION_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")   # Debian package dataset-fashion-mnist
_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (optionally .gz) into a numpy array of its stored shape."""
    path = Path(path)
    data = (gzip.open if path.suffix == ".gz" else open)(path, "rb").read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _DTYPES:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, ">u4", count=ndim, offset=4))
    dtype = np.dtype(_DTYPES[data[2]])
    offset = 4 + 4 * ndim
    if len(data) - offset != int(np.prod(dims)) * dtype.itemsize:
        raise UserError(f"{path}: IDX file is truncated or corrupt (header says {dims})")
    return np.frombuffer(data, dtype, offset=offset).reshape(dims)


def find_idx(dirs) -> list[Path] | None:
    """The four IDX files (each .gz or plain) from the first folder that has all of them."""
    for d in dirs:
        found = []
        for name in FILES:
            hit = next((d / n for n in (name + ".gz", name) if (d / n).is_file()), None)
            if hit is None:
                break
            found.append(hit)
        if len(found) == 4:
            return found
    return None


def _download(kind: str, root: Path) -> None:
    try:
        from torchvision import datasets       # only for data.download=true
        cls = datasets.MNIST if kind == "mnist" else datasets.FashionMNIST
        root.mkdir(parents=True, exist_ok=True)
        cls(str(root), train=True, download=True)
        cls(str(root), train=False, download=True)
    except Exception as e:
        raise UserError(f"data.download=true: fetching {kind} into {root} failed ({type(e).__name__}: {e}). "
                        f"Without a network, copy the four IDX files ({', '.join(n + '.gz' for n in FILES)}) "
                        f"into {root} by hand.") from e


def load_idx_dataset(cfg, kind: str):
    """Splits for kind 'mnist' or 'fashion_mnist'."""
    folder = "mnist" if kind == "mnist" else "fashion-mnist"
    root = data_root(cfg, folder)
    sub = "MNIST" if kind == "mnist" else "FashionMNIST"        # where torchvision's download puts them
    dirs = [root, root / "raw", root / sub / "raw"]
    if kind == "fashion_mnist":
        dirs.append(FASHION_SYSTEM_DIR)
    files = find_idx(dirs)
    if files is None and cfg.download:
        _download(kind, root)
        files = find_idx(dirs)
    if files is None:
        extra = "or install the OS package dataset-fashion-mnist (/usr/share/datasets/fashion-mnist)" \
            if kind == "fashion_mnist" else ""
        raise missing_data_error(kind, root, [n + ".gz" for n in FILES], folder, extra=extra)

    def build():
        x_tr, y_tr, x_te, y_te = (read_idx(f) for f in files)
        if len(x_tr) != len(y_tr) or len(x_te) != len(y_te):
            raise UserError(f"{files[0].parent}: image and label files disagree in length")
        return {"x_train": x_tr[..., None], "y_train": y_tr, "x_test": x_te[..., None], "y_test": y_te}, {}

    a, _ = cache.cached_source(cfg, kind, files, build)
    pre = preprocess_dict(cfg)
    classes = [str(i) for i in range(10)] if kind == "mnist" else list(FASHION_CLASSES)
    return splits_from_arrays(cfg, convert_array(a["x_train"], pre), a["y_train"], convert_array(a["x_test"], pre),
                              a["y_test"], classes, f"{kind} IDX files in {files[0].parent}", pre)


def build_mnist(cfg):
    """MNIST: 60,000 train / 10,000 test digits, 28x28x1; val held out of train by data.val_fraction."""
    return load_idx_dataset(cfg, "mnist")


def build_fashion_mnist(cfg):
    """Fashion-MNIST: 60,000 / 10,000 clothing images, 28x28x1 (also found in /usr/share/datasets)."""
    return load_idx_dataset(cfg, "fashion_mnist")
