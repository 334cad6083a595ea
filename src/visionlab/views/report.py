"""The human view of one run: report.md, report.html and PNG plots, rebuilt from run-directory files only."""
from __future__ import annotations

import csv
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import yaml

from visionlab.engine.rundir import unfinished
from visionlab.views import plots
from visionlab.views.markup import fmt as _fmt
from visionlab.views.markup import render_html, render_markdown
from visionlab.views.tasks import view_for
from visionlab.utils import UserError, atomic_write_text

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


def _task(info: dict) -> str:
    return info["summary"].get("task") or _cfg_get(info["config"], "task") or "classification"


def _metric_rows(info: dict, split_keys: set[str]) -> list[tuple[str, str, str]]:
    """(metric, label, kind) for the headline: the task view's own order first, then any other number logged."""
    known = list(view_for(_task(info)).headline)
    names = {m for m, _, _ in known}
    extra = sorted(k for k in split_keys if k not in names)
    return [r for r in known if r[0] in split_keys] + [(k, k, "f4") for k in extra]


# ---------------------------------------------------------------- building the report (format-neutral blocks)

def _headline(info: dict) -> list:
    s, split = info["summary"], info["summary"].get("split", "test")
    sources = [(split, s, split)] + [(name, d, name) for name, d in info["evals"].items()]
    keys = {k.split("/", 1)[1] for _, d, p in sources for k, v in d.items()
            if k.startswith(p + "/") and isinstance(v, (int, float)) and not isinstance(v, bool)}
    sources = [src for src in sources if any(k.startswith(src[2] + "/") for k in src[1])]
    if not sources or not keys:
        return [("text", "No evaluation metrics in summary.json.")]
    header = ["metric"] + [name for name, _, _ in sources]
    rows = [[label] + [_fmt(d.get(f"{p}/{m}"), kind) for _, d, p in sources]
            for m, label, kind in _metric_rows(info, keys)]
    return [("table", header, rows)]


def _training(info: dict) -> list:
    s, t = info["summary"], info["summary"].get("timings") or {}
    primary = s.get("primary_metric", "val/acc")
    kinds = {m: kind for m, _, kind in view_for(_task(info)).headline}
    kv = [("epochs run", _fmt(s.get("epochs_run"))), ("best epoch", _fmt(s.get("best_epoch"))),
          (f"best {primary}", _fmt(s.get(f"best/{primary}"), kinds.get(primary.split("/")[-1], "f4"))),
          ("train time (s)", _fmt(t.get("train_s"))), ("eval time (s)", _fmt(t.get("eval_s"))),
          ("train throughput (img/s)", _fmt(t.get("train_img_per_s"))),
          ("batch size", _fmt(_cfg_get(info["config"], "train", "batch_size"))),
          ("optimizer", _fmt(_cfg_get(info["config"], "optim", "name"))),
          ("lr", _fmt(_cfg_get(info["config"], "optim", "lr")))]
    blocks = [("table", ["item", "value"], [list(r) for r in kv if r[1] != "\u2013"])]
    rows = info["metrics"]
    if rows:
        cols = [c for c in rows[0] if any(r.get(c) is not None for r in rows)]
        kind = {c: kinds.get(c.split("/", 1)[-1], "f4") for c in cols if "/" in c}
        blocks.append(("table", cols, [[_fmt(r.get(c), kind.get(c, "")) for c in cols] for r in rows]))
    return blocks


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
        done = {f: r for f, r in ex.items() if isinstance(r, dict)}
        m = next((r["metric"] for r in done.values() if r.get("metric")), "top1")
        rows = [[fmt, _fmt(r.get(f"eager_{m}"), "pct"), _fmt(r.get(m), "pct"),
                 f"{r['diff_points']:+.2f}" if isinstance(r.get("diff_points"), (int, float)) else "\u2013",
                 _fmt(r.get("agree"), "pct"), _fmt(r.get("max_abs_logit_diff")), str(r.get("file", ""))]
                for fmt, r in done.items()]
        blocks += [("text", f"{m} parity on the test split: eager fp32 vs the exported file (uint8 NHWC input)."),
                   ("table", ["format", f"eager {m}", f"export {m}", "diff (points)", "same argmax",
                              "max |logit diff|", "file"], rows)]
    if isinstance(bench, dict) and bench.get("results"):
        from visionlab.views.bench_run import bench_table, machine_line   # lazy: needs torch and run/

        header, rows = bench_table(bench)
        blocks += [("text", f"Latency per batch on {machine_line(bench)}."), ("table", header, rows)]
    return blocks


def _write_plots(info: dict, classes: list[str]) -> dict:
    run_dir, s, written = info["run_dir"], info["summary"], {}
    if s.get("confusion"):
        plots.plot_confusion(s["confusion"], classes, run_dir / "confusion_matrix.png")
        written["confusion"] = "confusion_matrix.png"
    if info["metrics"]:
        metric = s.get("primary_metric", "val/acc").split("/", 1)[-1]
        plots.plot_curves(info["metrics"], run_dir / "curves.png", metric=metric)
        written["curves"] = ("curves.png", metric)
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
                ("Training", _training(info))]
    if "curves" in images:
        file, metric = images["curves"]
        sections.append(("Training curves", [("image", file, f"loss and {metric} per epoch")]))
    if "confusion" in images:
        sections.append(("Confusion matrix", [("image", images["confusion"], "confusion matrix")]))
    sections += view_for(_task(info)).sections(info, classes)       # the task's own tables and galleries
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
