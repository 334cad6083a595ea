"""The CIFAR-10 speed recipe (configs/cifar10_speed.yaml, airbench94): known answers for its pieces (whitening,
reflect-padded crop, flip TTA, triangle schedule, frozen parameters, bias learning rates, size) and a short run of
the pipeline on real CIFAR-10."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visionlab import config as C
from visionlab.data.base import DataInfo, ImageSet
from visionlab.data.loaders import InMemoryLoader, build_loader, flip_coins
from visionlab.data.transforms import BatchAugment
from visionlab.engine.optim import build_optimizer, lr_multiplier, scale_biases
from visionlab.models import build_model, count_params
from visionlab.models.airbench import BatchNorm, Whitening
from visionlab.tasks import TASKS
from visionlab.utils import ConfigError
from conftest import full_and_resumed

RECIPE = Path(__file__).resolve().parents[1] / "configs" / "cifar10_speed.yaml"
INFO = DataInfo([str(k) for k in range(10)], 3, (32, 32), (0.49, 0.48, 0.45), (0.25, 0.24, 0.26))


def _task(*overrides: str):
    cfg = C.load_config(RECIPE, list(overrides))
    return cfg, TASKS.get("classification")(cfg, INFO, torch.Generator().manual_seed(0))


def _images(b: int = 8, seed: int = 0) -> torch.Tensor:
    """Smooth random uint8 [b, 32, 32, 3] images: neighbouring pixels and channels correlate, as in photographs."""
    g = torch.Generator().manual_seed(seed)
    x = F.avg_pool2d(torch.rand(b, 3, 36, 36, generator=g), 5, stride=1)
    x = torch.einsum("bchw,cd->bdhw", x, torch.tensor([[1.0, 0.6, 0.3], [0.0, 1.0, 0.6], [0.0, 0.0, 1.0]]))
    return (x / x.amax() * 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def test_whitening_makes_the_fitted_patches_uncorrelated_with_unit_variance():
    x = _images(16).permute(0, 3, 1, 2).float()
    x = (x - x.mean((0, 2, 3), keepdim=True)) / x.std((0, 2, 3), keepdim=True)          # normalised, as trained
    layer = Whitening(3)
    layer.fit(x)
    out = F.conv2d(x.double(), layer.weight.double())                        # the filters alone (no bias)
    flat = out.permute(0, 2, 3, 1).reshape(-1, 24)
    second = flat[:, :12].T @ flat[:, :12] / len(flat)
    patches = F.unfold(x.double(), 2).transpose(1, 2).reshape(-1, 12)
    eig = torch.linalg.eigvalsh(patches.T @ patches / len(patches)).flip(0)     # largest first, as the channels
    assert torch.allclose(second, torch.diag(eig / (eig + layer.eps)), atol=1e-6)   # = I up to eps
    strong = eig > 100 * layer.eps                                               # eps leaves these at 1
    assert strong.sum() >= 6 and torch.allclose(second.diagonal()[strong], torch.ones(int(strong.sum()),
                                                                                    dtype=torch.float64), atol=0.01)
    assert torch.equal(layer.weight[12:], -layer.weight[:12])                    # the negated copies


def test_reflect_padded_crop_is_the_reflect_pad_window():
    x = _images(4)
    tf = BatchAugment([0.0] * 3, [1.0] * 3, train=True, crop_padding=2, crop_pad_mode="reflect")
    tf._rand = lambda *shape: torch.tensor([[0.1], [0.7]]).expand(*shape)      # offsets: y int(0.5)=0, x int(3.5)=3
    padded = F.pad(x.permute(0, 3, 1, 2).float(), (2, 2, 2, 2), mode="reflect")
    assert torch.equal(tf(x) * 255, padded[:, :, 0:32, 3:35])
    nchw = x.permute(0, 3, 1, 2).float()
    assert torch.equal(padded[:, :, 0, 2:34], nchw[:, :, 2]) and torch.equal(padded[:, :, 2:34, 1], nchw[..., 1])
    with pytest.raises(ConfigError, match="crop_pad_mode"):
        BatchAugment([0.0], [1.0], train=True, crop_pad_mode="wrap")


def test_flip_tta_averages_the_image_and_its_mirror():
    _, task = _task("train.tta_translate=0")
    _, plain = _task("train.tta_flip=false", "train.tta_translate=0")
    plain.model.load_state_dict(task.model.state_dict())
    task.model.eval()
    plain.model.eval()
    x = task.eval_tf(_images(4))
    with torch.no_grad():
        want = (task.model(x) + task.model(x.flip(-1))) / 2
        assert torch.allclose(task.eval_logits(x), want, atol=1e-6)
        assert torch.allclose(plain.eval_logits(x), task.model(x), atol=1e-6)
        assert not torch.allclose(plain.eval_logits(x), want, atol=1e-4)


def test_triangle_schedule():
    cfg = C.load_config(RECIPE).optim
    f = lr_multiplier(cfg, epochs=10, steps_per_epoch=10)           # 100 steps, peak at int(0.23 x 100) = 23
    assert f(0) == pytest.approx(0.2) and f(23) == pytest.approx(1.0) and f(100) == pytest.approx(0.07)
    assert f(11) == pytest.approx(0.2 + 0.8 * 11 / 23) and f(99) == pytest.approx(1 - 0.93 * 76 / 77)
    assert all(f(s) < f(s + 1) for s in range(23)) and all(f(s) > f(s + 1) for s in range(23, 100))


def test_frozen_parameters_get_no_update_and_whitening_is_fitted_once():
    cfg, task = _task("train.precision=fp32")
    net = task.model
    opt = build_optimizer(task.param_groups(cfg.optim), cfg.optim)
    bn_weights = [m.weight for m in net.modules() if isinstance(m, BatchNorm)]
    assert bn_weights and not any(w.requires_grad for w in bn_weights)
    assert "whiten.weight" not in dict(net.named_parameters()) and "whiten.weight" in net.state_dict()
    identity = net.whiten.weight.clone()
    batch = (_images(8), torch.arange(8))
    task.global_step = 0                                  # the first step of a fresh run fits the whitening filters
    task.training_step(batch)["loss"].backward()
    fitted = net.whiten.weight.clone()
    assert not torch.equal(fitted, identity)
    assert all(w.grad is None for w in bn_weights) and net.whiten.bias.grad is not None
    opt.step()
    opt.zero_grad(set_to_none=True)
    task.global_step = 1
    task.on_train_epoch_start(3)                          # whiten_bias_epochs = 3: the bias is frozen from epoch 3
    bias = net.whiten.bias.clone()
    task.training_step((_images(8, seed=1), torch.arange(8)))["loss"].backward()
    opt.step()
    assert torch.equal(net.whiten.weight, fitted) and torch.equal(net.whiten.bias, bias)   # not refitted, not trained
    assert all(torch.equal(w, torch.ones_like(w)) for w in bn_weights)
    task.on_train_epoch_start(2)
    assert net.whiten.bias.requires_grad


def test_bias_lr_multiplier_and_decay():
    cfg, task = _task()
    opt = build_optimizer(task.param_groups(cfg.optim), cfg.optim)
    o = cfg.optim
    whiten_bias = task.model.whiten.bias
    for g in opt.param_groups:
        if all(p.ndim <= 1 and p is not whiten_bias for p in g["params"]):
            assert g["lr"] == pytest.approx(o.lr * 64) and g["weight_decay"] == pytest.approx(o.weight_decay / 64)
        else:
            assert g["lr"] == pytest.approx(o.lr) and g["weight_decay"] == pytest.approx(o.weight_decay)
    biases = {id(p) for g in opt.param_groups if g["lr"] > o.lr for p in g["params"]}
    assert id(task.model.layers[1][2].bias) in biases                # BatchNorm shifts at lr x 64 ...
    assert id(whiten_bias) not in biases                              # ... the whitening bias as airbench, at lr
    groups = task.param_groups(cfg.optim)
    default = C.OptimConfig()
    assert scale_biases(groups, default) is groups                        # the defaults change nothing


def test_airbench94_size():
    m = build_model("airbench94", 10)
    # whitening bias 24 (its 24x3x2x2 filters are a buffer); groups 24->64, 64->256, 256->256: two 3x3 convs and two
    # BatchNorms (scale + shift) each; head 256x10 without bias
    groups = sum(9 * cin * c + 9 * c * c + 4 * c for cin, c in ((24, 64), (64, 256), (256, 256)))
    assert count_params(m) == 24 + groups + 2560 == 1_972_504
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_recipe_learns_cifar10_through_the_pipeline(data_dir, tmp_path):
    from visionlab.engine import load_checkpoint
    from visionlab.run import train

    # 16 px (the net's global max-pool takes it) keeps this near 5 s with bf16 and under 10 s in fp32 on two cores;
    # at 32 px it takes about 10 s and 27 s, and scores about the same (0.37)
    r = train(RECIPE, ["data.limit=1500", "data.image_size=16", "train.epochs=2", "train.batch_size=128",
                       "train.threads=1", "train.progress=false", "train.tensorboard=false", f"out_dir={tmp_path}"])
    assert r.summary["model"] == "airbench94" and r.summary["train_size"] == 1500 and r.summary["val_size"] == 0
    assert r.summary["test/acc"] > 0.25, r.summary["test/acc"]
    weights = load_checkpoint(r.run_dir / "checkpoints" / "best.safetensors")["weights"]      # the final EMA model
    assert not torch.equal(weights["whiten.weight"], Whitening(3).weight)       # fitted to the first batch


def test_recipe_resumes_exactly_with_lookahead_and_alternating_flips(data_dir, tmp_path):
    """Three epochs in one go equal one epoch, an interruption and a resume: the lookahead's slow weights and step
    count (its updates at steps 5 and 10 and the final copy at 12 fall after the resume) and the flips by epoch."""
    from safetensors.torch import load_file

    common = ["data.limit=512", "data.image_size=16", "train.epochs=3", "train.batch_size=128", "train.threads=1",
              "train.progress=false", "train.tensorboard=false", "train.precision=fp32"]
    a, b = full_and_resumed(RECIPE, common, tmp_path)
    assert a.keys() == b.keys() and a["ema/n_steps"].item() == 12
    assert all(torch.equal(a[k], b[k]) for k in a)
    best = load_file(str(tmp_path / "full" / "checkpoints" / "best.safetensors"))
    slow = {k.removeprefix("ema/module."): v for k, v in a.items() if k.startswith("ema/module.")}
    assert all(torch.equal(best[k], slow[k.removeprefix("model/")]) for k in best)   # the slow weights are reported


def test_translate_tta_weights_the_shifted_views_as_airbench_level_2():
    _, task = _task("train.tta_translate=1")
    _, flip = _task("train.tta_translate=0")
    flip.model.load_state_dict(task.model.state_dict())
    task.model.eval()
    flip.model.eval()
    x = task.eval_tf(_images(4))
    padded = torch.nn.functional.pad(x, (1,) * 4, mode="reflect")
    with torch.no_grad():
        base, up_left, down_right = (flip.eval_logits(v.contiguous()) for v in
                                     (x, padded[..., :32, :32], padded[..., 2:, 2:]))
        assert torch.allclose(task.eval_logits(x), base / 2 + (up_left + down_right) / 4, atol=1e-5)
        assert not torch.allclose(up_left, base, atol=1e-4)       # the shifted views do change the logits
    with pytest.raises(ConfigError, match="train.tta_translate=32"):        # reflect padding needs a shift < 32 px
        _task("train.tta_translate=32")


def _numbered_images(n: int) -> ImageSet:
    """n images 2x3 px whose pixel values say their index and column: image i, column c holds 10 * i + c."""
    cols = torch.arange(3).view(1, 1, 3, 1)
    images = (10 * torch.arange(n).view(n, 1, 1, 1) + cols).expand(n, 2, 3, 1).to(torch.uint8).numpy()
    return ImageSet(labels=np.arange(n), images=images)


def test_alternating_flip_mirrors_each_image_in_exactly_one_of_two_epochs():
    split = _numbered_images(20)
    loader = InMemoryLoader(split, 6, shuffle=True, seed=3, alternate_flip=True)
    seen = {}
    for epoch in (0, 1, 2):
        loader.set_position(epoch)
        for images, labels in loader:
            for img, i in zip(images, labels.tolist()):
                row = img[0, :, 0].tolist()
                assert row in ([10 * i, 10 * i + 1, 10 * i + 2], [10 * i + 2, 10 * i + 1, 10 * i])
                seen[epoch, i] = row[0] != 10 * i               # mirrored this epoch
    coins = flip_coins(20, 3)
    assert 0 < coins.sum() < 20                                 # a seeded coin per image, not all one way
    for i in range(20):
        assert seen[0, i] == bool(coins[i]) and seen[1, i] != seen[0, i] and seen[2, i] == seen[0, i]
    loader.set_position(1, 2)                                   # a resumed epoch sees the same mirrors
    resumed = [b[0] for b in loader]
    loader.set_position(1)
    assert all(torch.equal(a, b) for a, b in zip(resumed, [b[0] for b in loader][2:]))


def test_alternating_flip_settings():
    cfg, task = _task()
    assert cfg.data.alternate_flip and not task.train_tf.hflip           # the loader flips, not the augmentation
    _, plain = _task("data.alternate_flip=false")
    assert plain.train_tf.hflip
    with pytest.raises(ValueError, match="data.in_memory=true"):
        build_loader(ImageSet(labels=np.arange(2), paths=["a.png", "b.png"]), 2, True, 0, {}, alternate_flip=True)
    from types import SimpleNamespace

    from visionlab.run import _train_loader

    task = SimpleNamespace(streams={"train": 1.0}, uses_domains=False)
    for bad in (["data.hflip=false"], ["task=segmentation"], ["train.iterations=10", "train.eval_every=5"]):
        with pytest.raises(ConfigError, match="alternating flips are for task=classification"):
            _train_loader(None, task, C.load_config(RECIPE, bad), INFO, None)
