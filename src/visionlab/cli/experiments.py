"""CLI modes for many runs: `visionlab seeds CONFIG n=5 [key=value ...]` and `visionlab compare COMPARE.yaml ...`."""
from __future__ import annotations

from pathlib import Path

from ..utils import ConfigError, UserError, read_json

USAGE_SEEDS = "usage: visionlab seeds [CONFIG.yaml] [n=5] [jobs=1] [key=value ...]  (jobs: runs trained at once)"
USAGE_COMPARE = ("usage: visionlab compare COMPARE.yaml [n=5] [metric=test/<name>] [jobs=1] [key=value ...]  (metric: "
                 "default the runs' primary metric, test/acc or test/miou; jobs: runs trained at once, each on its "
                 "share of the cores)")


def _parse(args: list[str], options: tuple[str, ...], usage: str) -> tuple[str | None, dict, list[str]]:
    """(config path or None, mode options, config overrides): positional config first, then key=value."""
    cfg_path = args[0] if args and args[0].endswith((".yaml", ".yml")) else None
    rest = args[1:] if cfg_path else args
    bad = [a for a in rest if "=" not in a]
    if bad:
        raise ConfigError(f"expected key=value, got {bad[0]!r} (the config file comes first and ends in .yaml)\n"
                          f"{usage}")
    opts, overrides = {}, []
    for a in rest:
        key, value = a.split("=", 1)
        if key.strip() in options:
            opts[key.strip()] = value
        else:
            overrides.append(a)
    return cfg_path, opts, overrides


def _int(value: str | None, key: str) -> int | None:
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{key}: expected an integer, got {value!r} (e.g. {key}=5)") from None


def _text_table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in [header, *rows]]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def cmd_seeds(args: list[str]) -> int:
    """Train seeds 0..n-1 of a config (skipping finished, resuming interrupted ones) and report mean/std/CI."""
    from ..experiments import seeds
    from ..experiments.parallel import check_jobs

    cfg_path, opts, overrides = _parse(args, ("n", "jobs"), USAGE_SEEDS)
    n = _int(opts.get("n", "5"), "n")
    html = seeds.run_seeds(cfg_path, overrides, n, jobs=check_jobs(_int(opts.get("jobs"), "jobs")))
    data = read_json(html.parent / "seeds.json")
    header = ["metric", "n", "mean", "std", "95% CI", "min", "max"]
    rows = [[label, str(st["n"]), seeds.fmt(st["mean"], kind), seeds.fmt(st["std"], kind), seeds.ci_text(st, kind),
             seeds.fmt(st["min"], kind), seeds.fmt(st["max"], kind)]
            for key, label, kind in seeds.metrics_of(data) for st in [data["stats"][key]]]
    print(f"{data['primary_metric']} ({data['task']}, {'lower' if data['mode'] == 'min' else 'higher'} is better): "
          f"{len(data['seeds'])} seeds")
    print(_text_table(header, rows))
    print(f"report: {html}")
    print(html.parent)
    return 0


def cmd_compare(args: list[str]) -> int:
    """Train every variant of a COMPARE.yaml over n seeds and report differences to the baseline."""
    from ..experiments import compare
    from ..experiments.parallel import check_jobs

    path, opts, overrides = _parse(args, ("n", "metric", "jobs"), USAGE_COMPARE)
    if path is None:
        raise UserError(f"pass a compare file first (see configs/compare_*.yaml)\n{USAGE_COMPARE}")
    jobs = check_jobs(_int(opts.get("jobs"), "jobs"))
    spec = compare.load_spec(path, overrides, n=_int(opts.get("n"), "n"), metric=opts.get("metric"))
    html = compare.run_compare(spec, jobs=jobs)
    data = read_json(Path(html).parent / "compare.json")
    header, rows = compare.results_table(data)
    print(f"{data['metric']} ({'lower' if data.get('mode') == 'min' else 'higher'} is better), n={spec.n} seeds "
          "per variant")
    print(_text_table(header, rows))
    print(f"report: {html}")
    print(html.parent)
    return 0


USAGE_ENSEMBLE = ("usage: visionlab ensemble RUN_DIR|SEEDS_DIR [RUN_DIR ...] [vote=soft|hard|both] [tta=none|flip] "
                  "[split=test] [out=DIR]")


def cmd_ensemble(args: list[str]) -> int:
    """Evaluate an ensemble of finished runs against its members' mean +- std."""
    from .args import split_options
    from ..experiments.ensemble import VOTES, ensemble

    pos, kv = split_options(args, "ensemble", ("vote", "tta", "split", "out"), USAGE_ENSEMBLE)
    if not pos:
        raise UserError(USAGE_ENSEMBLE)
    r = ensemble(pos, kv.get("vote", "both"), kv.get("tta", "none"), kv.get("split", "test"), kv.get("out"))
    std = f" +- {100 * r['member_std']:.2f}" if r["member_std"] is not None else ""
    rows = [[f"members ({len(r['members'])})", f"{100 * r['member_mean']:.2f}{std}", "", ""],
            ["best member", f"{100 * r['member_best']:.2f}", "", ""]]
    for how in VOTES:
        if how in r:
            lo, hi = r[how]["gain_ci95_pp"]
            rows.append([f"{how} vote", f"{100 * r[how]['acc']:.2f}", f"{r[how]['gain_vs_mean_pp']:+.2f}",
                         f"[{lo:+.2f}, {hi:+.2f}]"])
    print(f"{r['split']} split, {r['n_images']} images, tta={r['tta']}")
    print(_text_table(["", "acc %", "gain pp", "95% CI"], rows))
    print(f"report: {Path(r['out']) / 'report.html'}")
    print(r["out"])
    return 0
