"""COCO mAP evaluation time: visionlab's DetectionMetrics (faster-coco-eval) against torchmetrics'
MeanAveragePrecision with its default backend (pycocotools), on identical inputs, in the same run.

Ground truth: the real COCO128 YOLO boxes (train2017 + val2017, pixel boxes from the image sizes), repeated up to
``images``. Predictions are SYNTHETIC: each box jittered (8 % of its size), 10 % dropped, 5 % relabelled, 0-4 random
false boxes per image, uniform random scores; a fresh draw for every repeat of an image. Each arm gets a fresh metric
per rep (torchmetrics caches compute()); update and compute are timed apart; the median of ``reps`` counts.
The values are compared with one more, untimed torchmetrics run given COCO's float64 IoU and recall thresholds: its
defaults are float32-rounded (torch.linspace), which moves AP by up to ~1e-3 where a recall lands exactly on k/100.

With ``run=RUN_DIR`` (a detection run) the inputs are instead that run's real detections on its whole test split
(the saved best model, at its evaluation score threshold, at most 100 per image) and the split's boxes.

    .venv/bin/python benchmarks/map_eval.py [images=5000] [reps=3] [seed=0] [threads=1] [run=RUN_DIR]
Last line: RESULT ours_compute_s=<s> torchmetrics_compute_s=<s> speedup=<x> map_ours=<m> map_torchmetrics=<m>
           max_abs_diff=<d> cpu=<model>
"""
from __future__ import annotations

import statistics
import sys
import time
from importlib.metadata import version

from _common import DATA

import numpy as np
import torch
import yaml
from PIL import Image

SPLITS = ("train2017", "val2017")
KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large", "mar_100")   # torchmetrics' names


def load_coco128() -> tuple[list[str], list[tuple[np.ndarray, np.ndarray]]]:
    """Class names and per-image (boxes xyxy px, labels) from COCO128's YOLO txt files (images without one: empty)."""
    root = DATA / "coco128"
    names = yaml.safe_load((root / "object_detection.yaml").read_text())["names"]
    out = []
    for split in SPLITS:
        for img in sorted((root / "images" / split).glob("*.jpg")):
            with Image.open(img) as im:
                w, h = im.size
            txt = root / "labels" / split / f"{img.stem}.txt"
            rows = np.loadtxt(txt, ndmin=2) if txt.exists() and txt.stat().st_size else np.zeros((0, 5))
            cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
            out.append((np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], 1), rows[:, 0].astype(np.int64)))
    return [names[i] for i in range(len(names))], out


def synthetic(gts, n_images: int, num_classes: int, seed: int) -> tuple[list[dict], list[dict]]:
    """``n_images`` (prediction, target) pairs: the real boxes cycled, predictions jittered from them."""
    rng = np.random.default_rng(seed)
    preds, targets = [], []
    for i in range(n_images):
        boxes, labels = gts[i % len(gts)]
        n = len(labels)
        wh = np.tile(boxes[:, 2:] - boxes[:, :2], 2)
        jit = boxes + rng.normal(0, 0.08, (n, 4)) * wh
        lab = np.where(rng.random(n) < 0.05, rng.integers(0, num_classes, n), labels)
        keep = rng.random(n) > 0.10
        k = int(rng.integers(0, 5))
        xy = rng.uniform(0, 280, (k, 2))
        db = np.concatenate([jit[keep], np.concatenate([xy, xy + rng.uniform(4, 120, (k, 2))], 1)])
        dl = np.concatenate([lab[keep], rng.integers(0, num_classes, k)])
        preds.append({"boxes": torch.tensor(db, dtype=torch.float32),
                      "scores": torch.tensor(rng.uniform(0.01, 1.0, len(dl)), dtype=torch.float32),
                      "labels": torch.tensor(dl)})
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return preds, targets


def from_run(run_dir: str) -> tuple[list[str], list[dict], list[dict], str]:
    """(classes, predictions, targets, description) of a detection run's test split, detected by its best model."""
    from visionlab.data import build_splits
    from visionlab.data.box_transforms import unpad
    from visionlab.run import load_run

    run = load_run(run_dir, device="cpu")
    test = build_splits(run.cfg.data).test
    preds, targets = [], []
    for i in range(0, len(test), 32):
        images, boxes = torch.from_numpy(test.images[i:i + 32]), torch.from_numpy(test.boxes[i:i + 32])
        with torch.no_grad():
            preds += run.task.detect(images, run.cfg.detection.eval_score_threshold)
        targets += unpad(boxes)
    return run.classes, preds, targets, f"{run.cfg.data.name} test split of {run_dir} ({len(test)} images)"


def run_ours(classes, preds, targets) -> tuple[float, float, dict]:
    from visionlab.metrics.detection import DetectionMetrics

    m = DetectionMetrics(classes)
    t0 = time.perf_counter()
    m.update(preds, targets)
    t1 = time.perf_counter()
    r = m.compute()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, {"map": r["map"], "map_50": r["map50"], "map_75": r["map75"], "map_small": r["map_small"],
                              "map_medium": r["map_medium"], "map_large": r["map_large"], "mar_100": r["mar_100"]}


def run_torchmetrics(classes, preds, targets, **kw) -> tuple[float, float, dict]:
    from torchmetrics.detection import MeanAveragePrecision

    m = MeanAveragePrecision(**kw)          # defaults: backend="pycocotools", box_format="xyxy", iou_type="bbox"
    t0 = time.perf_counter()
    m.update(preds, targets)
    t1 = time.perf_counter()
    r = m.compute()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, {k: float(r[k]) for k in KEYS}


def main(argv: list[str]) -> None:
    import torchmetrics

    from visionlab.deploy.latency import cpu_model
    from visionlab.metrics.detection import BACKEND

    kv = dict(a.split("=", 1) for a in argv)
    torch.set_num_threads(int(kv.get("threads", 1)))
    n_images, reps, seed = int(kv.get("images", 5000)), int(kv.get("reps", 3)), int(kv.get("seed", 0))
    if kv.get("run"):
        classes, preds, targets, what = from_run(kv["run"])
    else:
        classes, gts = load_coco128()
        preds, targets = synthetic(gts, n_images, len(classes), seed)
        what = (f"COCO128 {'+'.join(SPLITS)} real boxes ({len(gts)} images) cycled to {n_images} images, SYNTHETIC "
                f"jittered predictions (seed {seed})")
    n_gt, n_dt = sum(len(t["labels"]) for t in targets), sum(len(p["labels"]) for p in preds)
    tm_backend = torchmetrics.detection.MeanAveragePrecision()._coco_backend.backend   # its default
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}, "
          f"torchmetrics {torchmetrics.__version__} (backend {tm_backend} {version(tm_backend.replace('_', '-'))}), "
          f"ours {BACKEND} {version(BACKEND)}")
    print(f"data: {what}; {n_gt} GT boxes, {n_dt} detections; median of {reps} reps")
    arms = {"visionlab DetectionMetrics": run_ours, "torchmetrics MeanAveragePrecision": run_torchmetrics}
    times = {k: ([], []) for k in arms}
    values = {}
    for _ in range(reps):                                 # alternate arms so load drift hits both
        for name, fn in arms.items():
            up, comp, values[name] = fn(classes, preds, targets)
            times[name][0].append(up)
            times[name][1].append(comp)
    med = {k: (statistics.median(u), statistics.median(c)) for k, (u, c) in times.items()}
    tm = med["torchmetrics MeanAveragePrecision"]
    print(f"{'arm':<34} {'update s':>9} {'compute s':>10} {'total s':>8} {'x tm compute':>13} {'x tm total':>11}")
    for k, (u, c) in med.items():
        print(f"{k:<34} {u:>9.3f} {c:>10.3f} {u + c:>8.3f} {tm[1] / c:>13.2f} {sum(tm) / (u + c):>11.2f}")
    # torchmetrics' default thresholds come from a float32 torch.linspace (recall point 0.5 is 0.50000003 ...): when a
    # class's recall lands exactly on k/100 it reads the next precision, unlike COCOeval's float64 np.linspace. So the
    # values are checked against one more (untimed) torchmetrics run given COCO's own float64 thresholds.
    exact = run_torchmetrics(classes, preds, targets, iou_thresholds=np.linspace(0.5, 0.95, 10).tolist(),
                             rec_thresholds=np.linspace(0.0, 1.0, 101).tolist())[2]
    ours, ref = values["visionlab DetectionMetrics"], values["torchmetrics MeanAveragePrecision"]
    diffs = {k: abs(ours[k] - exact[k]) for k in KEYS}
    print(f"{'metric':<11} {'ours':>11} {'tm (COCO thr)':>14} {'|diff|':>8} {'tm default':>11} {'|diff|':>8}")
    for k in KEYS:
        d = abs(ours[k] - ref[k])
        print(f"{k:<11} {ours[k]:>11.7f} {exact[k]:>14.7f} {diffs[k]:>8.1e} {ref[k]:>11.7f} {d:>8.1e}")
    worst = max(diffs.values())
    print(f"same values as torchmetrics given COCO's float64 thresholds, to 1e-4: {'yes' if worst <= 1e-4 else 'NO'} "
          f"(max |diff| {worst:.1e}; torchmetrics' float32 outputs); with its float32 default thresholds: max |diff| "
          f"{max(abs(ours[k] - ref[k]) for k in KEYS):.1e}")
    o = med["visionlab DetectionMetrics"]
    print(f"RESULT ours_compute_s={o[1]:.3f} torchmetrics_compute_s={tm[1]:.3f} speedup={tm[1] / o[1]:.2f} "
          f"map_ours={ours['map']:.6f} map_torchmetrics={exact['map']:.6f} max_abs_diff={worst:.1e} "
          f"cpu={cpu_model()!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
