"""Every registered model honours the contract: forward, forward_features/forward_head, reset_classifier, backward."""
from __future__ import annotations

import contextlib
from pathlib import Path
from unittest import mock

import pytest
import torch

from visionlab.models import MODELS, SEGMENTATION_MODELS, build_model, count_params, flops_per_image
from visionlab.models.timm_zoo import timm_available
from visionlab.utils import ConfigError, UserError

ROOT = Path(__file__).resolve().parents[1]
SPEC = str(ROOT / "configs" / "spec_cnn_example.yaml")
# input (channels, size) per model: our small-image nets get their native size; torchvision ones 96 (Inception needs
# >= 75) except the transformers with a fixed 224 input
SMALL = {"mnist_cnn": (1, 28), "mnist_cnn_nobn": (1, 28), "maxvit_t": (3, 224),
         **{n: (3, 32) for n in ("resnet18_cifar", "wrn_28_2", "wrn_28_10", "preact_resnet18", "drn_c_26",
                                 "drn_d_22", "spec_cnn")},
         **{n: (3, 224) for n in MODELS.names() if n.startswith("vit_")}}
EXTRA = {"spec_cnn": {"spec": SPEC}}
REAL_COMPUTE_MAX_PARAMS = 30_000_000     # bigger ones are checked on the meta device (shapes only, no memory)
# a handful of timm architectures (timm has ~1,300): plain name, explicit prefix, deep stem, drop path, fixed-size ViT
TIMM = ["tf_efficientnet_lite0", "timm/resnet18", "resnet10t", "mobilenetv3_small_050", "convnext_atto",
        "vit_tiny_patch16_224"] if timm_available() else []


# segmentation models have their own contract (a dict of logit maps): tests/test_segmentation_blocks.py
CLASSIFIERS = [n for n in MODELS.names() if n not in SEGMENTATION_MODELS]


@contextlib.contextmanager
def _no_init():
    """torch.nn.init's in-place fills as no-ops (weights keep whatever memory they got): for shape-only checks."""
    names = [n for n in dir(torch.nn.init) if n.endswith("_") and not n.startswith("_")]
    with contextlib.ExitStack() as stack:
        for n in names:
            stack.enter_context(mock.patch.object(torch.nn.init, n, lambda tensor, *a, **k: tensor))
        yield


@pytest.mark.parametrize("name", CLASSIFIERS + TIMM)
def test_model_contract(name):
    c, s = SMALL.get(name, (3, 96))
    kw = EXTRA.get(name, {})
    try:
        with torch.device("meta"):
            meta = build_model(name, num_classes=7, in_channels=c, image_size=s, **kw)
        device = torch.device("meta")
    except NotImplementedError:     # RegNet's init reads tensor values: build it for real and run it small, without
        with _no_init():            # filling 644 M random weights (RegNet-Y-128GF: 28 s) that only shapes are checked on
            meta = build_model(name, num_classes=7, in_channels=c, image_size=64)
        device, s = torch.device("cpu"), 64
    big = count_params(meta) > REAL_COMPUTE_MAX_PARAMS
    device = device if big else torch.device("cpu")
    torch.manual_seed(0)
    with device:
        model = meta if big else build_model(name, num_classes=7, in_channels=c, image_size=s, **kw)
        x = torch.randn(2, c, s, s)
    model.train()
    y = model(x)
    assert y.shape == (2, 7)
    feats = model.forward_features(x)
    assert feats.dim() >= 2 and feats.shape[0] == 2 and model.forward_head(feats).shape == (2, 7)
    if not big:
        y.float().sum().backward()
        grads = [p.grad for p in model.parameters() if p.requires_grad]
        assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)
        model.eval()
        with torch.no_grad():
            assert torch.allclose(model.forward_head(model.forward_features(x)), model(x))
    with device:
        model.reset_classifier(3)
        model.to(device)
        assert model(x).shape == (2, 3)


def test_seed_cnn_is_the_seed_architecture():
    m = build_model("mnist_cnn", 10, 1)
    convs = [l for l in m.modules() if isinstance(l, torch.nn.Conv2d)]
    fcs = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert [(c.in_channels, c.out_channels, c.kernel_size, c.stride) for c in convs] == [(1, 32, (5, 5), (1, 1)),
                                                                                        (32, 64, (5, 5), (1, 1))]
    assert [(f.in_features, f.out_features) for f in fcs] == [(1024, 128), (128, 10)]
    assert [type(l).__name__ for l in m.features] == ["Conv2d", "LeakyReLU", "BatchNorm2d", "MaxPool2d",
                                                      "Conv2d", "ReLU", "BatchNorm2d", "MaxPool2d"]
    assert any(isinstance(l, torch.nn.Dropout) and l.p == 0.5 for l in m.modules())
    out = m.eval()(torch.randn(3, 1, 28, 28))
    assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)      # log-softmax output
    assert count_params(m) == 184_778          # 832 + 64 + 51,264 + 128 + 131,200 + 1,290 (BN affine included)


def test_flops_known_answer():
    m = build_model("mnist_cnn", 10, 1)
    # conv1 24*24*32*25 MACs, conv2 8*8*64*32*25, fc 1024*128 + 128*10; 2 FLOPs per multiply-add
    macs = 24 * 24 * 32 * 25 + 8 * 8 * 64 * 32 * 25 + 1024 * 128 + 128 * 10
    assert flops_per_image(m, 1, (28, 28)) == 2 * macs


def test_cifar_resnet18_shape_and_size():
    m = build_model("resnet18_cifar", 10, 3)
    assert 11_100_000 < count_params(m) < 11_200_000      # 11.17 M, the published CIFAR ResNet-18 size
    assert m.stem[0].kernel_size == (3, 3) and not any(isinstance(l, torch.nn.MaxPool2d) for l in m.modules())


def test_unknown_model_suggests():
    with pytest.raises(ConfigError, match="did you mean 'resnet18'"):
        build_model("resnet_18", 10, 3)


def test_pretrained_needs_local_file(tmp_path):
    with pytest.raises(UserError, match="model.weights=PATH"):
        build_model("resnet18", 10, 3, pretrained=True)
    src = build_model("resnet18", 1000, 3)
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in src.body.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    torch.save(src.body.state_dict(), tmp_path / "r18.pth")
    for f in ("r18.safetensors", "r18.pth"):
        m = build_model("resnet18", 5, 3, pretrained=True, weights=str(tmp_path / f))
        rep = m.load_report
        # body.state_dict() lacks the head (it lives outside body), so the new 5-class head is reported missing
        assert rep["missing"] == ["head.bias", "head.weight"] and rep["loaded"] == 120 and rep["mapping"] == "names"
        assert torch.equal(m.body.conv1.weight, src.body.conv1.weight)


@pytest.mark.parametrize("name,classes,expected", [
    ("drn_c_26", 1000, 21_126_584),        # paper: 21.1 M
    ("drn_d_22", 1000, 16_393_752),        # paper: 16.4 M
    ("wrn_28_2", 10, 1_467_610),           # paper: 1.5 M (1.47 M in the semi-supervised literature)
    ("wrn_28_10", 10, 36_479_194),         # paper: 36.5 M
    ("preact_resnet18", 10, 11_172_170),   # 11.17 M, as the CIFAR ResNet-18 plus the final BN
])
def test_known_parameter_counts(name, classes, expected):
    with torch.device("meta"):
        assert count_params(build_model(name, classes, 3)) == expected


def test_drn_output_stride_8_and_degridding():
    m = build_model("drn_c_26", 5, 3, image_size=64)
    assert m.forward_features(torch.randn(1, 3, 64, 64)).shape == (1, 512, 8, 8)
    assert not any(isinstance(l, torch.nn.MaxPool2d) for l in m.modules())
    assert [b.residual for b in m.layer7] + [b.residual for b in m.layer8] == [False, False]
    assert m.layer6[0].conv1.dilation == (4, 4) and m.layer7[0].conv1.dilation == (2, 2)
    d = build_model("drn_d_22", 5, 3, image_size=64)
    assert not hasattr(d.layer1[0], "residual")         # DRN-D: plain conv stages, no residual first block


def _stage1_input_size(model, stage: torch.nn.Module, size: int) -> int:
    seen = []
    h = stage.register_forward_pre_hook(lambda mod, args: seen.append(args[0].shape[-1]))
    model.eval()(torch.randn(1, 3, size, size))
    h.remove()
    return seen[0]


def test_cifar_stem_keeps_32px_into_stage_1():
    auto = build_model("resnet18", 10, 3, image_size=32)            # auto: < 64 px and not pretrained -> cifar
    assert _stage1_input_size(auto, auto.body.layer1, 32) == 32
    assert auto.body.conv1.kernel_size == (3, 3) and isinstance(auto.body.maxpool, torch.nn.Identity)
    imnet = build_model("resnet18", 10, 3, image_size=32, stem="imagenet")
    assert _stage1_input_size(imnet, imnet.body.layer1, 32) == 8
    assert build_model("resnet18", 10, 3, image_size=96).body.conv1.kernel_size == (7, 7)    # auto, large images
    assert build_model("drn_d_22", 10, 3, image_size=32).stem[0].kernel_size == (3, 3)
    for name in ("efficientnet_b0", "efficientnet_v2_s"):           # stride-1 stem: 32 px ends at 2x2, not 1x1
        eff = build_model(name, 10, 3, image_size=32).eval()
        assert eff.body.features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (2, 2)
        big = build_model(name, 10, 3, image_size=32, stem="imagenet").eval()
        assert big.body.features(torch.zeros(1, 3, 32, 32)).shape[-2:] == (1, 1)
    if timm_available():
        t = build_model("timm/resnet18", 10, 3, image_size=32)
        assert _stage1_input_size(t, t.body.layer1, 32) == 32
    with pytest.raises(ConfigError, match="model.stem='tiny'"):
        build_model("resnet18", 10, 3, stem="tiny")


def test_drop_path_reaches_the_blocks():
    m = build_model("wrn_28_2", 10, 3, drop_path=0.2)
    rates = [mod.p for mod in m.modules() if type(mod).__name__ == "DropPath"]
    assert len(rates) == 12 and rates[0] == 0.0 and rates[-1] == pytest.approx(0.2)     # linear in depth
    x = torch.randn(4, 3, 32, 32)
    torch.manual_seed(0)
    assert not torch.allclose(m.train()(x), m(x))                   # random in training
    assert torch.equal(m.eval()(x), m(x))                           # identity in eval
    with torch.device("meta"):
        tv = build_model("efficientnet_b0", 10, 3, drop_path=0.3)
        assert max(mod.p for mod in tv.modules() if type(mod).__name__ == "StochasticDepth") == pytest.approx(
            0.3 * 15 / 16)                                          # torchvision scales it over its 16 blocks
        sw = build_model("swin_t", 10, 3, drop_path=0.1)           # the builder fixes 0.2: rescaled to 0.1
        ps = [mod.p for mod in sw.modules() if type(mod).__name__ == "StochasticDepth"]
        assert max(ps) == pytest.approx(0.1) and ps[0] == 0.0 and len(ps) == 12
    if timm_available():
        with torch.device("meta"):
            t = build_model("convnext_atto", 10, 3, drop_path=0.1)
        assert max(mod.drop_prob for mod in t.modules() if type(mod).__name__ == "DropPath") == pytest.approx(0.1)
    with pytest.warns(UserWarning, match="no stochastic depth"):
        build_model("mnist_cnn", 10, 1, drop_path=0.1)


def test_spec_cnn_and_parameter_budget(tmp_path):
    m = build_model("spec_cnn", 10, 3, spec=SPEC, image_size=32)
    assert count_params(m) == 289_194 and m(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ConfigError, match=r"289,194 parameters, over the budget model.max_params=100,000"):
        build_model("spec_cnn", 10, 3, spec=SPEC, max_params=100_000)
    with pytest.raises(ConfigError, match=r"11,173,962 parameters.*max_params=10,000,000"):
        build_model("resnet18_cifar", 10, 3, max_params=1e7)        # the budget applies to every model
    assert count_params(build_model("resnet18_cifar", 10, 3, max_params=3e7)) == 11_173_962
    with pytest.raises(ConfigError, match="model.spec=PATH"):
        build_model("spec_cnn", 10, 3)
    bad = {"- conv: {out: 0}": "conv.*out': 0", "- pool: two": "pool': 'two'", "- batchnorm": "'batchnorm'",
           "- conv: {out: 8, kernel: 3}": "kernel", "- {bn: 1, relu: 1}": "one layer per list entry"}
    for text, match in bad.items():
        (tmp_path / "s.yaml").write_text(text + "\n")
        with pytest.raises(ConfigError, match=match):
            build_model("spec_cnn", 10, 3, spec=str(tmp_path / "s.yaml"))
    (tmp_path / "s.yaml").write_text("- pool: 4\n- pool: 4\n- pool: 4\n")
    with pytest.raises(ConfigError, match="shrinks to nothing"):
        build_model("spec_cnn", 10, 3, spec=str(tmp_path / "s.yaml"), image_size=32)


def test_weights_report_prefixes_and_order(tmp_path):
    from safetensors.torch import save_file

    src = build_model("wrn_28_2", 10, 3)
    sd = src.state_dict()
    # a DDP checkpoint: "module." prefix, plus a stray tensor
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()} | {"extra.w": torch.ones(1)}},
               tmp_path / "ddp.pth")
    rep = build_model("wrn_28_2", 10, 3, weights=str(tmp_path / "ddp.pth")).load_report
    assert rep["mapping"] == "names" and rep["loaded"] == len(sd) and rep["unexpected"] == ["extra.w"]
    assert rep["missing"] == [] == rep["shape_mismatch"]
    # another port's names, same tensors in the same order, and a head for 5 classes: loaded by order (a torch
    # file: safetensors sorts tensors by dtype and name, so it cannot keep the order)
    renamed = {f"t{i:03d}": v.contiguous() for i, v in enumerate(sd.values())}
    torch.save(renamed, tmp_path / "port.pth")
    save_file(renamed, str(tmp_path / "port.safetensors"))
    with pytest.raises(UserError, match="safetensors keeps no tensor order"):
        build_model("wrn_28_2", 5, 3, weights=str(tmp_path / "port.safetensors"))
    m = build_model("wrn_28_2", 5, 3, weights=str(tmp_path / "port.pth"))
    rep = m.load_report
    assert rep["mapping"] == "order" and rep["loaded"] == len(sd) - 2
    assert rep["shape_mismatch"] == ["head.bias: file (10,) vs model (5,)",
                                     "head.weight: file (10, 128) vs model (5, 128)"]
    assert torch.equal(m.stem.weight, src.stem.weight)
    # an unrelated architecture: nothing matches by name or order -> a clear error
    torch.save(build_model("mnist_cnn", 10, 1).state_dict(), tmp_path / "other.pth")
    with pytest.raises(UserError, match="only 2 of 18 tensors fit"):      # both have a 128 -> 10 "head"
        build_model("wrn_28_2", 10, 3, weights=str(tmp_path / "other.pth"))
    torch.save({"w": torch.ones(3)}, tmp_path / "none.pth")
    with pytest.raises(UserError, match="no tensor matches"):
        build_model("wrn_28_2", 10, 3, weights=str(tmp_path / "none.pth"))
    # a bare torchvision file: its "fc" head maps onto our "head"
    tv = build_model("resnet18", 1000, 3)
    torch.save({k.replace("head.", "fc.") if k.startswith("head.") else k.removeprefix("body."): v
                for k, v in tv.state_dict().items()}, tmp_path / "tv.pth")
    rep = build_model("resnet18", 1000, 3, weights=str(tmp_path / "tv.pth")).load_report
    assert rep["loaded"] == len(tv.state_dict()) and rep["missing"] == rep["unexpected"] == []
