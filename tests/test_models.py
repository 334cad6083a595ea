"""Every registered model honours the contract: forward, forward_features/forward_head, reset_classifier, backward."""
from __future__ import annotations

import pytest
import torch

from visionlab.models import MODELS, build_model, count_params, flops_per_image
from visionlab.utils import ConfigError, UserError

# input (channels, size) per model: our small-image nets get their native size; torchvision ones 96 (Inception needs
# >= 75) except the transformers with a fixed 224 input
SMALL = {"mnist_cnn": (1, 28), "resnet18_cifar": (3, 32), "maxvit_t": (3, 224),
         **{n: (3, 224) for n in MODELS.names() if n.startswith("vit_")}}
REAL_COMPUTE_MAX_PARAMS = 30_000_000     # bigger ones are checked on the meta device (shapes only, no memory)


@pytest.mark.parametrize("name", MODELS.names())
def test_model_contract(name):
    c, s = SMALL.get(name, (3, 96))
    try:
        with torch.device("meta"):
            meta = build_model(name, num_classes=7, in_channels=c, image_size=s)
        device = torch.device("meta")
    except NotImplementedError:     # RegNet's init reads tensor values: build it for real and run it small
        meta, device, s = build_model(name, num_classes=7, in_channels=c, image_size=64), torch.device("cpu"), 64
    big = count_params(meta) > REAL_COMPUTE_MAX_PARAMS
    device = device if big else torch.device("cpu")
    torch.manual_seed(0)
    with device:
        model = meta if big else build_model(name, num_classes=7, in_channels=c, image_size=s)
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
        assert rep["shape_mismatch"] == ["head.bias", "head.weight"] or rep["missing"] == ["head.bias", "head.weight"]
        assert torch.equal(m.body.conv1.weight, src.body.conv1.weight)
