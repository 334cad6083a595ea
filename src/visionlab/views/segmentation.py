"""The segmentation run's own report pieces (per-class IoU table and bars, overlay gallery of the worst test images)
and how `visionlab predict` shows masks (a colour mask PNG and an overlay per image, the area of each class)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from matplotlib.figure import Figure
from PIL import Image

from visionlab.utils import atomic_write_bytes, write_png
from visionlab.views.markup import fmt
from visionlab.views.plots import save_figure as _save

HEADLINE = (("miou", "mean IoU", "pct"), ("pixel_acc", "pixel accuracy", "pct"), ("mean_acc", "mean class accuracy",
            "pct"), ("fwiou", "frequency-weighted IoU", "pct"), ("loss", "loss", "f4"))
IGNORE = 255


def palette(n: int) -> np.ndarray:
    """uint8 [256, 3]: a distinct colour per class id (tab20, then a golden-angle hue walk), black for ignore (255)."""
    from matplotlib import colormaps

    tab = (np.asarray(colormaps["tab20"].colors)[:, :3] * 255).round()
    out = np.zeros((256, 3), dtype=np.uint8)
    for i in range(min(n, 255)):
        if i < len(tab):
            out[i] = tab[i]
        else:
            h = (i * 0.618034) % 1.0
            out[i] = (np.array(colormaps["hsv"](h)[:3]) * 255).round()
    return out


def colorize(mask: np.ndarray, n: int) -> np.ndarray:
    return palette(n)[np.asarray(mask, dtype=np.uint8)]


def overlay(image: np.ndarray, mask: np.ndarray, n: int, alpha: float = 0.5) -> np.ndarray:
    """uint8 HWC: the image with the colour mask blended in (ignored pixels left as they are)."""
    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 2 or img.shape[-1] == 1:
        img = np.repeat(img.reshape(*img.shape[:2], 1), 3, axis=2)
    col = colorize(mask, n).astype(np.float32)
    keep = (np.asarray(mask) != IGNORE)[..., None]
    return np.where(keep, (1 - alpha) * img + alpha * col, img).round().clip(0, 255).astype(np.uint8)


def mask_png(mask: np.ndarray) -> bytes:
    """A class-id mask as palette PNG bytes: the pixel values are the class ids, shown in ``palette`` colours."""
    png = Image.fromarray(np.asarray(mask, dtype=np.uint8))      # "L"; putpalette makes it "P"
    png.putpalette(palette(256).ravel().tolist())
    buf = io.BytesIO()
    png.save(buf, format="PNG")
    return buf.getvalue()


def overlay_scaled(image: np.ndarray, mask: np.ndarray, n: int, alpha: float = 0.5) -> np.ndarray:
    """``overlay`` at the image's own size: the mask (at the model's size) scaled to it, nearest (ids never blend)."""
    h, w = np.asarray(image).shape[:2]
    if mask.shape != (h, w):
        mask = np.asarray(Image.fromarray(np.asarray(mask, dtype=np.uint8)).resize((w, h), Image.NEAREST))
    return overlay(image, mask, n, alpha)


def plot_iou_bars(per_class_iou: list, classes: list[str], path: Path) -> None:
    fig = Figure(figsize=(max(6.0, 0.5 * len(classes) + 2), 3.6), layout="constrained")
    ax = fig.subplots()
    vals = [100 * v if v is not None else 0.0 for v in per_class_iou]
    ax.bar(range(len(vals)), vals, color=[c / 255 for c in palette(len(classes))[:len(vals)]])
    ax.set_xticks(range(len(vals)), [classes[i] if i < len(classes) else str(i) for i in range(len(vals))],
                  rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%)")
    ax.set_ylim(0, 100)
    ax.grid(axis="y", alpha=0.3)
    _save(fig, path)


def plot_overlays(e: dict, classes: list[str], path: Path, max_images: int = 8) -> int:
    """Rows of image | ground truth | prediction for the stored worst test images (lowest pixel accuracy first)."""
    k = min(len(e["images"]), max_images)
    if k == 0:
        return 0
    h, w = e["images"].shape[1:3]
    fig = Figure(figsize=(9, max(2.0, 3 * k * h / w)), layout="constrained")
    axes = np.atleast_2d(fig.subplots(k, 3))
    n = len(classes)
    for r in range(k):
        img = e["images"][r]
        panels = (img[..., 0] if img.shape[-1] == 1 else img, overlay(img, e["true"][r], n),
                  overlay(img, e["pred"][r], n))
        for c, (ax, panel) in enumerate(zip(axes[r], panels)):
            ax.imshow(panel, cmap="gray" if panel.ndim == 2 else None, interpolation="nearest")
            ax.axis("off")
            name = e["names"][r] if e.get("names") else ""
            title = (f"{Path(str(name)).name} ({100 * float(e['conf'][r]):.1f}% px)", "truth", "prediction")[c]
            ax.set_title(title, fontsize=8)
    _save(fig, path)
    return k


def sections(info: dict, classes: list[str]) -> list:
    s, run_dir, out = info["summary"], info["run_dir"], []
    ious = s.get("per_class_iou") or []
    if ious:
        plot_iou_bars(ious, classes, run_dir / "iou_per_class.png")
        rows = [[classes[i] if i < len(classes) else str(i), fmt(v, "pct")] for i, v in enumerate(ious)]
        out.append(("Per-class IoU", [("text", "Test split, from one confusion matrix accumulated over every pixel; "
                                               "void pixels ignored; a class absent from truth and prediction: -."),
                                      ("table", ["class", "IoU"], rows),
                                      ("image", "iou_per_class.png", "IoU per class")]))
    e = info["errors"]
    if e is not None and len(e["images"]) and e["true"].ndim == 3:
        k = plot_overlays(e, classes, run_dir / "overlays.png")
        out.append(("Worst test images", [("text", f"The {k} test images with the lowest pixel accuracy: image, "
                                                   "ground truth and prediction overlays."),
                                          ("image", "overlays.png", "overlay gallery")]))
    return out


def after_train(run_dir: Path) -> None:
    """Nothing needs the model after training: the overlays come from errors.npz."""


def show_predictions(results: list, images: list[str], out_dir: Path | None) -> list[str]:
    """Write <stem>_mask.png (class ids as a palette PNG) and <stem>_overlay.png per image into ``out_dir``;
    one line per image with the share of each class."""
    from visionlab.data.decode import try_load

    out_dir = Path(out_dir or "predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for image, r in zip(images, results):
        mask = r["mask"]
        stem = Path(str(image)).stem
        atomic_write_bytes(out_dir / f"{stem}_mask.png", mask_png(mask))
        arr, _ = try_load(str(image), {})
        if arr is not None:                       # the overlay at the size the model saw
            im = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
            arr = np.asarray(im.resize((mask.shape[1], mask.shape[0]), Image.BILINEAR))
            write_png(out_dir / f"{stem}_overlay.png", overlay(arr, mask, 256))
        areas = "  ".join(f"{c}:{a:.3f}" for c, a in sorted(r["areas"].items(), key=lambda t: -t[1]))
        lines.append(f"{image}\t{areas}\t-> {out_dir / (stem + '_mask.png')}")
    return lines
