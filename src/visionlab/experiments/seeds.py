"""One config over seeds 0..n-1 in <out_dir>/<name>/seed-<k>/: skip finished seeds, resume interrupted ones,
then seeds.json and a report (per-seed table, mean, std, 95 % CI, min, max, plot). Reads only run directories."""
from __future__ import annotations

import copy
import math
import re
import shutil
import sys
from pathlib import Path

import yaml

from visionlab import config as C
from visionlab.engine.lock import check_free
from visionlab.engine.rundir import check_name, read_status
from visionlab.experiments import parallel
from visionlab.experiments import primary as P
from visionlab.experiments import stats
from visionlab.views import plots
from visionlab.views.markup import render_html, render_markdown
from visionlab.experiments.training import train_and_report
from visionlab.utils import UserError, atomic_write_text, read_json, write_json

# (key in a seed record, label, format kind for fmt()): after the runs' primary test metric and test/loss
OTHER_METRICS = (("best_epoch", "best epoch", "g"), ("train_s", "train time (s)", "f1"))
SEED_DIR = re.compile(r"^seed-(\d+)$")
# Keys that may differ between a finished seed and this command without changing its result.
IGNORED_KEYS = {"name", "out_dir", "seed", "resume", "train.progress", "train.tensorboard", "train.threads",
                "data.cache_dir", "data.num_workers", "data.root"}


# ---------------------------------------------------------------- running

def seed_dir_state(run_dir: Path) -> str:
    """'finished' (summary.json, and status.json, when there is one, says so), 'interrupted' (a last checkpoint),
    'stale' (started, no checkpoint) or 'new'. A failed or running run is interrupted or stale by its checkpoint."""
    if (run_dir / "summary.json").is_file() and (read_status(run_dir) or {}).get("status", "finished") == "finished":
        return "finished"
    if (run_dir / "checkpoints" / "last.safetensors").is_file():
        return "interrupted"
    return "stale" if run_dir.exists() else "new"


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {prefix + k: v})
    return out


def check_same_config(run_dir: Path, cfg: C.Config) -> None:
    """Refuse to mix a seed run made with another config into these statistics."""
    saved = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) or {}
    old = _flat(C.to_dict(C.from_dict(saved)))
    new = _flat(C.to_dict(cfg))
    diff = sorted(k for k in old.keys() | new.keys() if k not in IGNORED_KEYS and old.get(k) != new.get(k))
    if diff:
        shown = ", ".join(f"{k}: {old.get(k)!r} there, {new.get(k)!r} now" for k in diff[:4])
        raise UserError(f"{run_dir} was trained with another config ({shown}); pick a new name= for this "
                        f"experiment or delete {run_dir.parent} to start over")


def train_run(cfg: C.Config):
    """One seed's run with its gallery and report, as the public ``visionlab.train`` makes it."""
    return train_and_report(cfg)


def default_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def ensure_seed(cfg: C.Config, parent: Path, seed: int, log=None) -> str:
    """Make sure ``parent/seed-<seed>`` holds a finished run of ``cfg`` with that seed; returns what was done."""
    log = log or default_log
    run_dir = parent / f"seed-{seed}"
    if run_dir.exists():
        check_free(run_dir)         # another process trains it: never delete, resume or count it under its feet
    state = seed_dir_state(run_dir)
    if state in ("finished", "interrupted"):
        check_same_config(run_dir, cfg)
    if state == "finished":
        log(f"{run_dir}: finished, skipped")
        return "skipped"
    failed = _failure(run_dir)
    if state == "stale":
        # killed before its first checkpoint: nothing to resume, and train() would not reuse the name (-2)
        log(f"{run_dir}: {failed or 'started'} but no checkpoint; starting it again")
        shutil.rmtree(run_dir)
    elif state == "interrupted" and failed:
        log(f"{run_dir}: {failed}")
    seed_cfg = copy.deepcopy(cfg)
    seed_cfg.out_dir, seed_cfg.name, seed_cfg.seed = str(parent), run_dir.name, seed
    seed_cfg.resume = str(run_dir) if state == "interrupted" else ""
    log(f"{run_dir}: {'resuming' if state == 'interrupted' else 'training'}")
    result = train_run(seed_cfg)
    if Path(result.run_dir).resolve() != run_dir.resolve():
        raise UserError(f"expected the run in {run_dir}, got {result.run_dir}")
    return "resumed" if state == "interrupted" else "ran"


Job = tuple[C.Config, Path, int]        # (config, parent folder, seed): the run parent/seed-<seed>


def ensure_all(jobs: list[Job], workers: int = 1, log=None) -> list[str]:
    """`ensure_seed` for every job, in the given order (callers list them seed-major, so a stopped experiment is
    already paired on its first seeds); returns each job's action. Finished runs are skipped here; with ``workers``
    > 1 the others train that many at a time in worker processes (`parallel.run_in_workers`), each on its share of
    the cores, and log to stderr (``log`` stays in this process)."""
    workers = parallel.check_jobs(workers)
    actions: dict[int, str] = {}
    todo = []
    for i, (cfg, parent, seed) in enumerate(jobs):
        if seed_dir_state(parent / f"seed-{seed}") == "finished":
            actions[i] = ensure_seed(cfg, parent, seed, log)
        else:
            todo.append(i)
    if workers == 1 or len(todo) <= 1:
        actions.update({i: ensure_seed(*jobs[i], log) for i in todo})
    else:
        (log or default_log)(f"{len(todo)} runs to train, {workers} at a time")
        calls = [(parallel.worker_config(jobs[i][0], workers), *jobs[i][1:]) for i in todo]
        actions.update(zip(todo, parallel.run_in_workers(ensure_seed, calls, workers)))
    return [actions[i] for i in range(len(jobs))]


def experiment_config(cfg_path: str | None, overrides: list[str]) -> tuple[C.Config, Path]:
    """The resolved config and the experiment folder <out_dir>/<name>; seeds and resume are set per seed."""
    for item in overrides:
        key = item.split("=", 1)[0].strip()
        if key in ("seed", "resume"):
            raise UserError(f"{key}= is set per seed by this mode (seed-k gets seed=k, interrupted seeds resume "
                            f"by themselves); drop {item!r} and use n=N for the number of seeds")
    cfg = C.load_config(cfg_path, overrides)
    return cfg, Path(cfg.out_dir) / check_name(cfg.name or "default")


def run_seeds(cfg_path: str | None, overrides: list[str], n: int, log=None, jobs: int = 1) -> Path:
    """Train seeds 0..n-1 of a config into <out_dir>/<name>/seed-<k>/, ``jobs`` at a time, then write seeds.json
    and its report.

    Finished seeds are skipped and interrupted ones resumed, so re-running after a crash only does what is missing.
    Returns the path of seeds.html."""
    if n < 1:
        raise UserError(f"n={n}: need at least one seed (n=5 is a good start; n>=2 for a confidence interval)")
    cfg, parent = experiment_config(cfg_path, overrides)
    parent.mkdir(parents=True, exist_ok=True)
    actions = dict(enumerate(ensure_all([(cfg, parent, k) for k in range(n)], jobs, log)))
    meta = {"name": parent.name, "config": str(cfg_path) if cfg_path else None, "overrides": list(overrides),
            "n": n, "actions": {str(k): v for k, v in actions.items()}}
    return write_seeds(parent, meta)


# ---------------------------------------------------------------- reading and summarizing

def read_seed_record(run_dir: Path) -> dict:
    """seed, run_dir and the numeric metrics of one finished run (summary.json top-level numbers + train_s)."""
    summary = read_json(run_dir / "summary.json")
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text(encoding="utf-8")) if (
        run_dir / "config.yaml").is_file() else {}
    seed = (cfg or {}).get("seed")
    if not isinstance(seed, int):
        seed = int(SEED_DIR.match(run_dir.name).group(1))
    rec = {"seed": seed, "run_dir": run_dir.name}
    rec.update({k: v for k, v in summary.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
                and (k.startswith(("test/", "best/")) or k in ("best_epoch", "epochs_run"))})
    rec["train_s"] = (summary.get("timings") or {}).get("train_s")
    return rec


def _failure(run_dir: Path) -> str | None:
    """'failed: <reason>' when the run's status.json says it failed (or it was killed), else None."""
    st = read_status(run_dir) or {}
    return f"failed: {st.get('reason') or 'no reason recorded'}" if st.get("status") == "failed" else None


def _seed_dirs(parent: Path, seeds: list[int] | None):
    for d in sorted(parent.glob("seed-*")):
        m = SEED_DIR.match(d.name)
        if m and d.is_dir() and (seeds is None or int(m.group(1)) in seeds):
            yield int(m.group(1)), d


def collect(parent: Path, seeds: list[int] | None = None) -> list[dict]:
    """Records of the finished seed-<k> runs in ``parent`` (only ``seeds`` when given), sorted by seed.
    Failed runs (status.json) are left out: failures() explains them."""
    out = [read_seed_record(d) for _, d in _seed_dirs(parent, seeds) if seed_dir_state(d) == "finished"]
    return sorted(out, key=lambda r: r["seed"])


def failures(parent: Path, seeds: list[int] | None = None) -> dict[int, str]:
    """{seed: 'failed: reason'} for the seed-<k> runs whose status.json says they failed."""
    found = {k: _failure(d) for k, d in _seed_dirs(parent, seeds)}
    return {k: why for k, why in found.items() if why}


def seed_metrics(primary: P.Primary, records: list[dict]) -> list[tuple[str, str, str]]:
    """(key, label, format) of the metrics a seeds report shows: the runs' primary metric on the test split
    (test/acc, test/miou, ...), the task view's ``seed_metrics`` (detection: AP50, AP75), test/loss when the runs
    report it, best epoch and training time."""
    from visionlab.views.tasks import TASK_VIEWS

    view = TASK_VIEWS.get(primary.task)
    keys = [primary.test] + [f"test/{m}" for m in (view.seed_metrics if view else ()) if f"test/{m}" != primary.test]
    out = [(k, P.metric_label(k, primary.task), P.metric_kind(k, primary.task)) for k in keys
           if k == primary.test or any(k in r for r in records)]
    if primary.test != "test/loss" and any("test/loss" in r for r in records):
        out.append(("test/loss", "test loss", "f4"))
    return out + list(OTHER_METRICS)


def summarize(records: list[dict], metrics) -> dict:
    """describe() of each seed metric over the records."""
    return {key: stats.describe([r.get(key) for r in records]) for key, _, _ in metrics}


def metrics_of(data: dict) -> list:
    """The (key, label, format) rows a seeds.json holds (older files: the classification set)."""
    if data.get("metrics"):
        return [tuple(m) for m in data["metrics"]]
    return seed_metrics(P.Primary(*P.LEGACY), data["seeds"])


# ---------------------------------------------------------------- rendering

def fmt(v, kind: str) -> str:
    """A number for a table: 'pct' (0.98 -> 98.00%), 'pp' (difference in points), 'f4', 'f1', 'g', 'p'."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "\u2013"
    v = float(v)
    if kind == "pct":
        return f"{100 * v:.2f}%"
    if kind == "pp":
        return f"{100 * v:+.2f} pp"
    if kind == "p":
        return "<0.0001" if v < 1e-4 else f"{v:.4f}"
    return {"f4": f"{v:.4f}", "f1": f"{v:.1f}"}.get(kind, f"{v:.4g}")


def ci_text(d: dict, kind: str) -> str:
    """'[lo, hi]' of a describe() dict, or a dash saying why there is none."""
    return f"[{fmt(d['ci'][0], kind)}, {fmt(d['ci'][1], kind)}]" if d.get("ci") else "\u2013 (n<2)"


def plot_points(panels: list[tuple[str, dict, float]], path: Path) -> None:
    """One panel per (ylabel, {group: [values]}, scale): each seed as a dot, the mean with its 95 % CI as a bar."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(max(4.0, 3.2 * len(panels) + 0.9 * max(len(p[1]) for p in panels)), 3.6),
                 layout="constrained")
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    for ax, (ylabel, groups, scale) in zip(axes, panels):
        for i, (name, values) in enumerate(groups.items()):
            vals = [scale * v for v in values if v is not None]
            d = stats.describe(vals)
            offsets = [(j - (len(vals) - 1) / 2) * 0.06 for j in range(len(vals))]   # spread ties sideways
            ax.plot([i - 0.15 + o for o in offsets], vals, "o", alpha=0.6, markersize=5, color="C0")
            if d["mean"] is not None:
                lo, hi = d["ci"] if d["ci"] else (d["mean"], d["mean"])
                ax.errorbar([i + 0.15], [d["mean"]], yerr=[[d["mean"] - lo], [hi - d["mean"]]], fmt="s",
                            color="C3", capsize=5, markersize=6)
        ax.set_xticks(range(len(groups)), list(groups), rotation=20 if len(groups) > 4 else 0)
        ax.set_xlim(-0.6, len(groups) - 0.4)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, axis="y")
    axes[0].set_title("dots: seeds; square: mean with 95 % CI", fontsize=9, loc="left")
    plots.save_figure(fig, path)     # the report figures' atomic PNG writer


def seeds_sections(data: dict, image: str | None) -> tuple[str, list]:
    """Title and report sections (report.py's block format) for a seeds.json dict."""
    recs, st, metrics = data["seeds"], data["stats"], metrics_of(data)
    per_seed = [[str(r["seed"]), r["run_dir"]] + [fmt(r.get(k), kind) for k, _, kind in metrics] for r in recs]
    agg = [[label, str(st[k]["n"]), fmt(st[k]["mean"], kind), fmt(st[k]["std"], kind), ci_text(st[k], kind),
            fmt(st[k]["min"], kind), fmt(st[k]["max"], kind)] for k, label, kind in metrics if k in st]
    better = "lower" if data.get("mode") == "min" else "higher"
    primary = f"primary metric: {metrics[0][0]} ({better} is better). " if data.get("primary_metric") else ""
    sections = [("Summary over seeds", [("table", ["metric", "n", "mean", "std", "95% CI", "min", "max"], agg),
                                        ("text", primary + "std: sample standard deviation (ddof=1); 95% CI of the "
                                                 "mean from the t distribution with n-1 degrees of freedom.")]),
                ("Per seed", [("table", ["seed", "run", *[label for _, label, _ in metrics]], per_seed)])]
    if image:
        sections.append(("Plot", [("image", image, "per-seed metrics with mean and 95% CI")]))
    missing = [k for k in range(data.get("n") or 0) if k not in {r["seed"] for r in recs}]
    src = [("config", data.get("config") or "(the embedded default job)"), ("overrides", " ".join(data.get("overrides") or []) or "none")]
    if missing:
        src.append(("unfinished seeds", ", ".join(map(str, missing))))
    for k, why in sorted((data.get("failed") or {}).items(), key=lambda kv: int(kv[0])):
        src.append((f"seed {k} (left out)", why))
    sections.append(("Setup", [("list", src)]))
    return f"Seeds: {data['name']} (n={len(recs)})", sections


def write_seeds(parent: Path, meta: dict) -> Path:
    """Collect the finished seeds in ``parent``; write seeds.json, seeds.png, seeds.md, seeds.html."""
    n = meta.get("n")
    records = collect(parent, list(range(n)) if n else None)
    if not records:
        raise UserError(f"{parent}: no finished seed-<k>/summary.json yet; run `visionlab seeds CONFIG n=5` first")
    primary = P.of_runs(parent / r["run_dir"] for r in records)
    metrics = seed_metrics(primary, records)
    data = {**meta, "name": meta.get("name") or parent.name, "task": primary.task,
            "primary_metric": primary.metric, "mode": primary.mode, "metrics": [list(m) for m in metrics],
            "seeds": records, "stats": summarize(records, metrics),
            "failed": {str(k): why for k, why in failures(parent, list(range(n)) if n else None).items()}}
    write_json(parent / "seeds.json", data)
    shown = [m for m in metrics if m[0].startswith("test/")][:2]     # the primary metric (and the test loss)
    plot_points([(label + (" (%)" if kind == "pct" else ""), {"seeds": [r.get(k) for r in records]},
                  100.0 if kind == "pct" else 1.0) for k, label, kind in shown], parent / "seeds.png")
    title, sections = seeds_sections(data, "seeds.png")
    atomic_write_text(parent / "seeds.md", render_markdown(title, sections))
    atomic_write_text(parent / "seeds.html", render_html(title, sections))
    return parent / "seeds.html"


def render_seeds(parent: str | Path) -> Path:
    """Rebuild a seeds folder's report from its seed runs (keeps seeds.json's setup: config, overrides, n)."""
    parent = Path(parent)
    meta = read_json(parent / "seeds.json") if (parent / "seeds.json").is_file() else {}
    return write_seeds(parent, {k: meta.get(k) for k in ("name", "config", "overrides", "n", "actions")})
