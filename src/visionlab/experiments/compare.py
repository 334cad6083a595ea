"""Ablations: variants of one config x n seeds in <out_dir>/<name>/<variant>/seed-<k>/, compared to a baseline
with paired differences (95 % CI, paired t-test) and Welch's t-test; compare.json, .md, .html and compare.png."""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from visionlab import config as C
from visionlab.engine.rundir import check_name
from visionlab.experiments import primary as P
from visionlab.experiments import seeds as S
from visionlab.experiments import stats
from visionlab.views.markup import render_html, render_markdown
from visionlab.utils import ConfigError, UserError, atomic_write_text, read_json, write_json

VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
SPEC_KEYS = {"name", "config", "overrides", "baseline", "variants", "n", "metric"}


@dataclass
class CompareSpec:
    """A COMPARE.yaml resolved: base config path, shared overrides, variants' overrides, n, metric (None: the
    runs' primary metric on the test split, read from their summary.json), folder."""
    name: str
    config: Path
    overrides: list[str]
    baseline: str
    variants: dict[str, list[str]]
    n: int = 5
    metric: str | None = None
    source: str = ""
    configs: dict[str, C.Config] = field(default_factory=dict)
    parent: Path = Path("runs")


def _str_list(value, what: str, path: Path) -> list[str]:
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ConfigError(f"{path}: {what} must be a list of 'key=value' strings, e.g. [optim.name=sgd, optim.lr=0.01]")
    return list(value)


def _resolve_config(raw, path: Path) -> Path:
    if not isinstance(raw, str) or not raw:
        raise ConfigError(f"{path}: 'config' must name a base config file, e.g. config: mnist_cnn.yaml")
    for cand in (path.parent / raw, Path(raw)):      # relative to the COMPARE file first, then the cwd
        if cand.is_file():
            return cand
    raise ConfigError(f"{path}: base config {raw!r} not found next to {path.name} or in {Path.cwd()}")


def load_spec(path: str | Path, overrides: list[str] | None = None, n: int | None = None,
              metric: str | None = None) -> CompareSpec:
    """Read and check a COMPARE.yaml; CLI ``overrides`` apply to all variants (a variant's own keys win).

    Every variant's config is resolved here, so a typo fails before the first (possibly hour-long) run."""
    path = Path(path)
    d = C.read_yaml(path, "compare file not found: {path} (see configs/compare_*.yaml)")
    if not isinstance(d, dict) or set(d) - SPEC_KEYS:
        extra = sorted(set(d) - SPEC_KEYS) if isinstance(d, dict) else "?"
        raise ConfigError(f"{path}: unknown keys {extra}; a compare file has {sorted(SPEC_KEYS)}")
    return spec_from_dict(d, path, overrides, n, metric)


def spec_from_dict(d: dict, path: Path, overrides: list[str] | None = None, n: int | None = None,
                   metric: str | None = None) -> CompareSpec:
    """load_spec's checks and resolution of an already-read compare dict (its keys checked by the caller);
    ``path`` is the file it came from: messages name it and a relative ``config`` is looked up next to it."""
    path = Path(path)
    variants = d.get("variants")
    if not isinstance(variants, dict) or not variants:
        raise ConfigError(f"{path}: 'variants' must map names to override lists, e.g. {{adam: [optim.name=adam]}}")
    bad = [v for v in variants if not VARIANT_NAME.match(str(v))]
    if bad:
        raise ConfigError(f"{path}: variant name {bad[0]!r} is not a folder-safe name (letters, digits, _ . + -)")
    baseline = d.get("baseline", next(iter(variants)))
    if baseline not in variants:
        raise ConfigError(f"{path}: baseline {baseline!r} is not a variant; use one of {list(variants)}")
    shared = _str_list(d.get("overrides"), "overrides", path) + list(overrides or [])
    spec = CompareSpec(name=str(d.get("name") or path.stem), config=_resolve_config(d.get("config"), path),
                       overrides=shared, baseline=str(baseline),
                       variants={str(k): _str_list(v, f"variants.{k}", path) for k, v in variants.items()},
                       n=int(n if n is not None else d.get("n", 5)), metric=metric or d.get("metric") or None,
                       source=str(path))
    if spec.n < 1:
        raise ConfigError(f"n={spec.n}: need at least one seed per variant (n>=2 for confidence intervals)")
    base, _ = S.experiment_config(str(spec.config), shared)
    spec.name = base.name if any(o.split("=", 1)[0].strip() == "name" for o in shared) else spec.name
    check_name(spec.name)                   # <out_dir>/<name>: never outside out_dir
    spec.parent = Path(base.out_dir) / spec.name
    for v, over in spec.variants.items():
        spec.configs[v], _ = S.experiment_config(str(spec.config), shared + over)
    return spec


def run_compare(spec: CompareSpec, log=None, jobs: int = 1) -> Path:
    """Train every variant x seed (seed-major, so a stopped comparison is already paired on its first seeds),
    ``jobs`` at a time, skipping finished runs and resuming interrupted ones; then write the comparison. Returns
    compare.html."""
    S.ensure_all([(cfg, spec.parent / v, k) for k in range(spec.n) for v, cfg in spec.configs.items()], jobs, log)
    for v in spec.variants:
        S.write_seeds(spec.parent / v, {"name": f"{spec.name}/{v}", "config": str(spec.config),
                                        "overrides": spec.overrides + spec.variants[v], "n": spec.n})
    return write_compare(spec.parent, {"name": spec.name, "compare_file": spec.source, "config": str(spec.config),
                                       "overrides": spec.overrides, "metric": spec.metric, "baseline": spec.baseline,
                                       "n": spec.n, "variant_overrides": spec.variants})


# ---------------------------------------------------------------- statistics

def _values(parent: Path, variant: str, metric: str, n: int | None) -> tuple[list[dict], dict[int, float]]:
    records = S.collect(parent / variant, list(range(n)) if n else None)
    missing = [r for r in records if not isinstance(r.get(metric), (int, float))]
    if missing:
        keys = sorted(k for k in missing[0] if k not in ("seed", "run_dir"))
        raise UserError(f"metric={metric!r} is not in {parent / variant / missing[0]['run_dir']}/summary.json; "
                        f"choose one of {keys}")
    return records, {r["seed"]: float(r[metric]) for r in records}


def resolve_metric(parent: Path, meta: dict) -> tuple[str, P.Primary]:
    """(metric, the runs' primary metric): ``meta["metric"]`` when set, else the primary metric the finished runs'
    summary.json files declare, on the test split (test/acc, test/miou, ...)."""
    n = meta.get("n")
    dirs = [parent / v / r["run_dir"] for v in meta["variant_overrides"]
            for r in S.collect(parent / v, list(range(n)) if n else None)]
    primary = P.of_runs(dirs)
    return meta.get("metric") or primary.test, primary


def analyze(parent: Path, meta: dict) -> dict:
    """compare.json's content: per-variant seeds and stats, and each variant against the baseline."""
    metric, primary = resolve_metric(parent, meta)
    meta = {**meta, "metric": metric, "task": primary.task, "mode": P.mode_of(metric, primary)}
    base, n = meta["baseline"], meta.get("n")
    variants, values = {}, {}
    for v, over in meta["variant_overrides"].items():
        records, values[v] = _values(parent, v, metric, n)
        variants[v] = {"overrides": over, "seeds": {str(s): x for s, x in values[v].items()}, "runs": records,
                       "stats": stats.describe(list(values[v].values())),
                       "failed": {str(k): why for k, why in
                                  S.failures(parent / v, list(range(n)) if n else None).items()}}
    if not values[base]:
        raise UserError(f"{parent / base}: the baseline has no finished seed yet; run `visionlab compare` first")
    comparisons = {v: stats.compare_to_baseline(values[base], values[v]) for v in variants if v != base}
    return {**meta, "variants": variants, "comparisons": comparisons}


# ---------------------------------------------------------------- rendering

def metric_kind(metric: str, task: str | None = None) -> str:
    """Fractions (accuracy, IoU) print as percent (differences in percentage points); anything else as the task's
    report prints it (FID with 4 significant digits, a loss with 4 decimals), its differences alike."""
    return P.metric_kind(metric, task)


def results_table(data: dict) -> tuple[list[str], list[list[str]]]:
    """The comparison table: per variant mean +- std, 95 % CI, difference to the baseline, its CI and p-values."""
    kind = metric_kind(data["metric"], data.get("task"))
    dkind = "pp" if kind == "pct" else kind       # a difference prints as its metric does (FID: 4 significant digits)
    header = ["variant", "n", "mean \u00b1 std", "95% CI", f"\u0394 vs {data['baseline']} (paired)",
              "\u0394 95% CI", "pairs", "p (paired t)", "p (Welch)"]
    rows = []
    for v, info in data["variants"].items():
        st = info["stats"]
        row = [v, str(st["n"]), f"{S.fmt(st['mean'], kind)} \u00b1 {S.fmt(st['std'], kind)}", S.ci_text(st, kind)]
        c = data["comparisons"].get(v)
        if c is None:
            row += ["baseline", "", "", "", ""]
        else:
            row += [S.fmt(c["diff"]["mean"], dkind), S.ci_text(c["diff"], dkind), str(c["n_pairs"]),
                    S.fmt(c["paired"]["p"], "p"), S.fmt(c["welch"]["p"], "p")]
        rows.append(row)
    return header, rows


def compare_sections(data: dict, image: str | None) -> tuple[str, list]:
    """Title and report sections (report.py's block format) for a compare.json dict."""
    kind = metric_kind(data["metric"], data.get("task"))
    header, rows = results_table(data)
    note = ("\u0394: mean of per-seed differences (variant - baseline) over matched seeds, 95% CI from the t "
            "distribution; p (paired t): paired t-test over matched seeds; p (Welch): unequal-variance t-test over "
            "all seeds. std is the sample std (ddof=1). \u2013 means undefined (fewer than 2 seeds, or zero spread).")
    better = "lower" if data.get("mode") == "min" else "higher"
    sections = [(f"Results: {data['metric']} ({better} is better)", [("table", header, rows), ("text", note)])]
    if image:
        sections.append(("Plot", [("image", image, f"{data['metric']} per seed and variant")]))
    seeds = sorted({int(s) for info in data["variants"].values() for s in info["seeds"]})
    per_seed = [[str(s)] + [S.fmt(info["seeds"].get(str(s)), kind) for info in data["variants"].values()]
                for s in seeds]
    sections.append(("Per seed", [("table", ["seed", *data["variants"]], per_seed)]))
    setup = [("config", str(data.get("config"))), ("shared overrides", " ".join(data.get("overrides") or []) or "none")]
    setup += [(f"variant {v}", " ".join(o) or "(base config)") for v, o in data["variant_overrides"].items()]
    setup += [(f"{v}/seed-{k} (left out)", why) for v, info in data["variants"].items()
              for k, why in (info.get("failed") or {}).items()]
    sections.append(("Setup", [("list", setup)]))
    return f"Comparison: {data['name']} (n={data.get('n')} seeds per variant)", sections


def write_compare(parent: Path, meta: dict) -> Path:
    """Analyze the variant folders under ``parent``; write compare.json, compare.png, compare.md, compare.html."""
    data = analyze(parent, meta)
    write_json(parent / "compare.json", data)
    scale = 100.0 if metric_kind(data["metric"], data.get("task")) == "pct" else 1.0
    label = data["metric"] + (" (%)" if scale == 100.0 else "")
    S.plot_points([(label, {v: list(i["seeds"].values()) for v, i in data["variants"].items()}, scale)],
                  parent / "compare.png")
    title, sections = compare_sections(data, "compare.png")
    atomic_write_text(parent / "compare.md", render_markdown(title, sections))
    atomic_write_text(parent / "compare.html", render_html(title, sections))
    return parent / "compare.html"


def render_compare(parent: str | Path, metric: str | None = None) -> Path:
    """Rebuild a comparison's files from its run folders (setup from compare.json; optionally another metric)."""
    parent = Path(parent)
    old = read_json(parent / "compare.json")
    keys = ("name", "compare_file", "config", "overrides", "metric", "baseline", "n", "variant_overrides")
    meta = {k: old.get(k) for k in keys}
    meta["metric"] = metric or meta["metric"]
    return write_compare(parent, meta)
