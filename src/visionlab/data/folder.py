"""Image-folder datasets: ROOT/<class>/* (seeded split) or ROOT/train|val|test/<class>/*; also TrashNet.

Small folders are decoded once into a uint8 cache; big ones stay as paths for lazy decoding by workers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..config import data_root
from ..utils import ConfigError, UserError
from . import cache
from .base import ImageSet, channel_stats
from .decode import IMAGE_EXTS, decode_files, preprocess_dict, probe, try_load, verify_files
from .split import (SPLIT_NAMES, hold_out_val, limit_indices, make_splits, missing_data_error, parse_ratios,
                    split_names, stratified_split, write_manifest)

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
STATS_SAMPLE = 500
# images of several sizes need one: the caller hands in the model's input size; else what ImageNet backbones and
# Ultralytics' classifiers take (Keras picks 256)
DEFAULT_IMAGE_SIZE = 224


@dataclass
class Entry:
    rel: str            # path relative to the dataset root, with '/'
    label: int
    split: str | None   # from the split folder, or None for ROOT/<class>/*
    size: int
    mtime_ns: int


@dataclass
class Listing:
    root: Path
    layout: str                                   # "flat" or "split"
    classes: list[str]
    entries: list[Entry]
    ignored: list[dict] = field(default_factory=list)
    split_dirs: dict = field(default_factory=dict)   # canonical split -> folder name on disk


def _kind(e: os.DirEntry) -> str | None:
    """'dir', 'file', None (something else), or the reason a symbolic link cannot be followed."""
    try:
        return "dir" if e.is_dir() else "file" if e.is_file() else None
    except OSError as err:                        # ELOOP: a link to itself; EACCES: a folder we may not read
        return f"ignored: {err.strerror or err} (a broken or looping symbolic link?)"


def _loop(path: str) -> dict:
    return {"file": path, "reason": f"ignored: symbolic link to a folder already listed ({os.path.realpath(path)}), "
                                    "e.g. a link loop; remove the link"}


def _visible_dirs(d: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(d) if not e.name.startswith(".") and _kind(e) == "dir")


def _files(d: Path, prefix: str, seen: set, ignored: list):
    """(relative path, DirEntry) of every non-hidden file under ``d``, recursively, sorted. A folder already listed
    (``seen``: real paths), as a symbolic link loop makes, is skipped and noted in ``ignored``, like a dead link."""
    stack = [(d, prefix)]
    while stack:
        cur, pre = stack.pop()
        for e in sorted(os.scandir(cur), key=lambda e: e.name):
            kind = "hidden" if e.name.startswith(".") else _kind(e)
            if kind == "dir" and os.path.realpath(e.path) in seen:
                ignored.append(_loop(e.path))
            elif kind == "dir":
                seen.add(os.path.realpath(e.path))
                stack.append((Path(e.path), f"{pre}{e.name}/"))
            elif kind == "file":
                yield f"{pre}{e.name}", e
            elif kind and kind.startswith("ignored"):
                ignored.append({"file": e.path, "reason": kind})


def scan_folder(root) -> Listing:
    """List the images of a class-folder dataset (hidden files ignored; non-image extensions noted)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"image folder not found: {root}")
    top = _visible_dirs(root)
    split_dirs = {SPLIT_DIRS[n.lower()]: n for n in top if n.lower() in SPLIT_DIRS}
    groups = [(canon, f"{d}/") for canon, d in sorted(split_dirs.items())] if split_dirs else [(None, "")]
    classes = sorted({c for _, pre in groups for c in _visible_dirs(root / pre)})
    index = {c: i for i, c in enumerate(classes)}
    entries, ignored = [], []
    tops = {os.path.realpath(root / pre) for _, pre in groups} | {os.path.realpath(root)}
    seen = tops | {os.path.realpath(root / pre / c) for _, pre in groups for c in _visible_dirs(root / pre)}
    for split, pre in groups:
        for cls in _visible_dirs(root / pre):
            if os.path.realpath(root / pre / cls) in tops:          # a class folder linking back to the root
                ignored.append(_loop(str(root / pre / cls)))
                continue
            for rel, e in _files(root / pre / cls, f"{pre}{cls}/", seen, ignored):
                if os.path.splitext(e.name)[1].lower() not in IMAGE_EXTS:
                    ignored.append({"file": str(root / rel), "reason": "ignored: not an image file extension"})
                    continue
                st = e.stat()
                entries.append(Entry(rel, index[cls], split, st.st_size, st.st_mtime_ns))
    entries.sort(key=lambda e: e.rel)
    return Listing(root, "split" if split_dirs else "flat", classes, entries, ignored, split_dirs)


def assign_splits(listing: Listing, cfg) -> np.ndarray:
    """The split name ('train', 'val', 'test') of every entry, seeded and stratified where the folder has none."""
    labels = np.array([e.label for e in listing.entries], np.int64)
    if listing.layout == "flat":
        return split_names(labels, cfg)
    out = np.empty(len(labels), dtype=object)
    have = set(listing.split_dirs)
    if "train" not in have or "test" not in have:
        missing = "train" if "train" not in have else "test"
        raise UserError(f"{listing.root} has split folders {sorted(listing.split_dirs.values())} but no {missing}/: "
                        f"add {listing.root}/{missing}/<class>/ images, or put every image in "
                        f"{listing.root}/<class>/ (no split folders) and visionlab makes a seeded "
                        f"data.split=8:1:1 split")
    out[:] = [e.split for e in listing.entries]
    return hold_out_val(out, labels, cfg)


def _root_for(cfg, name: str) -> Path:
    if name == "trashnet":
        return data_root(cfg, "trashnet")
    if not cfg.root:
        raise UserError("data.name=folder needs data.root=PATH: a folder of ROOT/<class>/*.jpg "
                        "or ROOT/train|val|test/<class>/*.jpg")
    return Path(cfg.root).expanduser()


def _resize_all(arrays: list, size: int) -> np.ndarray:
    """Bilinear resize of decoded images to size x size: the same pixels as decoding at data.image_size=size."""
    out = []
    for a in arrays:
        im = Image.fromarray(a[..., 0] if a.shape[2] == 1 else a).resize((size, size), Image.BILINEAR)
        out.append(np.asarray(im, dtype=np.uint8).reshape(size, size, a.shape[2]))
    return np.stack(out)


def _say_size(cfg, root: Path, size: int, why: str) -> None:
    """Record the chosen size in the run's config (data.image_size) and say so in one line."""
    cfg.image_size = size
    print(f"data.image_size={size}: {why} in {root}; each is resized to {size}x{size}, the default (the model's "
          f"input size, else {DEFAULT_IMAGE_SIZE}); set data.image_size=N to choose another", flush=True)


def _decode_all(cfg, name: str, listing: Listing, pre: dict, default_size: int):
    """(images uint8 NHWC, index of decoded entries, skipped, preprocess) for every entry, through the cache.
    Images of several sizes are resized to ``default_size`` when data.image_size is 0 (preprocess says so)."""
    ident = [(e.rel, e.size, e.mtime_ns) for e in listing.entries]
    key = cache.make_key(name, ident, pre, *(() if pre["image_size"] else (default_size,)))
    slot = cache.make_key(name, str(listing.root.resolve()), pre, cfg.limit)   # a quick run keeps the full cache

    def build():
        results = decode_files([str(listing.root / e.rel) for e in listing.entries], pre)
        ok = [i for i, (a, _) in enumerate(results) if a is not None]
        skipped = [{"file": listing.entries[i].rel, "reason": r} for i, (a, r) in enumerate(results) if a is None]
        if not ok:
            raise UserError(f"{listing.root}: none of the {len(results)} image files could be decoded")
        shapes = sorted({results[i][0].shape[:2] for i in ok})
        meta = {"skipped": skipped, "sizes": [f"{w}x{h}" for h, w in shapes[:4]] + ["..."] * (len(shapes) > 4)}
        if len(shapes) > 1:              # data.image_size=0 (else every image has that size)
            meta["resized_to"] = default_size
            return {"images": _resize_all([results[i][0] for i in ok], default_size),
                    "ok": np.array(ok, np.int64)}, meta
        return {"images": np.stack([results[i][0] for i in ok]), "ok": np.array(ok, np.int64)}, meta

    arrays, meta, _ = cache.cached(cfg, name, slot, key, build)
    skipped = [{"file": str(listing.root / s["file"]), "reason": s["reason"]} for s in meta["skipped"]]
    if meta.get("resized_to"):
        pre = {**pre, "image_size": int(meta["resized_to"])}
        _say_size(cfg, listing.root, pre["image_size"], f"images differ in size ({', '.join(meta['sizes'])})")
    return arrays["images"], arrays["ok"], skipped, pre


def _limit(listing: Listing, split_of: np.ndarray, limit: int, seed: int):
    labels = np.array([e.label for e in listing.entries], np.int64)
    keep = []
    for s in ("train", "val", "test"):
        idx = np.flatnonzero(split_of == s)
        keep.append(idx[limit_indices(labels[idx], limit, seed)])
    keep = np.sort(np.concatenate(keep))
    entries = [listing.entries[i] for i in keep]
    return Listing(listing.root, listing.layout, listing.classes, entries, listing.ignored, listing.split_dirs), \
        split_of[keep]


def _native_size(listing: Listing) -> tuple[int, int]:
    for e in listing.entries[:50]:
        size, _ = probe(listing.root / e.rel)
        if size:
            return size[1], size[0]
    return 0, 0


def _lazy(cfg, name: str, listing: Listing, pre: dict):
    """(index of entries that decode, skipped): one full verify pass, cached, so workers never meet a bad file."""
    key = cache.make_key(name, [(e.rel, e.size, e.mtime_ns) for e in listing.entries], "verify")
    slot = cache.make_key(name, str(listing.root.resolve()), "verify", cfg.limit)

    def build():
        reasons = verify_files([str(listing.root / e.rel) for e in listing.entries])
        ok = np.array([i for i, r in enumerate(reasons) if r is None], np.int64)
        return {"ok": ok}, {"skipped": [{"file": listing.entries[i].rel, "reason": r}
                                        for i, r in enumerate(reasons) if r is not None]}

    arrays, meta, _ = cache.cached(cfg, name + "-verify", slot, key, build)
    skipped = [{"file": str(listing.root / s["file"]), "reason": s["reason"]} for s in meta["skipped"]]
    return arrays["ok"], skipped


def _sample_stats(paths: list[str], pre: dict, seed: int):
    rng = np.random.default_rng(seed)
    pick = rng.choice(len(paths), size=min(STATS_SAMPLE, len(paths)), replace=False) if paths else []
    arrays = [a for a in (try_load(paths[i], pre)[0] for i in pick) if a is not None]
    if not arrays:
        c = 1 if pre.get("grayscale") else 3
        return (0.5,) * c, (0.25,) * c
    return channel_stats(np.stack(arrays))


def _assemble(listing: Listing, split_of: np.ndarray, ok: np.ndarray, images):
    """ImageSets per split from the decoded entries ``ok`` (in memory when ``images``), and the manifest."""
    base = str(listing.root)
    paths = None if images is not None else [os.path.join(base, listing.entries[i].rel) for i in ok]
    labels = np.array([listing.entries[i].label for i in ok], np.int64)
    names = [listing.entries[i].rel for i in ok]
    splits_ok = split_of[ok]
    sets = {}
    for s in ("train", "val", "test"):
        idx = np.flatnonzero(splits_ok == s)
        sets[s] = None if s == "val" and len(idx) == 0 else ImageSet(
            labels=labels[idx], images=None if images is None else images[idx],
            paths=None if paths is None else [paths[i] for i in idx], names=[names[i] for i in idx])
    if len(sets["train"]) == 0:
        raise UserError(f"{listing.root}: the train split has no readable images")
    manifest = [{"file": names[i], "label": listing.classes[labels[i]], "split": str(splits_ok[i])}
                for i in range(len(ok))]
    return sets, manifest


def _check_classes(listing: Listing) -> None:
    """A class-folder dataset with images of one class only would score 100 % without learning anything."""
    present = sorted({listing.classes[e.label] for e in listing.entries})
    if len(present) < 2:
        root = listing.root
        raise ConfigError(f"{root}: all images are in one class folder ({present[0]!r}); classification needs at "
                          f"least 2 classes: put each class's images in its own {root}/<class>/ folder (or point "
                          f"data.root at the folder that holds the class folders)")


def load_folder(cfg, name: str = "folder", default_size: int | None = None):
    """Splits of an image-folder dataset at cfg.root (or the trashnet data folder), see module docstring.

    With data.image_size=0, images of several sizes (or a folder decoded lazily) get ``default_size`` (the model's
    input size, from the caller; else DEFAULT_IMAGE_SIZE), written back to ``cfg.image_size`` for the run's config."""
    root = _root_for(cfg, name)
    if not root.is_dir():
        raise missing_data_error(name, root, ["<class>/*.jpg|png (or train|val|test/<class>/*)"],
                                 name if name != "folder" else "<folder>", downloadable=False)
    listing = scan_folder(root)
    if not listing.entries:
        raise UserError(f"{root}: no images found; expected {root}/<class>/*.jpg|png "
                        f"or {root}/train|val|test/<class>/*.jpg|png (hidden files are ignored)")
    _check_classes(listing)
    default_size = default_size or DEFAULT_IMAGE_SIZE
    split_of = assign_splits(listing, cfg)
    if cfg.limit > 0:                              # decode only what a quick run keeps (build_splits: same rule)
        listing, split_of = _limit(listing, split_of, cfg.limit, cfg.split_seed)
    pre = preprocess_dict(cfg)
    h, w = (pre["image_size"],) * 2 if pre["image_size"] else _native_size(listing)
    nbytes = len(listing.entries) * h * w * (1 if pre["grayscale"] else 3)
    images = stats = None
    if cache.want_memory(cfg, nbytes):
        images, ok, skipped, pre = _decode_all(cfg, name, listing, pre, default_size)
    else:
        if not pre["image_size"]:       # workers decode batch by batch: one size for all, known before
            pre = {**pre, "image_size": default_size}
            _say_size(cfg, root, default_size, "images are decoded lazily (too many for memory, or "
                                               "data.in_memory=false)")
        ok, skipped = _lazy(cfg, name, listing, pre)
    sets, manifest = _assemble(listing, split_of, ok, images)
    if images is None:
        stats = _sample_stats(sets["train"].paths, pre, cfg.split_seed)
    mode = "in memory" if images is not None else "lazy, decoded by workers"
    return make_splits(sets["train"], sets["val"], sets["test"], listing.classes,
                       source=f"{name}: image folders in {root.resolve()} ({listing.layout} layout, {mode})",
                       preprocess=pre, skipped=listing.ignored + skipped, manifest=manifest,
                       image_size=(pre["image_size"],) * 2, stats=stats)


def build_folder(cfg, default_size: int | None = None):
    """Generic image folders at data.root (required)."""
    return load_folder(cfg, "folder", default_size)


def build_trashnet(cfg, default_size: int | None = None):
    """TrashNet photos (<class>/*.jpg, 6 classes) at data_root(cfg, 'trashnet'), seeded data.split."""
    return load_folder(cfg, "trashnet", default_size)


def split_folder(root, ratios: str | tuple[float, ...] = "8:1:1", seed: int = 0, out_csv=None) -> list[dict]:
    """Seeded stratified split of an image folder ROOT/<class>/* into a manifest (and CSV when ``out_csv``).

    Files are not decoded here; the split depends only on the file listing, exactly as `data.name=folder` does.
    """
    listing = scan_folder(root)
    if listing.layout != "flat":
        raise UserError(f"{root} already has split folders ({', '.join(sorted(listing.split_dirs))}); nothing to split")
    if isinstance(ratios, str):
        ratios = parse_ratios(ratios)
    labels = np.array([e.label for e in listing.entries])
    names = SPLIT_NAMES if len(ratios) == 3 else ("train", "test")
    manifest = [None] * len(labels)
    for name, idx in zip(names, stratified_split(labels, ratios, seed)):
        for i in idx:
            manifest[i] = {"file": listing.entries[i].rel, "label": listing.classes[labels[i]], "split": name}
    if out_csv is not None:
        write_manifest(manifest, out_csv)
    return manifest
