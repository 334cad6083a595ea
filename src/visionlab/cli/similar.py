"""CLI mode `visionlab similar RUN_DIR IMAGE [k=8] [metric=cosine|euclidean] [out=DIR]` and
`visionlab similar RUN_DIR eval [k=10] [metric=...]`: nearest train images and retrieval scores of a run."""
from __future__ import annotations

from pathlib import Path

from .args import split_options
from ..utils import ConfigError, UserError

USAGE = "usage: visionlab similar RUN_DIR IMAGE [k=8] [metric=cosine|euclidean] [out=DIR]\n" \
        "       visionlab similar RUN_DIR eval [k=10] [metric=cosine|euclidean]"
OPTIONS = ("k", "metric", "out")


def _parse(args: list[str]) -> tuple[list[str], dict]:
    pos, kv = split_options(args, "similar", OPTIONS, USAGE)
    if len(pos) != 2:
        raise UserError(USAGE)
    return pos, kv


def cmd_similar(args: list[str]) -> int:
    """Print the k nearest train images of IMAGE and write a PNG grid, or (IMAGE = eval) print recall@k and mAP@k
    of the test split against the train split. The index is built on first use under RUN_DIR/similarity."""
    from ..views.report import write_report
    from ..views.similarity import evaluate_retrieval, neighbours, similar
    from ..run import load_run
    from ..search import METRICS

    (run_dir, image), kv = _parse(args)
    metric = kv.get("metric", "cosine")
    if metric not in METRICS:
        raise ConfigError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    evaluating = image == "eval" and not Path(image).exists()
    try:
        k = int(kv.get("k", 10 if evaluating else 8))
    except ValueError:
        raise ConfigError(f"k must be a positive integer, got {kv['k']!r}") from None
    if k < 1:
        raise ConfigError(f"k must be a positive integer, got {k}")
    if evaluating:
        if "out" in kv:
            raise ConfigError(f"out= is not an option of `similar RUN_DIR eval`\n{USAGE}")
        res = evaluate_retrieval(run_dir, k=sorted({1, k}), metric=metric)
        print(f"{res['queries']} test queries vs {res['gallery']} train images, metric={metric}"
              f"{' (L2-normalised features)' if res['normalized'] else ''}")
        for kk in sorted({1, k}):
            print(f"recall@{kk}={res[f'recall@{kk}']:.4f}  mAP@{kk}={res[f'map@{kk}']:.4f}")
        write_report(run_dir)                                # the run report shows the retrieval table
        return 0
    if not Path(image).is_file():
        raise UserError(f"{image}: no such image file\n{USAGE}")
    run = load_run(run_dir)                                  # once, for both the listing and the grid
    _, hits = neighbours(run, image, k, metric)
    for rank, (_, name, cls, score) in enumerate(hits, 1):
        print(f"{rank:3d}  {score:8.4f}  {cls:<16s} {name}")
    print(similar(run, image, k, metric, out=kv.get("out")))
    if not kv.get("out"):
        write_report(run_dir)                                # grids in RUN_DIR/similarity/ appear in the report
    return 0
