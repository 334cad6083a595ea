"""Semantic-segmentation sources (CamVid, COCO128 semantic masks, a user's mask folder) -> Splits whose ImageSets
carry ``masks`` (uint8 [N, H, W], class ids 0..C-1, 255 = ignore: void, padding, unknown values).

Layout of every source: ROOT/images/[<split>/]NAME.jpg|png with ROOT/masks/[<split>/]NAME.png (same stem); masks
are single-channel class-index PNGs, palette PNGs (the indices are the ids, VOC style) or binary 0/255 masks.
``data.image_size``: 0 keeps the native size; N > 0 resizes each pair so that its SHORT side is N, keeping the aspect
ratio (CamVid 360x480 at 240 -> 240x320): images bilinear with antialias, masks nearest (class ids never blend).
Pairs of different sizes (COCO128, user folders) are padded at the bottom/right onto one canvas (image: its mean
colour, mask: 255), so a split is one uint8 array; prediction on a new image only needs the short-side resize
(Splits.preprocess ``short_side``; the models are fully convolutional). ``ImageSet.labels`` is the most frequent
non-ignore class of each mask: seeded splits and data.limit stratify on it, so a quick run keeps a spread of scenes.
Masks are read twice at most: one pass of value histograms (classes, labels, out-of-range values) and one decode of
the kept pairs; both are cached through data/cache.py. Bad pairs are skipped and listed in Splits.skipped.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import yaml

from ..config import data_root
from ..utils import UserError
from . import cache
from .base import ImageSet, Splits
from .decode import IMAGE_EXTS, map_files, probe
from .masks import (IGNORE, class_table, decode_pair_chunk, dominant_class, histogram_chunk, out_of_range,
                    read_class_file, short_side_size, stack_pairs, valid_stats)
from .split import hold_out_val, limit_indices, missing_data_error, split_names

CAMVID_CLASSES = ["Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian",
                  "Bicyclist"]                                     # value 11 = void -> 255
SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
COCO_SPLIT_DIRS = {"train2017": "train", "val2017": "test"}        # val2017 is the test split; val is held out
MASK_EXT = ".png"


@dataclass
class Pair:
    image: str                  # path relative to the dataset root, with '/'
    mask: str
    split: str | None           # canonical split from the folder, None in a flat layout
    ident: tuple                # (image size, mtime_ns, mask size, mtime_ns): the cache key's view of the pair


@dataclass
class PairListing:
    root: Path
    layout: str                 # "flat" or "split"
    pairs: list[Pair]
    ignored: list[dict] = field(default_factory=list)


def _walk(d: Path, prefix: str) -> list[str]:
    """Every non-hidden file under ``d`` as a '/' path starting with ``prefix``, sorted."""
    out = []
    for cur, dirs, files in os.walk(d):
        dirs[:] = sorted(x for x in dirs if not x.startswith("."))
        rel = Path(cur).relative_to(d).as_posix()
        pre = prefix if rel == "." else f"{prefix}{rel}/"
        out += [pre + f for f in files if not f.startswith(".")]
    return sorted(out)


def scan_pairs(root, split_dirs: dict = SPLIT_DIRS) -> PairListing:
    """Pair ROOT/images/[split/]X.ext with ROOT/masks/[split/]X.png (or masks/X.png); list what has no partner."""
    root = Path(root)
    img_dir = root / "images"
    if not img_dir.is_dir() or not (root / "masks").is_dir():
        raise UserError(f"{root}: expected images/ and masks/ folders (images/[train|val|test/]NAME.jpg|png with "
                        "masks/[train|val|test/]NAME.png)")
    tops = sorted(e.name for e in os.scandir(img_dir) if e.is_dir() and not e.name.startswith("."))
    splits = {d: split_dirs[d.lower()] for d in tops if d.lower() in split_dirs}
    masks = set(_walk(root / "masks", "masks/"))
    pairs, ignored, used = [], [], set()
    for rel in _walk(img_dir, "images/"):
        if os.path.splitext(rel)[1].lower() not in IMAGE_EXTS:
            ignored.append({"file": str(root / rel), "reason": "ignored: not an image file extension"})
            continue
        sub = rel[len("images/"):]
        first = sub.split("/", 1)[0]
        split = splits.get(first) if "/" in sub else None
        if splits and split is None:
            ignored.append({"file": str(root / rel), "reason": "ignored: outside the split folders"})
            continue
        cands = [f"masks/{os.path.splitext(sub)[0]}{MASK_EXT}"]
        if split is not None:
            cands.append(f"masks/{os.path.splitext(sub.split('/', 1)[1])[0]}{MASK_EXT}")
        mask = next((c for c in cands if c in masks), None)
        if mask is None:
            ignored.append({"file": str(root / rel), "reason": f"no mask: expected {cands[0]}"})
            continue
        used.add(mask)
        si, sm = os.stat(root / rel), os.stat(root / mask)
        pairs.append(Pair(rel, mask, split, (si.st_size, si.st_mtime_ns, sm.st_size, sm.st_mtime_ns)))
    ignored += [{"file": str(root / m), "reason": "ignored: mask without an image"} for m in sorted(masks - used)]
    return PairListing(root, "split" if splits else "flat", pairs, ignored)


def _histograms(cfg, name: str, listing: PairListing):
    """(hist int64 [N, 256], reasons list[str | None]) of every mask in the listing, cached."""
    key = cache.make_key(name, [(p.mask, p.ident[2:]) for p in listing.pairs])
    slot = cache.make_key(name, str(listing.root.resolve()), "mask-histograms")

    def build():
        res = map_files(histogram_chunk, [str(listing.root / p.mask) for p in listing.pairs])
        hist = np.stack([h if h is not None else np.zeros(256, np.int64) for h, _ in res]) if res else \
            np.zeros((0, 256), np.int64)
        return {"hist": hist}, {"reasons": [r for _, r in res]}

    arrays, meta, _ = cache.cached(cfg, name + "-hist", slot, key, build)
    return arrays["hist"], meta["reasons"]


def _classes(spec, hist: np.ndarray):
    """(names, lut, void values): from the spec, else inferred; binary 0/255 masks -> background/foreground."""
    present = set(np.flatnonzero(hist.sum(0)).tolist()) if len(hist) else set()
    binary = IGNORE in present and present <= {0, IGNORE} and (spec is None or len(spec) == 2)
    if binary:
        names = list(spec.values() if isinstance(spec, dict) else spec) if spec else ["background", "foreground"]
        lut = np.full(256, IGNORE, np.uint8)
        lut[0], lut[IGNORE] = 0, 1
        return [str(n) for n in names], lut, set()
    if spec is None:
        k = max(present - {IGNORE}, default=0) + 1
        spec = [f"class_{i}" for i in range(k)]
    try:
        return class_table(spec)
    except ValueError as e:
        raise UserError(f"class names: {e}") from None


def _assign_splits(listing: PairListing, labels: np.ndarray, cfg) -> np.ndarray:
    """The split of each pair: from the folders (val held out of train when missing), else a seeded cfg.split."""
    if listing.layout == "flat":
        return split_names(labels, cfg)
    out = np.empty(len(labels), dtype=object)
    out[:] = [p.split for p in listing.pairs]
    have = set(out.tolist())
    for need in ("train", "test"):
        if need not in have:
            raise UserError(f"{listing.root}/images has split folders but no readable {need}/ pairs: add "
                            f"images/{need}/ and masks/{need}/, or use a flat images/ + masks/ layout "
                            f"(visionlab then makes a seeded data.split={cfg.split} split)")
    return hold_out_val(out, labels, cfg)


def _decode(cfg, name: str, listing: PairListing, idx: np.ndarray, lut: np.ndarray, pre: dict):
    """(images, masks, sizes, ok positions into idx, skipped) for the pairs ``idx``, cached."""
    pairs = [listing.pairs[i] for i in idx]
    key = cache.make_key(name, [(p.image, p.mask, p.ident) for p in pairs], pre, lut.tolist())
    slot = cache.make_key(name, str(listing.root.resolve()), pre, cfg.limit)   # a quick run keeps the full cache

    def build():
        fn = functools.partial(decode_pair_chunk, lut=lut, short_side=pre["short_side"], grayscale=pre["grayscale"])
        res = map_files(fn, [(str(listing.root / p.image), str(listing.root / p.mask)) for p in pairs])
        ok = [k for k, r in enumerate(res) if r[0] is not None]
        skipped = [{"file": str(listing.root / pairs[k].image), "reason": r[2]} for k, r in enumerate(res)
                   if r[0] is None]
        images, masks, sizes = stack_pairs([res[k][0] for k in ok], [res[k][1] for k in ok])
        return {"images": images, "masks": masks, "sizes": sizes, "ok": np.array(ok, np.int64)}, \
            {"skipped": skipped}

    arrays, meta, _ = cache.cached(cfg, name + "-pairs", slot, key, build)
    return arrays["images"], arrays["masks"], arrays["sizes"], arrays["ok"], meta["skipped"]


def _check_memory(cfg, listing: PairListing, n: int, pre: dict) -> None:
    if str(cfg.in_memory).lower() in ("false", "0", "no"):
        raise UserError("segmentation sources are decoded into memory (masks have no lazy file path yet): drop "
                        "data.in_memory=false; shrink them with data.image_size=N (short side) or data.limit")
    size = next((s for s in (probe(listing.root / p.image)[0] for p in listing.pairs[:20]) if s), (0, 0))
    h, w = short_side_size(size[1], size[0], pre["short_side"]) if size[0] else (0, 0)
    nbytes = n * h * w * ((1 if pre["grayscale"] else 3) + 1)
    if not cache.want_memory(cfg, nbytes):
        raise UserError(f"{listing.root}: {n} pairs need about {nbytes / 2**30:.1f} GiB decoded: set "
                        "data.image_size=N (short side), data.limit, or data.in_memory=true to decode anyway")


def load_segmentation(cfg, name: str, listing: PairListing, spec=None, source: str = "") -> Splits:
    """Splits of image/mask pairs: classes from ``spec`` (list of names or {raw value: name}; None infers them),
    splits from the folders or a seeded cfg.split, cfg.limit applied before decoding, mean/std from train."""
    if cfg.pad_square:
        raise UserError("data.pad_square is not supported for segmentation sources: pairs of different sizes are "
                        "padded onto one canvas already (mask padding = 255, ignored)")
    if not listing.pairs:
        raise UserError(f"{listing.root}: no image/mask pairs found (images/NAME.jpg|png with masks/NAME.png)")
    hist, reasons = _histograms(cfg, name, listing)
    skipped = list(listing.ignored)
    skipped += [{"file": str(listing.root / p.mask), "reason": r} for p, r in zip(listing.pairs, reasons) if r]
    good = np.array([i for i, r in enumerate(reasons) if not r], np.int64)
    if not len(good):
        raise UserError(f"{listing.root}: none of the {len(listing.pairs)} masks could be read")
    names, lut, void = _classes(spec, hist[good])
    pixels, n_masks, values = out_of_range(hist[good], lut, void)
    if pixels:
        skipped.append({"file": str(listing.root / "masks"),
                        "reason": f"mask values outside the {len(names)} classes set to 255 (ignore): {pixels} "
                                  f"pixels in {n_masks} masks (values {', '.join(map(str, values[:12]))})"})
    labels = dominant_class(hist, lut, len(names))
    sub = PairListing(listing.root, listing.layout, [listing.pairs[i] for i in good])
    split_of = _assign_splits(sub, labels[good], cfg)
    keep = []
    for s in ("train", "val", "test"):             # data.limit before decoding, build_splits' rule: no-op later
        idx = np.flatnonzero(split_of == s)
        keep.append(idx[limit_indices(labels[good][idx], cfg.limit, cfg.split_seed)] if cfg.limit > 0 else idx)
    keep = np.concatenate(keep)                    # split by split: each split is a slice (a view) of the arrays
    pre = {"image_size": 0, "short_side": int(cfg.image_size), "pad_square": False, "grayscale": bool(cfg.grayscale)}
    _check_memory(cfg, sub, len(keep), pre)
    images, masks, sizes, ok, bad = _decode(cfg, name, sub, keep, lut, pre)
    skipped += bad
    if not len(ok):
        raise UserError(f"{listing.root}: none of the {len(keep)} image/mask pairs could be decoded")
    rows = keep[ok]                                # positions in ``sub`` of the decoded pairs
    lab, spl = labels[good][rows], split_of[rows]
    img_names = [sub.pairs[i].image for i in rows]
    sets = {}
    for s in ("train", "val", "test"):
        i = np.flatnonzero(spl == s)
        part = slice(int(i[0]), int(i[-1]) + 1) if len(i) else slice(0, 0)
        sets[s] = None if s == "val" and not len(i) else ImageSet(
            labels=lab[part], images=images[part], masks=masks[part], names=img_names[part])
    if not len(sets["train"]):
        raise UserError(f"{listing.root}: the train split has no readable image/mask pairs")
    mean, std = valid_stats(sets["train"].images, sizes[spl == "train"])
    manifest = [{"file": n, "label": names[c], "split": str(s)} for n, c, s in zip(img_names, lab, spl)]
    size = (int(images.shape[1]), int(images.shape[2]))
    return Splits(train=sets["train"], val=sets["val"], test=sets["test"], classes=names,
                  channels=int(images.shape[3]), image_size=size, mean=mean, std=std,
                  source=source or f"{name}: image/mask pairs in {listing.root.resolve()} ({listing.layout} layout, "
                                   f"short side {pre['short_side'] or 'native'}, canvas {size[0]}x{size[1]})",
                  skipped=skipped, manifest=manifest, preprocess=pre)


def build_mask_folder(cfg) -> Splits:
    """A user's segmentation folder at data.root: images/[train|val|test/]NAME.jpg|png + masks/[...]NAME.png;
    classes from classes.txt / classes.yaml (else class_0..class_K, or background/foreground for 0/255 masks)."""
    if not cfg.root:
        raise UserError("data.name=mask_folder needs data.root=PATH: a folder with images/NAME.jpg|png and "
                        "masks/NAME.png (optionally images/train|val|test/ and masks/train|val|test/)")
    root = Path(cfg.root).expanduser()
    if not root.is_dir():
        raise UserError(f"mask folder not found: {root}")
    return load_segmentation(cfg, "mask_folder", scan_pairs(root), read_class_file(root))


def build_camvid(cfg) -> Splits:
    """CamVid (SegNet version, 11 classes, value 11 = void -> 255) at data_root(cfg, 'camvid'), its own
    train/val/test split (367/101/233)."""
    root = data_root(cfg, "camvid")
    if not (root / "images" / "train").is_dir() or not (root / "masks" / "train").is_dir():
        raise missing_data_error("camvid", root, ["images/{train,val,test}/*.jpg", "masks/{train,val,test}/*.png"],
                                 "camvid", downloadable=False)
    spec = {**dict(enumerate(CAMVID_CLASSES)), 11: "void"}
    return load_segmentation(cfg, "camvid", scan_pairs(root), spec)


def build_coco128_seg(cfg) -> Splits:
    """COCO128 semantic masks at data_root(cfg, 'coco128'): 100 masks per split, values = COCO panoptic category
    ids; the ids named in semantic_segmentation.yaml are numbered contiguously in id order (129 classes, 0..128),
    0 = unlabeled -> 255. train2017 masks -> train (+ a data.val_fraction hold-out as val), val2017 masks -> test.
    The 28 images per split without a mask are listed in Splits.skipped."""
    root = data_root(cfg, "coco128")
    names_file = root / "semantic_segmentation.yaml"
    if not names_file.is_file() or not (root / "masks").is_dir():
        raise missing_data_error("coco128_seg", root, ["images/{train2017,val2017}/*.jpg",
                                                        "masks/{train2017,val2017}/*.png", "semantic_segmentation.yaml"],
                                 "coco128", downloadable=False)
    spec = yaml.safe_load(names_file.read_text())["classes"]
    return load_segmentation(cfg, "coco128_seg", scan_pairs(root, COCO_SPLIT_DIRS), spec)
