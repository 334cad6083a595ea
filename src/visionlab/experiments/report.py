"""The human view of one run: report.md, report.html and PNG plots, rebuilt from run-directory files only."""
from __future__ import annotations

import csv
import html
import json
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import yaml

from visionlab.engine.rundir import unfinished
from visionlab.experiments import plots
from visionlab.utils import UserError, atomic_write_text

METRICS = (("acc", "top-1 accuracy", "pct"), ("top5", "top-5 accuracy", "pct"), ("loss", "loss", "f4"),
           ("ece", "ECE", "f4"), ("macro_f1", "macro-F1", "f4"))
CSV_COLUMNS = ("epoch", "step", "lr", "train/loss", "train/acc", "val/loss", "val/acc", "epoch_s", "img_per_s")
ERROR_KEYS = ("images", "true", "pred", "conf")


# ---------------------------------------------------------------- reading the run directory

def _read_json_opt(path: Path, notes: list[str]):
    if not path.is_file():
        return None
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        notes.append(f"{path.name} could not be read: {e}")
        return None


def _num(text: str):
    try:
        v = float(text)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def read_metrics_csv(path: str | os.PathLike) -> list[dict]:
    """Rows of metrics.csv as dicts of floats (None for empty cells; ``epoch``/``step`` as int)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as f:
        for raw in csv.DictReader(f):
            row = {k: _num(v) for k, v in raw.items() if k is not None}
            for k in ("epoch", "step"):
                if row.get(k) is not None:
                    row[k] = int(row[k])
            rows.append(row)
    return rows


def _read_errors(path: Path, notes: list[str]) -> dict | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ERROR_KEYS if k not in z.files]
            if missing:
                raise ValueError(f"missing arrays {missing}")
            out = {k: z[k] for k in ERROR_KEYS}
            out["names"] = [str(s) for s in z["names"]] if "names" in z.files else None
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:       # truncated: not a zip file any more
        notes.append(f"errors.npz could not be read ({e}): no gallery of misclassified images")
        return None
    if out["images"].ndim == 3:  # [K, H, W] grayscale without a channel axis
        out["images"] = out["images"][..., None]
    return out


def load_run_files(run_dir: str | os.PathLike) -> dict:
    """Everything the report needs from ``run_dir``; absent files give None, unreadable ones a note."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UserError(f"run directory not found: {run_dir}")
    notes: list[str] = []
    info = {"run_dir": run_dir, "notes": notes, "config_text": None, "config": {}, "metrics": []}
    cfg_path = run_dir / "config.yaml"
    if cfg_path.is_file():
        try:
            info["config_text"] = cfg_path.read_text(encoding="utf-8")
            info["config"] = yaml.safe_load(info["config_text"]) or {}
        except (yaml.YAMLError, UnicodeDecodeError) as e:
            notes.append(f"config.yaml could not be parsed: {e}")
    if (run_dir / "metrics.csv").is_file():
        try:
            info["metrics"] = read_metrics_csv(run_dir / "metrics.csv")
        except (OSError, csv.Error, UnicodeDecodeError) as e:
            notes.append(f"metrics.csv could not be read: {e}")
    info["summary"] = _read_json_opt(run_dir / "summary.json", notes) or {}
    info["unfinished"] = unfinished(run_dir)         # status.json: failed or still running
    info["data_report"] = _read_json_opt(run_dir / "data_report.json", notes)
    info["errors"] = _read_errors(run_dir / "errors.npz", notes)
    info["export"] = _read_json_opt(run_dir / "export.json", notes)      # `visionlab export`
    info["bench"] = _read_json_opt(run_dir / "bench.json", notes)        # `visionlab bench`
    info["evals"] = {}
    for p in sorted(run_dir.glob("eval_*.json")):
        data = _read_json_opt(p, notes)
        if isinstance(data, dict):
            info["evals"][p.stem[len("eval_"):]] = data
    return info


# ---------------------------------------------------------------- formatting

def _fmt(v, kind: str = "") -> str:
    if v is None or (isinstance(v, float) and not np.isfinite(v)):
        return "\u2013"
    if kind == "pct":
        return f"{100 * float(v):.2f}%"
    if kind == "f4":
        return f"{float(v):.4f}"
    if kind == "int":
        return f"{int(v):,}"
    if kind == "flop":
        v = float(v)
        for prefix, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(v) >= scale:
                return f"{v / scale:.2f} {prefix}FLOP"
        return f"{v:g} FLOP"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _cfg_get(cfg: dict, *keys):
    for k in keys:
        if not isinstance(cfg, dict):
            return None
        cfg = cfg.get(k)
    return cfg


def _classes(summary: dict) -> list[str]:
    classes = [str(c) for c in summary.get("classes") or []]
    c = max(len(summary.get("confusion") or []), len(summary.get("per_class") or []))
    return classes + [str(i) for i in range(len(classes), c)]


# ---------------------------------------------------------------- building the report (format-neutral blocks)

def _headline(info: dict) -> list:
    s, split = info["summary"], info["summary"].get("split", "test")
    sources = [(split, s, split)] + [(name, d, name) for name, d in info["evals"].items()]
    sources = [src for src in sources if any(f"{src[2]}/{m}" in src[1] for m, _, _ in METRICS)]
    if not sources:
        return [("text", "No evaluation metrics in summary.json.")]
    header = ["metric"] + [name for name, _, _ in sources]
    rows = [[label] + [_fmt(d.get(f"{p}/{m}"), kind) for _, d, p in sources] for m, label, kind in METRICS]
    return [("table", header, rows)]


def _training(info: dict) -> list:
    s, t = info["summary"], info["summary"].get("timings") or {}
    kv = [("epochs run", _fmt(s.get("epochs_run"))), ("best epoch", _fmt(s.get("best_epoch"))),
          ("best val accuracy", _fmt(s.get("best/val/acc"), "pct")),
          ("train time (s)", _fmt(t.get("train_s"))), ("eval time (s)", _fmt(t.get("eval_s"))),
          ("train throughput (img/s)", _fmt(t.get("train_img_per_s"))),
          ("batch size", _fmt(_cfg_get(info["config"], "train", "batch_size"))),
          ("optimizer", _fmt(_cfg_get(info["config"], "optim", "name"))),
          ("lr", _fmt(_cfg_get(info["config"], "optim", "lr")))]
    blocks = [("table", ["item", "value"], [list(r) for r in kv if r[1] != "\u2013"])]
    rows = info["metrics"]
    if rows:
        cols = [c for c in CSV_COLUMNS if any(r.get(c) is not None for r in rows)]
        kinds = {"train/acc": "pct", "val/acc": "pct", "train/loss": "f4", "val/loss": "f4"}
        blocks.append(("table", cols, [[_fmt(r.get(c), kinds.get(c, "")) for c in cols] for r in rows]))
    return blocks


def _per_class(info: dict, classes: list[str]) -> list:
    pcs = info["summary"].get("per_class") or []
    if not pcs:
        return [("text", "No per-class metrics in summary.json.")]
    rows = []
    for pc in pcs:
        i = pc.get("index")
        name = classes[i] if isinstance(i, int) and 0 <= i < len(classes) else str(i)
        rows.append([name, _fmt(pc.get("precision"), "pct"), _fmt(pc.get("recall"), "pct"),
                     _fmt(pc.get("f1"), "f4"), _fmt(pc.get("support"), "int")])
    return [("table", ["class", "precision", "recall", "F1", "support"], rows)]


def _data(info: dict, classes: list[str]) -> list:
    dr = info["data_report"]
    if not isinstance(dr, dict):
        return [("text", "No data_report.json in this run.")]
    blocks = []
    if dr.get("source"):
        blocks.append(("text", f"Source: {dr['source']}"))
    counts = dr.get("counts") or {}
    if counts:
        splits = list(counts)
        names = list(classes) + sorted({c for d in counts.values() for c in d} - set(classes))
        names = [n for n in names if any(n in counts[sp] for sp in splits)]
        rows = [[n] + [_fmt(counts[sp].get(n), "int") for sp in splits] for n in names]
        rows.append(["total"] + [_fmt(sum(counts[sp].values()), "int") for sp in splits])
        blocks.append(("table", ["class"] + splits, rows))
    skipped = dr.get("skipped") or []
    blocks.append(("text", f"Skipped files: {len(skipped)}"))
    if skipped:
        blocks.append(("list", [(str(x.get("file", "?")), str(x.get("reason", ""))) for x in skipped]))
    return blocks


def _similarity(run_dir: Path) -> list:
    """Retrieval scores (similarity/retrieval.json) and neighbour grids written by `visionlab similar`."""
    folder = run_dir / "similarity"
    blocks = []
    ret = _read_json_opt(folder / "retrieval.json", [])
    if isinstance(ret, dict):
        ks = sorted(int(k.split("@")[1]) for k in ret if k.startswith("recall@"))
        same = "; L2-normalised features, so cosine and euclidean rank identically" if ret.get("normalized") else ""
        blocks += [("text", f"Test images as queries against the train split ({ret.get('metric')} distance{same})."),
                   ("table", ["k", "recall@k", "mAP@k"],
                    [[str(k), _fmt(ret.get(f"recall@{k}"), "pct"), _fmt(ret.get(f"map@{k}"), "pct")] for k in ks])]
    for grid in sorted(folder.glob("*_similar.png"))[:8]:
        blocks.append(("image", f"similarity/{grid.name}", f"nearest train images to {grid.stem}"))
    return blocks


def _deploy(info: dict) -> list:
    """Export parity (export.json) and latency (bench.json) tables, when those files exist."""
    blocks, ex, bench = [], info.get("export"), info.get("bench")
    if isinstance(ex, dict) and ex:
        rows = [[fmt, _fmt(r.get("eager_top1"), "pct"), _fmt(r.get("top1"), "pct"),
                 f"{r['diff_points']:+.2f}" if isinstance(r.get("diff_points"), (int, float)) else "\u2013",
                 _fmt(r.get("agree"), "pct"), _fmt(r.get("max_abs_logit_diff")), str(r.get("file", ""))]
                for fmt, r in ex.items() if isinstance(r, dict)]
        blocks += [("text", "Accuracy parity on the test split: eager fp32 vs the exported file (uint8 NHWC input)."),
                   ("table", ["format", "eager top-1", "export top-1", "diff (points)", "same argmax",
                              "max |logit diff|", "file"], rows)]
    if isinstance(bench, dict) and bench.get("results"):
        from visionlab.experiments.bench_run import bench_table, machine_line   # lazy: needs torch and run.py

        header, rows = bench_table(bench)
        blocks += [("text", f"Latency per batch on {machine_line(bench)}."), ("table", header, rows)]
    return blocks


def _write_plots(info: dict, classes: list[str]) -> dict:
    run_dir, s, written = info["run_dir"], info["summary"], {}
    if s.get("confusion"):
        plots.plot_confusion(s["confusion"], classes, run_dir / "confusion_matrix.png")
        written["confusion"] = "confusion_matrix.png"
    if info["metrics"]:
        plots.plot_curves(info["metrics"], run_dir / "curves.png")
        written["curves"] = "curves.png"
    e = info["errors"]
    if e is not None and len(e["images"]):
        k = plots.plot_errors(e["images"], e["true"], e["pred"], e["conf"], classes, run_dir / "errors.png",
                              names=e["names"])
        written["errors"] = ("errors.png", k, len(e["images"]))
    return written


def build_sections(info: dict, images: dict) -> tuple[str, list]:
    """Title and a list of (heading, blocks); a block is ("text"|"table"|"list"|"image"|"code", ...)."""
    s, cfg = info["summary"], info["config"]
    classes = _classes(s)
    name = cfg.get("name") if isinstance(cfg, dict) and cfg.get("name") else info["run_dir"].name
    title = f"Run report: {name}"
    overview = [("task", s.get("task")), ("dataset", s.get("dataset") or _cfg_get(cfg, "data", "name")),
                ("model", s.get("model") or _cfg_get(cfg, "model", "name")),
                ("parameters", _fmt(s.get("params"), "int") if s.get("params") is not None else None),
                ("FLOPs per image", _fmt(s.get("flops_per_image"), "flop")
                 if s.get("flops_per_image") is not None else None),
                ("classes", len(classes) or None), ("device", s.get("device")), ("precision", s.get("precision")),
                ("seed", _cfg_get(cfg, "seed"))]
    sections = [("Status", [("text", f"This run is not finished: {info['unfinished']}. The figures below are what it "
                                     "left so far; resume it with `visionlab train resume=RUN_DIR`.")])
                ] if info.get("unfinished") else []
    sections += [("Overview", [("table", ["item", "value"], [[k, str(v)] for k, v in overview if v is not None])]),
                ("Results", _headline(info)),
                ("Training", _training(info)), ("Per-class metrics", _per_class(info, classes))]
    if "confusion" in images:
        sections.append(("Confusion matrix", [("image", images["confusion"], "confusion matrix")]))
    if "curves" in images:
        sections.append(("Training curves", [("image", images["curves"], "loss and accuracy per epoch")]))
    if "errors" in images:
        file, k, total = images["errors"]
        sections.append(("Misclassified test images",
                         [("text", f"Showing {k} of {total} stored errors (true -> predicted (confidence))."),
                          ("image", file, "misclassified images")]))
    if (info["run_dir"] / "cam_gallery.png").is_file():
        sections.append(("Class activation maps",
                         [("text", "Grad-CAM heatmaps per class: correct (left) and wrong (right) test predictions."),
                          ("image", "cam_gallery.png", "Grad-CAM gallery")]))
    sim = _similarity(info["run_dir"])
    if sim:
        sections.append(("Similarity search", sim))
    deploy = _deploy(info)
    if deploy:
        sections.append(("Export and latency", deploy))
    sections.append(("Data", _data(info, classes)))
    if info["config_text"] is not None:
        sections.append(("Config", [("code", info["config_text"])]))
    if info["notes"]:
        sections.append(("Notes", [("list", [("", n) for n in info["notes"]])]))
    return title, sections


# ---------------------------------------------------------------- rendering

def _md_cell(text: str) -> str:
    return re.sub(r"([\\|<`])", r"\\\1", str(text)).replace("\n", " ")


def _md_code(text: str) -> str:
    ticks = "`" * (max((len(m) for m in re.findall(r"`+", text)), default=0) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{ticks}{pad}{text}{pad}{ticks}"


def render_markdown(title: str, sections: list) -> str:
    """Markdown text for ``build_sections`` output."""
    out = [f"# {_md_cell(title)}", ""]
    for heading, blocks in sections:
        out += [f"## {_md_cell(heading)}", ""]
        for b in blocks:
            if b[0] == "text":
                out += [_md_cell(b[1]), ""]
            elif b[0] == "table":
                out.append("| " + " | ".join(_md_cell(h) for h in b[1]) + " |")
                out.append("|" + "|".join("---" for _ in b[1]) + "|")
                out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in b[2]]
                out.append("")
            elif b[0] == "list":
                out += [f"- {_md_code(k) + ': ' if k else ''}{_md_cell(v)}" for k, v in b[1]] + [""]
            elif b[0] == "image":
                out += [f"![{_md_cell(b[2])}]({b[1]})", ""]
            elif b[0] == "code":
                fence = "`" * max(3, max((len(m) for m in re.findall(r"`+", b[1])), default=0) + 1)
                out += [f"{fence}yaml", b[1].rstrip("\n"), fence, ""]
    return "\n".join(out)


CSS = """body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#222}h1{border-bottom:2px solid #ddd;padding-bottom:.3em}h2{margin-top:1.6em;border-bottom:1px solid #eee}
table{border-collapse:collapse;margin:.8em 0;font-size:.92em}th,td{border:1px solid #ddd;padding:.3em .7em;
text-align:right}th{background:#f4f6f8}td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#fafafa}
img{max-width:100%;border:1px solid #eee}pre{background:#f6f8fa;padding:1em;overflow:auto}code{font-size:.95em}"""


def render_html(title: str, sections: list) -> str:
    """Self-contained HTML (inline CSS; images by relative file name) for ``build_sections`` output."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
           f"<title>{e(title)}</title><style>{CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for heading, blocks in sections:
        out.append(f"<h2>{e(heading)}</h2>")
        for b in blocks:
            if b[0] == "text":
                out.append(f"<p>{e(b[1])}</p>")
            elif b[0] == "table":
                out.append("<table><thead><tr>" + "".join(f"<th>{e(h)}</th>" for h in b[1]) + "</tr></thead><tbody>")
                out += ["<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in b[2]]
                out.append("</tbody></table>")
            elif b[0] == "list":
                out.append("<ul>" + "".join(f"<li>{'<code>' + e(k) + '</code>: ' if k else ''}{e(v)}</li>"
                                            for k, v in b[1]) + "</ul>")
            elif b[0] == "image":
                out.append(f'<p><img src="{e(b[1])}" alt="{e(b[2])}"></p>')
            elif b[0] == "code":
                out.append(f"<pre><code>{e(b[1])}</code></pre>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


def write_report(run_dir: str | os.PathLike) -> Path:
    """Regenerate plots, report.md and report.html in ``run_dir``; returns the path of report.html.

    Reads only run-directory files (config.yaml, summary.json, metrics.csv and the optional errors.npz,
    data_report.json, eval_<split>.json); any of them may be missing and the report shows what is there.
    """
    info = load_run_files(run_dir)
    images = _write_plots(info, _classes(info["summary"]))
    title, sections = build_sections(info, images)
    atomic_write_text(info["run_dir"] / "report.md", render_markdown(title, sections))
    atomic_write_text(info["run_dir"] / "report.html", render_html(title, sections))
    return info["run_dir"] / "report.html"


def render_any(path: str | os.PathLike) -> Path:
    """Regenerate the report of any results folder: a comparison (compare.json), a seeds folder (seeds.json), a sweep
    (sweep.csv) or a single run (summary.json / config.yaml); returns the HTML path."""
    path = Path(path)
    if (path / "compare.json").is_file():
        from visionlab.experiments.compare import render_compare   # lazy: compare imports this module's renderers

        return render_compare(path)
    if (path / "seeds.json").is_file():
        from visionlab.experiments.seeds import render_seeds

        return render_seeds(path)
    if (path / "ensemble.json").is_file():
        from visionlab.experiments.ensemble import render_ensemble

        return render_ensemble(path)
    if (path / "sweep.csv").is_file():
        from visionlab.experiments.sweep_report import render_sweep

        return render_sweep(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    if not ((path / "summary.json").is_file() or (path / "config.yaml").is_file()):
        raise UserError(f"{path}: no summary.json, seeds.json or compare.json; pass a folder made by "
                        "`visionlab train`, `visionlab seeds` or `visionlab compare`")
    return write_report(path)
