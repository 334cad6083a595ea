"""Wall time to 99.0 % and to 99.5 % MNIST test accuracy with visionlab's fastest recipes, and the seed recipe's
final test accuracy (configs/mnist_cnn.yaml, 25 epochs). Every run goes through the real pipeline (`visionlab train`).

Like airbench, each target has a fixed-length recipe (its schedule depends on the length), timed from the first
training batch to the last; the test split is evaluated once, at the end.

    .venv/bin/python benchmarks/time_to_accuracy.py [--skip-seed-recipe]
Goals on 2 cores: <= 30 s to 99.0 %, <= 3 min to 99.5 %, seed recipe >= 99.4 %.
"""
from __future__ import annotations

import sys
import time

from _common import ROOT, machine_peak, run_efficiency, run_pipeline

FAST = ["data.name=mnist", "data.val_fraction=0", "model.name=mnist_cnn", "optim.name=adam", "optim.lr=0.003",
        "optim.scheduler=onecycle", "data.rotation=10", "seed=0"]
RECIPES = [  # (target, overrides)
    (0.990, FAST + ["train.epochs=1", "train.batch_size=100"]),
    (0.995, FAST + ["train.epochs=8", "train.batch_size=128"]),
]


def main() -> None:
    results = []
    peak = machine_peak()
    for target, overrides in RECIPES:
        t0 = time.perf_counter()
        s = run_pipeline(None, overrides)
        wall = time.perf_counter() - t0
        ok = s["test/acc"] >= target
        print(f"target {100 * target:.1f}%: test acc {100 * s['test/acc']:.2f}% after {s['epochs_run']} epochs, "
              f"train {s['timings']['train_s']:.1f} s, wall {wall:.1f} s (incl. data load and test eval) "
              f"{'reached' if ok else 'NOT reached'}  [{' '.join(overrides)}]; {run_efficiency(s, peak)}")
        results.append((target, s["timings"]["train_s"], wall, s["test/acc"]))
    seed_acc = None
    if "--skip-seed-recipe" not in sys.argv:
        t0 = time.perf_counter()
        s = run_pipeline(str(ROOT / "configs" / "mnist_cnn.yaml"), [])
        seed_acc = s["test/acc"]
        print(f"seed recipe (configs/mnist_cnn.yaml, {s['epochs_run']} epochs, best epoch {s['best_epoch']} by val): "
              f"test acc {100 * seed_acc:.2f}%, train {s['timings']['train_s']:.0f} s, "
              f"wall {time.perf_counter() - t0:.0f} s, run dir {s['run_dir']}; {run_efficiency(s, peak)}")
    r = {t: (tr, w, a) for t, tr, w, a in results}
    line = (f"RESULT to99.0_s={r[0.990][1]:.1f} acc={r[0.990][2]:.4f} to99.5_s={r[0.995][1]:.1f} "
            f"acc={r[0.995][2]:.4f}")
    if seed_acc is not None:
        line += f" seed_recipe_acc={seed_acc:.4f}"
    print(line)


if __name__ == "__main__":
    main()
