"""Batched augmentation: known answers for crop, flip and rotation; determinism from the generator; CutMix/MixUp."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visionlab.config import load_config
from visionlab.data.transforms import BatchAugment, mix_batch
from visionlab.utils import ConfigError


def _batch(b=4, h=8, w=8, c=1):
    return torch.arange(b * h * w * c, dtype=torch.int64).remainder(251).to(torch.uint8).view(b, h, w, c)


def test_eval_transform_is_normalize_only():
    x = _batch()
    out = BatchAugment([0.5], [0.25], train=False, rotation=30, crop_padding=4, hflip=True)(x)
    ref = (x.permute(0, 3, 1, 2).float() / 255 - 0.5) / 0.25
    assert torch.allclose(out, ref) and out.is_contiguous(memory_format=torch.channels_last)


def test_random_crop_is_a_shift_with_zero_fill():
    x = _batch(b=16)
    tf = BatchAugment([0.0], [1.0], train=True, crop_padding=2, generator=torch.Generator().manual_seed(1))
    out = (tf(x) * 255).round().to(torch.uint8).permute(0, 2, 3, 1)
    padded = torch.nn.functional.pad(x, (0, 0, 2, 2, 2, 2))
    for i in range(16):      # each output equals some 8x8 window of the padded image
        assert any(torch.equal(out[i], padded[i, dy:dy + 8, dx:dx + 8]) for dy in range(5) for dx in range(5))


def test_flip_and_rotation():
    x = _batch(b=64)
    flipped = BatchAugment([0.0], [1.0], train=True, hflip=True, generator=torch.Generator().manual_seed(0))(x)
    base = x.permute(0, 3, 1, 2).float() / 255
    same = [torch.allclose(flipped[i], base[i]) for i in range(64)]
    mirrored = [torch.allclose(flipped[i], base[i].flip(-1)) for i in range(64)]
    assert all(s or m for s, m in zip(same, mirrored)) and 15 < sum(mirrored) < 49
    tf = BatchAugment([0.0], [1.0], train=True, rotation=90)
    tf._rand = lambda *shape: torch.ones(*shape)          # exactly +90 degrees
    img = torch.zeros(1, 9, 9, 1, dtype=torch.uint8)
    img[0, 0, 4, 0] = 255                                  # a dot at the top centre
    out = tf(img)[0, 0]
    y, x_ = divmod(int(out.argmax()), 9)
    assert (y, x_) in {(4, 0), (4, 8)}                     # moved to the middle of a side edge


def test_same_generator_state_same_augmentation():
    x = _batch(b=8)
    a = BatchAugment([0.0], [1.0], True, rotation=13, crop_padding=2, hflip=True,
                     generator=torch.Generator().manual_seed(3))
    b = BatchAugment([0.0], [1.0], True, rotation=13, crop_padding=2, hflip=True,
                     generator=torch.Generator().manual_seed(3))
    assert torch.equal(a(x), b(x)) and not torch.equal(a(x), b(x).flip(0))


def test_mixup_and_cutmix_targets_sum_to_one():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(8, 3, 16, 16), torch.arange(8) % 4
    for cut, mix in ((1.0, 0.0), (0.0, 0.2)):
        xm, t = mix_batch(x, y, 4, cut, mix, 1.0, g)
        assert xm.shape == x.shape and torch.allclose(t.sum(1), torch.ones(8))
        assert (t.max(1).values < 1).any()
    xm, t = mix_batch(x, y, 4, 0.0, 0.0, 1.0, g)
    assert torch.equal(xm, x) and torch.equal(t.argmax(1), y)


def test_beta_sampler_mean():
    from visionlab.data.transforms import _beta
    g = torch.Generator().manual_seed(0)
    draws = np.array([_beta(0.4, g) for _ in range(4000)])
    assert abs(draws.mean() - 0.5) < 0.03 and abs(draws.var() - 0.25 / (2 * 0.4 + 1)) < 0.02


def test_colour_jitter_matches_torchvision_on_real_cifar_images(data_dir):
    """data.color_jitter: each image's brightness, contrast and saturation factors (drawn from the generator) give
    what torchvision's adjust_brightness -> adjust_contrast -> adjust_saturation give, then the normalization."""
    from PIL import Image
    from torchvision.transforms.v2 import functional as TF

    files = sorted((data_dir / "cifar10" / "test" / "cat").glob("*.jpg"))[:6]
    x = torch.from_numpy(np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files]))
    mean, std = [0.49, 0.48, 0.45], [0.25, 0.24, 0.26]
    tf = BatchAugment(mean, std, train=True, color_jitter=0.4, generator=torch.Generator().manual_seed(3))
    out = tf(x)
    f = 1 + 0.4 * (2 * torch.rand(6, 3, generator=torch.Generator().manual_seed(3)) - 1)    # the same draw
    v = x.permute(0, 3, 1, 2).float() / 255
    want = torch.stack([TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(v[k], float(b)), float(c)),
                                             float(s)) for k, (b, c, s) in enumerate(f)])
    got = out * torch.tensor(std).view(1, 3, 1, 1) + torch.tensor(mean).view(1, 3, 1, 1)
    err = (got - want).abs()            # clamped once, not after each step: tiny differences where a channel saturates
    assert (f - 1).abs().max() > 0.2 and err.mean() < 2e-3 and (err > 2 / 255).float().mean() < 0.02, err.max()
    assert (got - v).abs().mean() > 0.02                                         # it did change the images
    still = BatchAugment(mean, std, train=False, color_jitter=0.4)(x)           # evaluation never jitters
    assert torch.allclose(still, (v - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))


def test_colour_jitter_out_of_range_is_a_config_error_naming_the_key():
    with pytest.raises(ConfigError, match="data.color_jitter"):
        load_config(None, ["data.color_jitter=1.5"])          # a factor range U(-0.5, 2.5) would invert colours
