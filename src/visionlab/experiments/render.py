"""Re-render the report of any results folder: one run, seeds, a comparison, a DG study, an ensemble or a sweep."""
from __future__ import annotations

import os
from pathlib import Path

from visionlab.utils import UserError
from visionlab.views.report import write_report
from visionlab.experiments.compare import render_compare
from visionlab.experiments.dg import render_dg
from visionlab.experiments.ensemble import render_ensemble
from visionlab.experiments.seeds import render_seeds
from visionlab.experiments.sweep_report import render_sweep


def render_any(path: str | os.PathLike) -> Path:
    """Regenerate the report of any results folder: a comparison (compare.json), a seeds folder (seeds.json), a sweep
    (sweep.csv) or a single run (summary.json / config.yaml); returns the HTML path."""
    path = Path(path)
    if (path / "dg.json").is_file():
        return render_dg(path)
    if (path / "compare.json").is_file():
        return render_compare(path)
    if (path / "seeds.json").is_file():
        return render_seeds(path)
    if (path / "ensemble.json").is_file():
        return render_ensemble(path)
    if (path / "sweep.csv").is_file():
        return render_sweep(path)
    if not path.is_dir():
        raise UserError(f"run directory not found: {path}")
    if not ((path / "summary.json").is_file() or (path / "config.yaml").is_file()):
        raise UserError(f"{path}: no summary.json, seeds.json or compare.json; pass a folder made by "
                        "`visionlab train`, `visionlab seeds` or `visionlab compare`")
    return write_report(path)
