"""The equal training budget of a generative comparison, measured: each variant's training step (the task's own
step, its optimizers included, at the variant's batch size and precision) timed in the same run, arms alternating,
and the epochs that give every variant the baseline variant's training time.

An equal budget is the only fair way to compare a VAE (cheap steps), a DCGAN and a DDPM (costly steps); the compare
files set it through each variant's `train.epochs`, and this script is how those epochs were chosen and are checked.
Only the step is timed (the data path is in memory and its share is logged by every run as outside_step_fraction).

    .venv/bin/python benchmarks/generative_budget.py [compare=configs/compare_mnist_generative.yaml] [steps=10]
                                                     [reps=3] [threads=N]
Last line: RESULT <variant>_img_s=<r> <variant>_epochs=<configured> <variant>_equal_epochs=<e> ...
"""
from __future__ import annotations

import sys

from _common import ROOT, build_arm, time_arms

import torch


def main(argv: list[str]) -> None:
    from visionlab.deploy.latency import cpu_model
    from visionlab.experiments import compare as Cm

    kv = dict(a.split("=", 1) for a in argv)
    if "threads" in kv:
        torch.set_num_threads(int(kv["threads"]))
    spec = Cm.load_spec(kv.get("compare", str(ROOT / "configs" / "compare_mnist_generative.yaml")))
    steps, reps = int(kv.get("steps", 10)), int(kv.get("reps", 3))
    arms = {v: build_arm(str(spec.config), [*spec.overrides, *o]) for v, o in spec.variants.items()}
    ms = time_arms(arms, steps, reps)
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}; {spec.source}")
    rows, fields = {}, []
    for v, (_, loader, _, cfg) in arms.items():
        rate = 1000 * cfg.train.batch_size / ms[v]
        epoch_s = len(loader) * ms[v] / 1000
        rows[v] = (rate, epoch_s, cfg.train.epochs)
    budget = rows[spec.baseline][1] * rows[spec.baseline][2]
    print(f"budget: the baseline {spec.baseline}'s {rows[spec.baseline][2]} epochs = {budget:.0f} s of model steps")
    for v, (rate, epoch_s, epochs) in rows.items():
        equal = max(1, round(budget / epoch_s))
        cfg = arms[v][3]
        print(f"{v:>12}: task={cfg.task}, batch {cfg.train.batch_size}, {arms[v][2]}: {rate:7.0f} img/s, "
              f"{epoch_s:6.1f} s/epoch; configured {epochs} epochs = {epochs * epoch_s:6.0f} s "
              f"({epochs * epoch_s / budget:.2f}x the budget); equal budget: {equal} epochs")
        fields += [f"{v}_img_s={rate:.0f}", f"{v}_epochs={epochs}", f"{v}_equal_epochs={equal}"]
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main(sys.argv[1:])
