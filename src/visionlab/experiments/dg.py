"""Domain generalization over held-out domains: a compare file plus ``domains`` (DG.yaml). For each held-out domain t,
variant v and seed k (seed-major), one run of the variant's config with ``data.target_domains=[t]`` in
<out_dir>/<name>/<t>/<v>/seed-<k>/ (finished seeds skipped, interrupted ones resumed); then per domain the ordinary
comparison (<t>/compare.*) and the DG summary dg.json, dg.md, dg.html, dg.png, dg_confusion.png: test top-1 per
held-out domain and averaged over domains per seed, paired differences to the baseline, class / domain mAP, per-class
accuracy, confusion matrices and the compute spent. Model selection is the runs' own: source-domain validation only.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from visionlab import config as C
from visionlab.data.domains import domain_names
from visionlab.experiments import compare
from visionlab.experiments import seeds as S
from visionlab.experiments import stats
from visionlab.tasks.domain import METHODS
from visionlab.utils import ConfigError, UserError, atomic_write_text, read_json, write_json
from visionlab.views import plots
from visionlab.views.markup import render_html, render_markdown
from visionlab.views.report import read_metrics_csv

SPEC_KEYS = compare.SPEC_KEYS | {"domains"}
METRIC = "test/acc"
AVERAGE = "average"
SET_PER_DOMAIN = ("data.target_domains",)          # keys `visionlab dg` sets itself, per held-out domain
PROTOCOL = ("Model selection used the source domains' validation images only (each source domain split into train "
            "and a data.val_fraction hold-out; the best epoch is chosen there). The held-out domain never chose "
            "anything: no epoch, no hyperparameter. No oracle (test-domain validation) column is shown: it was not "
            "computed.")


@dataclass
class DGSpec:
    """A DG.yaml resolved: the compare spec (name, base config, overrides, variants, baseline, n, metric, folder),
    the held-out domains to run, and every (domain, variant) config."""
    spec: compare.CompareSpec
    domains: list[str]
    all_domains: list[str]
    configs: dict[str, dict[str, C.Config]] = field(default_factory=dict)

    @property
    def parent(self) -> Path:
        return self.spec.parent


def target_override(domain: str) -> str:
    return f"data.target_domains=[{domain}]"


def load_dg_spec(path: str | Path, overrides: list[str] | None = None, n: int | None = None,
                 metric: str | None = None) -> DGSpec:
    """Read and check a DG.yaml; CLI ``overrides`` apply to every variant. Every (domain, variant) config is resolved
    and every held-out domain checked against the dataset's folders here, before the first run."""
    path = Path(path)
    d = C.read_yaml(path, "dg file not found: {path} (see configs/dg_*.yaml)")
    if not isinstance(d, dict) or set(d) - SPEC_KEYS:
        extra = sorted(set(d) - SPEC_KEYS) if isinstance(d, dict) else "?"
        raise ConfigError(f"{path}: unknown keys {extra}; a dg file has {sorted(SPEC_KEYS)}")
    d = dict(d)
    asked = d.pop("domains", None) or []
    if not isinstance(asked, list) or not all(isinstance(t, str) and t for t in asked):
        raise ConfigError(f"{path}: 'domains' must be a list of held-out domain names, e.g. [sketch, cartoon], or [] "
                          "for every domain in turn (leave-one-domain-out)")
    if len(set(asked)) != len(asked):
        raise ConfigError(f"{path}: domains {asked} name a domain twice")
    spec = compare.spec_from_dict(d, path, overrides, n, metric)
    for v, over in [("overrides", spec.overrides)] + list(spec.variants.items()):
        for item in over:
            if item.split("=", 1)[0].strip() in SET_PER_DOMAIN:
                raise ConfigError(f"{path}: {item!r} in {v}: `visionlab dg` sets data.target_domains itself, once per "
                                  f"held-out domain; list the held-out domains under 'domains:' instead")
    names = {}
    for v, cfg in spec.configs.items():
        if cfg.task != "dg":
            raise ConfigError(f"{path}: variant {v} has task={cfg.task}; `visionlab dg` needs task=dg (per-domain "
                              "accuracy of the held-out domain), e.g. config: pacs_lite0.yaml")
        if cfg.dg.method not in METHODS:        # else found only when the first run builds its task
            raise ConfigError(f"{path}: variant {v}: dg.method={cfg.dg.method!r}; choose one of {', '.join(METHODS)}")
        names[v] = domain_names(cfg.data)
    every = names[spec.baseline]
    unknown = [t for t in asked if any(t not in got for got in names.values())]
    if unknown:
        dataset = spec.configs[spec.baseline].data.name
        raise ConfigError(f"{path}: domains: no domain {unknown[0]!r} in data.name={dataset}; the valid domains are "
                          f"{every} ([] runs each in turn)")
    domains = list(asked) or list(every)
    out = DGSpec(spec=spec, domains=domains, all_domains=list(every))
    for t in domains:
        out.configs[t] = {}
        for v, over in spec.variants.items():
            cfg, _ = S.experiment_config(str(spec.config), spec.overrides + over + [target_override(t)])
            sources = list(cfg.data.source_domains)
            if t in sources:
                raise ConfigError(f"{path}: variant {v} trains on data.source_domains={sources}, which holds the "
                                  f"held-out domain {t!r}; drop data.source_domains (the other domains are the "
                                  f"sources) or leave {t!r} out of 'domains:'")
            out.configs[t][v] = cfg
    return out


def meta_of(dg: DGSpec) -> dict:
    s = dg.spec
    return {"name": s.name, "dg_file": s.source, "config": str(s.config), "overrides": s.overrides,
            "metric": s.metric or METRIC, "baseline": s.baseline, "n": s.n, "domains": dg.domains,
            "variant_overrides": s.variants}


def run_dg(dg: DGSpec, log=None, jobs: int = 1) -> Path:
    """Train every seed x held-out domain x variant (seed-major: a stopped run is already complete, and paired, on
    its first seeds), ``jobs`` at a time, skipping finished runs and resuming interrupted ones; then write every
    report. Returns dg.html."""
    S.ensure_all([(cfg, dg.parent / t / v, k) for k in range(dg.spec.n) for t in dg.domains
                  for v, cfg in dg.configs[t].items()], jobs, log)
    return write_all(dg)


def write_all(dg: DGSpec) -> Path:
    """Per domain the seeds reports and the comparison (where its baseline has a finished seed), then the DG summary."""
    s, meta = dg.spec, meta_of(dg)
    seeds = list(range(s.n))
    for t in dg.domains:
        shared = s.overrides + [target_override(t)]
        for v in s.variants:
            if S.collect(dg.parent / t / v, seeds):
                S.write_seeds(dg.parent / t / v, {"name": f"{s.name}/{t}/{v}", "config": str(s.config),
                                                  "overrides": shared + s.variants[v], "n": s.n})
        if S.collect(dg.parent / t / s.baseline, seeds):
            compare.write_compare(dg.parent / t, {"name": f"{s.name}/{t}", "compare_file": s.source,
                                                  "config": str(s.config), "overrides": shared,
                                                  "metric": meta["metric"], "baseline": s.baseline, "n": s.n,
                                                  "variant_overrides": s.variants})
    return write_dg(dg.parent, meta)


# ---------------------------------------------------------------- analysis

def _run_extras(run_dir: Path, domain: str) -> dict:
    """What a DG summary needs beyond a seed record: the held-out domain's per-class accuracy, the confusion matrix,
    class mAP, the domain mAP of the last epoch's validation (domain_head / dann only), and the run's seconds."""
    summary = read_json(run_dir / "summary.json")
    rows = read_metrics_csv(run_dir / "metrics.csv") if (run_dir / "metrics.csv").is_file() else []
    timings = summary.get("timings") or {}
    per = next((r for r in summary.get("per_domain") or [] if r.get("domain") == domain), None)
    return {"classes": summary.get("classes"), "confusion": summary.get("confusion"),
            "per_class_acc": per["per_class_acc"] if per else None, "class_map": summary.get("test/class_map"),
            "domain_map": rows[-1].get("val/domain_map") if rows else None,
            "train_s": timings.get("train_s"), "eval_s": timings.get("eval_s")}


def _per_seed_mean(by_domain: dict[str, dict[int, float]]) -> dict[int, float]:
    """{seed: mean over domains} for the seeds that have a value in every domain."""
    if not by_domain:
        return {}
    common = set.intersection(*(set(v) for v in by_domain.values()))
    return {k: float(np.mean([by_domain[t][k] for t in by_domain])) for k in sorted(common)}


def _cell(values: dict[int, float]) -> dict:
    return {"seeds": {str(k): x for k, x in values.items()}, "stats": stats.describe(list(values.values()))}


def _mean_lists(lists: list) -> list | None:
    lists = [l for l in lists if l]
    if not lists:
        return None
    cols = zip(*lists)
    return [float(np.mean(c)) if c else None for c in ([x for x in col if x is not None] for col in cols)]


def analyze(parent: Path, meta: dict) -> dict:
    """dg.json's content (see the module docstring); works on partial results (unfinished seeds are left out)."""
    metric, base, n = meta.get("metric") or METRIC, meta["baseline"], meta.get("n")
    domains, variants = list(meta["domains"]), list(meta["variant_overrides"])
    wanted = list(range(n)) if n else None
    runs, failed = {}, {}
    values = {key: {} for key in ("metric", "class_map", "domain_map")}   # key -> row -> variant -> {seed: value}
    for t in domains:
        runs[t] = {}
        for key in values:
            values[key][t] = {}
        for v in variants:
            recs = S.collect(parent / t / v, wanted)
            for r in recs:
                r.update(_run_extras(parent / t / v / r["run_dir"], t))
                if not isinstance(r.get(metric), (int, float)):
                    raise UserError(f"metric={metric!r} is not in {parent / t / v / r['run_dir']}/summary.json")
            runs[t][v] = recs
            values["metric"][t][v] = {r["seed"]: float(r[metric]) for r in recs}
            values["class_map"][t][v] = {r["seed"]: float(r["class_map"]) for r in recs
                                         if isinstance(r.get("class_map"), (int, float))}
            values["domain_map"][t][v] = {r["seed"]: float(r["domain_map"]) for r in recs
                                          if isinstance(r.get("domain_map"), (int, float))}
            why = S.failures(parent / t / v, wanted)
            if why:
                failed.setdefault(t, {})[v] = {str(k): w for k, w in why.items()}
    for key in values:
        values[key][AVERAGE] = {v: _per_seed_mean({t: values[key][t][v] for t in domains}) for v in variants}
    rows = domains + [AVERAGE]
    table = {}
    for row in rows:
        table[row] = {}
        for v in variants:
            cell = _cell(values["metric"][row][v])
            if v != base:
                cell["vs_baseline"] = stats.compare_to_baseline(values["metric"][row][base], values["metric"][row][v])
            table[row][v] = cell
    extra = {row: {v: {"class_map": _cell(values["class_map"][row][v]),
                       "domain_map": _cell(values["domain_map"][row][v]) if values["domain_map"][row][v] else None}
                   for v in variants} for row in rows}
    classes = next((r["classes"] for t in domains for v in variants for r in runs[t][v] if r.get("classes")), [])
    per_class = {t: {v: _mean_lists([r["per_class_acc"] for r in runs[t][v]]) for v in variants} for t in domains}
    confusion = {}
    for t in domains:
        confusion[t] = {}
        for v in variants:
            first = next((r for r in runs[t][v] if r.get("confusion")), None)   # seed 0 when it finished
            confusion[t][v] = {"seed": first["seed"], "matrix": first["confusion"]} if first else None
    seconds = {v: {t: float(sum((r.get("train_s") or 0.0) + (r.get("eval_s") or 0.0) for r in runs[t][v]))
                   for t in domains} for v in variants}
    compute = {"per_variant_s": {v: sum(seconds[v].values()) for v in variants}, "per_domain_variant_s": seconds,
               "runs": sum(len(runs[t][v]) for t in domains for v in variants)}
    compute["total_s"] = sum(compute["per_variant_s"].values())
    for t in domains:
        for v in variants:
            for r in runs[t][v]:
                r.pop("confusion", None)
                r.pop("classes", None)
    return {**meta, "metric": metric, "kind": compare.metric_kind(metric, "dg"), "classes": classes,
            "rows": rows, "table": table, "extra": extra, "per_class": per_class, "confusion": confusion,
            "compute": compute, "runs": runs, "failed": failed, "protocol": PROTOCOL}


# ---------------------------------------------------------------- rendering

def _mean_ci(d: dict | None, kind: str) -> str:
    if not d or d["stats"]["mean"] is None:
        return "-"
    st = d["stats"]
    return f"{S.fmt(st['mean'], kind)} {S.ci_text(st, kind)}"


def main_table(data: dict) -> tuple[list[str], list[list[str]]]:
    """Rows: held-out domains and the average over domains; per variant mean [95 % CI]; per non-baseline variant
    the paired difference to the baseline, its 95 % CI, the number of pairs and the paired-t p."""
    kind, base = data["kind"], data["baseline"]
    dkind = "pp" if kind == "pct" else "f4"
    variants = list(data["variant_overrides"])
    header = ["held-out domain", "seeds"] + [f"{v} mean [95% CI]" for v in variants]
    for v in variants:
        if v != base:
            header += [f"\u0394 {v} \u2212 {base}", "\u0394 95% CI", "pairs", "p (paired t)"]
    rows = []
    for row in data["rows"]:
        cells = data["table"][row]
        ns = [str(cells[v]["stats"]["n"]) for v in variants]
        out = [row, ns[0] if len(set(ns)) == 1 else "/".join(ns)] + [_mean_ci(cells[v], kind) for v in variants]
        for v in variants:
            if v != base:
                c = cells[v]["vs_baseline"]
                out += [S.fmt(c["diff"]["mean"], dkind), S.ci_text(c["diff"], dkind) if c["n_pairs"] else "-",
                        str(c["n_pairs"]), S.fmt(c["paired"]["p"], "p")]
        rows.append(out)
    return header, rows


def _fmt_s(s: float) -> str:
    return f"{s:.0f} s ({s / 60:.1f} min)"


def dg_sections(data: dict, images: dict) -> tuple[str, list]:
    """Title and report sections (markup's block format) of a dg.json dict; ``images``: which pictures exist."""
    base, variants = data["baseline"], list(data["variant_overrides"])
    header, rows = main_table(data)
    note = (f"{data['metric']} on the held-out domain (the test split of each run). 'average': per seed, the mean "
            "over the held-out domains of that seed's value (only seeds finished for every domain), then mean and "
            "95% CI over seeds. \u0394: mean of per-seed differences (variant \u2212 baseline) over matched seeds, "
            "95% CI from the t distribution, p from the paired t-test; \u2013 means undefined (fewer than 2 seeds or "
            "pairs, or zero spread).")
    sections = [(f"Held-out top-1 ({data['metric']}), baseline {base}",
                 [("table", header, rows), ("text", note), ("text", data["protocol"])])]
    if images.get("points"):
        sections.append(("Plot", [("image", "dg.png", "held-out top-1 per seed and variant, per domain")]))
    ext = []
    for row in data["rows"]:
        for v in variants:
            e = data["extra"][row][v]
            ext.append([row, v, _mean_ci(e["class_map"], "f4"), _mean_ci(e["domain_map"], "f4")])
    sections.append(("Class mAP and domain mAP", [
        ("table", ["held-out domain", "variant", "class mAP (test) [95% CI]", "domain mAP (val) [95% CI]"], ext),
        ("text", "class mAP: macro one-vs-rest average precision of the class scores on the held-out domain. "
                 "domain mAP: how well the domain head tells the source domains apart on their validation images, "
                 "at the last epoch (metrics.csv); only domain_head and dann runs have one ('-' otherwise).")]))
    classes = data.get("classes") or []
    if classes:
        pc = [[t, v] + ([S.fmt(x, "pct") for x in data["per_class"][t][v]] if data["per_class"][t][v]
                        else ["-"] * len(classes)) for t in data["domains"] for v in variants]
        sections.append(("Per-class accuracy on the held-out domain", [
            ("table", ["held-out domain", "variant", *classes], pc),
            ("text", "Recall of each class on the held-out domain, averaged over the finished seeds.")]))
    if images.get("confusion"):
        used = sorted({c["seed"] for t in data["domains"] for c in data["confusion"][t].values() if c})
        sections.append(("Confusion matrices", [
            ("image", "dg_confusion.png", "row-normalised confusion matrices, variants x held-out domains"),
            ("text", f"Row-normalised (each row: the true class, summing to 1), seed {', '.join(map(str, used))}; "
                     "rows of the grid: variants, columns: held-out domains.")]))
    comp = data["compute"]
    items = [(f"variant {v}", _fmt_s(comp["per_variant_s"][v])) for v in variants]
    items += [("all runs", f"{_fmt_s(comp['total_s'])} over {comp['runs']} runs")]
    sections.append(("Compute", [("list", items),
                                 ("text", "Seconds of training (with per-epoch validation) plus test evaluation, "
                                          "summed from each run's summary.json timings (train_s + eval_s); data "
                                          "decoding and reports are not counted.")]))
    setup = [("dg file", str(data.get("dg_file"))), ("config", str(data.get("config"))),
             ("shared overrides", " ".join(data.get("overrides") or []) or "none"),
             ("held-out domains", ", ".join(data["domains"]) + " (each run: data.target_domains=[<domain>])")]
    setup += [(f"variant {v}", " ".join(o) or "(base config)") for v, o in data["variant_overrides"].items()]
    setup += [(f"{t}/compare.html", "the ordinary comparison of this held-out domain (Welch tests, per seed)")
              for t in data["domains"]]
    for t, by_v in (data.get("failed") or {}).items():
        setup += [(f"{t}/{v}/seed-{k} (left out)", why) for v, ks in by_v.items() for k, why in ks.items()]
    sections.append(("Setup", [("list", setup)]))
    return f"Domain generalization: {data['name']} (n={data.get('n')} seeds per variant and domain)", sections


def plot_confusions(data: dict, path: Path) -> bool:
    """dg_confusion.png: rows = variants, columns = held-out domains, each a row-normalised confusion matrix."""
    from matplotlib.figure import Figure

    variants, domains = list(data["variant_overrides"]), data["domains"]
    if not any(data["confusion"][t][v] for t in domains for v in variants):
        return False
    classes = data.get("classes") or []
    side = min(max(3.6, 0.4 * len(classes) + 2.2), 9.0)
    fig = Figure(figsize=(side * len(domains), side * len(variants)), layout="constrained")
    axes = fig.subplots(len(variants), len(domains), squeeze=False)
    for i, v in enumerate(variants):
        for j, t in enumerate(domains):
            c, ax = data["confusion"][t][v], axes[i][j]
            if not c:
                ax.set_axis_off()
                ax.set_title(f"{v} | {t}: no finished run")
                continue
            cm = np.asarray(c["matrix"], dtype=np.float64)
            rows = cm.sum(axis=1, keepdims=True)
            norm = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
            names = classes if len(classes) == cm.shape[0] else [str(k) for k in range(cm.shape[0])]
            plots.confusion_panel(ax, norm, names, f"{v} | held out {t} (seed {c['seed']})", ".2f", 1.0)
    plots.save_figure(fig, path)
    return True


def write_dg(parent: Path, meta: dict) -> Path:
    """Analyze <parent>/<domain>/<variant>/seed-<k>/; write dg.json, dg.png, dg_confusion.png, dg.md, dg.html."""
    data = analyze(parent, meta)
    if not any(data["table"][t][v]["stats"]["n"] for t in data["domains"] for v in data["variant_overrides"]):
        raise UserError(f"{parent}: no finished run yet; run `visionlab dg DG.yaml` first")
    write_json(parent / "dg.json", data)
    scale = 100.0 if data["kind"] == "pct" else 1.0
    unit = " (%)" if scale == 100.0 else ""
    S.plot_points([(f"{row}: {data['metric']}{unit}",
                    {v: list(data["table"][row][v]["seeds"].values()) for v in data["variant_overrides"]}, scale)
                   for row in data["rows"]], parent / "dg.png")
    images = {"points": True, "confusion": plot_confusions(data, parent / "dg_confusion.png")}
    title, sections = dg_sections(data, images)
    atomic_write_text(parent / "dg.md", render_markdown(title, sections))
    atomic_write_text(parent / "dg.html", render_html(title, sections))
    return parent / "dg.html"


def render_dg(parent: str | Path) -> Path:
    """Rebuild a DG folder's summary from its run folders (the setup kept in dg.json)."""
    parent = Path(parent)
    old = read_json(parent / "dg.json")
    keys = ("name", "dg_file", "config", "overrides", "metric", "baseline", "n", "domains", "variant_overrides")
    return write_dg(parent, {k: old.get(k) for k in keys})
