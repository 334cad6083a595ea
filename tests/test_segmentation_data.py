"""Segmentation data on real CamVid / COCO128 files: sources (CamVid, COCO128 masks, mask folders with index, palette
and binary masks and hostile pairs) and the batched joint augmentation (BatchSegAugment)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from visionlab.config import DataConfig
from visionlab.data.mask_transforms import BatchSegAugment
from visionlab.data.masks import IGNORE, class_table, read_class_file
from visionlab.data.segmentation import (CAMVID_CLASSES, build_camvid, build_coco128_seg, build_mask_folder,
                                         scan_pairs)
from visionlab.utils import UserError

from conftest import DATA  # noqa: E402 - one definition of where the real data lies

CAMVID = DATA / "camvid"
CAMVID_VALUES = set(range(11)) | {IGNORE}


@pytest.fixture(scope="module")
def seg_cache(tmp_path_factory) -> str:
    return str(tmp_path_factory.mktemp("seg_cache"))


def _cfg(name, root, cache, **kw) -> DataConfig:
    return DataConfig(name=name, root=str(root), cache_dir=cache, **kw)


@pytest.fixture(scope="module")
def camvid_small(seg_cache):
    return build_camvid(_cfg("camvid", CAMVID, seg_cache, limit=4))


def _camvid_files(n: int, split: str = "train"):
    imgs = sorted((CAMVID / "images" / split).glob("*.jpg"))[:n]
    return [(p, CAMVID / "masks" / split / f"{p.stem}.png") for p in imgs]


# ---------------------------------------------------------------- CamVid

def test_camvid_split_file_counts():
    listing = scan_pairs(CAMVID)
    counts = {s: sum(p.split == s for p in listing.pairs) for s in ("train", "val", "test")}
    assert counts == {"train": 367, "val": 101, "test": 233}
    assert listing.layout == "split" and listing.ignored == []


def test_camvid_limit_classes_masks_alignment(camvid_small, seg_cache):
    s = camvid_small
    assert s.classes == CAMVID_CLASSES and s.num_classes == 11 and s.channels == 3
    assert s.image_size == (360, 480) and s.skipped == []
    assert s.preprocess == {"image_size": 0, "short_side": 0, "pad_square": False, "grayscale": False}
    for part in (s.train, s.val, s.test):      # limit_indices gives each frequent class a sample: can pass 4 a bit
        n = len(part)
        assert 4 <= n <= 6 and part.images.dtype == np.uint8 and part.masks.dtype == np.uint8
        assert part.images.shape == (n, 360, 480, 3) and part.masks.shape == (n, 360, 480)
        assert set(np.unique(part.masks).tolist()) <= CAMVID_VALUES
        assert part.labels.dtype == np.int64
        for m, lab in zip(part.masks, part.labels):          # label = most frequent non-ignore class
            assert lab == np.bincount(m[m != IGNORE], minlength=11).argmax()
    # the stored mask is the file's values with void 11 -> 255, pixel for pixel
    name = s.train.names[0]
    raw = np.asarray(Image.open(CAMVID / name.replace("images/", "masks/").replace(".jpg", ".png")))
    assert np.array_equal(s.train.masks[0], np.where(raw == 11, IGNORE, raw))
    assert np.array_equal(s.train.images[0], np.asarray(Image.open(CAMVID / name).convert("RGB")))
    assert all(0.2 < m < 0.7 for m in s.mean) and all(0.1 < v < 0.5 for v in s.std)
    again = build_camvid(_cfg("camvid", CAMVID, seg_cache, limit=4))          # from the cache: identical
    assert again.train.names == s.train.names and np.array_equal(again.test.masks, s.test.masks)
    sub = s.train.subset([2, 0])
    assert np.array_equal(sub.masks, s.train.masks[[2, 0]]) and sub.names == [s.train.names[2], s.train.names[0]]


def test_camvid_short_side_resize(seg_cache):
    s = build_camvid(_cfg("camvid", CAMVID, seg_cache, limit=2, image_size=120))
    assert s.image_size == (120, 160) and s.train.masks.shape[1:] == (120, 160)
    assert s.preprocess["short_side"] == 120 and s.preprocess["image_size"] == 0
    name = s.train.names[0]
    raw = Image.open(CAMVID / name.replace("images/", "masks/").replace(".jpg", ".png"))
    want = np.asarray(raw.resize((160, 120), Image.NEAREST))
    assert np.array_equal(s.train.masks[0], np.where(want == 11, IGNORE, want))          # nearest: no new values
    assert set(np.unique(s.train.masks).tolist()) <= CAMVID_VALUES


def test_segmentation_refuses_lazy_and_reports_missing_data(tmp_path, seg_cache):
    with pytest.raises(UserError, match="in_memory"):
        build_camvid(_cfg("camvid", CAMVID, seg_cache, limit=2, in_memory="false"))
    with pytest.raises(UserError, match="expected files"):
        build_camvid(_cfg("camvid", tmp_path / "nowhere", seg_cache))
    with pytest.raises(UserError, match="data.root"):
        build_mask_folder(_cfg("mask_folder", "", seg_cache))


# ---------------------------------------------------------------- COCO128

def test_coco128_semantic_masks(seg_cache):
    s = build_coco128_seg(_cfg("coco128_seg", DATA / "coco128", seg_cache))
    assert len(s.train) + len(s.val) == 100 and len(s.test) == 100 and len(s.val) > 0
    assert s.num_classes == 129 and s.classes[0] == "person" and "unlabeled" not in s.classes
    no_mask = [k for k in s.skipped if k["reason"].startswith("no mask")]
    assert len(no_mask) == 56 and len(s.skipped) == 56              # 28 images per split ship without a mask
    assert s.image_size == (320, 320)                               # mixed sizes on one canvas, long side 320
    for part in (s.train, s.val, s.test):
        vals = np.unique(part.masks)
        assert vals.max() == IGNORE and vals[vals != IGNORE].max() < 129
    # a landscape image sits at the top-left; the padding below it is ignore in the mask
    name = "images/train2017/000000000009.jpg"
    part = s.train if name in s.train.names else s.val
    k = part.names.index(name)
    w, h = Image.open(DATA / "coco128" / name).size
    assert (w, h) == (320, 240)
    assert (part.masks[k, h:] == IGNORE).all()
    raw = np.asarray(Image.open(DATA / "coco128" / "masks/train2017/000000000009.png"))
    assert np.array_equal(part.masks[k, :h] == IGNORE, raw == 0)


# ---------------------------------------------------------------- mask folders

CAMVID_SPEC = {**dict(enumerate(CAMVID_CLASSES)), 11: "void"}
SMALL = (120, 90)           # re-encoded at quarter size: quick to decode


def _small_pair(img_path, mask_path):
    im = Image.open(img_path).convert("RGB").resize(SMALL, Image.BILINEAR)
    mk = Image.open(mask_path).resize(SMALL, Image.NEAREST)
    return im, np.asarray(mk)


def _palette_png(mask: np.ndarray, path: Path):
    p = Image.fromarray(mask, "P")
    rng = np.random.default_rng(0)
    p.putpalette(rng.integers(0, 256, 768, dtype=np.uint8).tobytes())       # colours are irrelevant: indices count
    p.save(path)


def _hostile_mask_folder(root: Path) -> dict:
    """images/{train,test}/ + masks/{train,test}/ from real CamVid files: index and palette masks, and bad pairs
    (truncated mask, size mismatch, image without mask, truncated image, out-of-range values, RGB mask, orphan)."""
    for d in ("images/train", "images/test", "masks/train", "masks/test"):
        (root / d).mkdir(parents=True)
    files = _camvid_files(12)
    expect = {}
    for k, (ip, mp) in enumerate(files):
        split, stem = ("test", f"s{k}") if k >= 9 else ("train", f"t{k}")
        im, mask = _small_pair(ip, mp)
        im.save(root / f"images/{split}/{stem}.jpg", quality=95)
        out = root / f"masks/{split}/{stem}.png"
        if k in (2, 3, 10):
            _palette_png(mask, out)                                   # (b) palette PNG, VOC style
        elif k == 4:
            bad = mask.copy()
            bad[:10, :] = 20                                          # values outside the 11 classes
            bad[10:12, :] = 30
            Image.fromarray(bad).save(out)
            mask = bad
        elif k == 5:
            Image.fromarray(mask).save(out)
            out.write_bytes(out.read_bytes()[: out.stat().st_size // 2])   # truncated mask
        elif k == 6:
            Image.fromarray(mask[:60]).save(out)                     # size mismatch
        elif k == 7:
            continue                                                  # image without a mask
        elif k == 11:
            Image.fromarray(np.stack([mask] * 3, -1)).save(out)       # a colour (RGB) mask: not class ids
        elif k == 8:
            Image.fromarray(mask).save(out)
            img = root / f"images/{split}/{stem}.jpg"
            img.write_bytes(img.read_bytes()[:400])                   # truncated image
        else:
            Image.fromarray(mask).save(out)                           # (a) single-channel index PNG
        expect[f"images/{split}/{stem}.jpg"] = np.where(np.isin(mask, list(range(11))), mask, IGNORE)
    Image.fromarray(np.zeros(SMALL[::-1], np.uint8)).save(root / "masks/train/orphan.png")
    (root / "classes.yaml").write_text("\n".join(f"{k}: {v}" for k, v in CAMVID_SPEC.items()) + "\n")
    return expect


def test_mask_folder_index_palette_and_hostile_pairs(tmp_path, seg_cache):
    expect = _hostile_mask_folder(tmp_path / "ds")
    s = build_mask_folder(_cfg("mask_folder", tmp_path / "ds", seg_cache, val_fraction=0.2))
    assert s.classes == CAMVID_CLASSES
    reasons = {Path(k["file"]).name: k["reason"] for k in s.skipped}
    assert "mask" in reasons["t5.png"] and ("truncated" in reasons["t5.png"] or "corrupt" in reasons["t5.png"])
    assert reasons["t6.jpg"].startswith("size mismatch")
    assert reasons["t7.jpg"].startswith("no mask")
    assert reasons["t8.jpg"].startswith("image ")
    assert "without an image" in reasons["orphan.png"]
    assert "RGB" in reasons["s11.png"]
    assert "values 20, 30" in reasons["masks"] and f"{12 * 120} pixels in 1 masks" in reasons["masks"]
    kept = {n: m for part in (s.train, s.val, s.test) if part is not None for n, m in zip(part.names, part.masks)}
    assert set(kept) == {"images/train/t0.jpg", "images/train/t1.jpg", "images/train/t2.jpg", "images/train/t3.jpg",
                         "images/train/t4.jpg", "images/test/s9.jpg", "images/test/s10.jpg"}
    assert sorted(s.test.names) == ["images/test/s10.jpg", "images/test/s9.jpg"]
    for name, mask in kept.items():                   # index, palette, out-of-range: the values survive as ids
        assert np.array_equal(mask, expect[name]), name
    assert s.val is not None and len(s.train) + len(s.val) == 5


def test_mask_folder_binary_flat_mixed_sizes(tmp_path, seg_cache):
    root = tmp_path / "bin"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    want = {}
    for k, (ip, mp) in enumerate(_camvid_files(10)):
        im, mask = _small_pair(ip, mp)
        road = (mask == 3).astype(np.uint8) * 255                    # (c) binary 0/255 mask: road vs the rest
        if k == 0:                                                    # one smaller pair: padded on the canvas
            im, road = im.crop((0, 0, 100, 60)), road[:60, :100]
        im.save(root / "images" / f"b{k}.png")
        Image.fromarray(road).save(root / "masks" / f"b{k}.png")
        want[f"images/b{k}.png"] = road
    s = build_mask_folder(_cfg("mask_folder", root, seg_cache, split="8:1:1"))
    assert s.classes == ["background", "foreground"] and s.skipped == []
    assert (len(s.train), len(s.val), len(s.test)) == (8, 1, 1) and s.image_size == (90, 120)
    for part in (s.train, s.val, s.test):
        for name, mask in zip(part.names, part.masks):
            road = want[name]
            h, w = road.shape
            assert np.array_equal(mask[:h, :w], road // 255)
            assert (mask[h:] == IGNORE).all() and (mask[:, w:] == IGNORE).all()
    assert [m["split"] for m in s.manifest].count("train") == 8


def test_class_files(tmp_path):
    (tmp_path / "classes.txt").write_text("sky\n\nroad\ncar\n")
    assert read_class_file(tmp_path) == ["sky", "road", "car"]
    (tmp_path / "classes.txt").unlink()
    assert read_class_file(tmp_path) is None
    (tmp_path / "classes.yaml").write_text("names: [bg, cat]\n")
    assert read_class_file(tmp_path) == ["bg", "cat"]
    (tmp_path / "classes.yaml").write_text("0: background\n5: cat\n255: void\n")
    names, lut, void = class_table(read_class_file(tmp_path))
    assert names == ["background", "cat"] and lut[5] == 1 and lut[1] == IGNORE and void == {255}
    (tmp_path / "classes.yaml").write_text("just a string\n")
    with pytest.raises(UserError, match="class names"):
        read_class_file(tmp_path)


# ---------------------------------------------------------------- BatchSegAugment on real CamVid batches

@pytest.fixture(scope="module")
def batch(camvid_small):
    return torch.from_numpy(camvid_small.train.images[:4].copy()), torch.from_numpy(camvid_small.train.masks[:4].copy())


def _aug(s, seed=0, **kw):
    return BatchSegAugment(s.mean, s.std, train=True, generator=torch.Generator().manual_seed(seed), **kw)


def test_augment_values_shapes_and_determinism(camvid_small, batch):
    images, masks = batch
    x, y = _aug(camvid_small, crop_size=(200, 300), jitter=0.4)(images, masks)
    b = len(images)
    assert x.shape == (b, 3, 200, 300) and x.dtype == torch.float32
    assert x.is_contiguous(memory_format=torch.channels_last)
    assert y.shape == (b, 200, 300) and y.dtype == torch.int64
    assert set(y.unique().tolist()) <= CAMVID_VALUES
    x2, y2 = _aug(camvid_small, crop_size=(200, 300), jitter=0.4)(images, masks)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    aug = _aug(camvid_small, crop_size=(200, 300))
    state = aug.generator.get_state()
    first = aug(images, masks)
    aug.generator.set_state(state)                                   # a restored generator replays the batch
    assert torch.equal(aug(images, masks)[1], first[1])
    x3, _ = _aug(camvid_small, seed=1, crop_size=(200, 300))(images, masks)
    assert not torch.equal(x3, first[0])


def test_augment_identity_and_eval_are_plain_normalization(camvid_small, batch):
    images, masks = batch
    mean = torch.tensor(camvid_small.mean).view(1, 3, 1, 1)
    std = torch.tensor(camvid_small.std).view(1, 3, 1, 1)
    plain = (images.permute(0, 3, 1, 2).float() / 255 - mean) / std
    aug = _aug(camvid_small, scale=(1.0, 1.0), hflip=False, crop_size=(360, 480))
    x, y = aug(images, masks)
    ev = BatchSegAugment(camvid_small.mean, camvid_small.std, train=False)
    xe, ye = ev(images, masks)
    assert torch.equal(x, xe) and torch.equal(y, masks.long()) and torch.equal(ye, masks.long())
    assert torch.allclose(x, plain, atol=1e-5)
    # the resampling path itself is the identity too (to float rounding), and our grid is affine_grid's
    p = aug.sample(4, 360, 480)
    theta = aug.theta(p, 360, 480)
    grid = aug.grid(theta, 360, 480)
    assert torch.allclose(grid, torch.nn.functional.affine_grid(theta, [4, 3, 360, 480], align_corners=False),
                          atol=1e-6)
    xs = torch.nn.functional.grid_sample(xe, grid, align_corners=False)
    assert torch.allclose(xs, xe, atol=1e-3)


def test_augment_flip_matches_torch_flip(camvid_small, batch):
    images, masks = batch
    aug = _aug(camvid_small, scale=(1.0, 1.0), crop_size=(360, 480))
    p = aug.sample(4, 360, 480)
    p.flip[:] = torch.tensor([True, False, True, False])
    x, y = aug.apply(images, masks, p)
    want = torch.where(p.flip.view(-1, 1, 1), masks.long().flip(-1), masks.long())
    assert torch.equal(y, want)
    plain = aug.normalize(images)
    assert torch.allclose(x[0], plain[0].flip(-1), atol=1e-3) and torch.allclose(x[1], plain[1], atol=1e-3)


def test_augment_padding_is_ignore(camvid_small, batch):
    images, masks = batch
    aug = _aug(camvid_small, scale=(0.5, 0.5), crop_size=(300, 400), hflip=False)
    p = aug.sample(4, 360, 480)
    x, y = aug.apply(images, masks, p)
    for k in range(4):               # the 180x240 scaled image sits at -offset inside the 300x400 crop
        top, left = int(np.ceil(-p.offset[k, 0].item())), int(np.ceil(-p.offset[k, 1].item()))
        inside = torch.zeros(300, 400, dtype=torch.bool)
        inside[top + 1:top + 179, left + 1:left + 239] = True
        assert (y[k][inside] != IGNORE).float().mean() > 0.9         # CamVid void is rare
        outside = torch.ones_like(inside)
        outside[max(top - 1, 0):top + 181, max(left - 1, 0):left + 241] = False
        assert (y[k][outside] == IGNORE).all() and x[k][:, outside].abs().max() == 0   # image pad = mean


def test_augment_keeps_image_and_mask_aligned(camvid_small, batch):
    """A mask made from the image itself (gray > median) must survive the transform: away from its own boundary
    (1-pixel band, ignored) every bilinear image sample lies on the same side of the threshold as the nearest mask
    sample, so agreement is near-total; a one-pixel misalignment would break it."""
    images, _ = batch
    gray = images.float().mean(-1)
    thr = gray.flatten(1).median(1).values.view(-1, 1, 1)
    above = (gray > thr).float().unsqueeze(1)
    all_above = -torch.nn.functional.max_pool2d(-above, 3, 1, 1)[:, 0] == 1          # 3x3 neighbourhood agrees
    all_below = torch.nn.functional.max_pool2d(above, 3, 1, 1)[:, 0] == 0
    own = torch.full_like(images[..., 0], IGNORE)
    own[all_above], own[all_below] = 1, 0
    mean = torch.tensor(camvid_small.mean).view(1, 3, 1, 1)
    std = torch.tensor(camvid_small.std).view(1, 3, 1, 1)

    def agreement(mask, shift=0):
        x, y = _aug(camvid_small, seed=3, crop_size=(320, 400), scale=(0.5, 2.0))(images, mask)
        back = ((x * std + mean) * 255).mean(1)                      # the augmented image's gray
        ys = torch.roll(y, shift, -1)
        valid = (ys != IGNORE) & (y != IGNORE)
        return ((back > thr + 1e-3) == (ys == 1))[valid].float().mean().item(), (y != IGNORE).float().mean()

    agree, valid = agreement(own)
    assert valid > 0.3 and agree > 0.99, agree
    raw = above[:, 0].to(torch.uint8)                                # with the boundary: aligned beats shifted
    at0, left, right = agreement(raw)[0], agreement(raw, -1)[0], agreement(raw, 1)[0]
    assert at0 > max(left, right) + 0.02, (left, at0, right)


def test_augment_colour_jitter_matches_torchvision(camvid_small, batch):
    """The composed brightness/contrast/saturation map equals torchvision's three steps (clamped once, not three
    times: tiny differences where a channel saturates), and leaves the mask and the padding alone."""
    from torchvision.transforms.v2 import functional as TF

    images, masks = batch
    aug = _aug(camvid_small, scale=(1.0, 1.0), hflip=False, jitter=0.3)
    p = aug.sample(len(images), 360, 480)
    p.jitter = torch.tensor([[1.1, 0.9, 1.2], [0.8, 1.2, 0.7], [1.0, 1.0, 1.0], [1.2, 1.1, 0.9]])
    x, y = aug.apply(images, masks, p)
    assert torch.equal(y, masks.long())
    v = images.permute(0, 3, 1, 2).float() / 255
    want = torch.stack([TF.adjust_saturation(TF.adjust_contrast(TF.adjust_brightness(v[k], f[0].item()),
                                                                f[1].item()), f[2].item())
                        for k, f in enumerate(p.jitter)])
    got = x * torch.tensor(camvid_small.std).view(1, 3, 1, 1) + torch.tensor(camvid_small.mean).view(1, 3, 1, 1)
    err = (got - want).abs()
    assert err.mean() < 2e-3 and (err > 2 / 255).float().mean() < 0.02, (err.mean(), (err > 2 / 255).float().mean())
    pad = _aug(camvid_small, scale=(0.5, 0.5), crop_size=(300, 400), hflip=False, jitter=0.3)
    pp = pad.sample(len(images), 360, 480)
    xp, yp = pad.apply(images, masks, pp)
    for k in range(len(images)):     # more than a pixel outside the 180x240 scaled image: mask 255, image 0 (mean)
        top, left = int(np.ceil(-pp.offset[k, 0].item())), int(np.ceil(-pp.offset[k, 1].item()))
        outside = torch.ones(300, 400, dtype=torch.bool)
        outside[max(top - 1, 0):top + 181, max(left - 1, 0):left + 241] = False
        assert outside.any() and (yp[k][outside] == IGNORE).all() and xp[k][:, outside].abs().max() == 0
