"""Segmentation masks: decode class-index PNGs (index, palette 'P', binary 0/255) without any colour conversion,
map raw values to class ids through a 256-entry table (255 = ignore) built from class names (classes.txt/.yaml),
resize image/mask pairs by their short side (image bilinear with antialias, mask nearest) and pad pairs of
different sizes onto one canvas (mask pad = 255)."""
from __future__ import annotations

import os
import warnings

from pathlib import Path

import numpy as np
import yaml
from PIL import Image, UnidentifiedImageError

from ..utils import UserError
from .decode import DecodeError, short_side_size, try_load

IGNORE = 255                                     # class id of void / padding / unknown pixels (loss ignore_index)
VOID_NAMES = {"void", "unlabeled", "unlabelled", "ignore", "ignored", "unknown"}
INDEX_MODES = {"L", "P", "1", "I;16", "I;16L", "I;16B", "I;16N", "I"}
NATIVE = {"image_size": 0, "pad_square": False, "grayscale": False}


def read_mask(path) -> np.ndarray:
    """Raw mask values, uint8 [H, W]: 'L' values, palette indices of 'P' (VOC style), 0/1 of '1' images.

    Raises DecodeError for unreadable/truncated files, colour (RGB) masks and 16-bit values above 255.
    """
    try:
        if os.path.getsize(path) == 0:
            raise DecodeError("empty mask file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path) as im:
                limit = Image.MAX_IMAGE_PIXELS          # decode.py sets it (decompression bombs): check the header
                if limit and im.size[0] * im.size[1] > limit:
                    raise DecodeError(f"mask too large: {im.size[0]}x{im.size[1]} px, over the {limit:,} px limit")
                if im.mode not in INDEX_MODES:
                    raise DecodeError(f"mask is a {im.mode} image: expected a single-channel class-index PNG "
                                      "('L' or palette 'P' mode)")
                im.load()
                arr = np.asarray(im)
    except DecodeError:
        raise
    except UnidentifiedImageError:
        raise DecodeError("mask is not an image (unrecognized format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError) as e:
        msg = str(e) or type(e).__name__
        raise DecodeError(f"{'truncated' if 'truncat' in msg.lower() else 'corrupt'} mask: {msg}"[:160]) from None
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DecodeError(f"mask values up to {int(arr.max())}: class ids must fit in 0..254 (255 = ignore)")
        arr = arr.astype(np.uint8)
    return arr


def mask_histogram(path) -> tuple[np.ndarray | None, str | None]:
    """(count of each raw value 0..255, None) or (None, reason)."""
    try:
        return np.bincount(read_mask(path).ravel(), minlength=256).astype(np.int64), None
    except DecodeError as e:
        return None, str(e)
    except Exception as e:                       # anything else PIL throws at a hostile file
        return None, f"unreadable mask: {type(e).__name__}: {e}"[:160]


def histogram_chunk(paths):
    return [mask_histogram(p) for p in paths]


def class_table(spec) -> tuple[list[str], np.ndarray, set[int]]:
    """(class names, lut uint8[256] raw value -> class id or 255, void raw values) from a class spec.

    ``spec`` is a list of names (value i = class i) or a dict {raw value: name}. Values named void/unlabeled/...
    and the value 255 are void (-> 255). When the remaining values are not 0..K-1 (COCO panoptic ids, say) they
    are numbered contiguously in increasing value order.
    """
    items = list(enumerate(spec)) if isinstance(spec, (list, tuple)) else sorted((int(k), v) for k, v in spec.items())
    lut = np.full(256, IGNORE, np.uint8)
    void = {IGNORE}
    names = []
    for value, name in items:
        if not 0 <= value <= 255:
            raise ValueError(f"class value {value} ({name!r}) outside 0..255")
        if value == IGNORE or str(name).strip().lower() in VOID_NAMES:
            void.add(value)
            continue
        lut[value] = len(names)
        names.append(str(name))
    if len(names) > 255:
        raise ValueError(f"{len(names)} classes: at most 255 fit in uint8 masks beside 255 = ignore")
    return names, lut, void


def out_of_range(hist: np.ndarray, lut: np.ndarray, void: set[int]) -> tuple[int, int, list[int]]:
    """(pixels, masks, raw values) whose values are neither a class nor declared void; they become 255."""
    bad = np.array([v for v in range(256) if lut[v] == IGNORE and v not in void], np.int64)
    counts = hist[:, bad] if len(hist) else np.zeros((0, len(bad)), np.int64)
    values = [int(v) for v, n in zip(bad, counts.sum(0)) if n > 0]
    return int(counts.sum()), int((counts.sum(1) > 0).sum()), values


def dominant_class(hist: np.ndarray, lut: np.ndarray, num_classes: int) -> np.ndarray:
    """int64 [N]: the most frequent non-ignore class of each mask (0 for an all-ignore mask)."""
    onehot = np.zeros((256, num_classes + 1), np.int64)          # last column: ignore
    onehot[np.arange(256), np.minimum(lut.astype(np.int64), num_classes)] = 1
    per_class = hist.reshape(-1, 256) @ onehot
    return per_class[:, :num_classes].argmax(1).astype(np.int64) if num_classes else np.zeros(len(hist), np.int64)


def resize_pair(image: np.ndarray, mask: np.ndarray, short_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Short-side resize: image bilinear (PIL widens the kernel when shrinking: antialiased), mask nearest."""
    h, w = mask.shape
    nh, nw = short_side_size(h, w, short_side)
    if (nh, nw) == (h, w):
        return image, mask
    gray = image.shape[2] == 1
    im = Image.fromarray(image[..., 0] if gray else image).resize((nw, nh), Image.BILINEAR)
    image = np.asarray(im, np.uint8).reshape(nh, nw, -1)
    mask = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.NEAREST), np.uint8)
    return image, mask


def decode_pair(image_path, mask_path, lut: np.ndarray, short_side: int, grayscale: bool = False):
    """(image uint8 HWC, mask uint8 HW of class ids, None) or (None, None, reason); never raises for bad files."""
    image, reason = try_load(image_path, {**NATIVE, "grayscale": grayscale})
    if image is None:
        return None, None, f"image {reason}"
    try:
        raw = read_mask(mask_path)
    except DecodeError as e:
        return None, None, str(e)
    except Exception as e:
        return None, None, f"unreadable mask: {type(e).__name__}: {e}"[:160]
    if raw.shape != image.shape[:2]:
        return None, None, (f"size mismatch: image {image.shape[1]}x{image.shape[0]}, "
                            f"mask {raw.shape[1]}x{raw.shape[0]} ({os.path.basename(mask_path)})")
    image, mask = resize_pair(image, lut[raw], short_side)
    return image, mask, None


def decode_pair_chunk(pairs, lut, short_side, grayscale=False):
    return [decode_pair(i, m, lut, short_side, grayscale) for i, m in pairs]


def stack_pairs(images: list[np.ndarray], masks: list[np.ndarray]):
    """(images uint8 [N,H,W,C], masks uint8 [N,H,W], sizes int64 [N,2]) on one canvas of the largest H and W.

    Smaller pairs sit at the top-left; the image is padded with its own mean colour (as decode.letterbox does),
    the mask with 255, so padding never enters the loss or the metric.
    """
    sizes = np.array([m.shape for m in masks], np.int64).reshape(-1, 2)
    hh, ww = (int(sizes[:, 0].max()), int(sizes[:, 1].max())) if len(sizes) else (0, 0)
    c = images[0].shape[2] if images else 3
    if all(tuple(s) == (hh, ww) for s in sizes):
        return np.stack(images) if images else np.zeros((0, 0, 0, c), np.uint8), \
            np.stack(masks) if masks else np.zeros((0, 0, 0), np.uint8), sizes
    out_i = np.empty((len(images), hh, ww, c), np.uint8)
    out_m = np.full((len(masks), hh, ww), IGNORE, np.uint8)
    for k, (im, m) in enumerate(zip(images, masks)):
        h, w = m.shape
        out_i[k] = np.round(im.reshape(-1, c).mean(0)).astype(np.uint8)
        out_i[k, :h, :w] = im
        out_m[k, :h, :w] = m
    return out_i, out_m, sizes


def valid_stats(images: np.ndarray, sizes: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std in [0, 1] units over the unpadded region of each image: exact, from value
    histograms (no float copy of the images; unpadded images are counted in blocks)."""
    c = images.shape[3] if images.ndim == 4 else 3
    hist = np.zeros((c, 256), np.int64)
    full = np.flatnonzero((sizes == np.array(images.shape[1:3])).all(1)) if len(images) else []
    for i in range(0, len(full), 32):
        block = images[full[i:i + 32]]
        for ch in range(c):
            hist[ch] += np.bincount(block[..., ch].ravel(), minlength=256)
    for k in sorted(set(range(len(images))) - set(np.asarray(full).tolist())):
        h, w = sizes[k]
        for ch in range(c):
            hist[ch] += np.bincount(images[k, :h, :w, ch].ravel(), minlength=256)
    n = hist.sum(1)
    if not n.all():
        return (0.5,) * c, (0.25,) * c
    v = np.arange(256, dtype=np.float64) / 255.0
    mean = hist @ v / n
    var = np.maximum(hist @ (v * v) / n - mean**2, 0.0)
    return tuple(float(m) for m in mean), tuple(float(max(np.sqrt(x), 1e-6)) for x in var)


def read_class_file(root: Path):
    """Class names from ROOT/classes.txt (one per line) or ROOT/classes.yaml (a list, {id: name}, or either under
    'classes' / 'names'); None when neither exists."""
    txt, yml = root / "classes.txt", next((root / n for n in ("classes.yaml", "classes.yml") if (root / n).is_file()),
                                          None)
    if txt.is_file():
        return [ln.strip() for ln in txt.read_text().splitlines() if ln.strip()]
    if yml is None:
        return None
    try:
        spec = yaml.safe_load(yml.read_text())
        if isinstance(spec, dict) and set(spec) & {"classes", "names"}:
            spec = spec.get("classes", spec.get("names"))
        if isinstance(spec, dict):
            spec = {int(k): str(v) for k, v in spec.items()}
        elif isinstance(spec, list):
            spec = [str(v) for v in spec]
        else:
            raise ValueError("expected a list of names or a mapping {id: name}")
    except (yaml.YAMLError, ValueError, TypeError) as e:
        raise UserError(f"{yml}: cannot read class names ({e}); write a list of names or {{id: name}}") from None
    return spec
