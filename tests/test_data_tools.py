"""`visionlab data crop|faces|balance`: box crops from VOC/COCO/YOLO labels, face crops, class balancing."""
from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from visionlab.cli.data import cmd_balance, cmd_crop, cmd_faces
from visionlab.data.balance import balance_folder
from visionlab.data.crop import crop_dataset
from visionlab.data.folder import scan_folder
from visionlab.utils import ConfigError, UserError


def _voc_counts(xml_files) -> Counter:
    """Boxes per class straight from the XML, independently of the code under test."""
    return Counter(o.findtext("name").strip() for f in xml_files for o in ET.parse(f).getroot().iter("object"))


def _files_per_class(out: Path) -> dict:
    return {d.name: len(list(d.glob("*.png"))) for d in out.iterdir() if d.is_dir()}


def test_crop_neu_det_subset_exact_counts(data_dir, tmp_path):
    neu = data_dir / "neu_det"
    xmls = sorted((neu / "annotations").glob("*.xml"))[:60]
    src = tmp_path / "neu"
    (src / "images").mkdir(parents=True)
    (src / "annotations").mkdir()
    for x in xmls:                      # links to the real files: a 60-image NEU-DET, nothing copied
        os.symlink(x, src / "annotations" / x.name)
        os.symlink(neu / "images" / f"{x.stem}.jpg", src / "images" / f"{x.stem}.jpg")
    expected = _voc_counts(xmls)
    report = crop_dataset(src, tmp_path / "out", margin=0.1)
    assert report["format"] == "voc"
    assert report["crops"] == dict(expected)
    assert _files_per_class(tmp_path / "out") == dict(expected)
    assert report["skipped"] == [] and report["missing_images"] == [] and report["unreadable_images"] == []
    listing = scan_folder(tmp_path / "out")          # trains as data.name=folder data.root=OUT
    assert listing.layout == "flat" and listing.classes == sorted(expected)
    assert len(listing.entries) == sum(expected.values())
    rows = (tmp_path / "out" / "crops.csv").read_text().splitlines()
    assert len(rows) == 1 + sum(expected.values()) and rows[0].startswith("crop,class,source,box_index")


def test_crop_neu_det_full_total(data_dir, tmp_path):
    expected = _voc_counts(sorted((data_dir / "neu_det" / "annotations").glob("*.xml")))
    assert sum(expected.values()) == 4189
    report = crop_dataset(data_dir / "neu_det", tmp_path / "out", size=16)
    assert report["total"] == 4189 and report["crops"] == dict(expected) and report["images"] == 1800


def _voc_xml(path: Path, filename: str, boxes) -> None:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{a}</xmin><ymin>{b}</ymin><xmax>{c}</xmax>"
                   f"<ymax>{d}</ymax></bndbox></object>" for n, (a, b, c, d) in boxes)
    path.write_text(f"<annotation><filename>{filename}</filename>{objs}</annotation>")


def _coord_image(w=100, h=80) -> Image.Image:
    """R = x, G = y, B = 77: every pixel says where it came from."""
    y, x = np.mgrid[0:h, 0:w]
    return Image.fromarray(np.stack([x, y, np.full_like(x, 77)], -1).astype(np.uint8))


@pytest.fixture
def synthetic_voc(tmp_path):
    src = tmp_path / "voc"
    src.mkdir()
    _coord_image().save(src / "img.png")
    _voc_xml(src / "img.xml", "img.png", [("thing", (20, 30, 60, 50)), ("corner", (0, 0, 10, 10)),
                                          ("thing", (200, 200, 210, 210)), ("thing", (30, 30, 20, 40))])
    return src


def test_crop_margin_pad_square_geometry(synthetic_voc, tmp_path):
    report = crop_dataset(synthetic_voc, tmp_path / "a", margin=0.1)
    a = np.asarray(Image.open(tmp_path / "a" / "thing" / "img_0.png"))
    assert a.shape == (24, 48, 3)                      # box 40x20 + 10 % per side -> x 16..64, y 28..52
    assert tuple(a[0, 0]) == (16, 28, 77) and tuple(a[-1, -1]) == (63, 51, 77)
    c = np.asarray(Image.open(tmp_path / "a" / "corner" / "img_1.png"))
    assert c.shape == (11, 11, 3) and tuple(c[0, 0]) == (0, 0, 77)     # 0..11 after clipping at the border
    assert report["skipped_counts"] == {"out of image": 1, "degenerate": 1}
    assert {(s["box_index"], s["reason"]) for s in report["skipped"]} == {(2, "out of image"), (3, "degenerate")}

    crop_dataset(synthetic_voc, tmp_path / "b", margin=0.1, pad_square=True)
    b = np.asarray(Image.open(tmp_path / "b" / "thing" / "img_0.png"))
    assert b.shape == (48, 48, 3)                      # letterboxed: rows 12..36 hold the crop
    assert np.array_equal(b[12:36], a) and (b[:12] == b[0, 0]).all() and (b[36:] == b[0, 0]).all()
    crop_dataset(synthetic_voc, tmp_path / "c", margin=0.1, pad_square=True, size=32)
    assert Image.open(tmp_path / "c" / "thing" / "img_0.png").size == (32, 32)


def test_crop_coco128_yolo_reports_missing_by_name(data_dir, tmp_path):
    coco = data_dir / "coco128"
    expected = 0
    for lab in (coco / "labels").rglob("*.txt"):
        if (coco / "images" / lab.parent.name / f"{lab.stem}.jpg").exists():
            expected += sum(1 for line in lab.read_text().splitlines() if line.strip())
    with pytest.raises(UserError, match="names="):
        crop_dataset(coco, tmp_path / "x")
    report = crop_dataset(coco, tmp_path / "out", names=coco / "object_detection.yaml", size=16)
    assert report["format"] == "yolo" and report["total"] == expected
    assert sorted(m["name"].rsplit("/", 1)[-1] for m in report["missing_images"]) == ["000000000656.txt",
                                                                                     "000000000659.txt"]
    assert sorted(n.rsplit("/", 1)[-1] for n in report["unlabeled_images"]) == ["000000000250.jpg",
                                                                               "000000000508.jpg"]
    assert "train_class" in report["crops"] and not (tmp_path / "out" / "train").exists()  # not a split folder
    assert report["crops"]["person"] > 500 and "traffic_light" in report["crops"]
    assert scan_folder(tmp_path / "out").layout == "flat"


def test_crop_coco_json(tmp_path):
    src = tmp_path / "coco"
    (src / "images").mkdir(parents=True)
    _coord_image().save(src / "images" / "a.png")
    doc = {"images": [{"id": 1, "file_name": "a.png"}, {"id": 2, "file_name": "gone.png"}],
           "categories": [{"id": 3, "name": "cat"}, {"id": 4, "name": "dog"}],
           "annotations": [{"image_id": 1, "category_id": 3, "bbox": [10, 20, 30, 10], "iscrowd": 0},
                           {"image_id": 1, "category_id": 4, "bbox": [50, 5, 20, 20]},
                           {"image_id": 1, "category_id": 4, "bbox": [0, 0, 50, 50], "iscrowd": 1},
                           {"image_id": 2, "category_id": 3, "bbox": [0, 0, 5, 5]}]}
    (src / "instances.json").write_text(json.dumps(doc))
    report = crop_dataset(src, tmp_path / "out")
    assert report["format"] == "coco" and report["crops"] == {"cat": 1, "dog": 1}
    cat = np.asarray(Image.open(tmp_path / "out" / "cat" / "a_0.png"))
    assert cat.shape == (10, 30, 3) and tuple(cat[0, 0]) == (10, 20, 77)
    assert report["skipped_counts"] == {"crowd": 1}
    assert [m["name"] for m in report["missing_images"]] == ["gone.png"]


def test_faces_on_a_real_photo(tmp_path, capsys):
    pytest.importorskip("cv2")
    from matplotlib import cbook

    photo = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False))
    src = tmp_path / "photos"
    (src / "hopper").mkdir(parents=True)
    os.symlink(photo, src / "hopper" / "grace_hopper.jpg")
    Image.new("RGB", (120, 90), (128, 128, 128)).save(src / "blank.png")
    assert cmd_faces([str(src), str(tmp_path / "out"), "size=64", "margin=0.1"]) == 0
    report = json.loads((tmp_path / "out" / "faces_report.json").read_text())
    assert report["crops"] == {"hopper": 1} and report["no_face"] == ["blank.png"]
    crop = Image.open(tmp_path / "out" / "hopper" / "grace_hopper_0.png")
    assert crop.size == (64, 64)
    row = (tmp_path / "out" / "faces.csv").read_text().splitlines()[1].split(",")
    x0, y0, x1, y1 = map(float, row[4:8])
    assert x0 < 265 < x1 and y0 < 215 < y1 and 120 < x1 - x0 < 300     # the face, not the whole portrait
    assert "1 faces from 2 images" in capsys.readouterr().out


def test_faces_mtcnn_absent_names_the_install(tmp_path, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "facenet_pytorch", None)     # as if not installed
    (tmp_path / "p").mkdir()
    Image.new("RGB", (8, 8)).save(tmp_path / "p" / "x.png")
    with pytest.raises(UserError, match="pip install --no-deps facenet-pytorch"):
        cmd_faces([str(tmp_path / "p"), str(tmp_path / "out"), "detector=mtcnn"])
    assert not (tmp_path / "out").exists()


@pytest.fixture
def unbalanced(tmp_path):
    root = tmp_path / "src"
    for cls, n in (("a", 5), ("b", 2), ("c", 1)):
        (root / cls).mkdir(parents=True)
        for i in range(n):
            Image.new("L", (4, 4), i * 10).save(root / cls / f"{cls}{i}.png")
    return root


def test_balance_cap_and_oversample(unbalanced, tmp_path, capsys):
    r1 = balance_folder(unbalanced, tmp_path / "cap1", max_per_class=2, seed=3)
    r2 = balance_folder(unbalanced, tmp_path / "cap2", max_per_class=2, seed=3)
    assert r1["before"] == {"a": 5, "b": 2, "c": 1} and r1["after"] == {"a": 2, "b": 2, "c": 1}
    assert sorted(p.name for p in (tmp_path / "cap1" / "a").iterdir()) == \
        sorted(p.name for p in (tmp_path / "cap2" / "a").iterdir())          # seeded choice
    assert cmd_balance([str(unbalanced), str(tmp_path / "over"), "mode=oversample"]) == 0
    assert _files_per_class(tmp_path / "over") == {"a": 5, "b": 5, "c": 5}
    names = sorted(p.name for p in (tmp_path / "over" / "c").iterdir())
    assert names == ["c0.png", "c0_dup1.png", "c0_dup2.png", "c0_dup3.png", "c0_dup4.png"]
    assert (tmp_path / "over" / "c" / "c0_dup1.png").stat().st_ino == (unbalanced / "c" / "c0.png").stat().st_ino
    b = sorted(p.name for p in (tmp_path / "over" / "b").iterdir())
    assert b[:2] == ["b0.png", "b0_dup1.png"] and len(b) == 5
    out = capsys.readouterr().out
    assert "before" in out and "after" in out
    with pytest.raises(UserError, match="max_per_class"):
        balance_folder(unbalanced, tmp_path / "bad", mode="cap")


def test_cli_options_and_out_folder(synthetic_voc, tmp_path):
    with pytest.raises(ConfigError, match="(?s)did you mean 'margin'.*valid options: format, margin"):
        cmd_crop([str(synthetic_voc), str(tmp_path / "o"), "marg=0.1"])
    with pytest.raises(ConfigError, match="pad_square"):
        cmd_crop([str(synthetic_voc), str(tmp_path / "o"), "pad_square=maybe"])
    with pytest.raises(UserError, match="usage: visionlab data crop"):
        cmd_crop([str(synthetic_voc)])
    assert cmd_crop([str(synthetic_voc), str(tmp_path / "o"), "format=voc", "size=8"]) == 0
    with pytest.raises(UserError, match="not empty"):
        cmd_crop([str(synthetic_voc), str(tmp_path / "o")])
    with pytest.raises(UserError, match="inside the source"):
        cmd_crop([str(synthetic_voc), str(synthetic_voc / "crops")])


def test_neu_det_source_splits_crops_by_photo(data_dir, tmp_path):
    """data.name=neu_det: one sample per box, every crop of a photo in the same split, stratified 8:1:1 by photo."""
    import csv

    from visionlab import config as C
    from visionlab.data import build_splits

    neu = data_dir / "neu_det"
    xmls = [x for c in ("crazing", "inclusion", "scratches")
            for x in sorted((neu / "annotations").glob(f"{c}_*.xml"))[:20]]
    src = tmp_path / "neu"
    (src / "images").mkdir(parents=True)
    (src / "annotations").mkdir()
    for x in xmls:
        os.symlink(x, src / "annotations" / x.name)
        os.symlink(neu / "images" / f"{x.stem}.jpg", src / "images" / f"{x.stem}.jpg")
    cfg = C.load_config(None, ["data.name=neu_det", f"data.root={src}", f"data.cache_dir={tmp_path / 'cache'}",
                               "data.image_size=32", "data.pad_square=true"])
    s = build_splits(cfg.data)
    assert s.classes == sorted(_voc_counts(xmls))          # box labels (a few inclusion photos also hold patches)
    assert len(s.train) + len(s.val) + len(s.test) == sum(_voc_counts(xmls).values())
    (built,) = (tmp_path / "cache").glob("neu_det_crops-*")
    with (built / "split.csv").open() as f:
        rows = list(csv.DictReader(f))
    split_of_photo = {}
    for r in rows:
        assert split_of_photo.setdefault(r["photo"], r["split"]) == r["split"]     # no photo straddles splits
    per_split = Counter(split_of_photo.values())
    assert per_split == {"train": 48, "val": 6, "test": 6}                      # 20 photos per class, 8:1:1
    assert build_splits(cfg.data).train.labels.tolist() == s.train.labels.tolist()   # second time: the cache


# ---------------------------------------------------------------- `visionlab data check` on a segmentation folder

def _camvid_folder(data_dir: Path, root: Path) -> dict:
    """A small images/ + masks/ folder from real CamVid pairs with every kind of defect `data check` reports."""
    import shutil

    src = data_dir / "camvid"
    names = sorted(p.stem for p in (src / "images" / "train").glob("*.jpg"))[:4]
    for split in ("train", "test"):
        (root / "images" / split).mkdir(parents=True)
        (root / "masks" / split).mkdir(parents=True)
    for n in names[:3]:
        shutil.copy(src / "images" / "train" / f"{n}.jpg", root / "images" / "train")
        shutil.copy(src / "masks" / "train" / f"{n}.png", root / "masks" / "train")
    broken, small, lonely_img, lonely_mask = names[3], "small", "no_mask", "no_image"
    shutil.copy(src / "images" / "train" / f"{broken}.jpg", root / "images" / "test")
    data = (src / "masks" / "train" / f"{broken}.png").read_bytes()
    (root / "masks" / "test" / f"{broken}.png").write_bytes(data[:len(data) // 3])      # truncated PNG
    shutil.copy(src / "images" / "train" / f"{names[0]}.jpg", root / "images" / "test" / f"{small}.jpg")
    Image.open(src / "masks" / "train" / f"{names[0]}.png").resize((240, 180), Image.NEAREST).save(
        root / "masks" / "test" / f"{small}.png")                                      # half-size mask
    shutil.copy(src / "images" / "train" / f"{names[1]}.jpg", root / "images" / "test" / f"{lonely_img}.jpg")
    shutil.copy(src / "masks" / "train" / f"{names[1]}.png", root / "masks" / "test" / f"{lonely_mask}.png")
    good = [np.asarray(Image.open(src / "masks" / "train" / f"{n}.png")) for n in names[:3]]
    small_mask = np.asarray(Image.open(root / "masks" / "test" / f"{small}.png"))
    return {"names": names, "hist": sum(np.bincount(m.ravel(), minlength=256) for m in good + [small_mask])}


def test_data_check_understands_a_mask_folder(data_dir, tmp_path, capsys):
    from visionlab.cli.main import cmd_data
    from visionlab.data.check import check_mask_folder, format_mask_check

    root = tmp_path / "seg"
    made = _camvid_folder(data_dir, root)
    r = check_mask_folder(root)
    assert r["kind"] == "segmentation" and r["layout"] == "split" and r["pairs"] == 5
    assert r["usable_pairs"] == {"train": 3, "test": 1}               # the truncated mask's pair is not usable
    assert r["images_without_masks"] == ["images/test/no_mask.jpg"]
    assert r["masks_without_images"] == ["masks/test/no_image.png"]
    assert [m["file"] for m in r["unreadable_masks"]] == [f"masks/test/{made['names'][3]}.png"]
    assert "truncated" in r["unreadable_masks"][0]["reason"] and r["unreadable_images"] == []
    assert r["size_mismatches"] == [{"image": "images/test/small.jpg", "mask": "masks/test/small.png",
                                     "image_size": "480x360", "mask_size": "240x180"}]
    seen = {v["value"]: v["pixels"] for v in r["values"]}             # pixel counts per value, read independently
    assert seen == {v: int(n) for v, n in enumerate(made["hist"]) if n}
    assert r["out_of_range"] == []                                    # no classes file: classes are inferred

    # a classes file with fewer classes: the other values are out of range (they would train as 255 = ignore)
    (root / "classes.txt").write_text("Sky\nBuilding\nPole\nRoad\n")
    r = check_mask_folder(root)
    assert {v["value"]: v["class"] for v in r["values"]}[3] == "Road"
    assert {b["value"] for b in r["out_of_range"]} == {v for v in seen if v > 3}
    text = format_mask_check(r)
    assert "images without masks: 1" in text and "unreadable masks: 1" in text and "size mismatches: 1" in text
    assert "values outside the classes (become 255 = ignore): " in text

    assert cmd_data(["check", str(root)]) == 0                         # the CLI picks the segmentation check
    out = capsys.readouterr().out
    assert "segmentation dataset" in out and "5 image/mask pairs found" in out and "Road" in out


def test_data_check_names_camvid_classes(data_dir, tmp_path):
    from visionlab.data.check import check_mask_folder

    root = tmp_path / "camvid"
    _camvid_folder(data_dir, root)
    r = check_mask_folder(root)
    classes = {v["value"]: v["class"] for v in r["values"]}
    assert classes[0] == "Sky" and classes.get(11, "void") == "void" and r["out_of_range"] == []
    assert "CamVid" in r["classes_source"]
