"""Batched RandAugment + Cutout on uint8 NHWC batches: the strong augmentation of FixMatch / UDA, built from
torchvision's own functional ops (transforms.v2.functional), one call per group of samples that share an op.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms.v2 import InterpolationMode

# torchvision.transforms.v2.RandAugment._AUGMENTATION_SPACE, in its order: op -> (magnitudes per bin, signed);
# the magnitudes are built exactly as there (same tensor ops, float32), so float(table[bin]) is bit-identical
SIGNED = {"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast", "Sharpness"}
OPS = ("Identity", "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate", "Brightness", "Color", "Contrast",
       "Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize")
NO_MAGNITUDE = {"Identity", "AutoContrast", "Equalize"}


def magnitude_table(num_bins: int, height: int, width: int) -> dict[str, torch.Tensor | None]:
    """op -> magnitude per bin (None for ops without one), as torchvision's RandAugment defines them."""
    def lin(hi: float) -> torch.Tensor:
        return torch.linspace(0.0, hi, num_bins)
    return {"Identity": None, "ShearX": lin(0.3), "ShearY": lin(0.3),
            "TranslateX": lin(150.0 / 331.0 * width), "TranslateY": lin(150.0 / 331.0 * height),
            "Rotate": lin(30.0), "Brightness": lin(0.9), "Color": lin(0.9), "Contrast": lin(0.9), "Sharpness": lin(0.9),
            "Posterize": (8 - (torch.arange(num_bins) / ((num_bins - 1) / 4))).round().int(),
            "Solarize": torch.linspace(1.0, 0.0, num_bins), "AutoContrast": None, "Equalize": None}


@lru_cache(maxsize=32)
def _magnitudes(num_bins: int, height: int, width: int) -> tuple[tuple[float, ...] | None, ...]:
    """Per op index, the magnitudes as python floats (what torchvision hands the functional op), cached per size."""
    table = magnitude_table(num_bins, height, width)
    return tuple(None if table[op] is None else tuple(float(v) for v in table[op]) for op in OPS)


def apply_op(images: torch.Tensor, op: str, magnitude: float) -> torch.Tensor:
    """One RandAugment op on uint8 [..., C, H, W] with a signed magnitude, called exactly as torchvision's RandAugment
    calls it (default fill=None: geometric ops fill with 0; nearest interpolation)."""
    nearest = InterpolationMode.NEAREST
    if op == "Identity":
        return images
    if op in ("ShearX", "ShearY"):      # torchvision shears by atan(magnitude) degrees about the corner (0, 0)
        deg = math.degrees(math.atan(magnitude))
        shear = [deg, 0.0] if op == "ShearX" else [0.0, deg]
        return TF.affine(images, angle=0.0, translate=[0, 0], scale=1.0, shear=shear, interpolation=nearest,
                         fill=None, center=[0, 0])
    if op in ("TranslateX", "TranslateY"):
        shift = [int(magnitude), 0] if op == "TranslateX" else [0, int(magnitude)]
        return TF.affine(images, angle=0.0, translate=shift, scale=1.0, interpolation=nearest, shear=[0.0, 0.0],
                         fill=None)
    if op == "Rotate":
        return TF.rotate(images, angle=magnitude, interpolation=nearest, fill=None)
    if op == "Brightness":
        return TF.adjust_brightness(images, brightness_factor=1.0 + magnitude)
    if op == "Color":                   # torchvision returns 1-channel images unchanged (as PIL does)
        return TF.adjust_saturation(images, saturation_factor=1.0 + magnitude)
    if op == "Contrast":
        return TF.adjust_contrast(images, contrast_factor=1.0 + magnitude)
    if op == "Sharpness":
        return TF.adjust_sharpness(images, sharpness_factor=1.0 + magnitude)
    if op == "Posterize":
        return TF.posterize(images, bits=int(magnitude))
    if op == "Solarize":                # the threshold is a fraction of the dtype's maximum (255 for uint8)
        return TF.solarize(images, threshold=255.0 * magnitude)
    if op == "AutoContrast":
        return TF.autocontrast(images)
    if op == "Equalize":
        return TF.equalize(images)
    raise ValueError(f"unknown RandAugment op {op!r}; known: {', '.join(OPS)}")


class BatchRandAugment:
    """RandAugment (+ Cutout) for uint8 image batches [B, H, W, C] (C = 1 or 3, any device) -> the same shape and dtype.

    Follows torchvision.transforms.v2.RandAugment: ``num_ops`` ops per sample, each drawn uniformly from its 14 ops,
    with the magnitude of bin ``magnitude`` out of ``num_bins`` from its table, a sign flipped with p = 0.5 for signed
    ops, nearest interpolation and fill 0 for geometric ops. ``magnitude="random"`` draws the bin uniformly from
    [0, num_bins - 1] per sample and per op (FixMatch's RandAugment variant). Then, as FixMatch's CutoutAbs, one square
    hole of side ``round(cutout * min(H, W))`` (0 = off) centred uniformly over the image, clipped at its borders, set
    to ``fill`` (int, or one per channel). On 1-channel images Color is the identity, as in torchvision (and PIL).

    Batched: ``plan`` draws every random choice at once from ``generator`` (a CPU torch.Generator; save and restore it
    with state_dict / load_state_dict to resume); ``apply`` then, for each op layer, groups the samples by (op, bin,
    sign) and calls torchvision's functional op once per group on that NCHW sub-batch, and cuts all holes with one
    mask. The result equals applying the same plan one image at a time with torchvision's ops, bit for bit. With
    magnitude="random" the groups are small (up to 14 x num_bins x 2 of them), so batching saves less there.
    """

    def __init__(self, num_ops: int = 2, magnitude: int | str = 9, num_bins: int = 31, cutout: float = 0.5,
                 fill: int | tuple[int, ...] = 127, generator: torch.Generator | None = None):
        if not isinstance(num_ops, int) or num_ops < 0:
            raise ValueError(f"num_ops must be a non-negative integer, got {num_ops!r}")
        if not isinstance(num_bins, int) or num_bins < 2:
            raise ValueError(f"num_bins must be an integer >= 2, got {num_bins!r}")
        if magnitude != "random" and not (isinstance(magnitude, int) and 0 <= magnitude < num_bins):
            raise ValueError(f"magnitude must be an int bin in [0, {num_bins - 1}] or 'random', got {magnitude!r}")
        if not 0.0 <= cutout <= 1.0:
            raise ValueError(f"cutout is a fraction of the image side in [0, 1], got {cutout!r}")
        fills = [fill] if isinstance(fill, int) else list(fill)
        if not fills or not all(isinstance(v, int) and 0 <= v <= 255 for v in fills):
            raise ValueError(f"fill must be an int in [0, 255] or one per channel, got {fill!r}")
        self.num_ops, self.magnitude, self.num_bins = num_ops, magnitude, num_bins
        self.cutout, self.fill = float(cutout), fill
        self.generator = generator if generator is not None else torch.Generator().manual_seed(0)
        self._signed = torch.tensor([op in SIGNED for op in OPS])
        self._has_magnitude = torch.tensor([op not in NO_MAGNITUDE for op in OPS])

    def __repr__(self) -> str:
        return (f"BatchRandAugment(num_ops={self.num_ops}, magnitude={self.magnitude!r}, num_bins={self.num_bins}, "
                f"cutout={self.cutout}, fill={self.fill})")

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        return self.apply(images, self.plan(len(images)))

    def state_dict(self) -> dict:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.generator.set_state(state["generator"])

    def plan(self, batch_size: int) -> dict[str, torch.Tensor]:
        """Every random choice for a batch, drawn in a fixed order (ops, bins if random, signs, centres), on the CPU:
        ops, bins [B, num_ops] int64 (bin 0 for ops without a magnitude), signs [B, num_ops] int64 (+1 or -1; +1 for
        unsigned ops), centres [B, 2] float (y, x) as fractions of the image size."""
        g, shape = self.generator, (batch_size, self.num_ops)
        ops = torch.randint(len(OPS), shape, generator=g)
        if self.magnitude == "random":
            bins = torch.randint(self.num_bins, shape, generator=g)
        else:
            bins = torch.full(shape, self.magnitude, dtype=torch.int64)
        negative = torch.rand(shape, generator=g) <= 0.5           # torchvision: `torch.rand(()) <= 0.5` flips it
        centres = torch.rand((batch_size, 2), generator=g)
        signs = torch.where(negative & self._signed[ops], -1, 1)
        bins = torch.where(self._has_magnitude[ops], bins, 0)        # so that e.g. all Equalize samples share a group
        return {"ops": ops, "bins": bins, "signs": signs, "centres": centres}

    def apply(self, images: torch.Tensor, plan: dict[str, torch.Tensor]) -> torch.Tensor:
        """Apply a plan from ``plan(len(images))`` to uint8 [B, H, W, C]; uint8 [B, H, W, C] on the same device."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
            raise ValueError(f"expected uint8 images [B, H, W, C] with C = 1 or 3, got {images.dtype} "
                             f"{tuple(images.shape)}")
        b, h, w, _ = images.shape
        if plan["ops"].shape != (b, self.num_ops):
            raise ValueError(f"plan is for {tuple(plan['ops'].shape)} (batch, ops), images are a batch of {b} "
                             f"with num_ops={self.num_ops}")
        # NCHW, what torchvision's ops take; a copy always (for C = 1 the permuted view is already contiguous), as
        # groups are written back in place
        x = images.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format)
        for k in range(self.num_ops):
            x = self._layer(x, plan["ops"][:, k], plan["bins"][:, k], plan["signs"][:, k])
        out = x.permute(0, 2, 3, 1)
        return self._cutout(out, plan["centres"]).contiguous()

    def _layer(self, x: torch.Tensor, ops: torch.Tensor, bins: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """One op per sample: one torchvision call per (op, bin, sign) group, written back in place of its samples."""
        table = _magnitudes(self.num_bins, x.shape[-2], x.shape[-1])
        key = (ops * self.num_bins + bins) * 2 + (signs < 0)
        order = torch.argsort(key, stable=True)
        keys, counts = torch.unique_consecutive(key[order], return_counts=True)
        for group_key, idx in zip(keys.tolist(), torch.split(order, counts.tolist())):
            op_index, negative = divmod(group_key, 2)
            op_index, bin_index = divmod(op_index, self.num_bins)
            if OPS[op_index] == "Identity":
                continue
            mags = table[op_index]
            magnitude = 0.0 if mags is None else (-mags[bin_index] if negative else mags[bin_index])
            if len(idx) == len(x):                                   # the whole batch shares one op: no gather
                x = apply_op(x, OPS[op_index], magnitude)
            else:
                idx = idx.to(x.device)
                x[idx] = apply_op(x[idx], OPS[op_index], magnitude)
        return x

    def _cutout(self, x: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """One square hole per sample [B, H, W, C], as one mask over the batch."""
        b, h, w, c = x.shape
        side = round(self.cutout * min(h, w))
        if side == 0 or b == 0:
            return x
        centres = centres.to(x.device)
        y0 = torch.floor(centres[:, 0] * h - side / 2).long()       # clipped below by the comparisons
        x0 = torch.floor(centres[:, 1] * w - side / 2).long()
        rows = torch.arange(h, device=x.device)
        cols = torch.arange(w, device=x.device)
        in_rows = (rows >= y0[:, None]) & (rows < y0[:, None] + side)         # [B, H]
        in_cols = (cols >= x0[:, None]) & (cols < x0[:, None] + side)         # [B, W]
        hole = in_rows[:, :, None, None] & in_cols[:, None, :, None]          # [B, H, W, 1]
        fill = torch.as_tensor(self.fill, dtype=torch.uint8, device=x.device).reshape(-1)
        if len(fill) not in (1, c):
            raise ValueError(f"fill has {len(fill)} values for images with {c} channels")
        fill = fill.expand(c)
        return torch.where(hole, fill, x)
