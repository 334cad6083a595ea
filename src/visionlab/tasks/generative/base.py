"""What the three generative tasks share: pixels to [-1, 1] and back, seeded sampling (balanced classes for
conditional models), and evaluation as FID / KID of generated images against the evaluated split's real images on a
pinned feature extractor (named in every result)."""
from __future__ import annotations

import hashlib
import time
from contextlib import contextmanager

import numpy as np
import torch

from typing import TYPE_CHECKING

from ...utils import UserError
from ..base import Prediction, Task

if TYPE_CHECKING:
    from ...metrics.fid import FeatureStats

GRID = 64                   # images in the per-epoch sample grid (fixed noise, so progress is visible)
GRID_SEED = 1234            # the grid's noise
FID_SEED = 4321             # the noise of the images scored by FID: every evaluation of a model gives the same score


def to_model(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [-1, 1]."""
    return images.permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float NCHW in [-1, 1] -> uint8 NHWC (clamped, rounded)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def make_grid(images: torch.Tensor | np.ndarray, rows: int | None = None) -> np.ndarray:
    """uint8 [N, H, W, C] -> one uint8 [H', W', C] picture, ``rows`` rows (default: as square as possible)."""
    images = torch.as_tensor(np.asarray(images))
    n, h, w, c = images.shape
    rows = rows or max(1, int(np.floor(np.sqrt(n))))
    cols = int(np.ceil(n / rows))
    grid = torch.full((rows * (h + 2) + 2, cols * (w + 2) + 2, c), 255, dtype=torch.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        grid[2 + r * (h + 2):2 + r * (h + 2) + h, 2 + k * (w + 2):2 + k * (w + 2) + w] = images[i]
    return grid.numpy()


@contextmanager
def _full_precision():
    with torch.autocast("cpu", enabled=False), torch.autocast("cuda", enabled=False):
        yield


class GenerativeTask(Task):
    """Subclasses set ``model`` (an ``nn.ModuleDict``) and implement ``sample`` (and ``training_step``)."""

    target = "none"
    primary_metric = ("val/fid", "min")
    generates = True

    def __init__(self, model, info, fid_cfg, data_cfg, conditional: bool, hflip: bool,
                 generator: torch.Generator):
        super().__init__(model, info, tuple(info.image_size))
        self.fid, self.data_cfg = fid_cfg, data_cfg
        self.conditional, self.hflip, self.gen = conditional, hflip, generator
        self.num_classes = info.num_classes if conditional else 0
        self._extractor = None
        self._real_cache: dict[bytes, torch.Tensor] = {}   # batch digest -> features: the val split is re-read
        self._ref: FeatureStats | None = None
        self._val_images: torch.Tensor | None = None        # real images for reconstructions (one per class first)
        self._val_labels: list = []
        self.epoch = 0

    # ---- data
    def on_train_epoch_start(self, epoch: int) -> None:
        self.epoch = epoch

    def augment(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> [-1, 1] NCHW with a random horizontal flip per image when ``hflip``."""
        x = to_model(images)
        if self.hflip:
            flip = torch.rand(len(x), generator=self.gen) < 0.5
            x = torch.where(flip.to(x.device)[:, None, None, None], x.flip(-1), x)
        return x

    def labels_of(self, batch) -> torch.Tensor | None:
        """The batch's class labels for a conditional model (checks.py made sure the data has them), else None."""
        return batch[1] if self.conditional else None

    # ---- sampling
    def sample(self, n: int, generator: torch.Generator, labels: torch.Tensor | None,
               steps: int | None = None) -> torch.Tensor:
        """``n`` images in [-1, 1] NCHW from noise drawn with ``generator`` (on the CPU, so seeds agree across
        devices); ``labels`` [n] for conditional models; ``steps``: sampling steps (diffusion models)."""
        raise NotImplementedError

    def class_index(self, label: str | int | None) -> int | None:
        if label is None or label == "":
            return None
        if not self.conditional:
            raise UserError("this run's model is not class-conditional: drop class=, or train with "
                            "<task>.conditional=true")
        classes = list(self.info.classes)
        if isinstance(label, str) and label in classes:
            return classes.index(label)
        if str(label).isdigit() and int(label) < len(classes):
            return int(label)
        raise UserError(f"class={label!r} is not one of this run's classes: {', '.join(classes)}")

    @torch.no_grad()
    def generate(self, n: int, seed: int, label: str | int | None = None, steps: int | None = None) -> torch.Tensor:
        """``n`` uint8 [n, H, W, C] images, reproducible from ``seed``; ``label`` picks a class (conditional models;
        otherwise the classes are balanced); ``steps``: sampling steps of a diffusion model (default its own)."""
        g = torch.Generator().manual_seed(int(seed))
        cls = self.class_index(label)
        labels = None
        if self.conditional:
            labels = (torch.full((n,), cls) if cls is not None
                      else torch.arange(n) % self.num_classes)[torch.randperm(n, generator=g)]
        device = next(self.model.parameters()).device
        out = []
        for i in range(0, n, self.fid.batch_size):
            lab = None if labels is None else labels[i:i + self.fid.batch_size].to(device)
            out.append(to_uint8(self.sample(min(self.fid.batch_size, n - i), g, lab, steps)).cpu())
        return torch.cat(out) if out else torch.zeros((0, *self.input_size, self.info.channels), dtype=torch.uint8)

    def noise(self, shape, generator: torch.Generator) -> torch.Tensor:
        device = next(self.model.parameters()).device
        return torch.randn(shape, generator=generator).to(device)

    # ---- evaluation: FID / KID against the real images of the split being evaluated
    @property
    def extractor(self):
        if self._extractor is None:
            from .features import build_extractor

            # evaluation runs under no_grad and autocast; building (or training) the extractor must not move the
            # training RNG either, or a resumed run (which builds it later) would draw different noise
            with torch.random.fork_rng(devices=[]), torch.enable_grad(), _full_precision():
                self._extractor = build_extractor(self.fid.extractor, self.info.channels, self.data_cfg)
        return self._extractor

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Extractor features in fp32 under any autocast (the extractor and its precision are pinned)."""
        with _full_precision():
            return self.extractor.features(images)

    def _real_features(self, images: torch.Tensor) -> torch.Tensor:
        cpu = images.cpu().contiguous()
        key = hashlib.blake2b(cpu.numpy().tobytes(), digest_size=16).digest()
        if key not in self._real_cache:
            self._real_cache[key] = self.features(cpu)
        return self._real_cache[key]

    @torch.no_grad()
    def validation_step(self, batch) -> None:
        images = batch[0]
        from ...metrics.fid import FeatureStats

        feats = self._real_features(images)
        if self._ref is None:
            self._ref = FeatureStats(feats.shape[1], keep=max(self.fid.samples, self.fid.kid_subset_size))
        self._ref.update(feats)
        self._keep_val_images(batch)
        self.evaluate_batch(batch)

    def _keep_val_images(self, batch) -> None:
        """Keep 16 real images for reconstructions, one per class first (evaluation splits are often class-sorted)."""
        kept = [] if self._val_images is None else list(self._val_images)
        if len(kept) >= 16:
            return
        labels = batch[1].tolist() if batch[1].ndim == 1 else [None] * len(batch[0])
        seen = set(self._val_labels)
        for image, label in zip(batch[0], labels):
            if len(kept) < 16 and (label is None or label not in seen or len(seen) >= self.info.num_classes):
                kept.append(image.clone())
                self._val_labels.append(label)
                seen.add(label)
        self._val_images = torch.stack(kept) if kept else None

    def evaluate_batch(self, batch) -> None:
        """A task's own per-batch evaluation besides FID (the VAE's likelihood bound)."""

    def own_metrics(self) -> dict:
        """A task's own metrics besides FID (numbers)."""
        return {}

    def compute_metrics(self) -> dict:
        from ...metrics.fid import FeatureStats, scores

        if self._ref is None or self._ref.n < 2:
            raise UserError("FID needs at least 2 real images in the evaluated split")
        n = self.fid.samples if self.full_evaluation else self.fid.val_samples
        t0 = time.perf_counter()
        fake = self.generate(n, FID_SEED)
        sample_s = time.perf_counter() - t0
        gen = FeatureStats(self._ref.dim, keep=n)
        for i in range(0, n, 500):
            gen.update(self.features(fake[i:i + 500]))
        out = scores(gen, self._ref, self.fid.kid_subsets, self.fid.kid_subset_size)
        out.update(self.own_metrics())
        out["sample_ms"] = 1000 * sample_s / max(n, 1)
        out["extractor"] = self.extractor.describe()
        return out

    def reset_metrics(self, collect_examples: bool = False) -> None:
        self._ref = None

    # ---- using the model
    def model_input(self, images: torch.Tensor) -> torch.Tensor:
        return to_model(images)

    def predict(self, images: torch.Tensor) -> Prediction:
        raise UserError("a generative run makes new images rather than predicting on yours: "
                        "`visionlab generate RUN_DIR n=64` (the VAE also reconstructs: `visionlab predict`)")

    def export_example(self, batch: int = 2) -> dict[str, torch.Tensor]:
        """Named example inputs of ``export_module()`` in its argument order (the ONNX input names): the latent
        noise "z" (GAN, VAE decoder) or "x", "t" (the diffusion denoiser), then "labels" for conditional models."""
        raise NotImplementedError

    def flops_per_image(self) -> int:
        """FLOPs of one call of the exported network for one sample (a DDPM sample costs sample_steps calls)."""
        from ...models import count_flops

        return count_flops(self.export_module(), *self.export_example(1).values())

    def _labels_example(self, batch: int) -> dict[str, torch.Tensor]:
        return {"labels": torch.arange(batch) % self.num_classes} if self.conditional else {}

    def epoch_images(self) -> dict[str, np.ndarray]:
        """uint8 HWC pictures of progress written after every epoch: the fixed-noise sample grid (one row per class
        for conditional models)."""
        if not self.conditional:
            return {"samples": make_grid(self.generate(GRID, GRID_SEED))}
        per = max(1, GRID // self.num_classes)
        rows = [self.generate(per, GRID_SEED, c) for c in range(self.num_classes)]
        return {"samples": make_grid(torch.cat(rows), rows=self.num_classes)}
