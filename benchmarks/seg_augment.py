"""Segmentation augmentation cost: visionlab's batched BatchSegAugment (one grid per batch, bilinear image + nearest
mask) against the per-sample torchvision transforms v2 pipeline (tv_tensors.Image + tv_tensors.Mask: RandomResize,
RandomCrop with fill {Mask: 255}, RandomHorizontalFlip, ColorJitter, ToDtype, Normalize), on the same real CamVid
batch (360x480), with scale (0.5, 2.0), a crop and a flip; once with colour jitter and once without.

    .venv/bin/python benchmarks/seg_augment.py [--batch 16] [--crop 360x480] [--short 0] [--threads 1] [--repeats 5]
(--short N decodes CamVid with data.image_size=N, the short side: --short 120 --crop 120x160 is the small-image case.)
Times are the best of --repeats runs after a warm-up (the least disturbed by other processes on a shared machine).
Last line: RESULT ratio=<torchvision us/img / ours us/img, with jitter> ours_us=<x> torchvision_us=<y>
"""
from __future__ import annotations

import argparse
import platform
import tempfile
import time

from _common import DATA

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from visionlab.config import DataConfig
from visionlab.data.mask_transforms import BatchSegAugment
from visionlab.data.segmentation import build_camvid

SCALE = (0.5, 2.0)
JITTER = 0.4


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return platform.processor() or platform.machine()
    name = next((ln.split(":", 1)[1].strip() for ln in lines if ln.startswith("model name")), platform.machine())
    flags = next((ln.split(":", 1)[1].split() for ln in lines if ln.startswith("flags")), [])
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if f in flags]
    return f"{name} ({', '.join(simd) or 'no avx2'})"


def torchvision_pipeline(mean, std, crop, short, jitter: bool):
    steps = [v2.RandomResize(int(SCALE[0] * short), int(SCALE[1] * short)),   # short side, like our scale range
             v2.RandomCrop(crop, pad_if_needed=True, fill={tv_tensors.Image: 0, tv_tensors.Mask: 255}),
             v2.RandomHorizontalFlip()]
    if jitter:
        steps.append(v2.ColorJitter(brightness=JITTER, contrast=JITTER, saturation=JITTER))
    steps += [v2.ToDtype({tv_tensors.Image: torch.float32, tv_tensors.Mask: torch.int64, "others": None}, scale=True),
              v2.Normalize(mean, std)]
    t = v2.Compose(steps)

    def run(images, masks):
        out = [t(tv_tensors.Image(im.permute(2, 0, 1)), tv_tensors.Mask(m)) for im, m in zip(images, masks)]
        return torch.stack([o[0] for o in out]), torch.stack([o[1] for o in out])
    return run


def us_per_img(fn, images, masks, repeats: int) -> float:
    fn(images, masks)                                   # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(images, masks)
        times.append(time.perf_counter() - t0)
    return float(np.min(times)) / len(images) * 1e6


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--crop", default="360x480", help="HxW crop")
    ap.add_argument("--short", type=int, default=0, help="data.image_size (short side); 0 = native 360x480")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    crop = tuple(int(v) for v in args.crop.lower().split("x"))
    cfg = DataConfig(name="camvid", root=str(DATA / "camvid"), limit=args.batch, image_size=args.short,
                     cache_dir=tempfile.mkdtemp())
    s = build_camvid(cfg)
    images = torch.from_numpy(s.train.images[:args.batch].copy())
    masks = torch.from_numpy(s.train.masks[:args.batch].copy())
    b, h, w, _ = images.shape
    print(f"CPU: {cpu_model()}; torch {torch.__version__} threads={torch.get_num_threads()}; "
          f"torchvision {__import__('torchvision').__version__}")
    print(f"CamVid batch {b}x{h}x{w}, crop {crop[0]}x{crop[1]}, scale {SCALE}, hflip, jitter {JITTER}")
    rows = []
    for jitter in (False, True):
        ours = BatchSegAugment(s.mean, s.std, train=True, crop_size=crop, scale=SCALE, hflip=True,
                               jitter=JITTER if jitter else 0.0, generator=torch.Generator().manual_seed(0))
        theirs = torchvision_pipeline(s.mean, s.std, crop, min(h, w), jitter)
        torch.manual_seed(0)
        ours_us = us_per_img(ours, images, masks, args.repeats)
        tv_us = us_per_img(theirs, images, masks, args.repeats)
        rows.append((jitter, ours_us, tv_us))
        print(f"{'with' if jitter else 'without'} colour jitter: ours {ours_us:8.0f} us/img   "
              f"torchvision v2 per sample {tv_us:8.0f} us/img   ratio {tv_us / ours_us:5.2f}x")
    _, ours_us, tv_us = rows[-1]
    print(f"RESULT ratio={tv_us / ours_us:.2f} ours_us={ours_us:.0f} torchvision_us={tv_us:.0f}")


if __name__ == "__main__":
    main()
