"""Overhead of `visionlab sweep` per trial: a seeded random sweep against the same trial configs run by hand through
``visionlab.train`` (run + report, what each sweep trial does) in a loop. Goal: <= 5 %.

Tiny real trials (embedded MNIST, 500 digits per split, 2 epochs, no pruning, SQLite study); the two arms alternate
(sweep first, then hand first) so that drift in the machine's load hits both. Also reported: the machinery share
inside the sweep itself, (sweep wall time - sum of its trials' durations) / sum of durations, which is less noisy.

    .venv/bin/python benchmarks/sweep_overhead.py [trials=4] [reps=2]
Last line: RESULT overhead_pct=<x> machinery_pct=<y> sweep_s=<a> hand_s=<b> trials=<n> per_trial_overhead_s=<c>
"""
from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import _common  # noqa: F401  (sets VISIONLAB_DATA and sys.path)

import yaml

BASE = ["data.name=mnist5k", "data.limit=500", "data.rotation=0", "train.epochs=2", "train.progress=false",
        "train.tensorboard=false"]
SPACE = """name: bench
strategy: random
seed: 0
prune: false
report: true
params:
  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  train.batch_size: {values: [32, 64, 128]}
"""


def run_sweep_arm(tmp: Path, rep: int, trials: int) -> tuple[float, float, list[dict]]:
    """(wall s, sum of trial durations s, the trials' resolved configs)."""
    from visionlab.experiments.sweep import run_sweep

    space = tmp / "space.yaml"
    space.write_text(SPACE)
    t0 = time.perf_counter()
    result = run_sweep(None, space, [*BASE, f"out_dir={tmp / f'sweep-{rep}'}"], trials=trials, log=lambda m: None)
    wall = time.perf_counter() - t0
    inside = sum(r["duration_s"] for r in result.rows)
    configs = [yaml.safe_load((Path(r["run_dir"]) / "config.yaml").read_text()) for r in result.rows]
    return wall, inside, configs


def run_hand_arm(tmp: Path, rep: int, configs: list[dict]) -> float:
    """The same configs through the public API, one after another."""
    import visionlab

    t0 = time.perf_counter()
    for k, cfg in enumerate(configs):
        visionlab.train({**cfg, "out_dir": str(tmp / f"hand-{rep}"), "name": f"trial-{k}"})
    return time.perf_counter() - t0


def main(argv: list[str]) -> None:
    opts = dict(a.split("=", 1) for a in argv)
    trials, reps = int(opts.get("trials", 4)), int(opts.get("reps", 2))
    import visionlab

    tmp = Path(tempfile.mkdtemp(prefix="vl-bench-sweep-"))
    visionlab.train(None, [*BASE, f"out_dir={tmp / 'warmup'}", "name=warmup"])    # imports, dataset cache, kernels
    sweeps, hands, machinery, configs = [], [], [], None
    for rep in range(reps):
        if rep % 2 == 0 or configs is None:
            wall, inside, configs = run_sweep_arm(tmp, rep, trials)
            hand = run_hand_arm(tmp, rep, configs)
        else:
            hand = run_hand_arm(tmp, rep, configs)
            wall, inside, _ = run_sweep_arm(tmp, rep, trials)
        sweeps.append(wall)
        hands.append(hand)
        machinery.append(100 * (wall - inside) / inside)
        print(f"rep {rep}: sweep {wall:.2f} s (trials inside {inside:.2f} s), by hand {hand:.2f} s, "
              f"overhead {100 * (wall - hand) / hand:+.1f} %", flush=True)
    s, h = statistics.median(sweeps), statistics.median(hands)
    print(f"RESULT overhead_pct={100 * (s - h) / h:.2f} machinery_pct={statistics.median(machinery):.2f} "
          f"sweep_s={s:.2f} hand_s={h:.2f} trials={trials} per_trial_overhead_s={(s - h) / trials:.3f}")


if __name__ == "__main__":
    main(sys.argv[1:])
