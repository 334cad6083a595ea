"""The classification run's own report pieces (per-class table, misclassified gallery, Grad-CAM gallery) and how
`visionlab predict` shows its results."""
from __future__ import annotations

from pathlib import Path

from visionlab.views import plots
from visionlab.views.markup import fmt

HEADLINE = (("acc", "top-1 accuracy", "pct"), ("top5", "top-5 accuracy", "pct"), ("loss", "loss", "f4"),
            ("ece", "ECE", "f4"), ("macro_f1", "macro-F1", "f4"))


def _per_class(info: dict, classes: list[str]) -> list:
    pcs = info["summary"].get("per_class") or []
    if not pcs:
        return [("text", "No per-class metrics in summary.json.")]
    rows = []
    for pc in pcs:
        i = pc.get("index")
        name = classes[i] if isinstance(i, int) and 0 <= i < len(classes) else str(i)
        rows.append([name, fmt(pc.get("precision"), "pct"), fmt(pc.get("recall"), "pct"),
                     fmt(pc.get("f1"), "f4"), fmt(pc.get("support"), "int")])
    return [("table", ["class", "precision", "recall", "F1", "support"], rows)]


def sections(info: dict, classes: list[str]) -> list:
    """Per-class metrics, the misclassified test images (errors.npz) and the CAM gallery, when present."""
    out = [("Per-class metrics", _per_class(info, classes))]
    e, run_dir = info["errors"], info["run_dir"]
    if e is not None and len(e["images"]):
        k = plots.plot_errors(e["images"], e["true"], e["pred"], e["conf"], classes, run_dir / "errors.png",
                              names=e["names"])
        out.append(("Misclassified test images",
                    [("text", f"Showing {k} of {len(e['images'])} stored errors (true -> predicted (confidence))."),
                     ("image", "errors.png", "misclassified images")]))
    if (run_dir / "cam_gallery.png").is_file():
        out.append(("Class activation maps",
                    [("text", "Grad-CAM heatmaps per class: correct (left) and wrong (right) test predictions."),
                     ("image", "cam_gallery.png", "Grad-CAM gallery")]))
    return out


def after_train(run_dir: Path) -> None:
    """Galleries that need the trained model: the Grad-CAM gallery of correct and wrong test predictions."""
    from visionlab.views.cam_gallery import write_cam_gallery

    write_cam_gallery(run_dir)


def show_predictions(results: list, images: list[str], out_dir: Path | None) -> list[str]:
    """One line per image: its top-k classes with probabilities."""
    return [str(image) + "\t" + "  ".join(f"{c}:{p:.3f}" for c, p in top) for image, top in zip(images, results)]
