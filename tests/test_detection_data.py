"""Box (object-detection) datasets as Splits, on the real NEU-DET and COCO128 files and on tiny VOC / YOLO / COCO
folders written here: letterboxed canvases, padded box arrays, seeded splits, the label checks and their report."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionlab.config import DataConfig
from visionlab.data import build_splits, detection
from visionlab.data.base import ImageSet
from visionlab.data.check import write_data_report
from visionlab.data.decode import LETTERBOX_FILL, letterbox_scale, try_load
from visionlab.data.detection import NEU_DET_CLASSES, assign_splits, box_table
from visionlab.data.loaders import InMemoryLoader, StreamLoader, build_loader
from visionlab.utils import UserError

from conftest import DATA  # noqa: E402 - one definition of where the real data lies

NEU = DATA / "neu_det"
COCO = DATA / "coco128"


@pytest.fixture(scope="module")
def box_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("box_cache"))


def _cfg(name, cache, **kw) -> DataConfig:
    return DataConfig(name=name, cache_dir=cache, **kw)


@pytest.fixture(scope="module")
def neu_small(box_cache):
    return build_splits(_cfg("neu_det_boxes", box_cache, root=str(NEU), limit=12))


@pytest.fixture(scope="module")
def coco160(box_cache):
    return build_splits(_cfg("coco128", box_cache, root=str(COCO), image_size=160))


def _real(boxes: np.ndarray) -> np.ndarray:
    return boxes[boxes[:, 4] >= 0]


# ---------------------------------------------------------------- NEU-DET

def test_neu_det_table_and_seeded_8_1_1_split(box_cache):
    cfg = _cfg("neu_det_boxes", box_cache, root=str(NEU))
    table = box_table(cfg, "neu_det_boxes", NEU, "voc", classes=NEU_DET_CLASSES)
    assert len(table.names) == 1800 and table.skipped == []
    assert sum(len(b) for b in table.boxes) == 4189 - 3            # three exact duplicate boxes dropped
    assert [(r["issue"], r["action"]) for r in table.issues] == [("duplicate box", "dropped")] * 3
    assert {tuple(s) for s in table.sizes} == {(200, 200)}
    labels = table.labels()
    assert set(labels.tolist()) == set(range(6))                     # no negatives in NEU-DET
    split, skipped = assign_splits(table, labels, cfg, {}, NEU)
    assert skipped == [] and [int((split == s).sum()) for s in ("train", "val", "test")] == [1440, 180, 180]
    for c in range(6):                                               # stratified by the dominant class
        n = (labels == c).sum()
        assert abs((split[labels == c] == "train").sum() - 0.8 * n) <= 1
    again, _ = assign_splits(table, labels, cfg, {}, NEU)
    assert np.array_equal(split, again)                              # reproducible from data.split_seed
    other, _ = assign_splits(table, labels, _cfg("neu_det_boxes", box_cache, split_seed=1), {}, NEU)
    assert not np.array_equal(split, other)


def test_neu_det_limit_shapes_padding_and_boxes(neu_small, box_cache):
    s = neu_small
    assert s.classes == NEU_DET_CLASSES and s.info().target == "boxes" and s.channels == 3
    assert s.image_size == (200, 200)
    assert s.preprocess == {"image_size": 0, "letterbox": 200, "pad_square": False, "grayscale": False}
    names = [set(p.names) for p in (s.train, s.val, s.test)]
    assert not (names[0] & names[1] or names[0] & names[2] or names[1] & names[2])
    for part in (s.train, s.val, s.test):
        n = len(part)
        assert 12 <= n <= 14 and part.images.shape == (n, 200, 200, 3) and part.images.dtype == np.uint8
        assert part.boxes.shape == (n, 9, 5) and part.boxes.dtype == np.float32    # M = 9: NEU-DET's most boxes
        for b, lab in zip(part.boxes, part.labels):
            real, pad = b[b[:, 4] >= 0], b[b[:, 4] < 0]
            assert len(real) >= 1 and (pad == -1).all() and (b[:len(real), 4] >= 0).all()   # padding at the end
            assert lab == np.bincount(real[:, 4].astype(int), minlength=6).argmax()
            assert (real[:, 2] > real[:, 0]).all() and (real[:, 3] > real[:, 1]).all() and real[:, :4].max() <= 200
    # the 8:1:1 plan of the whole dataset, cut by data.limit: every kept image sits in its planned split
    cfg = _cfg("neu_det_boxes", box_cache, root=str(NEU))
    table = box_table(cfg, "neu_det_boxes", NEU, "voc", classes=NEU_DET_CLASSES)
    plan = dict(zip(table.names, assign_splits(table, table.labels(), cfg, {}, NEU)[0]))
    assert all(plan[n] == split for split, part in zip(("train", "val", "test"), (s.train, s.val, s.test))
               for n in part.names)
    # native size: the stored boxes are the XML's own numbers
    name = "images/crazing_1.jpg"
    if name in s.train.names:
        assert np.allclose(_real(s.train.boxes[s.train.names.index(name)]), [[2, 2, 193, 194, 0]])
    k = 0
    xml = (NEU / "annotations" / Path(s.train.names[k]).with_suffix(".xml").name).read_text()
    assert f"<xmin>{int(_real(s.train.boxes[k])[0, 0])}</xmin>" in xml
    assert np.array_equal(s.train.images[k], np.asarray(Image.open(NEU / s.train.names[k]).convert("RGB")))


def test_second_load_comes_from_the_cache(neu_small, box_cache, monkeypatch):
    def no_decoding(*a, **k):
        raise AssertionError("decoded again")
    monkeypatch.setattr(detection, "decode_files", no_decoding)
    monkeypatch.setattr(detection, "probe_files", no_decoding)
    again = build_splits(_cfg("neu_det_boxes", box_cache, root=str(NEU), limit=12))
    assert again.train.names == neu_small.train.names and np.array_equal(again.test.boxes, neu_small.test.boxes)
    assert np.array_equal(again.val.images, neu_small.val.images)


def test_loaders_yield_images_and_padded_boxes(neu_small):
    batch = next(iter(build_loader(neu_small.train, 4, True, 0, neu_small.preprocess)))
    images, boxes = batch
    assert images.dtype == torch.uint8 and images.shape == (4, 200, 200, 3)
    assert boxes.dtype == torch.float32 and boxes.shape == (4, 9, 5)
    loader = InMemoryLoader(neu_small.train, 4, False)
    images, boxes = next(iter(loader))
    assert torch.equal(boxes, torch.from_numpy(neu_small.train.boxes[:4]))
    stream = StreamLoader([(neu_small.train, 3)], steps=2, seed=0)
    images, boxes = next(iter(stream))
    assert images.shape == (3, 200, 200, 3) and boxes.shape == (3, 9, 5)


def test_subset_and_concat_carry_boxes(neu_small):
    a = neu_small.train.subset([1, 0])
    assert np.array_equal(a.boxes, neu_small.train.boxes[[1, 0]])
    short = ImageSet(labels=np.array([6]), images=neu_small.val.images[:1], boxes=np.full((1, 2, 5), -1, np.float32))
    both = ImageSet.concat([short, a])
    assert both.boxes.shape == (3, 9, 5) and (both.boxes[0] == -1).all() and np.array_equal(both.boxes[1:], a.boxes)


def test_box_datasets_refuse_lazy_loading_and_mixed_native_sizes(box_cache):
    with pytest.raises(UserError, match="data.in_memory=false"):
        build_splits(_cfg("neu_det_boxes", box_cache, root=str(NEU), in_memory="false"))
    with pytest.raises(UserError, match=r"data.image_size=N"):
        build_splits(_cfg("coco128", box_cache, root=str(COCO)))


# ---------------------------------------------------------------- COCO128

def test_coco128_splits_quirks_and_box_count(coco160):
    s = coco160
    assert len(s.classes) == 80 and s.classes[58] == "potted plant" and s.image_size == (160, 160)
    assert len(s.train) + len(s.val) == 128 and len(s.test) == 128 and len(s.val) > 0
    assert s.train.boxes.shape[1] == s.test.boxes.shape[1] == 42        # COCO128's most boxes in one image
    # two label files without an image: skipped; two images without a label file: kept as negatives
    assert sorted(Path(k["file"]).name for k in s.skipped) == ["000000000656.txt", "000000000659.txt"]
    assert all(k["reason"] == "label file without an image" for k in s.skipped)
    assert sorted((r["file"], r["issue"], r["action"]) for r in s.label_issues) == [
        ("images/train2017/000000000250.jpg", "no label file", "kept as a negative"),
        ("images/train2017/000000000508.jpg", "no label file", "kept as a negative")]
    names = s.train.names + s.val.names
    labels = np.concatenate([s.train.labels, s.val.labels])
    boxes = np.concatenate([s.train.boxes, s.val.boxes])
    for stem in ("000000000250", "000000000508"):
        k = names.index(f"images/train2017/{stem}.jpg")
        assert labels[k] == 80 and (boxes[k] == -1).all()           # negatives: the extra stratum, all padding
    with_image = [f for f in (COCO / "labels" / "train2017").glob("*.txt")
                  if (COCO / "images" / "train2017" / f"{f.stem}.jpg").is_file()]
    lines = sum(len([x for x in f.read_text().splitlines() if x.strip()]) for f in with_image)
    assert sum(len(_real(b)) for b in boxes) == lines == 929
    assert sum(len(_real(b)) for b in s.test.boxes) == 898


def test_coco128_letterbox_maps_a_known_box(coco160):
    s = coco160
    k = s.test.names.index("images/val2017/000000000139.jpg")      # 320x213; first label line:
    line = (COCO / "labels" / "val2017" / "000000000139.txt").read_text().splitlines()[0]
    assert line == "58 0.389578 0.416103 0.0385937 0.163146"
    # scale 160/320 = 0.5: x0 = (0.389578 - 0.0385937/2) * 320 * 0.5, y0 = (0.416103 - 0.163146/2) * 213 * 0.5, ...
    assert letterbox_scale(213, 320, 160) == 0.5
    assert np.allclose(s.test.boxes[k, 0], [59.244984, 35.627445, 65.419976, 53.002494, 58], atol=1e-4)
    img = s.test.images[k]                                             # content 160x106 at the top-left, grey below
    assert (img[107:] == LETTERBOX_FILL).all() and not (img[:100, :] == LETTERBOX_FILL).all()
    # a new image through the run's preprocess gives the stored canvas
    arr, reason = try_load(COCO / s.test.names[k], s.preprocess)
    assert reason is None and np.array_equal(arr, img)
    arr, _ = try_load(COCO / s.train.names[0], s.preprocess)
    assert np.array_equal(arr, s.train.images[0])


# ---------------------------------------------------------------- the label checks on tiny folders

def _image(path: Path, w: int = 100, h: int = 80) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(path.name))
    Image.fromarray(rng.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)


def _voc(path: Path, image: str, objects: list) -> None:
    objs = "".join(f"<object><name>{n}</name><bndbox><xmin>{b[0]}</xmin><ymin>{b[1]}</ymin><xmax>{b[2]}</xmax>"
                   f"<ymax>{b[3]}</ymax></bndbox></object>" for n, b in objects)
    path.write_text(f"<annotation><filename>{image}</filename>{objs}</annotation>")


@pytest.fixture
def voc_folder(tmp_path) -> Path:
    root = tmp_path / "voc"
    for name in ("a", "b", "c", "d", "e", "f"):
        _image(root / f"{name}.jpg")
    _voc(root / "a.xml", "a.jpg", [
        ("cat", (10, 10, 50, 50)),          # kept
        ("cat", (10.04, 10, 50, 50)),       # duplicate at 0.1 px
        ("dog", (10, 10, 50, 50)),          # another class: kept
        ("cat", (-5, 10, 40, 90)),          # partly outside: clipped to (0, 10, 40, 80)
        ("cat", (20, 20, 20, 40)),          # zero area
        ("dog", (50, 10, 30, 40)),          # inverted
        ("cat", (120, 10, 150, 40)),        # wholly outside
        ("unicorn", (5, 5, 15, 15)),        # not in names.txt
        ("", (5, 5, 15, 15)),               # no class name
        ("cat", ("abc", 5, 15, 15)),        # unparsable
    ])
    _voc(root / "b.xml", "b.jpg", [])                                # empty label file: a negative
    _voc(root / "d.xml", "d.jpg", [("dog", (1, 1, 30, 30))])
    _voc(root / "e.xml", "e.jpg", [("dog", (2, 2, 40, 40))])
    _voc(root / "f.xml", "f.jpg", [("unicorn", (2, 2, 40, 40))])     # every box dropped: a negative
    _voc(root / "ghost.xml", "ghost.jpg", [("cat", (1, 1, 5, 5))])   # no image: skipped
    (root / "broken.xml").write_text("<annotation><object>")         # not XML: skipped
    _voc(root / "z.xml", "a.jpg", [("dog", (1, 1, 9, 9))])           # a second label file of a.jpg: skipped
    (root / "names.txt").write_text("cat\ndog\n")                    # c.jpg has no label file: a negative
    return root


def _counts(issues) -> dict:
    out = {}
    for r in issues:
        out[(r["issue"], r["action"])] = out.get((r["issue"], r["action"]), 0) + 1
    return out


def test_voc_label_checks_exact_counts(voc_folder, tmp_path):
    cfg = _cfg("box_folder", str(tmp_path / "cache"), root=str(voc_folder), names=str(voc_folder / "names.txt"))
    table = box_table(cfg, "box_folder", voc_folder, "voc", names=str(voc_folder / "names.txt"))
    assert table.classes == ["cat", "dog"]
    assert _counts(table.issues) == {
        ("duplicate box", "dropped"): 1, ("box partly outside the image", "clipped"): 1,
        ("zero-area or inverted box", "dropped"): 2, ("box outside the image", "dropped"): 1,
        ("unknown class", "dropped"): 3, ("unparsable coordinates", "dropped"): 1,
        ("empty label file", "kept as a negative"): 1, ("no valid box left", "kept as a negative"): 1,
        ("no label file", "kept as a negative"): 1}
    a = table.boxes[table.names.index("a.jpg")]
    assert a.tolist() == [[10, 10, 50, 50, 0], [10, 10, 50, 50, 1], [0, 10, 40, 80, 0]]
    clipped = next(r for r in table.issues if r["action"] == "clipped")
    assert clipped == {"file": "a.jpg", "issue": "box partly outside the image", "action": "clipped",
                       "box": [-5, 10, 40, 90]}
    assert sorted(Path(k["file"]).name for k in table.skipped) == ["a.jpg", "broken.xml", "ghost.jpg"]
    assert table.labels().tolist() == [0, 2, 2, 1, 1, 2]             # a b c d e f; 2 = no boxes
    # without names.txt the classes are the labels found, sorted: unicorn is a class then
    other = box_table(cfg, "box_folder", voc_folder, "voc")
    assert other.classes == ["cat", "dog", "unicorn"] and _counts(other.issues)[("unknown class", "dropped")] == 1


def test_box_folder_splits_issues_and_data_report(voc_folder, tmp_path):
    cfg = _cfg("box_folder", str(tmp_path / "cache"), root=str(voc_folder), names=str(voc_folder / "names.txt"),
               image_size=64, split="4:1:1")
    s = build_splits(cfg)
    assert s.image_size == (64, 64) and s.preprocess["letterbox"] == 64
    assert sum(len(p) for p in (s.train, s.val, s.test) if p is not None) == 6       # negatives kept
    assert len(s.label_issues) == 12
    part = next(p for p in (s.train, s.val, s.test) if p is not None and "a.jpg" in p.names)
    a = _real(part.boxes[part.names.index("a.jpg")])                  # 100x80 -> 64x51: boxes x 0.64
    assert np.allclose(a[:, :4], [[6.4, 6.4, 32, 32], [6.4, 6.4, 32, 32], [0, 6.4, 25.6, 51.2]])
    report = write_data_report(s, tmp_path / "run")
    saved = json.loads((tmp_path / "run" / "data_report.json").read_text())
    assert saved["label_issues"][0] == {"issue": "unknown class", "action": "dropped", "count": 3, "files": 2}
    assert sum(r["count"] for r in saved["label_issues"]) == 12 and len(saved["label_issue_rows"]) == 12
    assert sum(c["(no boxes)"] for c in saved["counts"].values()) == 3
    assert sum(saved["totals"].values()) == 6 and sum(saved["box_totals"].values()) == 5
    assert report["boxes"] == saved["boxes"]
    md = (tmp_path / "run" / "data_report.md").read_text()
    assert "## Label issues (12)" in md and "| unknown class | dropped | 3 | 2 |" in md and "(no boxes)" in md


def test_yolo_folder_checks(tmp_path):
    root = tmp_path / "yolo"
    for name in ("a", "b", "c", "d"):
        _image(root / "images" / f"{name}.jpg", 200, 100)
    (root / "labels").mkdir()
    (root / "labels" / "a.txt").write_text("\n".join([
        "0 0.5 0.5 0.2 0.2",             # (80, 40, 120, 60)
        "0 0.5 0.5 0.2 0.2",             # duplicate
        "1 0.95 0.5 0.2 0.2",            # partly outside: x1 = 1.05 * 200 -> clipped to 200
        "5 0.5 0.5 0.1 0.1",             # class id without a name
        "0 0.5 0.5 0.2",                 # three numbers: unparsable
        "x 0.5 0.5 0.2 0.2",             # not a class id: unparsable
        "1 0.5 0.5 0 0.1",               # zero width
        "0 0.9 0.8 0.2000005 0.4",       # x1 = 200.00005: rounding at the edge is clipped without a report
    ]))
    (root / "labels" / "b.txt").write_text("")                       # empty label file: a negative
    (root / "labels" / "c.txt").write_text("1 0.25 0.5 0.5 1.0\n")   # the whole left half, edge to edge: clean
    (root / "names.yaml").write_text("names: [cat, dog]\n")
    cfg = _cfg("box_folder", str(tmp_path / "cache"), root=str(root), names=str(root / "names.yaml"))
    with pytest.raises(UserError, match="data.names=FILE"):
        box_table(cfg, "box_folder", root, "yolo")
    with pytest.raises(UserError, match="names file not found"):
        box_table(cfg, "box_folder", root, "yolo", names=str(root / "missing.yaml"))
    table = box_table(cfg, "box_folder", root, "yolo", names=str(root / "names.yaml"))
    assert _counts(table.issues) == {
        ("duplicate box", "dropped"): 1, ("box partly outside the image", "clipped"): 1,
        ("unknown class", "dropped"): 1, ("unparsable coordinates", "dropped"): 2,
        ("zero-area or inverted box", "dropped"): 1, ("empty label file", "kept as a negative"): 1,
        ("no label file", "kept as a negative"): 1}
    a = table.boxes[table.names.index("images/a.jpg")]
    assert np.allclose(a[:2], [[80, 40, 120, 60, 0], [170, 40, 200, 60, 1]], atol=1e-3) and len(a) == 3
    assert np.allclose(table.boxes[table.names.index("images/c.jpg")], [[0, 0, 100, 100, 1]])
    with pytest.raises(UserError, match="data.box_format"):
        build_splits(_cfg("box_folder", str(tmp_path / "cache"), root=str(root), box_format="xml"))


def test_coco_json_crowd_and_unknown_category(tmp_path):
    root = tmp_path / "coco"
    _image(root / "images" / "x.jpg")
    _image(root / "images" / "y.jpg")
    doc = {"images": [{"id": 1, "file_name": "x.jpg"}, {"id": 2, "file_name": "y.jpg"},
                      {"id": 3, "file_name": "gone.jpg"}],
           "categories": [{"id": 7, "name": "person"}],
           "annotations": [{"image_id": 1, "category_id": 7, "bbox": [10, 10, 20, 30], "iscrowd": 0},
                           {"image_id": 1, "category_id": 7, "bbox": [0, 0, 60, 60], "iscrowd": 1},
                           {"image_id": 1, "category_id": 99, "bbox": [5, 5, 10, 10]},
                           {"image_id": 2, "category_id": 7, "bbox": [50, 50, 10, 10]}]}
    (root / "annotations.json").write_text(json.dumps(doc))
    cfg = _cfg("box_folder", str(tmp_path / "cache"), root=str(root))
    table = box_table(cfg, "box_folder", root, "coco")
    assert table.classes == ["person"] and table.names == ["images/x.jpg", "images/y.jpg"]
    assert _counts(table.issues) == {("crowd box", "dropped"): 1, ("unknown class", "dropped"): 1}
    assert table.boxes[0].tolist() == [[10, 10, 30, 40, 0]]
    assert [Path(k["file"]).name for k in table.skipped] == ["gone.jpg"]


def test_box_classes_keeps_the_chosen_classes_and_counts_the_rest(box_cache):
    """COCO128 as a people detector: only person boxes stay (class 0), the other classes' boxes are reported, and a
    misspelt class fails before anything is decoded, naming the closest class."""
    s = build_splits(_cfg("coco128", box_cache, root=str(COCO), image_size=160, box_classes=["person"]))
    full = build_splits(_cfg("coco128", box_cache, root=str(COCO), image_size=160))
    assert s.classes == ["person"]
    kept = sum(int((getattr(s, n).boxes[..., 4] == 0).sum()) for n in ("train", "val", "test"))
    person = full.classes.index("person")
    assert kept == sum(int((getattr(full, n).boxes[..., 4] == person).sum()) for n in ("train", "val", "test"))
    others = sum(int((getattr(full, n).boxes[..., 4] >= 0).sum()) for n in ("train", "val", "test")) - kept
    assert _counts(s.label_issues).get(("class not in data.box_classes", "dropped")) == others
    with pytest.raises(UserError, match="did you mean 'person'"):
        build_splits(_cfg("coco128", box_cache, root=str(COCO), image_size=160, box_classes=["persn"]))
