"""Report pieces of semi-supervised runs (task=ssl): the classification sections plus what the method did with the
unlabelled stream: mask rate and pseudo-label accuracy per evaluation (true labels used for this diagnosis only)."""
from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from visionlab.views import classification, plots

HEADLINE = classification.HEADLINE + (("teacher_acc", "MPL teacher top-1", "pct"),)
after_train = classification.after_train
show_predictions = classification.show_predictions
CURVES = (("train/mask", "mask rate (confident pseudo-labels)"), ("train/pl_acc", "pseudo-label accuracy"),
          ("train/mask_correct", "confident and right"), ("val/acc", "val accuracy (student)"),
          ("val/teacher_acc", "val accuracy (MPL teacher)"))


def _plot(rows: list[dict], path: Path) -> bool:
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.subplots()
    for key, label in CURVES:
        pts = [(r["step"], 100 * r[key]) for r in rows if r.get(key) is not None and r.get("step") is not None]
        if pts:
            ax.plot(*zip(*pts), "-o", markersize=3, label=label)
    if not ax.lines:
        return False
    ax.set_xlabel("step")
    ax.set_ylabel("%")
    ax.grid(alpha=0.3)
    ax.legend()
    plots.save_figure(fig, path)
    return True


def sections(info: dict, classes: list[str]) -> list:
    cfg = info["config"] or {}
    ssl, data = cfg.get("ssl") or {}, cfg.get("data") or {}
    labels = next((f"data.{k}={data[k]}" for k in ("labels_per_class", "labels_total", "labeled_indices")
                   if data.get(k)), "all labelled")
    s = info["summary"]
    rows = info["metrics"] or []
    last = rows[-1] if rows else {}
    facts = [("method", ssl.get("method", "?")), ("labels", labels), ("labelled images", s.get("train_size")),
             ("unlabelled images", s.get("unlabeled_size", 0)), ("steps", (cfg.get("train") or {}).get("iterations")),
             ("reported model", "final weights (EMA when train.ema_decay > 0); no selection on val or test")]
    facts += [(label, f"{100 * last[key]:.1f} %") for key, label in CURVES[:3] if last.get(key) is not None]
    blocks = [("table", ["", ""], [[k, str(v)] for k, v in facts])]
    if _plot(rows, info["run_dir"] / "ssl_curves.png"):
        blocks.append(("image", "ssl_curves.png", "mask rate and pseudo-label accuracy per evaluation"))
    return [("Semi-supervised training", blocks)] + classification.sections(info, classes)
