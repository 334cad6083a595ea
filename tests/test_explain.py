"""CAM and Grad-CAM: hand-computed answers, CAM == Grad-CAM for GAP + linear heads, localisation, transformer
reshapes, hook hygiene, and `visionlab explain` / the report's CAM gallery on a real trained run."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from visionlab.explain import (cam, explain, find_target_layer, grad_cam, nhwc_to_nchw, normalize_maps, overlay,
                               tokens_to_nchw)
from visionlab.models import build_model
from visionlab.utils import UserError


class GapNet(nn.Module):
    """features (conv, optional ReLU) -> global average pool -> Linear head: the model family CAM was made for."""

    def __init__(self, conv: nn.Conv2d, head: nn.Linear, relu: bool = False):
        super().__init__()
        self.features = nn.Sequential(conv, nn.ReLU()) if relu else nn.Sequential(conv)
        self.head = head

    def forward_features(self, x):
        return self.features(x).mean((2, 3))

    def forward(self, x):
        return self.head(self.forward_features(x))


def _hand_model() -> GapNet:
    conv = nn.Conv2d(2, 2, 1, bias=False)
    head = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(2).view(2, 2, 1, 1))          # the feature map is the input itself
        head.weight.copy_(torch.tensor([[1.0, 2.0], [-1.0, 0.0]]))
    return GapNet(conv, head)


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)
               + len(m._backward_pre_hooks) for m in model.modules())


A = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[0.0, 1.0], [0.0, 1.0]]]])   # [1, C=2, 2, 2]


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_known_answer(method):
    model = _hand_model()
    # class 0: 1*A0 + 2*A1 = [[1, 4], [3, 6]] -> min-max -> [[0, .6], [.4, 1]]
    res = explain(model, A, method=method, target=0, layer="features")
    assert torch.allclose(res.heatmaps[0], torch.tensor([[0.0, 0.6], [0.4, 1.0]]), atol=1e-6)
    assert res.target.tolist() == [0] and res.layer == "features" and res.method == method
    # class 1: -A0 is negative everywhere: no positive evidence -> an all-zero map
    assert torch.equal(explain(model, A, method=method, target=1, layer="features").heatmaps, torch.zeros(1, 2, 2))
    # default target = the predicted class (scores 0: 2.5 + 2*0.5 = 3.5, 1: -2.5)
    assert explain(model, A, method=method, layer="features").target.tolist() == [0]


def test_normalize_upsamples_and_scales():
    maps = torch.tensor([[[0.0, 2.0], [4.0, 8.0]]])
    out = normalize_maps(maps, (4, 4))
    assert out.shape == (1, 4, 4) and float(out.min()) == 0.0 and float(out.max()) == 1.0
    assert torch.equal(normalize_maps(torch.full((2, 3, 3), 5.0), (6, 6)), torch.zeros(2, 6, 6))


def test_cam_equals_gradcam_for_gap_linear():
    torch.manual_seed(0)
    for name, size in (("resnet18_cifar", 32), ("resnet18", 64)):
        model = build_model(name, 5, 3, **({"width": 8} if name == "resnet18_cifar" else {}))
        x = torch.randn(3, 3, size, size)
        target = torch.tensor([0, 3, 4])
        a, b = cam(model, x, target), grad_cam(model, x, target)
        assert a.layer == b.layer == ("layers" if name == "resnet18_cifar" else "body.layer4")
        assert torch.allclose(a.heatmaps, b.heatmaps, atol=1e-5), name
        assert torch.allclose(a.scores, b.scores, atol=1e-5)


def test_cam_refuses_models_without_global_pooling():
    model = build_model("mnist_cnn", 10, 1)       # flatten + MLP head: CAM does not apply, Grad-CAM does
    x = torch.randn(2, 1, 28, 28)
    with pytest.raises(UserError, match="method=gradcam"):
        cam(model, x)
    res = grad_cam(model, x)
    assert res.layer == "features" and res.heatmaps.shape == (2, 28, 28)


@pytest.mark.parametrize("method", ["cam", "gradcam"])
def test_heatmap_peaks_where_the_evidence_is(method):
    conv = nn.Conv2d(1, 1, 3, padding=1, bias=False)
    head = nn.Linear(1, 2, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[-1.0, 2.0, -1.0]] * 3).view(1, 1, 3, 3))   # a vertical-bar detector
        head.weight.copy_(torch.tensor([[1.0], [-1.0]]))
    model = GapNet(conv, head, relu=True)
    img = torch.zeros(1, 1, 32, 32)
    img[0, 0, 4:12, 24] = 1.0              # a vertical bar in the top-right quadrant
    img[0, 0, 24, 4:12] = 1.0              # a horizontal bar (no evidence) in the bottom-left one
    heat = explain(model, img, method=method, target=0).heatmaps[0]
    y, x = divmod(int(heat.argmax()), 32)
    assert y < 16 and x >= 16
    quads = [float(q.mean()) for q in (heat[:16, 16:], heat[:16, :16], heat[16:, :16], heat[16:, 16:])]
    assert quads[0] > 5 * max(quads[1:])


def test_reshape_transforms():
    t = torch.arange(2 * 5 * 3, dtype=torch.float32).view(2, 5, 3)     # class token + 2x2 patches, C=3
    out = tokens_to_nchw(t)
    assert out.shape == (2, 3, 2, 2) and torch.equal(out[:, :, 0, 1], t[:, 2])
    assert tokens_to_nchw(torch.zeros(1, 9, 4)).shape == (1, 4, 3, 3)    # no class token
    with pytest.raises(UserError):
        tokens_to_nchw(torch.zeros(1, 7, 4))
    nhwc = torch.randn(2, 3, 4, 5)
    assert torch.equal(nhwc_to_nchw(nhwc)[:, :, 1, 2], nhwc[:, 1, 2])


@pytest.mark.parametrize("name,size,layer", [("resnet18", 64, "body.layer4"), ("swin_t", 112, "body.features"),
                                             ("vit_b_16", 224, "body.encoder.layers.encoder_layer_11.ln_1")])
def test_backbones_shape_range_and_hooks(name, size, layer):
    torch.manual_seed(0)
    model = build_model(name, 4, 3).train()
    with torch.no_grad():
        nn.init.normal_(model.head.weight, std=0.02)      # torchvision ViT zero-initialises its head
    x = torch.randn(2, 3, size, size)
    assert find_target_layer(model, x)[0] == layer
    res = grad_cam(model, x, target=1)
    assert res.layer == layer and res.heatmaps.shape == (2, size, size) and res.scores.shape == (2, 4)
    peaks = res.heatmaps.amax((1, 2))           # 1, or 0 where random weights give no positive evidence at all
    assert float(res.heatmaps.min()) >= 0.0 and float(peaks.max()) == 1.0 and set(peaks.tolist()) <= {0.0, 1.0}
    assert _hook_count(model) == 0 and model.training       # hooks removed, mode restored
    assert all(p.grad is None for p in model.parameters())   # no gradients left on the weights


def test_hooks_removed_after_errors_and_bad_layer_hint():
    model = _hand_model()
    with pytest.raises(UserError, match="did you mean 'features'"):
        grad_cam(model, A, layer="featurez")
    with pytest.raises(UserError, match="method must be"):
        explain(model, A, method="lime")
    with pytest.raises(UserError, match="target"):
        grad_cam(model, A, target=7, layer="features")
    assert _hook_count(model) == 0


def test_overlay_blends_rgb():
    out = overlay(np.zeros((8, 8, 1), np.uint8), torch.ones(8, 8))
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8 and out.max() > 0


# ---------------------------------------------------------------- on a real trained run

@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    from visionlab.run import train

    tmp = tmp_path_factory.mktemp("explain_run")
    return train(None, ["train.epochs=1", "data.limit=300", "train.progress=false", f"out_dir={tmp}"]).run_dir


def test_cli_explain_writes_overlays(trained_run, tmp_path, capsys):
    from visionlab.cli.explain import cmd_explain
    from visionlab.data import build_splits
    from visionlab.run import load_run

    test = build_splits(load_run(trained_run).cfg.data).test
    files = []
    for i in range(2):
        files.append(tmp_path / f"digit{i}.png")
        Image.fromarray(test.images[i][..., 0]).save(files[-1])
    out = tmp_path / "out"
    assert cmd_explain([str(trained_run), *map(str, files), f"out={out}"]) == 0
    printed = capsys.readouterr().out.split()
    assert printed == [str(out / "digit0_gradcam.png"), str(out / "digit1_gradcam.png")]
    assert all((out / f"digit{i}_gradcam.png").stat().st_size > 1000 for i in range(2))
    assert cmd_explain([str(trained_run), str(files[0]), "class=3", "layer=features", f"out={out}"]) == 0
    with pytest.raises(UserError, match="method=gradcam"):          # SeedCNN has no global-pool head
        cmd_explain([str(trained_run), str(files[0]), "method=cam", f"out={out}"])
    with pytest.raises(UserError, match="not a class"):
        cmd_explain([str(trained_run), str(files[0]), "class=eleven", f"out={out}"])
    with pytest.raises(UserError, match="unknown option"):
        cmd_explain([str(trained_run), str(files[0]), "colour=red"])


def test_cam_gallery_in_report(trained_run):
    from visionlab.views.cam_gallery import write_cam_gallery
    from visionlab.views.report import write_report

    path = write_cam_gallery(trained_run, max_per_class=1)
    assert path == trained_run / "cam_gallery.png" and path.stat().st_size > 1000
    write_report(trained_run)
    assert "cam_gallery.png" in (trained_run / "report.md").read_text()
    assert 'src="cam_gallery.png"' in (trained_run / "report.html").read_text()


def test_overlay_resizes_a_heatmap_made_at_the_model_input_size():
    """model.input_size=224 on 32 px images: the heatmap is 224x224, the gallery image 32x32."""
    from visionlab.explain.cam import overlay

    heat = np.zeros((224, 224), np.float32)
    heat[:112] = 1.0                                   # the top half is hot
    out = overlay(np.full((32, 32, 3), 128, np.uint8), heat)
    assert out.shape == (32, 32, 3) and out[2, 16, 0] > out[30, 16, 0]    # jet: hot = red, cold = blue
