"""`visionlab seeds n=N jobs=2` against `jobs=1`: the wall time of the same seeds trained one after another (each on
all the cores) and two at a time (each on its share), measured in the same run, arms alternating.

Each arm is the CLI a user types, in a fresh scratch folder, so worker start-up (a spawned process imports torch)
and every run's evaluation and report are in the time. One untimed seed first warms the disk cache and builds
anything a run makes once (e.g. the FID feature extractor of a generative config).

    .venv/bin/python benchmarks/parallel_jobs.py [config=configs/mnist_cnn.yaml] [n=4] [reps=1] [key=value ...]
Other key=value pairs are overrides of every run (default: data.name=mnist5k train.epochs=2).
Last line: RESULT jobs1_s=<median s> jobs2_s=<median s> speedup=<jobs1/jobs2>
"""
from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time

from _common import DATA, ROOT

OPTIONS = ("config", "n", "reps")


def _seeds(config: str, overrides: list[str], n: int, jobs: int, out: str) -> float:
    """Seconds of one `visionlab seeds` call, as a user runs it."""
    cmd = [sys.executable, "-m", "visionlab", "seeds", config, f"n={n}", f"jobs={jobs}", f"out_dir={out}",
           "train.progress=false", "train.tensorboard=false", *overrides]
    t0 = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "VISIONLAB_DATA": str(DATA),
                                                                 "PYTHONPATH": str(ROOT / "src")})
    if r.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{r.stderr[-3000:]}")
    return time.perf_counter() - t0


def main(argv: list[str]) -> None:
    from visionlab.deploy.latency import cpu_model

    kv = dict(a.split("=", 1) for a in argv if a.split("=", 1)[0] in OPTIONS)
    overrides = [a for a in argv if a.split("=", 1)[0] not in OPTIONS] or ["data.name=mnist5k", "train.epochs=2"]
    config = kv.get("config", str(ROOT / "configs" / "mnist_cnn.yaml"))
    n, reps = int(kv.get("n", 4)), int(kv.get("reps", 1))
    print(f"{cpu_model()}, {os.cpu_count()} cores; {config} {' '.join(overrides)}; n={n} seeds per arm, {reps} rep(s)")
    _seeds(config, overrides, 1, 1, tempfile.mkdtemp(prefix="vl-bench-"))          # warm-up, untimed
    times: dict[int, list[float]] = {1: [], 2: []}
    for r in range(reps):
        for jobs in ((1, 2) if r % 2 == 0 else (2, 1)):
            times[jobs].append(_seeds(config, overrides, n, jobs, tempfile.mkdtemp(prefix="vl-bench-")))
            print(f"rep {r}: jobs={jobs}: {times[jobs][-1]:.1f} s")
    t1, t2 = statistics.median(times[1]), statistics.median(times[2])
    print(f"jobs=1 (each run on all {os.cpu_count()} cores): {t1:.1f} s; jobs=2 (two runs at once, each on its share): "
          f"{t2:.1f} s; {t1 / t2:.2f}x")
    print(f"RESULT jobs1_s={t1:.1f} jobs2_s={t2:.1f} speedup={t1 / t2:.2f}")


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT / "src"))
    main(sys.argv[1:])
