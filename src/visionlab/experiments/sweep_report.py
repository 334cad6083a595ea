"""What a sweep leaves behind: sweep.csv, sweep.png (objective per parameter), best.yaml, and the seed confirmation
of the top configs (confirm.json, confirm.md), all rebuilt from the optuna study and run directories."""
from __future__ import annotations

import copy
import csv
import io
import math
from pathlib import Path

import optuna
import yaml
from optuna.trial import TrialState

from visionlab import config as C
from visionlab.experiments import primary as P
from visionlab.experiments import seeds, stats
from visionlab.views import plots
from visionlab.experiments import sweep_space as S
from visionlab.utils import atomic_write_text, write_json

def confirm_metrics(primary: P.Primary, space: S.Space) -> tuple[str, ...]:
    """The runs' primary metric on the test split (test/acc, test/miou, ...), plus best/<metric> when the sweep
    optimised that primary metric (the validation figure it chose by)."""
    return (primary.test,) + ((f"best/{space.metric}",) if space.metric == primary.metric else ())


def trials_table(study: optuna.Study, space: S.Space) -> list[dict]:
    """One row per trial that ran or runs (not budget-skipped, not waiting): number, state, value, duration, params."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("skipped") or t.state == TrialState.WAITING:
            continue
        row = {"number": t.number, "state": t.state.name, "value": t.value,
               "duration_s": round(t.duration.total_seconds(), 3) if t.duration else None}
        row.update({p.key: t.params.get(p.key) for p in space.params})
        row.update(worker=t.user_attrs.get("worker"), run_dir=t.user_attrs.get("run_dir"))
        rows.append(row)
    return rows


def write_csv(rows: list[dict], space: S.Space, path: Path) -> None:
    cols = ["number", "state", "value", "duration_s", *[p.key for p in space.params], "worker", "run_dir"]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for row in rows:
        w.writerow({k: "" if row.get(k) is None else row[k] for k in cols})
    atomic_write_text(path, buf.getvalue())


def _positions(p: S.Param, values: list) -> tuple[list, list | None]:
    """x positions for a parameter's values; non-numeric values (names, booleans) become evenly spaced ticks."""
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        return list(values), None
    labels = [str(v) for v in (p.values or sorted(set(values), key=str))]
    return [labels.index(str(v)) for v in values], labels


def plot_sweep(rows: list[dict], space: S.Space, path: Path) -> None:
    """sweep.png: the objective against each parameter (one panel each); pruned trials show their last value."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    done = [r for r in rows if r["value"] is not None and r["state"] in ("COMPLETE", "PRUNED")]
    complete = [r for r in done if r["state"] == "COMPLETE"]
    pick = max if space.direction == "maximize" else min
    best = pick(complete, key=lambda r: r["value"]) if complete else None
    n = len(space.params)
    fig = Figure(figsize=(3.6 * n + 0.6, 3.4), layout="constrained")
    axes = fig.subplots(1, n, squeeze=False)[0]
    for ax, p in zip(axes, space.params):
        xs, labels = _positions(p, [r[p.key] for r in done])
        for state, style in (("COMPLETE", dict(marker="o", color="C0", alpha=0.75)),
                             ("PRUNED", dict(marker="x", color="0.55"))):
            idx = [i for i, r in enumerate(done) if r["state"] == state]
            ax.scatter([xs[i] for i in idx], [done[i]["value"] for i in idx], label=state.lower(), **style)
        if best is not None:
            ax.scatter([xs[done.index(best)]], [best["value"]], marker="*", s=180, color="C3", label="best", zorder=3)
        if labels:
            ax.set_xticks(range(len(labels)), labels)
        elif p.log_axis:
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())    # minor labels overlap on a decade or two
        ax.set_xlabel(p.key)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel(space.metric + (" (pruned: last epoch)" if any(r["state"] == "PRUNED" for r in done) else ""))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"sweep {space.name}: {len(complete)} complete, {len(done) - len(complete)} pruned", fontsize=10)
    plots.save_figure(fig, path)      # the report figures' atomic PNG writer


def best_config(trial: optuna.trial.FrozenTrial, space: S.Space, out_dir: str) -> dict:
    """The best trial's full resolved config, renamed so `visionlab train best.yaml` makes a fresh run."""
    cfg = copy.deepcopy(trial.user_attrs["config"])
    cfg.update(name=f"{space.name}-best", out_dir=out_dir)
    return C.to_dict(C.from_dict(cfg))


def write_best(trial: optuna.trial.FrozenTrial, space: S.Space, out_dir: str, path: Path) -> None:
    params = ", ".join(f"{k}={v}" for k, v in trial.params.items())
    head = (f"# best trial of sweep {space.name}: trial {trial.number}, {space.metric}={trial.value:.6g} "
            f"({space.direction})\n# params: {params}\n# run it: visionlab train {path}\n")
    atomic_write_text(path, head + yaml.safe_dump(best_config(trial, space, out_dir), sort_keys=False))


def write_outputs(study: optuna.Study, space: S.Space, sweep_dir: Path, out_dir: str):
    """sweep.csv, sweep.png and best.yaml (when a trial completed); returns (rows, best row or None, files)."""
    rows = trials_table(study, space)
    files = [sweep_dir / "sweep.csv", sweep_dir / "sweep.png"]
    write_csv(rows, space, files[0])
    plot_sweep(rows, space, files[1])
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not complete:
        files.append(render_sweep(sweep_dir))
        return rows, None, files
    best = study.best_trial
    write_best(best, space, out_dir, sweep_dir / "best.yaml")
    files += [sweep_dir / "best.yaml", render_sweep(sweep_dir)]
    return rows, next(r for r in rows if r["number"] == best.number), files


# ---------------------------------------------------------------- search, then confirm over seeds

def top_trials(study: optuna.Study, space: S.Space, k: int) -> list[optuna.trial.FrozenTrial]:
    """The k best COMPLETE trials by the sweep metric."""
    done = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)) if "config" in t.user_attrs]
    return sorted(done, key=lambda t: t.value, reverse=space.direction == "maximize")[:k]


def confirm_top(study: optuna.Study, space: S.Space, sweep_dir: Path, k: int, n: int, log) -> list[dict]:
    """Rerun the top ``k`` configs over seeds 0..n-1 in confirm/<rank>/seed-<s>/ (finished seeds are reused);
    mean, std, 95 % t CI per config and the paired t-test of each against the sweep's best over matched seeds."""
    top = top_trials(study, space, k)
    for rank, trial in enumerate(top, start=1):
        cfg = C.from_dict(best_config(trial, space, str(sweep_dir)))
        for s in range(n):
            seeds.ensure_seed(cfg, sweep_dir / "confirm" / str(rank), s, log)
    recs = {rank: seeds.collect(sweep_dir / "confirm" / str(rank), list(range(n))) for rank in range(1, len(top) + 1)}
    primary = P.of_runs(sweep_dir / "confirm" / str(rank) / r["run_dir"] for rank, rs in recs.items() for r in rs)
    metrics = confirm_metrics(primary, space)
    entries = []
    for rank, trial in enumerate(top, start=1):
        entries.append({"rank": rank, "trial": trial.number, "params": dict(trial.params), "sweep_value": trial.value,
                        "values": {m: {r["seed"]: r.get(m) for r in recs[rank] if r.get(m) is not None}
                                   for m in metrics}})
    for e in entries:
        e["stats"] = {m: stats.describe(list(e["values"][m].values())) for m in metrics}
        e["vs_best"] = {m: stats.compare_to_baseline(entries[0]["values"][m], e["values"][m]) if e["rank"] > 1
                        else None for m in metrics}
    write_json(sweep_dir / "confirm.json", {"sweep": space.name, "seeds": n, "metrics": list(metrics),
                                            "primary_metric": primary.metric, "mode": primary.mode,
                                            "configs": entries})
    atomic_write_text(sweep_dir / "confirm.md", confirm_markdown(entries, metrics, space, n))
    render_sweep(sweep_dir)
    log(confirm_markdown(entries, metrics, space, n))
    return entries


def _pm(d: dict) -> str:
    if d["mean"] is None:
        return "-"
    ci = f" [{d['ci'][0]:.4f}, {d['ci'][1]:.4f}]" if d["ci"] else ""
    return f"{d['mean']:.4f} +- {d['std']:.4f}{ci}" if d["std"] is not None else f"{d['mean']:.4f}{ci}"


CONFIRM_NOTE = ("std: sample std (ddof=1); CI: t interval of the mean; p: paired t-test over matched seeds "
                "against the sweep's best config (rank 1).")


def confirm_table(entries: list[dict], metrics) -> tuple[list[str], list[list[str]]]:
    """Header and rows: one row per config, mean +- std [95 % CI] per metric, paired p vs rank 1."""
    head = ["rank", "trial", "params", *[f"{m} mean +- std [95% CI]" for m in metrics],
            *[f"p vs rank 1 ({m})" for m in metrics]]
    rows = []
    for e in entries:
        params = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in e["params"].items())
        ps = []
        for m in metrics:
            p = (e["vs_best"][m] or {}).get("paired", {}).get("p") if e["vs_best"][m] else None
            ps.append("-" if p is None or (isinstance(p, float) and math.isnan(p)) else f"{p:.4f}")
        rows.append([str(e["rank"]), str(e["trial"]), params, *[_pm(e["stats"][m]) for m in metrics], *ps])
    return head, rows


def confirm_markdown(entries: list[dict], metrics: tuple, space: S.Space, n: int) -> str:
    """The confirmation table as Markdown (also printed at the end of `visionlab sweep ... confirm=K`)."""
    head, rows = confirm_table(entries, metrics)
    lines = [f"# Sweep {space.name}: top {len(entries)} configs over {n} seeds", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines + ["", CONFIRM_NOTE]) + "\n"


def render_sweep(sweep_dir: str | Path) -> Path:
    """sweep.md and sweep.html from the files a sweep leaves (sweep.csv, sweep.png, best.yaml, confirm.json)."""
    from collections import Counter

    from visionlab.views.markup import render_html, render_markdown
    from visionlab.utils import read_json

    d = Path(sweep_dir)
    rows = list(csv.DictReader((d / "sweep.csv").open()))
    cols = list(rows[0]) if rows else []
    done = [r for r in rows if r["state"] == "COMPLETE" and r["value"] != ""]
    summary = [("trials", str(len(rows))),
               ("states", ", ".join(f"{k} {v}" for k, v in sorted(Counter(r["state"] for r in rows).items())))]
    if done:
        values = sorted(float(r["value"]) for r in done)
        summary.append(("objective over finished trials", f"min {values[0]:.4f}, median "
                        f"{values[len(values) // 2]:.4f}, max {values[-1]:.4f}"))
    sections = [("Summary", [("list", summary)])]
    if (d / "sweep.png").is_file():
        sections.append(("Objective against each parameter", [("image", "sweep.png", "objective per parameter")]))
    sections.append(("Trials", [("table", cols, [[r[c] for c in cols] for r in rows])]))
    if (d / "best.yaml").is_file():
        sections.append(("Best config (run it: visionlab train best.yaml)",
                         [("code", (d / "best.yaml").read_text())]))
    if (d / "confirm.json").is_file():
        conf = read_json(d / "confirm.json")
        head, trows = confirm_table(conf["configs"], conf["metrics"])
        sections.append((f"Search, then confirm: top configs over {conf['seeds']} seeds",
                         [("table", head, trows), ("text", CONFIRM_NOTE)]))
    title = f"Sweep: {d.name}"
    atomic_write_text(d / "sweep.md", render_markdown(title, sections))
    atomic_write_text(d / "sweep.html", render_html(title, sections))
    return d / "sweep.html"
