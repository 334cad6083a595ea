"""Strong-augmentation cost for semi-supervised learning (FixMatch / UDA): visionlab's BatchRandAugment (RandAugment
2 ops + Cutout 16 px, batched per op group) against a per-sample loop over torchvision.transforms.v2.RandAugment(
num_ops=2, magnitude=9) + a per-sample cutout, on one real CIFAR-10 batch of mu * B = 7 * 64 = 448 uint8 images.

    .venv/bin/python benchmarks/randaugment.py [batch=448] [reps=7] [threads=1]
On a machine shared with other jobs pass threads=1. The arms alternate over ``reps`` after a warm-up and the median
counts, so drift in the machine's load hits all of them; ratios are against the naive loop of this same run.
Last line: RESULT fixed_ms=<x> random_ms=<y> naive_ms=<z> fixed_speedup=<naive / fixed> random_speedup=<naive / random>
"""
from __future__ import annotations

import sys
import tempfile
import time

from _common import DATA

import torch
from torchvision.transforms import v2

from visionlab.config import DataConfig
from visionlab.data.cifar import build_cifar10
from visionlab.data.randaugment import BatchRandAugment

CUTOUT = 0.5     # FixMatch: a 16 px hole on 32 px images
FILL = 127


def naive(generator: torch.Generator):
    """Per image: torchvision's RandAugment on the CHW view, then one hole cut by slicing (FixMatch's CutoutAbs)."""
    ra = v2.RandAugment(num_ops=2, magnitude=9)

    def run(images: torch.Tensor) -> torch.Tensor:
        out = []
        for img in images:
            x = ra(img.permute(2, 0, 1)).permute(1, 2, 0).clone()
            h, w = x.shape[:2]
            side = round(CUTOUT * min(h, w))
            cy, cx = (torch.rand(2, generator=generator) * torch.tensor([h, w]) - side / 2).floor().long().tolist()
            x[max(cy, 0):max(cy + side, 0), max(cx, 0):max(cx + side, 0)] = FILL
            out.append(x)
        return torch.stack(out)
    return run


def bench(arms: dict, images: torch.Tensor, reps: int) -> dict:
    """name -> median ms per batch; arms alternate so that load drift hits all of them."""
    times = {k: [] for k in arms}
    for fn in arms.values():                      # warm-up
        fn(images)
    for _ in range(reps):
        for k, fn in arms.items():
            t0 = time.perf_counter()
            fn(images)
            times[k].append(time.perf_counter() - t0)
    return {k: sorted(v)[len(v) // 2] * 1e3 for k, v in times.items()}


def main(argv: list[str]) -> None:
    from visionlab.deploy.latency import cpu_model

    kv = dict(a.split("=", 1) for a in argv)
    torch.set_num_threads(int(kv.get("threads", 1)))
    batch, reps = int(kv.get("batch", 448)), int(kv.get("reps", 7))
    cfg = DataConfig(name="cifar10", root=str(DATA / "cifar10"), limit=batch, cache_dir=tempfile.mkdtemp())
    images = torch.from_numpy(build_cifar10(cfg).train.images[:batch].copy())
    torch.manual_seed(0)                          # torchvision's RandAugment draws from the global generator
    arms = {"BatchRandAugment magnitude=9": BatchRandAugment(num_ops=2, magnitude=9, cutout=CUTOUT, fill=FILL),
            "BatchRandAugment magnitude=random": BatchRandAugment(num_ops=2, magnitude="random", cutout=CUTOUT,
                                                                  fill=FILL),
            "naive loop: v2.RandAugment + cutout": naive(torch.Generator().manual_seed(0))}
    print(f"CPU: {cpu_model()}, {torch.get_num_threads()} threads; torch {torch.__version__}, "
          f"torchvision {__import__('torchvision').__version__}")
    print(f"CIFAR-10 train batch {tuple(images.shape)} uint8 NHWC; RandAugment num_ops=2, 31 bins; cutout "
          f"{CUTOUT} ({round(CUTOUT * 32)} px) fill {FILL}; median of {reps}")
    ms = bench(arms, images, reps)
    base = ms["naive loop: v2.RandAugment + cutout"]
    print(f"{'arm':<38} {'ms/batch':>9} {'us/img':>8} {'speedup':>8}")
    for k, v in ms.items():
        print(f"{k:<38} {v:>9.1f} {v * 1e3 / batch:>8.1f} {base / v:>7.2f}x")
    fixed, rand = ms["BatchRandAugment magnitude=9"], ms["BatchRandAugment magnitude=random"]
    print(f"RESULT fixed_ms={fixed:.1f} random_ms={rand:.1f} naive_ms={base:.1f} fixed_speedup={base / fixed:.2f} "
          f"random_speedup={base / rand:.2f}")


if __name__ == "__main__":
    main(sys.argv[1:])
