"""Image sources for FID / KID: a folder of images, a .npy/.npz array or a DATASET:SPLIT, as uint8 NHWC."""
from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from ...utils import ConfigError, UserError
from .features import as_uint8_nhwc


def load_images(source: str, size: int = 0, channels: int = 0, limit: int = 0) -> np.ndarray:
    """uint8 NHWC images from an image folder (every image below it, sorted by path; unreadable files skipped),
    a ``DATASET:SPLIT`` (e.g. ``mnist:test``, ``cifar10:train``), or a .npy/.npz of uint8 NHWC images. ``size``
    resizes to size x size (0: keep; a folder must then hold one size), ``channels`` 1 or 3 converts (0: keep;
    grey RGB files become 1 channel), ``limit`` keeps at most N (0: all): the first N of a folder or array, the
    seeded stratified data.limit subsample of a dataset split (all classes, in the split's order)."""
    if channels not in (0, 1, 3):
        raise ConfigError(f"channels={channels}: expected 0 (keep), 1 or 3")
    path = Path(source).expanduser()
    if path.is_dir():
        x = _folder_images(path, size, limit)
    elif path.is_file() and path.suffix in (".npy", ".npz"):
        x = _array_images(path, size, limit)
    elif path.exists():
        raise UserError(f"{source}: not a folder of images, a .npy/.npz file or DATASET:SPLIT")
    elif ":" in source:
        x = _dataset_images(source, size, limit)
    else:
        raise UserError(f"{source}: no such folder; an image source is a folder of images, a .npy/.npz file of "
                        f"uint8 NHWC images, or DATASET:SPLIT (e.g. mnist:test, cifar10:train)")
    return _to_channels(x, channels)


def _folder_images(root: Path, size: int, limit: int) -> np.ndarray:
    from ...data.decode import IMAGE_EXTS, decode_files

    files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTS and p.is_file()
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    arrays, skipped, start = [], 0, 0
    while start < len(files) and (not limit or len(arrays) < limit):
        chunk = files[start:start + (limit - len(arrays) if limit else len(files))]
        start += len(chunk)
        for arr, _ in decode_files(chunk, {"image_size": int(size), "grayscale": False}):
            if arr is None:
                skipped += 1
            else:
                arrays.append(arr)
    if skipped:
        warnings.warn(f"{root}: skipped {skipped} unreadable image file(s)")
    if not arrays:
        raise UserError(f"{root}: no readable images ({', '.join(sorted(IMAGE_EXTS))}) in this folder or below")
    shapes = sorted({a.shape[:2] for a in arrays})
    if len(shapes) > 1:
        raise UserError(f"{root}: images of {len(shapes)} sizes (e.g. {shapes[0][1]}x{shapes[0][0]} and "
                        f"{shapes[-1][1]}x{shapes[-1][0]}); pass size=N to resize them all to NxN")
    x = np.stack(arrays)
    grey = bool((x[..., :1] == x[..., 1:2]).all() and (x[..., :1] == x[..., 2:3]).all())
    return np.ascontiguousarray(x[..., :1]) if grey else x


def _array_images(path: Path, size: int, limit: int) -> np.ndarray:
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.lib.npyio.NpzFile):
            keys = list(data.keys())
            data = data["images"] if "images" in keys else data[keys[0]] if len(keys) == 1 else None
    except (OSError, ValueError) as e:
        raise UserError(f"{path}: unreadable ({e})") from e
    if data is None:
        raise UserError(f"{path}: an .npz with several arrays needs one named 'images'")
    x = as_uint8_nhwc(data[:limit] if limit else data).numpy()
    return _resized(x, size)


def _dataset_images(source: str, size: int, limit: int) -> np.ndarray:
    from ...config import DataConfig
    from ...data import DATASETS, MIXED_SIZES, build_splits
    from ...data.decode import decode_files

    name, _, split = source.partition(":")
    if name not in DATASETS:
        DATASETS.get(name)                        # ConfigError naming the valid datasets
    if split not in ("train", "val", "test"):
        raise ConfigError(f"{source}: the split must be train, val or test (e.g. {name}:test)")
    # the limit is data.limit's seeded, stratified subsample (in the split's order): the first N of a split read
    # from class folders (cifar10 as images) would hold a class or two. Array sources: resize only what is kept
    cfg = DataConfig(name=name, image_size=int(size) if name in MIXED_SIZES else 0, limit=int(limit))
    splits = build_splits(cfg)
    part = getattr(splits, split)
    if part is None or len(part) == 0:
        raise UserError(f"{source}: dataset {name!r} has no {split} split")
    if part.images is not None:
        return _resized(np.ascontiguousarray(part.images), size)
    decoded = [a for a, _ in decode_files(part.paths, splits.preprocess) if a is not None]
    return _resized(np.stack(decoded), size)


def _resized(x: np.ndarray, size: int) -> np.ndarray:
    from ...data.decode import convert_array

    return convert_array(x, {"image_size": int(size)}) if size else x


def _to_channels(x: np.ndarray, channels: int) -> np.ndarray:
    from ...data.decode import convert_array

    if not channels or x.shape[-1] == channels:
        return x
    if channels == 3:
        return np.ascontiguousarray(np.repeat(x, 3, axis=-1))
    return convert_array(x, {"grayscale": True})
