"""Time-to-94 % on CIFAR-10 with the airbench-style speed recipe (configs/cifar10_speed.yaml), through the pipeline,
over seeds, against the recipe's FLOP lower bound at this machine's measured peak.

Like airbench, the recipe has a fixed length: its time is the training time of the whole run (first batch to last;
data load and the test evaluation excluded), and a seed "reaches 94 %" when its final test accuracy (the final EMA
model with flip + translate TTA; the test split chooses nothing) is >= 94 %. The lower bound is the training FLOPs
(3 x forward FLOPs per image x images seen) divided by the measured conv peak in the run's precision: no machine
trains this network faster than that. The goal is within 2x of it.

Seeds go to runs/bench_cifar10_speed/seed-k (finished seeds are skipped, an interrupted one resumes), so a long
benchmark can be stopped and continued; `visionlab report runs/bench_cifar10_speed` shows the seeds report.

    .venv/bin/python benchmarks/cifar10_speed.py [n=5] [threads=N] [target=0.94] [out_dir=runs] [KEY=VALUE ...]
target= sets the accuracy a seed must reach (the JPEG copy of CIFAR-10 in $VISIONLAB_DATA is quality 75 with 4:2:0
chroma: airbench94's own procedure reaches about 90.8 % on it, see the README).
Last line: RESULT mean_acc=<a> reached=<k>/<n> target=<t> time_to_target_s=<t> lower_bound_s=<b> over_bound=<x>
    of_peak=<f> outside_step=<o> precision=<p> cpu=<model>
"""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

from _common import ROOT, machine_peak, of_peak, training_flop_per_s

import torch

from visionlab.tasks.base import TRAIN_FLOPS_PER_FORWARD

CONFIG = ROOT / "configs" / "cifar10_speed.yaml"


def main(argv: list[str]) -> None:
    from visionlab.engine.machine import cpu_info, peak_for
    from visionlab.experiments.seeds import run_seeds

    kv = dict(a.split("=", 1) for a in argv)
    if "threads" in kv:
        torch.set_num_threads(int(kv.pop("threads")))
    n = int(kv.pop("n", 5))
    target = float(kv.pop("target", 0.94))
    overrides = [f"{k}={v}" for k, v in {"name": "bench_cifar10_speed", "train.progress": "false",
                                         "train.tensorboard": "false", **kv}.items()]
    peak = machine_peak()
    parent = Path(run_seeds(str(CONFIG), overrides, n)).parent
    rows = []
    for k in range(n):
        s = json.loads((parent / f"seed-{k}" / "summary.json").read_text())
        t = s["timings"]
        flops = TRAIN_FLOPS_PER_FORWARD * s["flops_per_image"] * s["train_size"] * s["epochs_run"]
        bound = flops / peak_for(peak, s["precision"])
        rows.append({"acc": s["test/acc"], "train_s": t["train_s"], "bound_s": bound, "precision": s["precision"],
                     "of_peak": of_peak(training_flop_per_s(s["flops_per_image"], t["train_img_per_s"]),
                                        s["precision"], peak),
                     "outside": t.get("outside_step_fraction")})
        r = rows[-1]
        verdict = "reached" if r["acc"] >= target else "below"
        print(f"seed {k}: test acc {100 * r['acc']:.2f} % ({verdict} {100 * target:g} %), "
              f"train {r['train_s']:.0f} s = {r['train_s'] / bound:.2f}x the lower bound {bound:.0f} s "
              f"({flops / 1e12:.0f} TFLOP at the {r['precision']} conv peak); {100 * r['of_peak']:.1f} % of peak, "
              f"{100 * (r['outside'] or 0):.1f} % of the time outside the model step")
    accs = [r["acc"] for r in rows]
    reached = [r for r in rows if r["acc"] >= target]
    mean = lambda key, rs=rows: statistics.fmean(r[key] for r in rs)         # noqa: E731
    sd = statistics.stdev(accs) if n > 1 else 0.0
    print(f"{n} seeds: test acc {100 * statistics.fmean(accs):.2f} +- {100 * sd:.2f} % (mean +- std), "
          f"{len(reached)}/{n} reached {100 * target:g} %; train {mean('train_s'):.0f} s per run = "
          f"{mean('train_s') / mean('bound_s'):.2f}x the FLOP lower bound {mean('bound_s'):.0f} s")
    print(f"RESULT mean_acc={statistics.fmean(accs):.4f} reached={len(reached)}/{n} target={target} "
          f"time_to_target_s={mean('train_s', reached) if reached else float('nan'):.0f} "
          f"lower_bound_s={mean('bound_s'):.0f} over_bound={mean('train_s') / mean('bound_s'):.2f} "
          f"of_peak={mean('of_peak'):.3f} outside_step={mean('outside'):.3f} precision={rows[0]['precision']} "
          f"cpu={cpu_info()['model']!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
