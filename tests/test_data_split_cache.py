"""Stratified splits (known answers, determinism), limits, manifests, and the decoded-dataset cache."""
import csv
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionlab.config import DataConfig
from visionlab.data import build_splits, cache, embedded, folder
from visionlab.data.folder import split_folder
from visionlab.data.split import limit_indices, parse_ratios, stratified_split
from visionlab.utils import UserError

from conftest import DATA  # noqa: E402 - one definition of where the real data lies


def test_parse_ratios():
    assert parse_ratios("8:1:1") == pytest.approx((0.8, 0.1, 0.1))
    assert parse_ratios("9:1") == pytest.approx((0.9, 0.1))
    assert parse_ratios("70:15:15") == pytest.approx((0.7, 0.15, 0.15))
    for bad in ("", "8", "a:b:c", "8:-1:1", "0:1:1", "1:1:1:1", "8:1:0"):
        with pytest.raises(UserError, match="data.split"):
            parse_ratios(bad)


def test_single_class_largest_remainder():
    # 137 * (0.8, 0.1, 0.1) = 109.6, 13.7, 13.7 -> floors 109+13+13 = 135; the 2 left go to the
    # largest remainders (.7, .7) -> 109 / 14 / 14
    parts = stratified_split(np.zeros(137, int), (0.8, 0.1, 0.1), seed=0)
    assert [len(p) for p in parts] == [109, 14, 14]
    assert sorted(np.concatenate(parts).tolist()) == list(range(137))


def test_trashnet_counts_exact_and_seeded():
    counts = [403, 501, 410, 594, 482, 137]           # TrashNet classes (README)
    labels = np.repeat(np.arange(6), counts)
    parts = stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    # totals: 2527 * .8 = 2021.6, 252.7, 252.7 -> 2021 + 252 + 252, remainders .7 .7 -> 2021 / 253 / 253
    assert [len(p) for p in parts] == [2021, 253, 253]
    per_class = np.array([np.bincount(labels[p], minlength=6) for p in parts]).T
    assert per_class.sum(1).tolist() == counts
    assert per_class[5].tolist() == [109, 14, 14]     # trash, as for a single class
    assert (np.abs(per_class - np.outer(counts, [0.8, 0.1, 0.1])) < 1).all()   # every cell within 1 of its quota
    again = stratified_split(labels, (0.8, 0.1, 0.1), seed=0)
    assert all((a == b).all() for a, b in zip(parts, again))
    other = stratified_split(labels, (0.8, 0.1, 0.1), seed=1)
    assert [len(p) for p in other] == [2021, 253, 253]
    assert not (parts[1] == other[1]).all()


def test_small_class_gets_one_in_each_part():
    labels = np.array([0] * 10 + [1] * 5 + [2] * 2)
    parts = stratified_split(labels, (0.8, 0.1, 0.1), seed=3)
    per_class = np.array([np.bincount(labels[p], minlength=3) for p in parts]).T
    assert per_class[0].tolist() == [8, 1, 1]
    assert per_class[1].min() >= 1 and per_class[1].sum() == 5
    assert per_class[2].sum() == 2                    # fewer samples than parts: no guarantee
    assert sum(len(p) for p in parts) == 17


def test_limit_indices_stratified():
    labels = np.repeat(np.arange(10), 100)
    idx = limit_indices(labels, 50, seed=0)
    assert len(idx) == 50 and np.bincount(labels[idx]).tolist() == [5] * 10
    assert len(limit_indices(labels, 0, 0)) == 1000 and len(limit_indices(labels, 5000, 0)) == 1000


def test_limit_in_build_splits(tmp_path):
    s = build_splits(DataConfig(name="mnist5k", limit=50, cache_dir=str(tmp_path)))
    assert len(s.train) == len(s.val) == len(s.test) == 50
    assert np.bincount(s.train.labels).tolist() == [5] * 10


def test_split_folder_manifest_csv(tmp_path):
    out = tmp_path / "split.csv"
    manifest = split_folder(DATA / "trashnet", "8:1:1", seed=0, out_csv=out)
    rows = list(csv.DictReader(out.open()))
    assert rows == manifest and len(rows) == 2527
    n = {s: sum(r["split"] == s for r in rows) for s in ("train", "val", "test")}
    assert n == {"train": 2021, "val": 253, "test": 253}
    assert sum(r["label"] == "trash" and r["split"] == "test" for r in rows) == 14
    assert split_folder(DATA / "trashnet", "8:1:1", seed=0) == manifest
    assert split_folder(DATA / "trashnet", "8:1:1", seed=1) != manifest


def _small_folder(root: Path, n=12):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (root / c).mkdir(parents=True)
        for i in range(n):
            a = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
            Image.fromarray(a).save(root / c / f"{i}.png")


def _no_decode(*a, **k):
    raise AssertionError("decoded although the cache should have hit")


def test_folder_cache_hit_and_invalidation(tmp_path, monkeypatch):
    root, cdir = tmp_path / "imgs", tmp_path / "cache"
    _small_folder(root)
    cfg = DataConfig(name="folder", root=str(root), cache_dir=str(cdir), in_memory="true")
    first = build_splits(cfg)
    assert first.train.images.shape[1:] == (8, 8, 3)
    with monkeypatch.context() as m:
        m.setattr(folder, "decode_files", _no_decode)
        second = build_splits(cfg)                    # hit: no decode
        assert (second.train.images == first.train.images).all()
        target = root / "a" / "0.png"
        Image.fromarray(np.full((8, 8, 3), 7, np.uint8)).save(target)
        st = target.stat()
        os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
        with pytest.raises(AssertionError, match="decoded"):
            build_splits(cfg)                         # changed file -> new key -> decode
    third = build_splits(cfg)
    where = [i for i, n in enumerate(third.train.names + third.val.names + third.test.names) if n == "a/0.png"]
    allimgs = np.concatenate([third.train.images, third.val.images, third.test.images])
    assert len(where) == 1 and (allimgs[where[0]] == 7).all()
    assert len([p for p in cdir.iterdir() if not p.name.startswith(".")]) == 1   # the stale entry was dropped
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(root / "b" / "new.png")  # added file -> new key
    with monkeypatch.context() as m:
        m.setattr(folder, "decode_files", _no_decode)
        with pytest.raises(AssertionError):
            build_splits(cfg)
    assert len(build_splits(cfg).manifest) == 25


def test_preprocess_is_part_of_the_key(tmp_path):
    root = tmp_path / "imgs"
    _small_folder(root)
    a = build_splits(DataConfig(name="folder", root=str(root), cache_dir=str(tmp_path / "c"), image_size=4))
    b = build_splits(DataConfig(name="folder", root=str(root), cache_dir=str(tmp_path / "c"), grayscale=True))
    assert a.train.images.shape[1:] == (4, 4, 3) and b.train.images.shape[1:] == (8, 8, 1)


def test_array_source_cache(tmp_path, monkeypatch):
    cfg = DataConfig(name="mnist5k", cache_dir=str(tmp_path))
    first = build_splits(cfg)
    monkeypatch.setattr(embedded, "read_mnist5k", _no_decode)
    second = build_splits(cfg)
    assert (first.test.images == second.test.images).all()
    assert not list(tmp_path.glob(".tmp-*"))          # atomic writes leave no temp folders
    for p in tmp_path.rglob("*.npy"):
        np.load(p, allow_pickle=False)


def test_cache_dir_env(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLAB_CACHE", str(tmp_path / "env"))
    assert cache.cache_dir(DataConfig()) == tmp_path / "env"
    assert cache.cache_dir(DataConfig(cache_dir=str(tmp_path / "x"))) == tmp_path / "x"
    assert cache.want_memory(DataConfig(in_memory="auto"), 10)
    assert not cache.want_memory(DataConfig(in_memory="false"), 1)
