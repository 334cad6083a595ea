"""Folder datasets: hostile files are skipped and reported, every PIL mode decodes, layouts, checks, reports."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionlab.config import DataConfig
from visionlab.data import build_splits
from visionlab.data.check import check_dataset, format_check, write_data_report
from visionlab.data import decode
from visionlab.data.decode import decode_files, load_image
from visionlab.utils import UserError

from conftest import DATA  # noqa: E402 - one definition of where the real data lies
PRE = {"image_size": 0, "pad_square": False, "grayscale": False}


def _gradient(w=24, h=24, seed=0) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1), np.full((h, w), 7 * seed % 256)],
                    -1).astype(np.uint8)


def _exif_rotated_jpeg(path: Path):
    im = Image.fromarray(_gradient(40, 20))         # 40 wide, 20 high
    exif = Image.Exif()
    exif[0x0112] = 6                                # orientation: rotate 90 CW to display
    im.save(path, exif=exif.tobytes())


def _hostile_folder(root: Path) -> dict:
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(6):
            Image.fromarray(_gradient(seed=i)).save(root / c / f"good{i}.{'png' if i % 2 else 'jpg'}")
    good = root / "cat" / "good0.jpg"
    (root / "cat" / "truncated.jpg").write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    (root / "cat" / "empty.jpg").write_bytes(b"")
    (root / "dog" / "text.jpg").write_text("this is not an image\n")
    (root / "dog" / "random.png").write_bytes(np.random.default_rng(0).bytes(500))
    Image.new("CMYK", (24, 24), (0, 255, 255, 0)).save(root / "cat" / "cmyk.jpg")
    rgba = np.zeros((24, 24, 4), np.uint8)
    rgba[..., 0], rgba[:12, :, 3] = 255, 255        # top half opaque red, bottom transparent
    Image.fromarray(rgba, "RGBA").save(root / "dog" / "rgba.png")
    Image.fromarray(np.full((24, 24), 32896, np.uint16)).save(root / "dog" / "deep16.png")
    _exif_rotated_jpeg(root / "cat" / "rotated.jpg")
    Image.fromarray(_gradient()).convert("P").save(root / "dog" / "palette.png", transparency=0)
    Image.fromarray(_gradient()[..., 0] > 128).save(root / "dog" / "bits.png")
    (root / "dog" / ".DS_Store").write_bytes(b"\0\1junk")
    (root / ".hidden").mkdir()
    (root / "cat" / "notes.txt").write_text("ignore me")
    return {"bad": ["cat/truncated.jpg", "cat/empty.jpg", "dog/text.jpg", "dog/random.png"], "good": 18}


def test_hostile_files_are_skipped(tmp_path):
    expect = _hostile_folder(tmp_path / "ds")
    cfg = DataConfig(name="folder", root=str(tmp_path / "ds"), image_size=16, cache_dir=str(tmp_path / "c"))
    s = build_splits(cfg)
    assert s.classes == ["cat", "dog"] and s.channels == 3 and s.image_size == (16, 16)
    assert sum(len(p) for p in (s.train, s.val, s.test)) == expect["good"]
    for p in (s.train, s.val, s.test):
        assert p.images.dtype == np.uint8 and p.images.shape[1:] == (16, 16, 3)
    reasons = {Path(k["file"]).relative_to(tmp_path / "ds").as_posix(): k["reason"] for k in s.skipped}
    for bad in expect["bad"]:
        assert bad in reasons and reasons[bad]
    assert "truncat" in reasons["cat/truncated.jpg"] and "empty" in reasons["cat/empty.jpg"]
    assert "not an image" in reasons["dog/text.jpg"]
    assert "ignored" in reasons["cat/notes.txt"] and not any(".DS_Store" in f for f in reasons)
    files = {m["file"] for m in s.manifest}
    assert "cat/cmyk.jpg" in files and "dog/deep16.png" in files and not files & set(expect["bad"])
    assert {m["split"] for m in s.manifest} == {"train", "val", "test"}
    s2 = build_splits(cfg)                            # from the cache: same skip list
    assert s2.skipped == s.skipped


def test_process_pool_matches_serial(tmp_path, monkeypatch):
    _hostile_folder(tmp_path / "ds")
    paths = sorted(str(p) for p in (tmp_path / "ds").rglob("*.*g"))
    pre = {**PRE, "image_size": 10}
    serial = decode_files(paths, pre, workers=1)
    monkeypatch.setattr(decode, "POOL_MIN_FILES", 1)
    monkeypatch.setattr(decode, "CHUNK", 4)
    pooled = decode_files(paths, pre, workers=2)
    assert [r for _, r in pooled] == [r for _, r in serial] and sum(r is not None for _, r in serial) == 4
    assert all((a == b).all() for (a, _), (b, _) in zip(pooled, serial) if a is not None)


def test_modes_decode_properly(tmp_path):
    _hostile_folder(tmp_path)
    rot = load_image(tmp_path / "cat" / "rotated.jpg", PRE)
    assert rot.shape == (40, 20, 3)                   # stored 40x20 (w x h), EXIF orientation 6 -> 20 wide, 40 high
    deep = load_image(tmp_path / "dog" / "deep16.png", PRE)
    assert deep.shape == (24, 24, 3) and abs(int(deep[0, 0, 0]) - 128) <= 1    # 32896/65535 scaled, not clipped
    rgba = load_image(tmp_path / "dog" / "rgba.png", PRE)
    assert rgba[0, 0].tolist() == [255, 0, 0] and rgba[-1, -1].tolist() == [255, 255, 255]   # on white
    for name in ("cat/cmyk.jpg", "dog/palette.png", "dog/bits.png"):
        a = load_image(tmp_path / name, PRE)
        assert a.shape == (24, 24, 3) and a.dtype == np.uint8
    gray = load_image(tmp_path / "cat" / "cmyk.jpg", {**PRE, "grayscale": True, "image_size": 8})
    assert gray.shape == (8, 8, 1)


def test_pad_square_letterbox(tmp_path):
    Image.fromarray(np.full((10, 30, 3), 200, np.uint8)).save(tmp_path / "wide.png")
    a = load_image(tmp_path / "wide.png", {"image_size": 15, "pad_square": True, "grayscale": False})
    assert a.shape == (15, 15, 3) and (a == 200).all()   # padded with the image's mean colour
    b = load_image(tmp_path / "wide.png", {"image_size": 0, "pad_square": True, "grayscale": False})
    assert b.shape == (30, 30, 3)
    c = load_image(tmp_path / "wide.png", {"image_size": [5, 12], "pad_square": False, "grayscale": True})
    assert c.shape == (5, 12, 1)


def test_mixed_sizes_get_a_default_size(tmp_path, capsys):
    """Images of several sizes (TrashNet-like portrait and landscape photos) get one size: the model's input size
    handed in, else 224; said in one line, written back to the config, the same pixels as decoding at that size."""
    for c, size in (("a", (8, 8)), ("b", (9, 7))):
        (tmp_path / c).mkdir()
        for i in range(5):
            Image.fromarray(_gradient(size[1], size[0], seed=i)).save(tmp_path / c / f"{i}.png")
    cfg = DataConfig(name="folder", root=str(tmp_path), cache_dir=str(tmp_path / ".c"))
    s = build_splits(cfg)
    assert cfg.image_size == 224 and s.image_size == (224, 224) and s.preprocess["image_size"] == 224
    said = capsys.readouterr().out.strip().splitlines()
    assert len(said) == 1 and said[0].startswith("data.image_size=224: images differ in size (8x8, 7x9)")
    i = s.train.names.index("b/1.png")
    assert (s.train.images[i] == load_image(tmp_path / "b" / "1.png", s.preprocess)).all()
    cfg = DataConfig(name="folder", root=str(tmp_path), cache_dir=str(tmp_path / ".c"))
    assert build_splits(cfg, default_size=32).image_size == (32, 32) and cfg.image_size == 32   # the model's size
    lazy = DataConfig(name="folder", root=str(tmp_path), cache_dir=str(tmp_path / ".c"), in_memory="false")
    assert build_splits(lazy, default_size=16).image_size == (16, 16) and lazy.image_size == 16


def test_default_size_is_the_models_input_size():
    from visionlab.config import load_config
    from visionlab.tasks import default_image_size

    assert default_image_size(load_config(None, ["model.name=resnet18"])) == 224
    assert default_image_size(load_config(None, ["model.name=efficientnet_b3"])) == 300   # torchvision's weights
    assert default_image_size(load_config(None, ["model.name=resnet18", "model.input_size=96"])) == 96
    assert default_image_size(load_config(None)) is None                   # our own nets: the data default, 224


def test_one_class_folder_is_refused(tmp_path):
    from visionlab.utils import ConfigError

    _hostile_folder(tmp_path / "ds")
    shutil.rmtree(tmp_path / "ds" / "dog")
    with pytest.raises(ConfigError, match="at least 2 classes"):
        build_splits(DataConfig(name="folder", root=str(tmp_path / "ds"), cache_dir=str(tmp_path / "c")))


def _split_layout(root: Path, with_test=True):
    for split in ("train", "test") if with_test else ("train",):
        for c in ("x", "y"):
            (root / split / c).mkdir(parents=True)
            for i in range(10 if split == "train" else 3):
                seed = i + (c == "y") * 20 + (split == "test") * 40
                Image.fromarray(_gradient(8, 8, seed=seed)).save(root / split / c / f"{i}.png")


def test_split_layout_and_val_holdout(tmp_path):
    _split_layout(tmp_path / "ds")
    s = build_splits(DataConfig(name="folder", root=str(tmp_path / "ds"), val_fraction=0.2,
                                cache_dir=str(tmp_path / "c")))
    assert (len(s.train), len(s.val), len(s.test)) == (16, 4, 6)
    assert np.bincount(s.val.labels).tolist() == [2, 2]
    assert all(m["file"].startswith("train/") for m in s.manifest if m["split"] == "val")
    s0 = build_splits(DataConfig(name="folder", root=str(tmp_path / "ds"), val_fraction=0,
                                 cache_dir=str(tmp_path / "c")))
    assert s0.val is None and len(s0.train) == 20


def test_missing_test_split_names_the_fix(tmp_path):
    _split_layout(tmp_path, with_test=False)
    with pytest.raises(UserError, match="no test/"):
        build_splits(DataConfig(name="folder", root=str(tmp_path), cache_dir=str(tmp_path / ".c")))


def test_folder_needs_root_and_images(tmp_path):
    with pytest.raises(UserError, match="data.root"):
        build_splits(DataConfig(name="folder"))
    with pytest.raises(UserError, match="no images found"):
        build_splits(DataConfig(name="folder", root=str(tmp_path)))


def test_lazy_path(tmp_path):
    _hostile_folder(tmp_path / "ds")
    cfg = DataConfig(name="folder", root=str(tmp_path / "ds"), in_memory="false", image_size=12,
                     cache_dir=str(tmp_path / "c"))
    s = build_splits(cfg)
    assert s.train.images is None and len(s.train.paths) == len(s.train)
    assert s.image_size == (12, 12) and s.channels == 3 and len(s.mean) == 3
    skipped = {Path(k["file"]).name for k in s.skipped}
    assert {"empty.jpg", "text.jpg", "random.png", "truncated.jpg"} <= skipped   # verified once, cached
    assert load_image(s.train.paths[0], s.preprocess).shape == (12, 12, 3)
    unsized = DataConfig(name="folder", root=str(tmp_path / "ds"), in_memory="false", cache_dir=str(tmp_path / "c"))
    assert build_splits(unsized).image_size == (224, 224) and unsized.image_size == 224    # workers need one size


def test_check_dataset_finds_leaks_and_corrupt(tmp_path):
    _split_layout(tmp_path)
    shutil.copy(tmp_path / "train" / "x" / "0.png", tmp_path / "test" / "x" / "leak.png")
    shutil.copy(tmp_path / "train" / "y" / "1.png", tmp_path / "train" / "y" / "dup.png")
    (tmp_path / "test" / "y" / "bad.png").write_bytes(b"nope")
    r = check_dataset(tmp_path)
    assert r["counts"]["train"] == {"x": 10, "y": 11} and r["counts"]["test"] == {"x": 4, "y": 3}
    assert ["test/x/leak.png", "train/x/0.png"] in r["duplicates_across_splits"]
    assert ["train/y/1.png", "train/y/dup.png"] in r["duplicates_within_split"]
    assert r["corrupt"][0]["file"] == "test/y/bad.png"
    assert len(r["duplicates_across_splits"]) == 1 and len(r["duplicates_within_split"]) == 1
    assert r["sizes"] == {"8x8": 28} and r["balance"]["test"]["ratio"] == 0.75
    text = format_check(r)
    assert "ACROSS" in text and "test/y/bad.png" in text


def test_write_data_report(tmp_path):
    _hostile_folder(tmp_path / "ds")
    s = build_splits(DataConfig(name="folder", root=str(tmp_path / "ds"), image_size=8, cache_dir=str(tmp_path / "c")))
    write_data_report(s, tmp_path / "run")
    rep = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert sum(rep["totals"].values()) == 18 and len(rep["skipped"]) == 5
    md = (tmp_path / "run" / "data_report.md").read_text()
    assert "truncated.jpg" in md and "| cat |" in md


def test_trashnet_limit(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLAB_DATA", str(DATA))
    s = build_splits(DataConfig(name="trashnet", image_size=32, limit=60, cache_dir=str(tmp_path)))
    assert (len(s.train), len(s.val), len(s.test)) == (60, 60, 60)
    assert s.classes == ["cardboard", "glass", "metal", "paper", "plastic", "trash"] and not s.skipped
