"""Runs side by side: ``jobs`` calls at a time in spawned worker processes, each run given its share of the CPU cores
(`seeds.ensure_all` trains a list of seed runs through it).

For a machine with more cores than one run keeps busy (small models rarely scale past a few threads). On 2 cores it
does not pay: measured with benchmarks/parallel_jobs.py on a 2-core AMD EPYC (AVX-512 BF16), n=4 seeds, jobs=2
against jobs=1 in the same run: 0.94x for the MNIST CNN (mnist5k, 2 epochs), 0.96x for the DCGAN (3 epochs, FID on
2,000 samples). Every run is still trained by `seeds.ensure_seed`, so finished runs are skipped, interrupted ones
resumed, and the results are the same as one after another on the same thread count (a seed's run depends on its
config and seed, not on its neighbours)."""
from __future__ import annotations

import copy
import multiprocessing
import os
import signal
import threading
import time
from concurrent.futures import FIRST_EXCEPTION, ProcessPoolExecutor, wait

from visionlab import config as C
from visionlab.utils import ConfigError


def check_jobs(jobs: int | None) -> int:
    """``jobs`` (default 1), refused below 1 with the fix."""
    jobs = 1 if jobs is None else jobs
    if jobs < 1:
        raise ConfigError(f"jobs={jobs}: expected how many runs train at once, 1 or more (jobs=1 trains them one "
                          f"after another)")
    return jobs


def worker_config(cfg: C.Config, jobs: int, cores: int | None = None) -> C.Config:
    """``cfg`` for one of ``jobs`` runs side by side: its share of the cores when train.threads is 0 (all cores),
    no progress bar (they would interleave). Both keys are runtime settings: they never change a result, and a run
    started one way resumes or is skipped the other way."""
    out = copy.deepcopy(cfg)
    if not out.train.threads:
        out.train.threads = max(1, (cores or os.cpu_count() or 1) // jobs)
    out.train.progress = False
    return out


def run_in_workers(fn, calls: list[tuple], workers: int) -> list:
    """``fn(*args)`` for every ``args`` in ``calls``, started in that order, ``workers`` at a time in spawned processes
    (``fn`` is a module-level function); returns the results in order. The first failure cancels the calls not yet
    started, lets the running ones finish (a training run is checkpointed anyway) and is raised. A worker ends when
    this process does (killed, not only Ctrl-C): no orphan trains on, and a rerun resumes what it left."""
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"), initializer=_die_with_parent,
                             initargs=(os.getpid(),)) as pool:
        futures = [pool.submit(fn, *args) for args in calls]
        done, _ = wait(futures, return_when=FIRST_EXCEPTION)
        failed = next((f for f in futures if f in done and f.exception() is not None), None)
        if failed is not None:
            for f in futures:
                f.cancel()
            failed.result()
    return [f.result() for f in futures]


def _die_with_parent(parent_pid: int, poll_s: float = 0.5) -> None:
    """In a worker: a watcher thread that terminates this process once ``parent_pid`` is no longer its parent (the
    parent died and the worker was re-parented), so a killed `visionlab seeds/compare ... jobs=N` stops its runs."""
    def watch():
        while os.getppid() == parent_pid:
            time.sleep(poll_s)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()
