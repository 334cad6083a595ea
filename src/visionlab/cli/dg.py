"""CLI mode `visionlab dg DG.yaml [n=N] [render=true] [key=value ...]`: leave-one-domain-out comparisons."""
from __future__ import annotations

from pathlib import Path

from ..utils import ConfigError, UserError, read_json
from .experiments import _int, _parse, _text_table

USAGE_DG = ("usage: visionlab dg DG.yaml [n=3] [metric=test/acc] [render=true] [jobs=1] [key=value ...]  (a "
            "compare file plus domains: [held-out domains], [] = every domain in turn; render=true rewrites the "
            "reports without training; jobs: runs trained at once)")


def cmd_dg(args: list[str]) -> int:
    """Train every held-out domain x variant x seed of a DG.yaml; print the held-out top-1 table and dg.html."""
    from ..experiments import dg
    from ..experiments.parallel import check_jobs

    path, opts, overrides = _parse(args, ("n", "metric", "render", "jobs"), USAGE_DG)
    if path is None:
        raise UserError(f"pass a dg file first (see configs/dg_*.yaml)\n{USAGE_DG}")
    render = opts.get("render", "false").lower()
    if render not in ("true", "false"):
        raise ConfigError(f"render={opts['render']!r}: expected true or false\n{USAGE_DG}")
    spec = dg.load_dg_spec(path, overrides, n=_int(opts.get("n"), "n"), metric=opts.get("metric"))
    jobs = check_jobs(_int(opts.get("jobs"), "jobs"))
    html = dg.write_all(spec) if render == "true" else dg.run_dg(spec, jobs=jobs)
    data = read_json(Path(html).parent / "dg.json")
    header, rows = dg.main_table(data)
    print(f"{data['metric']} on the held-out domain, n={spec.spec.n} seeds per variant and domain "
          f"(selection on source-domain validation only)")
    print(_text_table(header, rows))
    print(f"compute: {data['compute']['total_s']:.0f} s of training + evaluation over {data['compute']['runs']} runs")
    print(f"report: {html}")
    print(Path(html).parent)
    return 0
