"""Segmentation training throughput at a recipe's resolution: the pipeline's training step (batched joint image/mask
augmentation on cached uint8, channels_last, autocast at the precision `train.precision=auto` picks) against an eager
fp32 NCHW baseline of the same model and the same augmentation, in the same run, on real CamVid batches.

    .venv/bin/python benchmarks/seg_throughput.py [configs/camvid_lraspp_lite0.yaml] [steps=12] [threads=2]
Last line: RESULT ratio=<ours/baseline> ours_img_s=<x> baseline_img_s=<y> precision=<p> cpu=<model>
"""
from __future__ import annotations

import copy
import sys
import time

from _common import machine_peak, of_peak, training_flop_per_s

import torch


def _cpu() -> str:
    from visionlab.deploy.latency import machine_info

    info = machine_info()
    return f"{info.get('cpu', '?')} (bf16 native: {info.get('bf16_native')})"


def _time(task, batches, precision: str, steps: int) -> float:
    """img/s over ``steps`` optimizer steps (after one warm-up step), the engine's own train step."""
    from visionlab.engine.loop import FitContext, _train_step
    from visionlab.engine.optim import build_optimizer, build_scheduler

    cfg = task.cfg
    opts = {"main": build_optimizer(task.param_groups(cfg.optim), cfg.optim)}
    ctx = FitContext(opts, {"main": build_scheduler(opts["main"], cfg.optim, 1, steps + 1)}, cfg.train, None,
                     torch.device("cpu"), precision, {}, {})
    task.model.train()
    _train_step(task, ctx, batches[0])
    n, t0 = 0, time.perf_counter()
    for i in range(steps):
        batch = batches[(i + 1) % len(batches)]
        _train_step(task, ctx, batch)
        n += len(batch[0])
    return n / (time.perf_counter() - t0)


def main(argv: list[str]) -> None:
    from visionlab import config as C
    from visionlab.data import build_splits
    from visionlab.data.loaders import build_loader
    from visionlab.engine.precision import resolve_precision
    from visionlab.tasks import TASKS

    path = next((a for a in argv if a.endswith(".yaml")), "configs/camvid_lraspp_lite0.yaml")
    kv = dict(a.split("=", 1) for a in argv if "=" in a)
    steps, threads = int(kv.get("steps", 12)), int(kv.get("threads", 2))
    torch.set_num_threads(threads)
    peak = machine_peak()
    cfg = C.load_config(path, ["train.progress=false"])
    splits = build_splits(cfg.data)
    loader = build_loader(splits.train, cfg.train.batch_size, True, cfg.seed, {})
    batches = [b for _, b in zip(range(4), loader)]
    precision = resolve_precision(cfg.train.precision, torch.device("cpu"))

    rates = {}
    for name, prec, channels_last in (("ours", precision, cfg.train.channels_last), ("baseline", "fp32", False)):
        torch.manual_seed(0)
        task = TASKS.get(cfg.task)(copy.deepcopy(cfg), splits.info(), torch.Generator().manual_seed(1))
        task.cfg = cfg
        if channels_last:
            task.model.to(memory_format=torch.channels_last)
        rates[name] = _time(task, batches, prec, steps)
        frac = of_peak(training_flop_per_s(task.flops_per_image(), rates[name]), prec, peak)
        print(f"{name:<9} {prec:<5} channels_last={channels_last!s:<5} {rates[name]:7.2f} img/s "
              f"= {100 * frac:.1f} % of the {prec} conv peak "
              f"({cfg.model.name}, batch {cfg.train.batch_size}, crop {cfg.segmentation.crop_size or 'full'}, "
              f"images {splits.train.images.shape[1]}x{splits.train.images.shape[2]}, {threads} threads)")
    print(f"RESULT ratio={rates['ours'] / rates['baseline']:.2f} ours_img_s={rates['ours']:.2f} "
          f"baseline_img_s={rates['baseline']:.2f} precision={precision} cpu={_cpu()}")


if __name__ == "__main__":
    main(sys.argv[1:])
