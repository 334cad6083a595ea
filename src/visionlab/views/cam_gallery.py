"""Explanations of a run: Grad-CAM / CAM overlays for image files, and the report's per-class cam_gallery.png."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from visionlab.data import build_splits
from visionlab.data.decode import try_load
from visionlab.explain import explain, find_target_layer, overlay
from visionlab.run import LoadedRun, load_run
from visionlab.utils import UserError, closest
from visionlab.views.plots import save_figure as _save

LABELS = {"gradcam": "Grad-CAM", "cam": "CAM"}
GALLERY_MAX_CLASSES = 20     # rows beyond this make the figure unreadable
PREDICT_BATCH = 256
EXPLAIN_BATCH = 32


def _show(ax, image: np.ndarray) -> None:
    ax.imshow(image[..., 0] if image.shape[-1] == 1 else image, cmap="gray" if image.shape[-1] == 1 else None,
              interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _as_run(run_dir) -> LoadedRun:
    run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir)
    if run.task.target != "label":
        raise UserError(f"{run.run_dir}: explanations need a classification run (task {run.cfg.task!r})")
    return run


def _target(run: LoadedRun, name: str | None) -> int | None:
    """None for the predicted class, else the index of class ``name``."""
    if name in (None, "", "pred"):
        return None
    if name in run.classes:
        return run.classes.index(name)
    hint = closest(name, run.classes)
    raise UserError(f"class={name!r} is not a class of this run" + (f"; did you mean {hint!r}?" if hint else "")
                    + " (or use class=pred)")


def explain_batch(run: LoadedRun, images: np.ndarray, method: str = "gradcam", layer: str | None = None,
                  target: int | None = None):
    """CamResult for uint8 NHWC ``images`` of a loaded run, preprocessed by the run's eval transform."""
    batch = torch.from_numpy(np.array(images)).to(run.device)
    x = run.task.model_input(batch)
    return explain(run.model, x, method=method, target=target, layer=layer)


def explain_images(run_dir, images: list, method: str = "gradcam", layer: str | None = None,
                   target: str | None = None, out: str | os.PathLike | None = None) -> list[Path]:
    """Write ``<out>/<stem>_<method>.png`` (image | heatmap overlay, titled with the predicted class and probability)
    for each image file; ``target`` is a class name or None/"pred"; ``out`` defaults to RUN_DIR/explain."""
    run = _as_run(run_dir)
    cls = _target(run, target)
    out_dir = Path(out) if out else run.run_dir / "explain"
    out_dir.mkdir(parents=True, exist_ok=True)
    arrays = []
    for im in images:
        arr, reason = try_load(str(im), run.info.preprocess)     # the same decoding as prediction
        if arr is None:
            raise UserError(f"{im}: cannot read this image ({reason}); pass a JPEG, PNG or other image file")
        arrays.append(arr)
    written, used = [], set()
    for i, (path, arr) in enumerate(zip(images, arrays)):
        if layer is None and i == 0:
            x0 = run.task.model_input(torch.from_numpy(np.array(arr[None])).to(run.device))
            layer = find_target_layer(run.model, x0)[0]           # once, not per image
        res = explain_batch(run, arr[None], method, layer, cls)
        stem = Path(str(path)).stem
        dest, k = out_dir / f"{stem}_{method}.png", 2
        while dest in used:
            dest, k = out_dir / f"{stem}-{k}_{method}.png", k + 1
        used.add(dest)
        _overlay_figure(arr, res, run.classes, dest)
        written.append(dest)
    return written


def _overlay_figure(image: np.ndarray, res, classes: list[str], path: Path) -> None:
    probs = res.probs[0].cpu()
    pred = int(probs.argmax())
    tgt = int(res.target[0])
    fig = Figure(figsize=(6.4, 3.5), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    _show(ax1, image)
    ax1.set_title("input", fontsize=9)
    _show(ax2, overlay(image, res.heatmaps[0]))
    ax2.set_title(f"{LABELS[res.method]} for {classes[tgt]!s} ({res.layer})", fontsize=9)
    fig.suptitle(f"predicted: {classes[pred]} ({100 * float(probs[pred]):.1f}%)", fontsize=11)
    _save(fig, path)


# ---------------------------------------------------------------- the report gallery

def _test_batches(split, preprocess: dict):
    """(first index, uint8 NHWC batch) over a test split, in memory or decoded from files (bad files skipped)."""
    for start in range(0, len(split), PREDICT_BATCH):
        stop = min(start + PREDICT_BATCH, len(split))
        if split.images is not None:
            yield np.arange(start, stop), split.images[start:stop]
            continue
        loaded = [(i, try_load(split.paths[i], preprocess)[0]) for i in range(start, stop)]
        loaded = [(i, a) for i, a in loaded if a is not None]
        if loaded:
            yield np.array([i for i, _ in loaded]), np.stack([a for _, a in loaded])


def _pick_examples(run: LoadedRun, split, max_per_class: int, classes: int) -> list[tuple]:
    """(image, true, pred, prob, correct) for the first ``max_per_class`` right and wrong test images per class."""
    slots = {(c, ok): [] for c in range(classes) for ok in (True, False)}
    for idx, images in _test_batches(split, run.info.preprocess):
        with torch.no_grad():
            probs = run.task.predict(torch.from_numpy(np.ascontiguousarray(images)).to(run.device)).probs.cpu()
        conf, pred = probs.max(1)
        for j, i in enumerate(idx):
            t, p = int(split.labels[i]), int(pred[j])
            key = (t, p == t)
            if key in slots and len(slots[key]) < max_per_class:
                slots[key].append((images[j], t, p, float(conf[j]), p == t))
        if all(len(v) >= max_per_class for v in slots.values()):
            break
    return [e for c in range(classes) for ok in (True, False) for e in slots[(c, ok)]]


def write_cam_gallery(run_dir, max_per_class: int = 2) -> Path | None:
    """Write RUN_DIR/cam_gallery.png: per class, the first ``max_per_class`` correct and wrong test images with
    Grad-CAM overlays for the predicted class (equal to CAM for global-pool + linear heads). None when the run
    has no test images or is not a classification run."""
    run = _as_run(run_dir)
    split = build_splits(run.cfg.data).test
    if split is None or len(split) == 0:
        return None
    classes = min(len(run.classes), GALLERY_MAX_CLASSES)
    examples = _pick_examples(run, split, max_per_class, classes)
    if not examples:
        return None
    images = np.stack([e[0] for e in examples])
    x0 = run.task.model_input(torch.from_numpy(np.array(images[:1])).to(run.device))
    layer = find_target_layer(run.model, x0)[0]
    heat = []
    for s in range(0, len(images), EXPLAIN_BATCH):
        res = explain_batch(run, images[s:s + EXPLAIN_BATCH], "gradcam", layer)
        heat.append(res.heatmaps.cpu())
    _gallery_figure(examples, torch.cat(heat), run.classes, classes, max_per_class, run.run_dir / "cam_gallery.png",
                    layer)
    return run.run_dir / "cam_gallery.png"


def _gallery_figure(examples, heat, names, classes: int, k: int, path: Path, layer: str) -> None:
    """Rows = classes; columns = up to k correct, then up to k wrong predictions."""
    fig = Figure(figsize=(1.6 * 2 * k + 0.8, 1.7 * classes + 0.6), layout="constrained")
    axes = np.asarray(fig.subplots(classes, 2 * k, squeeze=False))
    for ax in axes.flat:
        ax.axis("off")
    filled: dict[tuple[int, bool], int] = {}
    for (image, t, p, conf, ok), h in zip(examples, heat):
        col = filled.get((t, ok), 0) + (0 if ok else k)
        filled[(t, ok)] = filled.get((t, ok), 0) + 1
        ax = axes[t, col]
        ax.axis("on")
        _show(ax, overlay(image, h))
        colour = "tab:green" if ok else "tab:red"
        ax.set_title(f"{names[t][:10]} \u2192 {names[p][:10]} {conf:.2f}", fontsize=7, color=colour)
        for spine in ax.spines.values():
            spine.set_edgecolor(colour)
            spine.set_linewidth(2)
    fig.suptitle(f"Grad-CAM at {layer}: correct (green, left) and wrong (red, right) test predictions per class",
                 fontsize=9)
    _save(fig, path)
