"""Cost of one semi-supervised step against the same model's supervised step, in the same run: the task's own
training_step + backward + optimizer step on real batches from the run's streams (labelled batch B, unlabelled mu*B),
under the precision the pipeline would pick (bf16 autocast on a CPU with bf16, channels_last).

FixMatch / UDA forward B + 2 mu B images (weak and strong view) and RandAugment the strong view; MPL runs a teacher
and a student. Arms alternate over ``reps`` and the median counts. Ratios are against ``supervised`` of this run.

    .venv/bin/python benchmarks/ssl_step.py [config=configs/cifar10_ssl_cpu.yaml] [methods=supervised,fixmatch,uda,mpl]
                                            [steps=5] [reps=3] [threads=N] [KEY=VALUE ...]
Last line: RESULT supervised_ms=<ms> <method>_ms=<ms> ... <method>_over_supervised=<x> ...
"""
from __future__ import annotations

import sys

from _common import ROOT, build_arm, machine_peak, of_peak, time_arms, training_flop_per_s

import torch

KNOWN = {"config", "methods", "steps", "reps", "threads"}


def main(argv: list[str]) -> None:
    from visionlab.deploy.latency import cpu_model

    kv = dict(a.split("=", 1) for a in argv)
    if "threads" in kv:
        torch.set_num_threads(int(kv["threads"]))
    config = kv.get("config", str(ROOT / "configs" / "cifar10_ssl_cpu.yaml"))
    methods = kv.get("methods", "supervised,fixmatch,uda,mpl").split(",")
    if "supervised" not in methods:
        methods = ["supervised", *methods]
    steps, reps = int(kv.get("steps", 5)), int(kv.get("reps", 3))
    overrides = [f"{k}={v}" for k, v in kv.items() if k not in KNOWN]
    arms = {m: build_arm(config, [f"ssl.method={m}", *overrides]) for m in methods}
    cfg = arms["supervised"][3]
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    peak = machine_peak()
    print(f"config {config} {' '.join(overrides)}: model {cfg.model.name}, batch {cfg.train.batch_size} labelled + "
          f"mu {cfg.ssl.mu:g} x unlabelled, precision {arms['supervised'][2]}; {steps} steps per arm, median of {reps}")
    ms = time_arms(arms, steps, reps)
    base = ms["supervised"]
    flops = arms["supervised"][0].flops_per_image()
    print(f"{'method':<14} {'ms/step':>9} {'x supervised':>13} {'images forwarded':>17} {'of peak':>8}")
    for m in methods:
        b, mu = cfg.train.batch_size, cfg.ssl.mu
        seen = {"supervised": b, "pseudo_label": b + mu * b, "fixmatch": b + 2 * mu * b, "uda": b + 2 * mu * b,
                "mpl": 3 * b + 3 * mu * b}[m]
        flop_s = training_flop_per_s(flops, 1000 * seen / ms[m])       # as if every forwarded image were trained
        print(f"{m:<14} {ms[m]:>9.1f} {ms[m] / base:>13.2f} {int(seen):>17} "
              f"{100 * of_peak(flop_s, arms[m][2], peak):>7.1f}%")
    print("RESULT " + " ".join(f"{m}_ms={v:.1f}" for m, v in ms.items()) + " "
          + " ".join(f"{m}_over_supervised={v / base:.2f}" for m, v in ms.items() if m != "supervised"))


if __name__ == "__main__":
    main(sys.argv[1:])
