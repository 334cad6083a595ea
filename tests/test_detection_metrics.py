"""COCO detection metrics: hand-worked answers, pycocotools' COCOeval on real COCO128 boxes, the confusion matrix,
the 100-detection cap and the two score thresholds."""
from __future__ import annotations

import contextlib
import io

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from visionlab.metrics.detection import DetectionMetrics

torch.set_num_threads(1)

SQUARE = [0.0, 0.0, 100.0, 100.0]


def pred(boxes, scores, labels) -> dict:
    return {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.as_tensor(scores, dtype=torch.float32),
            "labels": torch.as_tensor(labels, dtype=torch.int64)}


def target(boxes, labels, iscrowd=None) -> dict:
    t = {"boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
         "labels": torch.as_tensor(labels, dtype=torch.int64)}
    if iscrowd is not None:
        t["iscrowd"] = torch.tensor(iscrowd, dtype=torch.int64)
    return t


def evaluate(preds, targets, classes=("a", "b"), **kw) -> dict:
    m = DetectionMetrics(list(classes), **kw)
    m.update(preds, targets)
    return m.compute()


# ------------------------------------------------------------------------------------------- known answers by hand
def test_perfect_predictions_score_one():
    targets = [target([SQUARE, [150, 150, 250, 260]], [0, 1]), target([[10, 20, 30, 25]], [1])]
    preds = [pred(t["boxes"], [0.9] * len(t["labels"]), t["labels"]) for t in targets]
    r = evaluate(preds, targets)
    for k in ("map", "map50", "map75", "mar_100"):
        assert r[k] == pytest.approx(1.0), k
    assert r["map_small"] == pytest.approx(1.0) and r["map_large"] == pytest.approx(1.0)
    assert r["map_medium"] is None                     # no box with 32^2 <= area < 96^2: COCO's -1 becomes None
    assert [c["ap"] for c in r["per_class_ap"]] == pytest.approx([1.0, 1.0])
    assert [c["n_gt"] for c in r["per_class_ap"]] == [1, 2]
    assert r["pr_curves"][0]["precision"] == pytest.approx([1.0] * 101)
    assert r["confusion"] == [[1, 0, 0], [0, 2, 0], [0, 0, 0]]


def test_no_predictions_score_zero():
    empty = pred(np.zeros((0, 4)), [], [])
    r = evaluate([empty, empty], [target([SQUARE], [0]), target(np.zeros((0, 4)), [])])
    assert r["map"] == 0.0 and r["map50"] == 0.0 and r["mar_100"] == 0.0
    assert r["per_class_ap"][1]["ap"] is None          # class b never occurs: undefined, not zero
    assert r["confusion"] == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]
    assert r["n_images"] == 2 and r["n_gt"] == 1 and r["n_detections"] == 0


def test_false_positive_ranked_first_halves_ap50():
    # One GT box; detections ranked by score: #1 (0.9) is far away (FP), #2 (0.8) is exact (TP).
    # Cumulative TP = [0, 1], FP = [1, 1] -> recall = [0, 1], precision = [0/1, 1/2].
    # COCO makes precision monotone from the right: [0.5, 0.5]; for each of the 101 recall points r = 0, .01, ..., 1
    # it takes the precision at the first rank whose recall >= r: rank 1 for r = 0 (recall 0 >= 0), rank 2 otherwise,
    # both 0.5. AP50 = mean of 101 values of 0.5 = 0.5 (and the same at every IoU threshold, so map = 0.5 too).
    r = evaluate([pred([[200, 200, 300, 300], SQUARE], [0.9, 0.8], [0, 0])], [target([SQUARE], [0])])
    assert r["map50"] == pytest.approx(0.5, abs=1e-12)
    assert r["map"] == pytest.approx(0.5, abs=1e-12)
    assert r["pr_curves"][0]["precision"] == pytest.approx([0.5] * 101)


def test_iou_between_thresholds_counts_the_thresholds_it_passes():
    # GT 100x100, detection 100x72.5 inside it: IoU = 7250 / 10000 = 0.725, halfway between 0.70 and 0.75.
    # It is a match at IoU thresholds 0.50, 0.55, 0.60, 0.65, 0.70 (AP 1) and a miss at 0.75 ... 0.95 (AP 0):
    # map = 5/10.
    r = evaluate([pred([[0, 0, 100, 72.5]], [0.9], [0])], [target([SQUARE], [0])])
    assert r["map"] == pytest.approx(0.5, abs=1e-12)
    assert r["map50"] == 1.0 and r["map75"] == 0.0
    assert r["mar_100"] == pytest.approx(0.5, abs=1e-12)


# ---------------------------------------------------------------------------------- real boxes against pycocotools
COCO128 = "coco128"


def load_yolo_split(data_dir, split: str = "val2017"):
    """COCO128 YOLO labels as (class names, per-image (boxes xyxy px, labels)), sizes read from the images."""
    root = data_dir / COCO128
    names = yaml.safe_load((root / "object_detection.yaml").read_text())["names"]
    classes = [names[i] for i in range(len(names))]
    out = []
    for img in sorted((root / "images" / split).glob("*.jpg")):
        with Image.open(img) as im:
            w, h = im.size
        txt = root / "labels" / split / (img.stem + ".txt")
        rows = np.loadtxt(txt, ndmin=2) if txt.exists() and txt.stat().st_size else np.zeros((0, 5))
        cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
        boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
        out.append((boxes, rows[:, 0].astype(np.int64)))
    return classes, out


def synthetic_predictions(gts, num_classes: int, seed: int = 0):
    """Jittered copies of the GT boxes (10 % dropped, 5 % relabelled), plus 0-4 random false boxes per image,
    with random scores; a few GT boxes are marked crowd. Boxes as float32 tensors, as a model would give them."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for boxes, labels in gts:
        n = len(labels)
        wh = boxes[:, 2:] - boxes[:, :2]
        jit = boxes + rng.normal(0, 0.08, (n, 4)) * np.concatenate([wh, wh], axis=1)
        lab = np.where(rng.random(n) < 0.05, rng.integers(0, num_classes, n), labels)
        keep = rng.random(n) > 0.10
        k = int(rng.integers(0, 5))
        xy = rng.uniform(0, 280, (k, 2))
        false = np.concatenate([xy, xy + rng.uniform(4, 120, (k, 2))], axis=1)
        db = np.concatenate([jit[keep], false])
        dl = np.concatenate([lab[keep], rng.integers(0, num_classes, k)])
        ds = rng.uniform(0.01, 1.0, len(dl))
        crowd = (rng.random(n) < 0.03).astype(np.int64)
        preds.append({"boxes": torch.tensor(db, dtype=torch.float32), "scores": torch.tensor(ds, dtype=torch.float32),
                      "labels": torch.tensor(dl)})
        targets.append({"boxes": torch.as_tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels),
                        "iscrowd": torch.tensor(crowd)})
    return preds, targets


def pycocotools_reference(preds, targets, num_classes: int):
    """pycocotools' COCOeval on the same data, converted here independently: (stats[12], precision[T,R,K,A,M])."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    def xywh(b):
        return [[x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2 in b.tolist()]

    images, anns, dets = [], [], []
    for i, (p, t) in enumerate(zip(preds, targets), start=1):
        images.append({"id": i})
        for b, c, k in zip(xywh(t["boxes"]), t["labels"].tolist(), t["iscrowd"].tolist()):
            anns.append({"id": len(anns) + 1, "image_id": i, "category_id": c + 1, "bbox": b,
                         "area": b[2] * b[3], "iscrowd": k})
        for b, c, s in zip(xywh(p["boxes"]), p["labels"].tolist(), p["scores"].tolist()):
            dets.append({"image_id": i, "category_id": c + 1, "bbox": b, "score": s})
    gt = COCO()
    gt.dataset = {"info": {}, "images": images, "annotations": anns,
                  "categories": [{"id": k + 1, "name": str(k)} for k in range(num_classes)]}
    with contextlib.redirect_stdout(io.StringIO()):
        gt.createIndex()
        ev = COCOeval(gt, gt.loadRes(dets), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats, ev.eval["precision"]


@pytest.fixture(scope="module")
def coco128(data_dir):
    classes, gts = load_yolo_split(data_dir)
    preds, targets = synthetic_predictions(gts, len(classes))
    return classes, preds, targets


def test_matches_pycocotools_on_coco128(coco128):
    classes, preds, targets = coco128
    m = DetectionMetrics(classes)
    for i in range(0, len(preds), 16):                 # streamed in batches, as an evaluation loop does
        m.update(preds[i:i + 16], targets[i:i + 16])
    r = m.compute()
    stats, prec = pycocotools_reference(preds, targets, len(classes))
    ours = [r[k] for k in ("map", "map50", "map75", "map_small", "map_medium", "map_large")] + [r["mar_100"]]
    ref = [*stats[:6], stats[8]]
    assert 0.3 < r["map"] < 0.9                        # a meaningful, non-trivial score
    assert ours == pytest.approx(ref, abs=1e-6)
    for k, c in enumerate(r["per_class_ap"]):
        p = prec[:, :, k, 0, -1]
        if (p > -1).any():
            assert c["ap"] == pytest.approx(p[p > -1].mean(), abs=1e-6), c["class"]
            assert c["ap50"] == pytest.approx(p[0][p[0] > -1].mean(), abs=1e-6), c["class"]
            assert r["pr_curves"][k]["precision"] == pytest.approx(prec[0, :, k, 0, -1].tolist(), abs=1e-9)
        else:
            assert c["ap"] is None and r["pr_curves"][k]["precision"] is None
    assert r["n_gt"] == sum(int((t["iscrowd"] == 0).sum()) for t in targets)
    cm = np.array(r["confusion"])
    assert cm[:-1].sum() == r["n_gt"]                  # every non-crowd GT box is in exactly one cell of its row

    m.reset()
    assert m.compute()["n_images"] == 0 and m.compute()["map"] is None


# ----------------------------------------------------------------------------------------------- confusion matrix
def test_confusion_matrix_hand_case():
    a1, b2, a3 = SQUARE, [200, 0, 300, 100], [0, 200, 100, 300]
    p = pred([a1,                      # a on a: right
              [202, 2, 298, 100],      # a on the b box (IoU 0.94): a class confusion, true b -> predicted a
              [500, 500, 550, 550],    # b on nothing: a false box -> background row
              [1, 1, 100, 100],        # a duplicate on the a box, lower score: background row
              a3],                     # a on a3 but below the display threshold: a3 counts as missed
             [0.9, 0.8, 0.7, 0.6, 0.2], [0, 0, 1, 0, 0])
    r = evaluate([p], [target([a1, b2, a3], [0, 1, 0])])
    #                    pred a  pred b  missed
    assert r["confusion"] == [[1, 0, 1],        # true a
                              [1, 0, 0],        # true b
                              [1, 1, 0]]        # background (false detections)
    assert r["confusion_labels"] == ["a", "b", "background"]


def confusion_by_loops(preds, targets, num_classes: int, thr: float = 0.25, iou_thr: float = 0.5) -> np.ndarray:
    """The documented confusion rule written as plain loops, one image and one detection at a time."""
    def iou(a, b, over_a=False):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        area_a, area_b = (a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1])
        return w * h / area_a if over_a else w * h / (area_a + area_b - w * h)

    c = num_classes
    cm = np.zeros((c + 1, c + 1), np.int64)
    for p, t in zip(preds, targets):
        gts = [(b, k) for b, k, cr in zip(t["boxes"].tolist(), t["labels"].tolist(), t["iscrowd"].tolist()) if not cr]
        crowds = [b for b, cr in zip(t["boxes"].tolist(), t["iscrowd"].tolist()) if cr]
        dets = sorted(zip(p["scores"].tolist(), range(len(p["scores"])), p["boxes"].tolist(), p["labels"].tolist()),
                      key=lambda d: (-d[0], d[1]))[:100]
        taken = [False] * len(gts)
        for score, _, box, label in dets:
            if score < thr:
                continue
            cand = [(gl == label, iou(box, gb), j) for j, (gb, gl) in enumerate(gts)
                    if not taken[j] and iou(box, gb) >= iou_thr]
            if cand:
                j = max(cand)[2]
                taken[j] = True
                cm[gts[j][1], label] += 1
            elif not any(iou(box, cb, over_a=True) >= iou_thr for cb in crowds):
                cm[c, label] += 1
        for j, (_, gl) in enumerate(gts):
            cm[gl, c] += 0 if taken[j] else 1
    return cm


def test_confusion_matches_plain_loops_on_coco128(coco128):
    classes, preds, targets = coco128
    m = DetectionMetrics(classes, display_score_threshold=0.3)
    for i in range(0, len(preds), 10):
        m.update(preds[i:i + 10], targets[i:i + 10])
    ref = confusion_by_loops(preds, targets, len(classes), thr=0.3)
    hits = ref[:-1, :-1]
    assert hits.trace() > 300 and hits.sum() - hits.trace() > 10             # right, and class confusions
    assert ref[-1].sum() > 50 and ref[:, -1].sum() > 50                       # false boxes, missed boxes
    np.testing.assert_array_equal(np.array(m.compute()["confusion"]), ref)


def test_confusion_prefers_own_class_and_skips_crowd():
    # A b-detection overlaps an a box (IoU 0.9) and a b box (IoU 0.6): it takes the b box (own class first);
    # the a box is then missed. A detection on a crowd region is neither right nor wrong.
    gt = target([SQUARE, [0, 0, 100, 60], [300, 300, 400, 400]], [0, 1, 0], iscrowd=[0, 0, 1])
    p = pred([[0, 0, 100, 90], [305, 305, 395, 395]], [0.9, 0.8], [1, 0])
    r = evaluate([p], [gt])
    assert r["confusion"] == [[0, 0, 1], [0, 1, 0], [0, 0, 0]]


# ---------------------------------------------------------------------------------- the cap and the two thresholds
def test_at_most_100_detections_per_image_over_all_classes():
    # 149 confident false boxes of class b, and the one true detection of class a with the lowest score.
    false = [[200 + i, 200, 210 + i, 210] for i in range(149)]
    p = pred([*false, SQUARE], [*np.linspace(0.99, 0.5, 149), 0.1], [1] * 149 + [0])
    r = evaluate([p], [target([SQUARE], [0])])
    assert r["n_detections"] == 100 and r["map"] == 0.0     # the cap is per image, not per class: the TP is cut
    r = evaluate([p], [target([SQUARE], [0])], max_detections=150)
    assert r["n_detections"] == 150 and r["map"] == pytest.approx(1.0)


def test_eval_and_display_score_thresholds():
    gt = [target([SQUARE], [0])]
    r = evaluate([pred([SQUARE], [0.0005], [0])], gt)        # below eval_score_threshold=0.001: dropped
    assert r["n_detections"] == 0 and r["map"] == 0.0
    r = evaluate([pred([SQUARE], [0.002], [0])], gt)         # kept for AP ...
    assert r["map"] == pytest.approx(1.0)
    assert r["confusion"] == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]   # ... but below display_score_threshold=0.25
    r = evaluate([pred([SQUARE], [0.25], [0])], gt)          # at the display threshold: shown (>=)
    assert r["confusion"] == [[1, 0, 0], [0, 0, 0], [0, 0, 0]]
    r = evaluate([pred([SQUARE], [0.002], [0])], gt, display_score_threshold=0.001, eval_score_threshold=0.01)
    assert r["n_detections"] == 0 and r["confusion"] == [[0, 0, 1], [0, 0, 0], [0, 0, 0]]


def test_bad_input_is_refused():
    m = DetectionMetrics(["a", "b"])
    with pytest.raises(ValueError, match="labels must be in 0..1"):
        m.update([pred([SQUARE], [0.9], [2])], [target([SQUARE], [0])])
    with pytest.raises(ValueError, match="one of each per image"):
        m.update([], [target([SQUARE], [0])])
    with pytest.raises(ValueError, match="lengths differ"):
        m.update([pred([SQUARE], [0.9, 0.8], [0])], [target([SQUARE], [0])])
