"""The object-detection run's own report pieces (protocol, per-class AP table and bars, PR curves, the confusion matrix
with its background row and column, a gallery of the worst test images with found / missed / false boxes) and how
`visionlab predict` shows boxes (the image with its boxes drawn, and predictions.json).

``draw_boxes`` is the one box renderer (report gallery, predict, the app and the live video loop): PIL only."""
from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from PIL import Image, ImageDraw, ImageFont

from visionlab.metrics.detection import BACKEND, BACKGROUND, match_image
from visionlab.utils import write_json, write_png
from visionlab.views import plots
from visionlab.views.markup import fmt
from visionlab.views.segmentation import palette

HEADLINE = (("map", "AP@[.5:.95]", "pct"), ("map50", "AP50", "pct"), ("map75", "AP75", "pct"),
            ("map_small", "AP small", "pct"), ("map_medium", "AP medium", "pct"), ("map_large", "AP large", "pct"),
            ("mar_100", "AR@100", "pct"), ("loss", "loss", "f4"))
MATCH_IOU = 0.5
GREEN, RED, ORANGE = (0, 200, 0), (230, 20, 20), (255, 140, 0)
GALLERY_MAX_IMAGES = 8
LEGEND_MAX_CLASSES = 20      # PR-curve legend entries beyond this are unreadable
LIST_MAX_BOXES = 10          # boxes named per image on the predict line


# ---------------------------------------------------------------- drawing boxes (PIL only: fast, reused by the app)

@functools.lru_cache(maxsize=16)
def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)          # a scalable font (Pillow >= 10.1 with FreeType)
    except (TypeError, OSError, ImportError):             # pragma: no cover - older Pillow / no FreeType
        return ImageFont.load_default()


def _per_box(value, n: int) -> list:
    """A scalar setting repeated for ``n`` boxes, or the per-box sequence as a list."""
    a = np.asarray(value)
    return [a.item()] * n if a.ndim == 0 else a.reshape(n).tolist()


@functools.cache
def class_colors() -> np.ndarray:
    """uint8 [255, 3]: a box colour per class id, built once (the live video draws every frame): the segmentation
    palette with tab20's dark shades first, so neighbouring ids differ more than a pair of shades of one hue."""
    colors = palette(255)[np.r_[0:20:2, 1:20:2, 20:255]]
    colors.flags.writeable = False                       # shared by every call
    return colors


def _box_colors(colors, labels, n: int) -> np.ndarray:
    """[n, 3] uint8: one RGB for all boxes, one per box, or (None) the class palette of ``labels``."""
    if colors is None:
        ids = np.zeros(n, np.int64) if labels is None else np.asarray(labels, np.int64).reshape(n)
        return class_colors()[np.clip(ids, 0, 254)]
    c = np.asarray(colors, dtype=np.int64)
    return np.broadcast_to(c, (n, 3)) if c.ndim == 1 else c.reshape(n, 3)


def _dashed_rectangle(draw: ImageDraw.ImageDraw, x0: int, y0: int, x1: int, y1: int, color: tuple, width: int):
    """A rectangle outline (inclusive pixel corners, ``width`` px drawn inwards like PIL's) in dashes."""
    dash = max(3, 3 * width)
    for x in range(x0, x1 + 1, 2 * dash):
        xe = min(x + dash - 1, x1)
        draw.rectangle((x, y0, xe, min(y0 + width - 1, y1)), fill=color)
        draw.rectangle((x, max(y1 - width + 1, y0), xe, y1), fill=color)
    for y in range(y0, y1 + 1, 2 * dash):
        ye = min(y + dash - 1, y1)
        draw.rectangle((x0, y, min(x0 + width - 1, x1), ye), fill=color)
        draw.rectangle((max(x1 - width + 1, x0), y, x1, ye), fill=color)


def box_text(label: int, classes, score=None) -> str:
    """"name 0.91": the class name (or the id when it has none) and the score to two decimals."""
    name = classes[label] if 0 <= label < len(classes) else str(label)
    return name if score is None else f"{name} {float(score):.2f}"


def draw_boxes(image: np.ndarray, boxes, labels=None, classes=(), scores=None, colors=None, width=2, dashed=False,
               text=True, font_size: int | None = None) -> np.ndarray:
    """uint8 HWC RGB: ``image`` (HW, HW1, HW3 or HW4) with ``boxes`` [N, 4] (xyxy in pixels, x1/y1 exclusive) drawn.

    ``colors``: None (each box in its class's ``class_colors`` colour), one RGB for all, or [N, 3]; ``width`` (px,
    drawn inside the box), ``dashed`` and ``text`` are one value for all boxes or one per box. A box's text is its
    class name (``classes[label]``) and ``scores`` to two decimals, on a bar in the box's colour just above the box
    (inside its top edge when there is no room above); no ``labels``: no text. Boxes are clipped to the image."""
    arr = np.asarray(image, dtype=np.uint8)
    if arr.ndim == 2 or arr.shape[-1] == 1:
        arr = np.repeat(arr.reshape(*arr.shape[:2], 1), 3, axis=2)
    im = Image.fromarray(np.ascontiguousarray(arr[..., :3]))
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    n = len(boxes)
    if n == 0:
        return np.asarray(im)
    h, w = arr.shape[:2]
    labels_ = None if labels is None else np.asarray(labels, np.int64).reshape(n).tolist()
    scores_ = [None] * n if scores is None else np.asarray(scores, np.float64).reshape(n).tolist()
    rgb = [tuple(c) for c in _box_colors(colors, labels, n).tolist()]
    widths, dashes, texts = _per_box(width, n), _per_box(dashed, n), _per_box(text, n)
    draw = ImageDraw.Draw(im)
    font = _font(font_size or int(np.clip(round(max(h, w) / 30), 8, 28)))
    captions = []
    for i, (bx0, by0, bx1, by1) in enumerate(np.rint(boxes).astype(np.int64).tolist()):
        x0, y0, x1, y1 = max(bx0, 0), max(by0, 0), min(bx1 - 1, w - 1), min(by1 - 1, h - 1)
        if x1 < x0 or y1 < y0:                             # empty or entirely outside the image
            continue
        if dashes[i]:
            _dashed_rectangle(draw, x0, y0, x1, y1, rgb[i], int(widths[i]))
        else:
            draw.rectangle((x0, y0, x1, y1), outline=rgb[i], width=int(widths[i]))
        if labels_ is not None and texts[i]:
            captions.append((x0, y0, int(widths[i]), rgb[i], box_text(labels_[i], classes, scores_[i])))
    for x0, y0, bw, color, caption in captions:            # after every outline, so no box hides a caption
        left, top, right, bottom = draw.textbbox((0, 0), caption, font=font)
        tw, th = right - left + 2, bottom - top + 2
        tx = max(0, min(x0, w - tw))
        ty = y0 - th if y0 - th >= 0 else y0 + bw
        draw.rectangle((tx, ty, tx + tw - 1, ty + th - 1), fill=color)
        ink = (0, 0, 0) if 0.299 * color[0] + 0.587 * color[1] + 0.114 * color[2] > 140 else (255, 255, 255)
        draw.text((tx + 1 - left, ty + 1 - top), caption, fill=ink, font=font)
    return np.asarray(im)


# ---------------------------------------------------------------- the gallery: found / missed / false boxes

def match_boxes(true: np.ndarray, pred: np.ndarray, iou_threshold: float = MATCH_IOU) -> tuple:
    """One image's errors.npz rows -> (true [M, 5], pred [P, 6], gt_found bool [M], det_correct bool [P]) without the
    padding rows (class -1), matched by ``metrics.detection.match_image`` (the rule behind the stored F1: detections,
    highest score first, each take the free ground-truth box of their own class with the highest IoU >=
    ``iou_threshold``; a detection of the wrong class is false and the box it covers missed)."""
    true = np.asarray(true, np.float64).reshape(-1, 5)
    pred = np.asarray(pred, np.float64).reshape(-1, 6)
    true, pred = true[true[:, 4] >= 0], pred[pred[:, 4] >= 0]
    correct, found = match_image(pred[:, :4], pred[:, 4], pred[:, 5], true[:, :4], true[:, 4], iou_threshold)
    return true, pred, found, correct


def gallery_panel(image: np.ndarray, true: np.ndarray, pred: np.ndarray, classes) -> tuple[np.ndarray, dict]:
    """One gallery image: found ground truth thick green, correct detections thin green, false detections orange
    (class and score), missed ground truth red dashed on top (with its class; a wrong-class detection on it shows in
    the gaps); and the counts {tp, missed, false}."""
    true, pred, found, correct = match_boxes(true, pred)
    thin = max(1, round(max(np.asarray(image).shape[:2]) / 200))
    layers = ((true[found], GREEN, 2 * thin, False, False), (pred[correct], GREEN, thin, False, False),
              (pred[~correct], ORANGE, 2 * thin, False, True), (true[~found], RED, 2 * thin, True, True))
    out = image
    for rows, color, width, dashed, text in layers:
        scores = rows[:, 5] if rows.shape[1] == 6 else None
        out = draw_boxes(out, rows[:, :4], rows[:, 4].astype(np.int64), classes, scores, color, width, dashed, text)
    return out, {"tp": int(correct.sum()), "missed": int((~found).sum()), "false": int((~correct).sum())}


# ---------------------------------------------------------------- report figures

def plot_gallery(e: dict, classes, path: Path, max_images: int = GALLERY_MAX_IMAGES) -> tuple[int, dict]:
    """The worst stored test images (lowest F1 first), boxes drawn by ``gallery_panel``, with a legend; returns how
    many were drawn and the summed counts."""
    order = np.argsort(np.asarray(e["conf"], np.float64), kind="stable")[:max_images]
    k, totals = len(order), {"tp": 0, "missed": 0, "false": 0}
    if k == 0:
        return 0, totals
    h, w = e["images"].shape[1:3]
    cols = min(4, k)
    rows = math.ceil(k / cols)
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows * h / w + 0.8), layout="constrained")
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, i in zip(axes, order.tolist()):
        panel, counts = gallery_panel(e["images"][i], e["true"][i], e["pred"][i], classes)
        totals = {key: totals[key] + v for key, v in counts.items()}
        ax.imshow(panel, interpolation="nearest")
        name = Path(str(e["names"][i])).name if e.get("names") else f"#{i}"
        ax.set_title(f"{plots._short(name, 24)}  F1 {float(e['conf'][i]):.2f}\n"
                     f"{counts['tp']} found, {counts['missed']} missed, {counts['false']} false", fontsize=8)
    handles = [Line2D([], [], color=np.divide(color, 255), lw=lw, ls=ls, label=label) for color, lw, ls, label in (
        (GREEN, 3, "-", "ground truth, found"), (RED, 2, "--", "ground truth, missed"),
        (GREEN, 1, "-", "correct detection"), (ORANGE, 2, "-", "false detection (class, score)"))]
    fig.legend(handles=handles, loc="outside lower center", ncols=4, fontsize=8, frameon=False)
    plots.save_figure(fig, path)
    return k, totals


def plot_ap_bars(per_class_ap: list, path: Path) -> None:
    """AP@[.5:.95] and AP50 per class as paired bars (%); a class without ground truth has none."""
    names = [str(p["class"]) for p in per_class_ap]
    fig = Figure(figsize=(max(6.0, 0.6 * len(names) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(names))
    for off, key, label, alpha in ((-0.2, "ap", "AP@[.5:.95]", 1.0), (0.2, "ap50", "AP50", 0.45)):
        vals = [100 * p[key] if p.get(key) is not None else 0.0 for p in per_class_ap]
        ax.bar(x + off, vals, width=0.4, label=label, color="tab:blue", alpha=alpha)
    ax.set_xticks(x, [plots._short(n) for n in names], rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("AP (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    plots.save_figure(fig, path)


def plot_pr_curves(pr_curves: list, per_class_ap: list, path: Path) -> int:
    """Every class's interpolated precision against recall at IoU 0.5 (the 101 COCO points) in one panel, AP50 in
    the legend; undefined points (-1: recall never reached) are left out. Returns how many curves were drawn."""
    ap50 = {str(p["class"]): p.get("ap50") for p in per_class_ap}
    fig = Figure(figsize=(7.5, 5), layout="constrained")
    ax = fig.subplots()
    colors = class_colors() / 255
    drawn = 0
    for i, c in enumerate(pr_curves):
        if c.get("precision") is None:
            continue
        p = np.asarray(c["precision"], np.float64)
        ax.plot(c["recall"], np.where(p < 0, np.nan, p), color=colors[min(i, 254)], lw=1.5,
                label=f"{plots._short(str(c['class']))} ({fmt(ap50.get(str(c['class'])), 'pct')})")
        drawn += 1
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title("precision-recall at IoU 0.5 (legend: AP50)")
    ax.grid(alpha=0.3)
    if 0 < drawn <= LEGEND_MAX_CLASSES:
        outside = drawn > 8                                # many curves: the legend beside the panel
        ax.legend(loc="upper left" if outside else "lower left", bbox_to_anchor=(1.01, 1.0) if outside else None,
                  fontsize=7)
    plots.save_figure(fig, path)
    return drawn


# ---------------------------------------------------------------- report sections

def _value(s: dict, key: str):
    """One of the evaluation's counts and thresholds (tasks/detection.py keeps them under "evaluation")."""
    return (s.get("evaluation") or {}).get(key)


def protocol_text(s: dict) -> str:
    """One paragraph saying how the numbers were computed (evaluator, IoUs, interpolation, caps, thresholds, counts)."""
    n = _value(s, "max_detections") or 100
    return (f"COCO-standard box AP by {BACKEND} (a C++ port of pycocotools' COCOeval) on the {s.get('split', 'test')} "
            f"split: AP averaged over IoU 0.50:0.05:0.95 (AP50, AP75 at one IoU), 101-point interpolated precision, "
            f"at most {fmt(n, 'int')} detections per image, detections with score >= "
            f"{fmt(_value(s, 'eval_score_threshold'))} evaluated; AP small / medium / large by box area (< 32^2, "
            f"32^2 to 96^2, >= 96^2 px); AR@{n}: recall at {n} detections. {fmt(_value(s, 'n_images'), 'int')} images, "
            f"{fmt(_value(s, 'n_gt'), 'int')} ground-truth boxes, {fmt(_value(s, 'n_detections'), 'int')} detections "
            f"evaluated. The confusion matrix, the gallery and visionlab predict show the detections with score >= "
            f"{fmt(_value(s, 'display_score_threshold'))} (the display threshold).")


def sections(info: dict, classes: list[str]) -> list:
    """Protocol, per-class AP (table, ap_per_class.png), PR curves (pr_curves.png), the confusion matrix with
    background (det_confusion.png) and the worst-images gallery (det_gallery.png), for what the run has."""
    s, run_dir, out = info["summary"], info["run_dir"], []
    names = [str(p["class"]) for p in s.get("per_class_ap") or []] or list(classes)
    if s.get("per_class_ap"):
        out.append(("Detection protocol", [("text", protocol_text(s))]))
    pcs = s.get("per_class_ap") or []
    if pcs:
        plot_ap_bars(pcs, run_dir / "ap_per_class.png")
        rows = [[str(p["class"]), fmt(p.get("ap"), "pct"), fmt(p.get("ap50"), "pct"), fmt(p.get("n_gt"), "int")]
                for p in pcs]
        out.append(("Per-class AP", [("text", "AP@[.5:.95] and AP50 per class on the test split; a class without "
                                              "ground-truth boxes has no AP (-) and is left out of the mean."),
                                     ("table", ["class", "AP", "AP50", "#GT"], rows),
                                     ("image", "ap_per_class.png", "AP per class")]))
    curves = s.get("pr_curves") or []
    if curves:
        drawn = plot_pr_curves(curves, pcs, run_dir / "pr_curves.png")
        absent = [str(c["class"]) for c in curves if c.get("precision") is None]
        note = f" No curve (no ground truth): {', '.join(absent)}." if absent else ""
        out.append(("Precision-recall curves", [
            ("text", f"{drawn} classes at IoU 0.5: COCO's interpolated precision (the best precision at this recall "
                     f"or beyond) at 101 recall points; a curve ends where the class's recall ends.{note}"),
            ("image", "pr_curves.png", "precision-recall curves")]))
    if s.get("box_confusion"):
        labels = [str(c) for c in s.get("confusion_labels") or [*names, BACKGROUND]]
        plots.plot_confusion(s["box_confusion"], labels, run_dir / "det_confusion.png")
        out.append(("Detection confusion matrix", [
            ("text", f"Detections with score >= {fmt(_value(s, 'display_score_threshold'))} matched to ground-truth "
                     "boxes at IoU >= 0.5 (greedy by score, own class first, else the best-overlapping box of "
                     "another class). Rows: the true class of a box; columns: the predicted class. Off-diagonal "
                     "class cells: the box was found but given another class. Last row (background): detections "
                     "that match no box (false positives: duplicates, boxes on nothing, poor overlap). Last column "
                     "(background): boxes no detection matched (missed). Right: each row as shares."),
            ("image", "det_confusion.png", "detection confusion matrix")]))
    e = info["errors"]
    if e is not None and len(e["images"]) and e["true"].ndim == 3 and e["true"].shape[-1] == 5:
        k, t = plot_gallery(e, names, run_dir / "det_gallery.png")
        out.append(("Worst test images", [
            ("text", f"The {k} test images with the lowest F1 at IoU 0.5 (detections with score >= "
                     f"{fmt(_value(s, 'display_score_threshold'))}), worst first. Green: ground-truth boxes found "
                     "(thick) and the detections that found them (thin); red dashed: missed ground truth; orange: "
                     "false detections with class and score. A detection needs the box's class and IoU >= 0.5, so a "
                     f"wrong class shows as one missed and one false box. Here: {t['tp']} found, {t['missed']} "
                     f"missed, {t['false']} false."),
            ("image", "det_gallery.png", "worst test images with their boxes")]))
    return out


def after_train(run_dir: Path) -> None:
    """Nothing needs the model after training: the gallery comes from errors.npz."""


# ---------------------------------------------------------------- visionlab predict

def show_predictions(results: list, images: list[str], out_dir: Path | None) -> list[str]:
    """Write <stem>_boxes.png (the original image with its boxes, class and score) per image and one
    predictions.json into ``out_dir``; one line per image with its boxes, best first."""
    from visionlab.data.decode import try_load

    out_dir = Path(out_dir or "predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    lines, records = [], []
    for image, r in zip(images, results):
        boxes = np.asarray(r["boxes"], np.float64).reshape(-1, 4)
        scores = np.asarray(r["scores"], np.float64).reshape(-1)
        labels = np.asarray(r["labels"], np.int64).reshape(-1)
        named = dict(zip(labels.tolist(), map(str, r["classes"])))         # "classes": each box's class name
        classes = [named.get(k, str(k)) for k in range(int(labels.max(initial=-1)) + 1)]
        order = np.argsort(-scores, kind="stable")
        dets = [{"class": classes[labels[i]], "score": float(scores[i]),
                 "box": [float(v) for v in boxes[i]]} for i in order]
        records.append({"image": str(image), "detections": dets})
        path = out_dir / f"{Path(str(image)).stem}_boxes.png"
        arr, reason = try_load(str(image), {})             # the original pixels: the boxes are in its coordinates
        if arr is None:
            lines.append(f"{image}\t{len(dets)} boxes (no picture written: {reason})")
            continue
        write_png(path, draw_boxes(arr, boxes, labels, classes, scores))
        shown = ", ".join(f"{d['class']} {d['score']:.2f}" for d in dets[:LIST_MAX_BOXES])
        more = f", ... (+{len(dets) - LIST_MAX_BOXES})" if len(dets) > LIST_MAX_BOXES else ""
        lines.append(f"{image}\t{len(dets)} boxes{': ' + shown + more if dets else ''} -> {path}")
    write_json(out_dir / "predictions.json", records)
    return lines
