"""The equal training budget of a generative comparison, measured: each variant's training step (the task's own
step, its optimizers included, at the variant's batch size and precision) timed in the same run, arms alternating,
and the epochs that give every variant the baseline variant's training time.

An equal budget is the only fair way to compare a VAE (cheap steps), a DCGAN and a DDPM (costly steps); the compare
files set it through each variant's `train.epochs`, and this script is how those epochs were chosen and are checked.
Only the step is timed (the data path is in memory and its share is logged by every run as outside_step_fraction).

With ``runs=`` (finished runs of a constant learning rate, one per model) the arms are those runs' own configs and
the output is their validation FID after each epoch against the model-step seconds spent so far: FID against the
budget, one curve per model, from which a comparison's budget is chosen on the validation split.

    .venv/bin/python benchmarks/generative_budget.py [compare=configs/compare_mnist_generative.yaml] [steps=10]
                                                     [reps=3] [threads=N]
    .venv/bin/python benchmarks/generative_budget.py runs=RUN_DIR,RUN_DIR,... [steps=10] [reps=3] [threads=N]
Last line: RESULT <arm>_img_s=<r> <arm>_of_peak=<f> <arm>_epochs=<configured> <arm>_equal_epochs=<e> ...
"""
from __future__ import annotations

import sys
from pathlib import Path

from _common import ROOT, build_arm, machine_peak, of_peak, time_arms

import torch


def _arms(kv: dict) -> tuple[dict, str, str, dict]:
    """(name -> build_arm tuple, baseline name, what they came from, name -> run dir with ``runs=``, else {})."""
    if "runs" in kv:
        runs = [Path(r) for r in kv["runs"].split(",")]
        names = [f"{r.parent.name}/{r.name}" if r.name.startswith("seed-") else r.name for r in runs]
        run_dirs = dict(zip(names, runs))
        return {n: build_arm(str(r / "config.yaml"), []) for n, r in run_dirs.items()}, names[0], kv["runs"], run_dirs
    from visionlab.experiments import compare as Cm

    spec = Cm.load_spec(kv.get("compare", str(ROOT / "configs" / "compare_mnist_generative.yaml")))
    arms = {v: build_arm(str(spec.config), [*spec.overrides, *o]) for v, o in spec.variants.items()}
    return arms, spec.baseline, spec.source, {}


def _fid_curve(run_dir: Path) -> list[tuple[int, float]]:
    """(epoch, val/fid) of each epoch that logged a validation FID in the run's metrics.csv."""
    from visionlab.views.report import read_metrics_csv

    return [(r["epoch"], r["val/fid"]) for r in read_metrics_csv(run_dir / "metrics.csv") if r.get("val/fid")]


def main(argv: list[str]) -> None:
    from visionlab.deploy.latency import cpu_model

    kv = dict(a.split("=", 1) for a in argv)
    if "threads" in kv:
        torch.set_num_threads(int(kv["threads"]))
    steps, reps = int(kv.get("steps", 10)), int(kv.get("reps", 3))
    arms, baseline, source, run_dirs = _arms(kv)
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}; {source}")
    peak = machine_peak()
    ms = time_arms(arms, steps, reps)
    rows, fields = {}, []
    for v, (_, loader, _, cfg) in arms.items():
        rows[v] = (1000 * cfg.train.batch_size / ms[v], len(loader) * ms[v] / 1000, cfg.train.epochs)
    budget = rows[baseline][1] * rows[baseline][2]
    print(f"budget: {baseline}'s {rows[baseline][2]} epochs = {budget:.0f} s of model steps")
    for v, (rate, epoch_s, epochs) in rows.items():
        equal = max(1, round(budget / epoch_s))
        task, _, precision, cfg = arms[v]
        frac = of_peak(task.train_flops_per_image() * rate, precision, peak)
        print(f"{v:>24}: task={cfg.task}, batch {cfg.train.batch_size}, {precision}: {rate:7.0f} img/s "
              f"({100 * frac:.1f} % of peak), {epoch_s:6.1f} s/epoch; configured {epochs} epochs = "
              f"{epochs * epoch_s:6.0f} s ({epochs * epoch_s / budget:.2f}x the budget); equal budget: {equal} epochs")
        fields += [f"{v}_img_s={rate:.0f}", f"{v}_of_peak={frac:.3f}", f"{v}_epochs={epochs}",
                   f"{v}_equal_epochs={equal}"]
    if run_dirs:
        print("validation FID against the budget (model-step seconds at this run's measured speed):")
        for v, run_dir in run_dirs.items():
            epoch_s = rows[v][1]
            print(f"{v:>24}: " + ", ".join(f"{e * epoch_s:.0f} s {fid:.1f}" for e, fid in _fid_curve(run_dir)))
    print("RESULT " + " ".join(fields).replace("/", "_"))


if __name__ == "__main__":
    main(sys.argv[1:])
