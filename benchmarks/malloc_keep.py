"""Training step time with glibc's malloc defaults against visionlab's kept memory (engine.machine.keep_freed_memory,
on in every `visionlab train`), on the CIFAR-10 speed recipe (configs/cifar10_speed.yaml: airbench94, batch 1024,
bf16 where the CPU has it) or any config given.

glibc maps every freed block over 32 MB afresh, so each step the kernel zero-fills the pages of the activations
again. Each arm runs in its own process (the setting is per process and cannot be undone); the arms alternate,
``reps`` processes each, so drift in the machine's load hits both alike. Per arm: median ms per training step (batches
fetched before the clock starts: the bare model step), minor page faults per step, the achieved FLOP/s as a fraction
of the measured conv peak, and the process's peak memory (what keeping costs).

    .venv/bin/python benchmarks/malloc_keep.py [config=configs/cifar10_speed.yaml] [steps=3] [reps=3] [threads=N]
        [KEY=VALUE ...]        # e.g. data.limit=5120: each process then loads 5,120 images instead of 50,000
Last line: RESULT ratio=<system ms / keep ms> keep_ms=<a> system_ms=<b> keep_faults=<c> system_faults=<d>
    keep_of_peak=<e> keep_rss_mb=<f> system_rss_mb=<g>
"""
from __future__ import annotations

import json
import os
import resource
import statistics
import subprocess
import sys
import time

from _common import ROOT, build_arm, machine_peak, of_peak, train_step

import torch

CONFIG = str(ROOT / "configs" / "cifar10_speed.yaml")


def child(config: str, overrides: list[str], steps: int) -> dict:
    """One arm, in this process: ms per step (median of ``steps`` after a warm-up step) and faults per step."""
    from visionlab.engine.machine import keep_freed_memory

    mode = keep_freed_memory()
    task, loader, precision, cfg = build_arm(config, overrides)
    task.model.train()
    batches = iter(loader)
    train_step(task, next(batches), precision)
    ms, faults = [], []
    for _ in range(steps):
        batch = next(batches)
        f0, t0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt, time.perf_counter()
        train_step(task, batch, precision)
        ms.append(1000 * (time.perf_counter() - t0))
        faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - f0)
    return {"mode": mode, "ms": statistics.median(ms), "faults": statistics.median(faults), "precision": precision,
            "batch": cfg.train.batch_size, "threads": torch.get_num_threads(),
            "train_flops_per_image": task.train_flops_per_image(),
            "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main(argv: list[str]) -> None:
    kv = dict(a.split("=", 1) for a in argv if a != "--child")
    config, steps, reps = kv.pop("config", CONFIG), int(kv.pop("steps", 3)), int(kv.pop("reps", 3))
    threads = kv.pop("threads", None)
    if threads:
        torch.set_num_threads(int(threads))
    overrides = [f"{k}={v}" for k, v in kv.items()]
    if "--child" in argv:
        print("CHILD " + json.dumps(child(config, overrides, steps)))
        return
    peak = machine_peak()
    cmd = [sys.executable, __file__, "--child", f"config={config}", f"steps={steps}",
           f"threads={torch.get_num_threads()}", *overrides]
    runs: dict[str, list[dict]] = {"system": [], "keep": []}
    for r in range(reps):
        for mode in runs:
            out = subprocess.run(cmd, env={**os.environ, "VISIONLAB_MALLOC": mode}, capture_output=True, text=True)
            if out.returncode:
                raise SystemExit(f"the {mode} arm failed:\n{out.stderr[-3000:]}")
            res = json.loads(out.stdout.strip().splitlines()[-1].removeprefix("CHILD "))
            assert res["mode"] == mode, f"asked for {mode}, the process ran {res['mode']} (not Linux with glibc?)"
            runs[mode].append(res)
            print(f"rep {r} {mode:>6}: {res['ms']:7.1f} ms/step, {res['faults']:8.0f} page faults/step, "
                  f"peak RSS {res['rss_mb']:.0f} MB")
    med = {m: {k: statistics.median(x[k] for x in v) for k in ("ms", "faults", "rss_mb")} for m, v in runs.items()}
    first = runs["keep"][0]
    frac = {m: of_peak(first["train_flops_per_image"] * 1000 * first["batch"] / med[m]["ms"], first["precision"], peak)
            for m in med}
    ratio = med["system"]["ms"] / med["keep"]["ms"]
    print(f"{config.rsplit('/', 1)[-1]}, batch {first['batch']}, {first['precision']}, {first['threads']} threads, "
          f"medians of {reps} processes x {steps} steps:")
    for m in med:
        print(f"  {m:>6}: {med[m]['ms']:7.1f} ms/step ({100 * frac[m]:.1f} % of the conv peak), "
              f"{med[m]['faults']:.0f} faults/step, peak RSS {med[m]['rss_mb']:.0f} MB")
    print(f"kept memory is {ratio:.2f}x glibc's default")
    print(f"RESULT ratio={ratio:.3f} keep_ms={med['keep']['ms']:.1f} system_ms={med['system']['ms']:.1f} "
          f"keep_faults={med['keep']['faults']:.0f} system_faults={med['system']['faults']:.0f} "
          f"keep_of_peak={frac['keep']:.3f} keep_rss_mb={med['keep']['rss_mb']:.0f} "
          f"system_rss_mb={med['system']['rss_mb']:.0f}")


if __name__ == "__main__":
    main(sys.argv[1:])
