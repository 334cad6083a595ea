"""Detection views: the report sections from a synthetic summary and errors.npz, the gallery's box matching on a
hand-made image, draw_boxes' pixels and what `visionlab predict` writes."""
import json

import numpy as np
import pytest
from PIL import Image

from visionlab.utils import write_json
from visionlab.views import detection as det
from visionlab.views.report import load_run_files, write_report
from visionlab.views.tasks import view_for

CLASSES = ["scratches", "inclusion", "patches"]
BLACK = (0, 0, 0)


def _padded(rows: list, width: int, total: int) -> np.ndarray:
    """errors.npz rows padded with class -1 to ``total`` rows."""
    out = np.full((total, width), -1, np.float32)
    out[:len(rows)] = np.asarray(rows, np.float32).reshape(-1, width)
    return out


# One image, worked out by hand: (x0, y0, x1, y1, class) and (x0, y0, x1, y1, class, score).
TRUE = [[0, 0, 10, 10, 0],      # A: found by d1 (d2 is its duplicate)
        [20, 20, 30, 30, 0],    # B: found by d4 (IoU 100/150)
        [40, 40, 50, 50, 1],    # C: missed (d3 covers it with the wrong class)
        [0, 40, 10, 50, 1],     # D: found by d7 (higher score) although d8 fits it better
        [80, 0, 90, 10, 2]]     # E: missed (d6 has IoU 0.4)
PRED = [[0, 0, 10, 10, 0, 0.90],     # d1 TP
        [1, 0, 10, 10, 0, 0.80],     # d2 false: A already taken
        [40, 40, 50, 50, 0, 0.70],   # d3 false: wrong class
        [20, 20, 30, 35, 0, 0.60],   # d4 TP
        [60, 60, 70, 70, 1, 0.50],   # d5 false: nothing there
        [80, 0, 90, 25, 2, 0.95],    # d6 false: IoU 0.4 < 0.5
        [0, 42, 10, 50, 1, 0.40],    # d7 TP
        [0, 40, 10, 50, 1, 0.30]]    # d8 false: D already taken
CORRECT = [True, False, False, True, False, False, True, False]
FOUND = [True, True, False, True, False]


def test_match_boxes_hand_made_case():
    true, pred, found, correct = det.match_boxes(_padded(TRUE, 5, 7), _padded(PRED, 6, 11))
    assert len(true) == 5 and len(pred) == 8                    # padding rows dropped
    assert found.tolist() == FOUND
    assert correct.tolist() == CORRECT
    _, counts = det.gallery_panel(np.zeros((100, 100, 3), np.uint8), _padded(TRUE, 5, 7), _padded(PRED, 6, 11),
                                  CLASSES)
    assert counts == {"tp": 3, "missed": 2, "false": 5}


def test_match_boxes_empty_sides():
    _, _, found, correct = det.match_boxes(_padded([], 5, 3), _padded(PRED[:2], 6, 2))
    assert found.tolist() == [] and correct.tolist() == [False, False]
    _, _, found, correct = det.match_boxes(_padded(TRUE[:2], 5, 2), np.zeros((0, 6), np.float32))
    assert found.tolist() == [False, False] and correct.tolist() == []


def test_gallery_panel_colours():
    image = np.zeros((100, 100, 1), np.uint8)                    # grayscale in, RGB out
    panel, _ = det.gallery_panel(image, _padded(TRUE, 5, 7), _padded(PRED, 6, 11), CLASSES)
    assert panel.shape == (100, 100, 3)
    assert tuple(panel[5, 0]) == det.GREEN                       # A found: green outline
    assert tuple(panel[25, 25]) == BLACK                         # inside B: untouched
    assert tuple(panel[49, 40]) == det.RED                       # C missed: red dashes on top of d3's orange
    assert tuple(panel[49, 47]) == det.ORANGE                    # ... d3 shows in the gap between two dashes
    assert tuple(panel[69, 65]) == det.ORANGE                    # d5 false: orange
    assert tuple(panel[0, 80]) == det.RED                        # E missed


def test_draw_boxes_pixels():
    image = np.zeros((60, 80), np.uint8)                         # grayscale HW
    red = (255, 0, 0)
    out = det.draw_boxes(image, [[10, 20, 40, 50]], colors=red, width=2)
    assert out.shape == (60, 80, 3) and out.dtype == np.uint8
    for y, x in ((20, 10), (35, 11), (35, 39), (49, 25), (20, 39)):        # on the outline (2 px inside the box)
        assert tuple(out[y, x]) == red, (y, x)
    for y, x in ((35, 12), (35, 25), (35, 40), (50, 25), (19, 25), (35, 9)):   # inside and outside it
        assert tuple(out[y, x]) == BLACK, (y, x)
    assert not out[:19].any() and not out[51:].any()             # no text without labels

    # per-class colours, a caption bar above the box, a box clipped at the image border
    out = det.draw_boxes(image, [[10, 20, 40, 50], [-5, -5, 10, 10]], labels=[1, 2], classes=CLASSES,
                         scores=[0.9, 0.5], width=1, text=[True, False])
    colours = det.class_colors()
    assert tuple(out[35, 10]) == tuple(colours[1]) and tuple(out[35, 39]) == tuple(colours[1])
    assert tuple(out[19, 10]) == tuple(colours[1])               # the caption bar's padding, just above the box
    assert tuple(out[9, 5]) == tuple(colours[2]) and tuple(out[5, 9]) == tuple(colours[2])

    out = det.draw_boxes(np.zeros((60, 80, 3), np.uint8), [[10, 20, 40, 50]], colors=red, width=1, dashed=True)
    assert tuple(out[20, 11]) == red and tuple(out[20, 14]) == BLACK          # dashes of 3 px, gaps of 3 px
    assert det.draw_boxes(image, np.zeros((0, 4))).shape == (60, 80, 3)


def _summary() -> dict:
    """summary.json as the pipeline writes it (the matrix as "box_confusion", counts and thresholds under
    "evaluation")."""
    curve = np.linspace(1.0, 0.5, 101)
    curve[80:] = -1                                              # recall never reached
    evaluation = {"n_images": 5, "n_gt": 21, "n_detections": 180, "eval_score_threshold": 0.001,
                  "display_score_threshold": 0.25, "max_detections": 100}
    s = {
        "task": "detection", "split": "test", "classes": CLASSES, "dataset": "toy_det", "model": "tiny_det",
        "test/map": 0.4512, "test/map50": 0.7, "test/map75": 0.45, "map_small": None, "test/map_medium": 0.3,
        "test/map_large": 0.5, "test/mar_100": 0.55, "test/loss": 1.25,
        "per_class_ap": [{"class": "scratches", "ap": 0.45, "ap50": 0.7, "n_gt": 12},
                         {"class": "inclusion", "ap": 0.452, "ap50": 0.7, "n_gt": 9},
                         {"class": "patches", "ap": None, "ap50": None, "n_gt": 0}],
        "pr_curves": [{"class": c, "recall": np.linspace(0, 1, 101).tolist(),
                       "precision": None if c == "patches" else curve.tolist()} for c in CLASSES],
        "confusion_labels": CLASSES + ["background"],
    }
    matrix = [[8, 1, 0, 3], [0, 6, 0, 3], [0, 0, 0, 0], [4, 2, 1, 0]]
    return {**s, "evaluation": evaluation, "box_confusion": matrix}


def _errors(path, k: int = 3) -> None:
    true = np.stack([_padded(TRUE, 5, 7)] * k)
    pred = np.stack([_padded(PRED, 6, 11)] * k)
    pred[1, 5:] = -1                                             # image 1: only d1..d5 (3 false, not 5)
    np.savez(path, images=np.zeros((k, 100, 100, 3), np.uint8), true=true, pred=pred,
             conf=np.array([0.5, 0.2, 0.6], np.float32), index=np.arange(k, dtype=np.int64))


def test_sections_write_their_figures_and_tables(tmp_path):
    write_json(tmp_path / "summary.json", _summary())
    _errors(tmp_path / "errors.npz")
    info = load_run_files(tmp_path)
    out = dict(view_for("detection").sections(info, CLASSES))
    assert list(out) == ["Detection protocol", "Per-class AP", "Precision-recall curves",
                         "Detection confusion matrix", "Worst test images"]
    protocol = out["Detection protocol"][0][1]
    for part in ("faster-coco-eval", "101-point", "at most 100 detections", "score >= 0.001", "5 images",
                 "21 ground-truth boxes", "180 detections", "score >= 0.25"):
        assert part in protocol, part
    table = next(b for b in out["Per-class AP"] if b[0] == "table")
    assert table[1] == ["class", "AP", "AP50", "#GT"]
    assert table[2] == [["scratches", "45.00%", "70.00%", "12"], ["inclusion", "45.20%", "70.00%", "9"],
                        ["patches", "\u2013", "\u2013", "0"]]
    assert "2 classes" in out["Precision-recall curves"][0][1] and "patches" in out["Precision-recall curves"][0][1]
    assert "background" in out["Detection confusion matrix"][0][1]
    gallery = out["Worst test images"][0][1]
    assert "The 3 test images" in gallery and "8 found, 7 missed, 13 false" in gallery
    for name in ("ap_per_class.png", "pr_curves.png", "det_confusion.png", "det_gallery.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG", name


def test_sections_without_errors_or_curves(tmp_path):
    s = _summary()
    del s["pr_curves"], s["box_confusion"]
    write_json(tmp_path / "summary.json", s)
    out = dict(det.sections(load_run_files(tmp_path), CLASSES))
    assert list(out) == ["Detection protocol", "Per-class AP"]
    assert det.sections({"summary": {}, "run_dir": tmp_path, "errors": None}, CLASSES) == []


def test_report_of_a_detection_run(tmp_path):
    write_json(tmp_path / "summary.json", _summary())
    _errors(tmp_path / "errors.npz")
    write_report(tmp_path)
    md = (tmp_path / "report.md").read_text()
    for row in ("| AP@[.5:.95] | 45.12% |", "| AP50 | 70.00% |", "| AR@100 | 55.00% |", "| AP medium | 30.00% |",
                "| loss | 1.2500 |", "| scratches | 45.00% | 70.00% | 12 |", "![worst test images with their boxes]"):
        assert row in md, row
    assert "## Confusion matrix" not in md and not (tmp_path / "confusion_matrix.png").exists()   # only the box one
    assert (tmp_path / "det_gallery.png").is_file() and (tmp_path / "report.html").is_file()


def test_show_predictions(tmp_path):
    src = tmp_path / "in" / "steel_01.png"
    src.parent.mkdir()
    Image.fromarray(np.zeros((40, 60, 3), np.uint8)).save(src)
    many = 12
    results = [{"boxes": np.array([[5, 20, 25, 35], [30, 5, 50, 30]], np.float32),
                "scores": np.array([0.55, 0.91], np.float32), "labels": np.array([1, 0]),
                "classes": ["inclusion", "scratches"]},                 # run.predict: each box's class name
               {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
                "labels": np.zeros(0, np.int64), "classes": []},
               {"boxes": np.tile(np.array([[1, 1, 9, 9]], np.float32), (many, 1)),
                "scores": np.linspace(0.9, 0.3, many), "labels": np.zeros(many, np.int64),
                "classes": ["scratches"] * many}]
    images = [str(src), str(src.with_name("empty.png")), str(src.with_name("crowded.png"))]
    for name in images[1:]:
        Image.fromarray(np.zeros((40, 60), np.uint8)).save(name)
    out_dir = tmp_path / "out"
    lines = det.show_predictions(results, images, out_dir)
    assert lines[0] == f"{src}\t2 boxes: scratches 0.91, inclusion 0.55 -> {out_dir / 'steel_01_boxes.png'}"
    assert lines[1] == f"{images[1]}\t0 boxes -> {out_dir / 'empty_boxes.png'}"
    assert lines[2].count("scratches") == det.LIST_MAX_BOXES and "(+2)" in lines[2]
    drawn = np.asarray(Image.open(out_dir / "steel_01_boxes.png"))
    assert drawn.shape == (40, 60, 3)                                        # the original size
    assert tuple(drawn[30, 5]) == tuple(det.class_colors()[1])                 # inclusion box, left edge
    assert tuple(drawn[25, 15]) == BLACK
    records = json.loads((out_dir / "predictions.json").read_text())
    assert [r["image"] for r in records] == images
    assert records[0]["detections"] == [{"class": "scratches", "score": pytest.approx(0.91), "box": [30, 5, 50, 30]},
                                        {"class": "inclusion", "score": pytest.approx(0.55), "box": [5, 20, 25, 35]}]
    assert records[1]["detections"] == [] and len(records[2]["detections"]) == many
