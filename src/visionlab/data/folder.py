"""Image-folder datasets: ROOT/<class>/* (seeded split) or ROOT/train|val|test/<class>/*; also TrashNet.

Small folders are decoded once into a uint8 cache; big ones stay as paths for lazy decoding by workers.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import data_root
from ..utils import UserError
from . import cache
from .base import ImageSet, channel_stats
from .decode import IMAGE_EXTS, decode_files, preprocess_dict, probe, try_load, verify_files
from .split import holdout, limit_indices, make_splits, missing_data_error, split_train_val_test

SPLIT_DIRS = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test"}
STATS_SAMPLE = 500


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


def _visible_dirs(d: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(d) if e.is_dir() and not e.name.startswith("."))


def _files(d: Path, prefix: str):
    """(relative path, DirEntry) of every non-hidden file under ``d``, recursively, sorted."""
    stack = [(d, prefix)]
    while stack:
        cur, pre = stack.pop()
        for e in sorted(os.scandir(cur), key=lambda e: e.name):
            if e.name.startswith("."):
                continue
            if e.is_dir():
                stack.append((Path(e.path), f"{pre}{e.name}/"))
            elif e.is_file():
                yield f"{pre}{e.name}", e


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
    for split, pre in groups:
        for cls in _visible_dirs(root / pre):
            for rel, e in _files(root / pre / cls, f"{pre}{cls}/"):
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
    out = np.empty(len(labels), dtype=object)
    if listing.layout == "flat":
        tr, va, te = split_train_val_test(labels, cfg.split, cfg.val_fraction, cfg.split_seed)
        out[tr], out[te] = "train", "test"
        if va is not None:
            out[va] = "val"
        return out
    have = set(listing.split_dirs)
    if "train" not in have or "test" not in have:
        missing = "train" if "train" not in have else "test"
        raise UserError(f"{listing.root} has split folders {sorted(listing.split_dirs.values())} but no {missing}/: "
                        f"add {listing.root}/{missing}/<class>/ images, or put every image in "
                        f"{listing.root}/<class>/ (no split folders) and visionlab makes a seeded "
                        f"data.split=8:1:1 split")
    out[:] = [e.split for e in listing.entries]
    if "val" not in have:
        tr_idx = np.flatnonzero(out == "train")
        _, va = holdout(labels[tr_idx], cfg.val_fraction, cfg.split_seed)
        if va is not None:
            out[tr_idx[va]] = "val"
    return out


def _root_for(cfg, name: str) -> Path:
    if name == "trashnet":
        return data_root(cfg, "trashnet")
    if not cfg.root:
        raise UserError("data.name=folder needs data.root=PATH: a folder of ROOT/<class>/*.jpg "
                        "or ROOT/train|val|test/<class>/*.jpg")
    return Path(cfg.root).expanduser()


def _decode_all(cfg, name: str, listing: Listing, pre: dict):
    """(images uint8 NHWC, index of decoded entries, skipped) for every entry, through the cache."""
    ident = [(e.rel, e.size, e.mtime_ns) for e in listing.entries]
    key = cache.make_key(name, ident, pre)
    slot = cache.make_key(name, str(listing.root.resolve()), pre, cfg.limit)   # a quick run keeps the full cache

    def build():
        results = decode_files([str(listing.root / e.rel) for e in listing.entries], pre)
        ok = [i for i, (a, _) in enumerate(results) if a is not None]
        skipped = [{"file": listing.entries[i].rel, "reason": r} for i, (a, r) in enumerate(results) if a is None]
        if not ok:
            raise UserError(f"{listing.root}: none of the {len(results)} image files could be decoded")
        shapes = sorted({results[i][0].shape for i in ok})
        if len(shapes) > 1:
            raise UserError(f"{listing.root}: images differ in size ({', '.join(f'{s[1]}x{s[0]}' for s in shapes[:4])}"
                            f"{', ...' if len(shapes) > 4 else ''}); set data.image_size=N to resize them all")
        images = np.stack([results[i][0] for i in ok])
        return {"images": images, "ok": np.array(ok, np.int64)}, {"skipped": skipped}

    arrays, meta, _ = cache.cached(cfg, name, slot, key, build)
    skipped = [{"file": str(listing.root / s["file"]), "reason": s["reason"]} for s in meta["skipped"]]
    return arrays["images"], arrays["ok"], skipped


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
    if not pre["image_size"]:
        raise UserError(f"{listing.root} is decoded lazily (too big for memory or data.in_memory=false): "
                        "set data.image_size=N so that every image gets one size")
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


def load_folder(cfg, name: str = "folder"):
    """Splits of an image-folder dataset at cfg.root (or the trashnet data folder), see module docstring."""
    root = _root_for(cfg, name)
    if not root.is_dir():
        raise missing_data_error(name, root, ["<class>/*.jpg|png (or train|val|test/<class>/*)"],
                                 name if name != "folder" else "<folder>", downloadable=False)
    listing = scan_folder(root)
    if not listing.entries:
        raise UserError(f"{root}: no images found; expected {root}/<class>/*.jpg|png "
                        f"or {root}/train|val|test/<class>/*.jpg|png (hidden files are ignored)")
    split_of = assign_splits(listing, cfg)
    if cfg.limit > 0:                              # decode only what a quick run keeps (build_splits: same rule)
        listing, split_of = _limit(listing, split_of, cfg.limit, cfg.split_seed)
    pre = preprocess_dict(cfg)
    h, w = (pre["image_size"],) * 2 if pre["image_size"] else _native_size(listing)
    nbytes = len(listing.entries) * h * w * (1 if pre["grayscale"] else 3)
    images = stats = None
    if cache.want_memory(cfg, nbytes):
        images, ok, skipped = _decode_all(cfg, name, listing, pre)
    else:
        ok, skipped = _lazy(cfg, name, listing, pre)
    sets, manifest = _assemble(listing, split_of, ok, images)
    if images is None:
        stats = _sample_stats(sets["train"].paths, pre, cfg.split_seed)
    mode = "in memory" if images is not None else "lazy, decoded by workers"
    return make_splits(sets["train"], sets["val"], sets["test"], listing.classes,
                       source=f"{name}: image folders in {root.resolve()} ({listing.layout} layout, {mode})",
                       preprocess=pre, skipped=listing.ignored + skipped, manifest=manifest,
                       image_size=(pre["image_size"],) * 2, stats=stats)


def build_folder(cfg):
    """Generic image folders at data.root (required)."""
    return load_folder(cfg, "folder")


def build_trashnet(cfg):
    """TrashNet photos (<class>/*.jpg, 6 classes) at data_root(cfg, 'trashnet'), seeded data.split."""
    return load_folder(cfg, "trashnet")
