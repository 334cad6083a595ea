"""Cost of one detection training step (augmentation + forward + backward + optimizer step) on real batches, for
several arms in the same run, as a ratio against the first arm (the recipe's detector as configured). Arms alternate
over ``reps`` and the median counts; each arm is ``name:KEY=VALUE,KEY=VALUE`` applied on top of the config.

    .venv/bin/python benchmarks/detection_step.py [config=configs/neu_det_fcos.yaml] [steps=4] [reps=3] [threads=N]
        [arms="fcos:;bf16:train.precision=bf16;nchw:train.channels_last=false;retinanet:model.name=retinanet_lite0"]
Last line: RESULT <arm>_ms=<ms> ... <arm>_over_<first>=<x> ...
"""
from __future__ import annotations

import sys

from _common import ROOT, build_arm, machine_peak, of_peak, time_arms, training_flop_per_s

import torch

KNOWN = {"config", "arms", "steps", "reps", "threads"}
ARMS = ("fcos:;bf16:train.precision=bf16;nchw:train.channels_last=false;retinanet:model.name=retinanet_lite0;"
        "fasterrcnn:model.name=fasterrcnn_lite0;ssdlite:model.name=ssdlite_lite0")


def main(argv: list[str]) -> None:
    from visionlab.deploy.latency import cpu_model

    kv = dict(a.split("=", 1) for a in argv)
    if "threads" in kv:
        torch.set_num_threads(int(kv["threads"]))
    config = kv.get("config", str(ROOT / "configs" / "neu_det_fcos.yaml"))
    steps, reps = int(kv.get("steps", 4)), int(kv.get("reps", 3))
    common = [f"{k}={v}" for k, v in kv.items() if k not in KNOWN]
    specs = [a.split(":", 1) for a in kv.get("arms", ARMS).split(";") if a]
    arms = {name: build_arm(config, common + [o for o in over.split(",") if o]) for name, over in specs}
    first = specs[0][0]
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}")
    peak = machine_peak()
    print(f"config {config} {' '.join(common)}; {steps} steps per arm, median of {reps}")
    ms = time_arms(arms, steps, reps)
    print(f"{'arm':<12} {'model':<18} {'precision':<10} {'ms/step':>9} {'img/s':>7} {'x ' + first:>10} "
          f"{'GFLOP/s':>8} {'of peak':>8}")
    for m, (task, _, precision, cfg) in arms.items():
        rate = 1000 * cfg.train.batch_size / ms[m]
        flop_s = training_flop_per_s(task.flops_per_image(), rate)
        print(f"{m:<12} {cfg.model.name:<18} {precision:<10} {ms[m]:>9.1f} {rate:>7.1f} {ms[m] / ms[first]:>10.2f} "
              f"{flop_s / 1e9:>8.1f} {100 * of_peak(flop_s, precision, peak):>7.1f}%")
    print("RESULT " + " ".join(f"{m}_ms={v:.1f}" for m, v in ms.items()) + " "
          + " ".join(f"{m}_over_{first}={v / ms[first]:.2f}" for m, v in ms.items() if m != first))


if __name__ == "__main__":
    main(sys.argv[1:])
