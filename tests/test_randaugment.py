"""BatchRandAugment: batched RandAugment + Cutout equals torchvision's RandAugment ops applied one image at a time."""
from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import v2

from visionlab.data.randaugment import OPS, SIGNED, BatchRandAugment, apply_op, magnitude_table

from conftest import DATA

torch.set_num_threads(1)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
GEOMETRIC = ("ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate")


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> torch.Tensor:
    """64 real CIFAR-10 images uint8 [64, 32, 32, 3]; smooth synthetic ones where the shared data is absent."""
    if (DATA / "cifar10").is_dir():
        from visionlab.config import DataConfig
        from visionlab.data.cifar import build_cifar10

        cfg = DataConfig(name="cifar10", root=str(DATA / "cifar10"), limit=64,
                         cache_dir=str(tmp_path_factory.mktemp("cache")))
        return torch.from_numpy(build_cifar10(cfg).test.images[:64].copy())
    g = torch.Generator().manual_seed(0)
    low = torch.rand(64, 3, 8, 8, generator=g) * 255
    images = TF.resize(low, [32, 32], antialias=True).round().clamp(0, 255).to(torch.uint8)
    return images.permute(0, 2, 3, 1).contiguous()


def gray(images: torch.Tensor) -> torch.Tensor:
    return TF.rgb_to_grayscale(images.permute(0, 3, 1, 2)).permute(0, 2, 3, 1).contiguous()


def reference(images: torch.Tensor, plan: dict, num_bins: int, cutout: float, fill) -> torch.Tensor:
    """The plan applied one image at a time by torchvision's own RandAugment code (its magnitude table and its
    per-op dispatch), then the hole cut by slicing: independent of the module under test."""
    tv = v2.RandAugment(num_magnitude_bins=num_bins)
    out = []
    for i, img in enumerate(images):
        x = img.permute(2, 0, 1)
        h, w = x.shape[-2:]
        for op, b, s in zip(plan["ops"][i].tolist(), plan["bins"][i].tolist(), plan["signs"][i].tolist()):
            name = OPS[op]
            magnitudes_fn, signed = tv._AUGMENTATION_SPACE[name]
            magnitudes = magnitudes_fn(num_bins, h, w)
            magnitude = 0.0 if magnitudes is None else float(magnitudes[b]) * (-1 if signed and s < 0 else 1)
            x = tv._apply_image_or_video_transform(x, name, magnitude, interpolation=tv.interpolation, fill=tv._fill)
        x = x.permute(1, 2, 0).clone()
        side = round(cutout * min(h, w))
        if side:
            y0 = int(torch.floor(plan["centres"][i, 0] * h - side / 2))
            x0 = int(torch.floor(plan["centres"][i, 1] * w - side / 2))
            x[max(y0, 0):max(y0 + side, 0), max(x0, 0):max(x0 + side, 0)] = torch.tensor(fill, dtype=torch.uint8)
        out.append(x)
    return torch.stack(out)


def test_op_space_matches_torchvision():
    space = v2.RandAugment._AUGMENTATION_SPACE
    assert OPS == tuple(space)
    assert SIGNED == {k for k, (_, signed) in space.items() if signed}
    for num_bins, h, w in [(31, 32, 32), (11, 24, 40)]:
        ours = magnitude_table(num_bins, h, w)
        for op, (fn, _) in space.items():
            theirs = fn(num_bins, h, w)
            assert (ours[op] is None) == (theirs is None), op
            if theirs is not None:
                assert ours[op].dtype == theirs.dtype and torch.equal(ours[op], theirs), op


@pytest.mark.parametrize("magnitude, channels", [(9, 3), ("random", 3), (9, 1), ("random", 1)])
def test_batched_equals_torchvision_per_sample(cifar, magnitude, channels):
    images = cifar if channels == 3 else gray(cifar)
    aug = BatchRandAugment(num_ops=3, magnitude=magnitude, generator=torch.Generator().manual_seed(1))
    plan = aug.plan(len(images))
    assert set(plan["ops"].flatten().tolist()) == set(range(len(OPS)))          # every op is exercised
    if magnitude == "random":
        assert len(set(plan["bins"].flatten().tolist())) > 20
    out = aug.apply(images, plan)
    assert torch.equal(out, reference(images, plan, aug.num_bins, aug.cutout, aug.fill))
    assert not torch.equal(out, images)


def test_identities(cifar):
    assert torch.equal(BatchRandAugment(num_ops=0, cutout=0)(cifar), cifar)
    aug = BatchRandAugment(num_ops=2, magnitude=0, cutout=0)
    n = len(cifar)
    geometric = torch.tensor([OPS.index(op) for op in GEOMETRIC])
    plan = {"ops": geometric[torch.arange(2 * n) % len(geometric)].view(n, 2),
            "bins": torch.zeros(n, 2, dtype=torch.long),
            "signs": torch.where(torch.arange(2 * n).view(n, 2) % 3 == 0, -1, 1), "centres": torch.rand(n, 2)}
    assert torch.equal(aug.apply(cifar, plan), cifar)
    x = cifar.permute(0, 3, 1, 2)
    for op in GEOMETRIC:
        assert torch.equal(apply_op(x, op, 0.0), x) and torch.equal(apply_op(x, op, -0.0), x), op


def test_seeded_and_resumable(cifar):
    def run(seed):
        return BatchRandAugment(magnitude="random", generator=torch.Generator().manual_seed(seed))(cifar)
    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))
    assert torch.equal(BatchRandAugment()(cifar), BatchRandAugment(generator=torch.Generator().manual_seed(0))(cifar))
    a = BatchRandAugment(generator=torch.Generator().manual_seed(5))
    a(cifar)
    state = a.state_dict()
    expected = a(cifar)
    b = BatchRandAugment(generator=torch.Generator().manual_seed(99))
    b.load_state_dict(state)
    assert torch.equal(b(cifar), expected)


def test_cutout_hole():
    n = 4000
    zeros = torch.zeros(n, 32, 32, 3, dtype=torch.uint8)
    aug = BatchRandAugment(num_ops=0, cutout=0.5, fill=127)
    plan = aug.plan(n)
    hole = aug.apply(zeros, plan)
    assert set(hole.unique().tolist()) == {0, 127}
    mask = hole[..., 0] == 127
    assert torch.equal(mask, (hole == 127).all(-1))                            # every channel filled
    rows, cols = mask.any(2).sum(1), mask.any(1).sum(1)
    assert torch.equal(mask.sum((1, 2)), rows * cols)                           # a rectangle
    centre = (plan["centres"] * 32 - 8).floor()
    inside = ((centre >= 0) & (centre <= 16)).all(1)                            # holes away from the borders
    assert inside.sum() > n // 4
    assert (rows[inside] == 16).all() and (cols[inside] == 16).all()
    assert (rows <= 16).all() and (cols <= 16).all() and (rows >= 8).all() and (cols >= 8).all()
    assert (mask.float().mean(0) > 0).all()                                     # centres cover the whole image
    centred = aug.apply(zeros[:1], {**aug.plan(1), "centres": torch.tensor([[0.5, 0.5]])})[0, ..., 0]
    assert (centred[8:24, 8:24] == 127).all() and centred.sum() == 127 * 256
    per_channel = BatchRandAugment(num_ops=0, cutout=0.25, fill=(1, 2, 3))(zeros[:8])
    assert per_channel.reshape(-1, 3).unique(dim=0).tolist() == [[0, 0, 0], [1, 2, 3]]
    assert torch.equal(BatchRandAugment(num_ops=0, cutout=0)(zeros[:8]), zeros[:8])


def test_op_frequencies_uniform():
    plan = BatchRandAugment(num_ops=2, magnitude="random").plan(20000)
    counts = torch.bincount(plan["ops"].flatten(), minlength=len(OPS)).double()
    expected = counts.sum() / len(OPS)
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 34.5                                                          # 13 dof, p = 0.001
    signed = torch.tensor([op in SIGNED for op in OPS])[plan["ops"]]
    negative = (plan["signs"][signed] < 0).double().mean()
    assert 0.48 < negative < 0.52 and (plan["signs"][~signed] == 1).all()
    bins = torch.bincount(plan["bins"][~torch.isin(plan["ops"], torch.tensor([0, 12, 13]))], minlength=31)
    assert len(bins) == 31 and bins.min() > 0.7 * bins.float().mean()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3])
def test_shape_dtype_device(cifar, device, channels):
    images = (cifar if channels == 3 else gray(cifar))[:16].to(device)
    before = images.clone()
    out = BatchRandAugment(generator=torch.Generator().manual_seed(2))(images)
    assert out.shape == images.shape and out.dtype == torch.uint8 and out.device == images.device
    assert out.is_contiguous() and torch.equal(images, before)                  # the input is left alone
    if device != "cpu":                                                          # same plan, same answer per sample
        aug = BatchRandAugment(generator=torch.Generator().manual_seed(2))
        plan = aug.plan(len(images))
        assert torch.equal(aug.apply(images, plan).cpu(), reference(images, plan, 31, 0.5, 127).cpu())
    assert BatchRandAugment()(images[:0]).shape == images[:0].shape


def test_rejects_bad_arguments(cifar):
    for kwargs in [{"magnitude": 31}, {"magnitude": -1}, {"magnitude": "max"}, {"num_ops": -1}, {"cutout": 2.0},
                   {"fill": 300}, {"num_bins": 1}]:
        with pytest.raises(ValueError):
            BatchRandAugment(**kwargs)
    with pytest.raises(ValueError, match="uint8"):
        BatchRandAugment()(cifar.float())
    with pytest.raises(ValueError, match="C = 1 or 3"):
        BatchRandAugment()(cifar.permute(0, 3, 1, 2))
