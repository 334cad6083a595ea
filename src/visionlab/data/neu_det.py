"""NEU-DET steel-surface defects as a crop-classification dataset: one image per labelled box (Pascal VOC XML),
split by source photo so crops of one photo never straddle train and test; built once into the cache."""
from __future__ import annotations

import csv
import dataclasses
import os
import shutil
from collections import Counter
from pathlib import Path

import numpy as np

from ..config import data_root
from . import cache
from .crop import crop_dataset
from .folder import load_folder
from .split import missing_data_error, parse_ratios, stratified_split

MARGIN = 0.1        # context around each box, as a fraction of its width/height per side


def build_neu_det(cfg, default_size: int | None = None):
    """Crops of every defect box under data_root(cfg, 'neu_det') (images/*.jpg, annotations/*.xml), split 8:1:1
    (data.split, data.split_seed) by source photo, stratified by defect class."""
    src = data_root(cfg, "neu_det")
    xmls = sorted((src / "annotations").glob("*.xml")) if (src / "annotations").is_dir() else []
    if not xmls or not (src / "images").is_dir():
        raise missing_data_error("neu_det", src, ["images/<class>_<n>.jpg", "annotations/<class>_<n>.xml"],
                                 "neu_det", downloadable=False)
    key = cache.make_key("neu_det_crops", cache.file_identity(xmls), cfg.split, cfg.split_seed, MARGIN)
    out = cache.cache_dir(cfg) / f"neu_det_crops-{key[:20]}"
    if not (out / "split.csv").is_file():
        _build(src, out, cfg.split, cfg.split_seed)
    crops = dataclasses.replace(cfg, root=str(out))
    splits = load_folder(crops, "neu_det", default_size)
    cfg.image_size = crops.image_size                 # the size chosen for crops of several sizes, for the run config
    splits.source = f"neu_det: box crops (margin {MARGIN}) of {src.resolve()}, split by photo; cached in {out}"
    return splits


def _build(src: Path, out: Path, split: str, seed: int) -> None:
    """Crop into a temporary folder, move each photo's crops into train|val|test/<class>/, then rename into place
    (a killed build leaves no half-made dataset behind)."""
    tmp = out.with_name(out.name + f".tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    crop_dataset(src, tmp / "all", format="voc", margin=MARGIN)
    with (tmp / "all" / "crops.csv").open() as f:
        rows = list(csv.DictReader(f))
    by_photo: dict[str, list[dict]] = {}
    for r in rows:
        by_photo.setdefault(r["source"], []).append(r)
    photos = sorted(by_photo)
    label = [Counter(r["class"] for r in by_photo[p]).most_common(1)[0][0] for p in photos]
    ratios = parse_ratios(split)
    parts = stratified_split(np.array(label), ratios, seed)
    names = ("train", "val", "test") if len(parts) == 3 else ("train", "test")
    manifest = []
    for part, idx in zip(names, parts):
        for i in idx:
            for r in by_photo[photos[i]]:
                dest = tmp / part / r["class"] / Path(r["crop"]).name
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.replace(tmp / "all" / r["crop"], dest)
                manifest.append((part, r["class"], dest.name, photos[i]))
    with (tmp / "split.csv").open("w", newline="") as f:
        csv.writer(f).writerows([("split", "class", "crop", "photo"), *manifest])
    shutil.rmtree(tmp / "all")
    out.parent.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out, ignore_errors=True)
    os.replace(tmp, out)
