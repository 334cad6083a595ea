"""A finished run read back: load_run rebuilds its task and model from the run directory (best checkpoint), and
predict / predict_batch / generate use it; eval_overrides says which settings may change when a run is evaluated."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import config as C
from ..data.base import DataInfo
from ..engine import load_checkpoint, resolve_precision
from ..tasks import TASKS
from ..utils import ConfigError, UserError, resolve_device

# Keys `visionlab eval` may change: how the data is decoded and evaluated, never what was trained. The run's own
# task section (e.g. segmentation.tta_scales) is allowed too.
RUNTIME_KEYS = ("data.num_workers", "train.eval_batch_size", "train.device", "train.threads")   # how fast, not what
EVAL_KEYS = ("data.image_size", "train.precision", *RUNTIME_KEYS)    # is measured: the file keeps its plain name


@dataclass
class LoadedRun:
    run_dir: Path
    cfg: C.Config
    info: DataInfo
    task: object
    device: torch.device
    precision: str

    @property
    def model(self) -> torch.nn.Module:
        return self.task.model

    @property
    def classes(self) -> list[str]:
        return self.info.classes


def load_run(run_dir: str | Path, device: str = "auto", overrides: list[str] | None = None) -> LoadedRun:
    """Rebuild a run's task and model from its directory, with the best checkpoint's weights, in eval mode
    (``overrides``: evaluation-time settings, see ``eval_overrides``)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise UserError(f"{run_dir} is not a run directory (no config.yaml); pass a folder made by `visionlab train`")
    ckpt = load_checkpoint(run_dir / "checkpoints" / "best.safetensors")
    cfg = C.from_dict(ckpt["sidecar"]["config"])
    cfg.model.pretrained, cfg.model.weights = False, ""      # the checkpoint has the weights
    if overrides:
        cfg = eval_overrides(cfg, overrides)
    info = DataInfo.from_dict(ckpt["sidecar"]["data"])
    dev = resolve_device(device)
    task = build_task(cfg, info, torch.Generator(), dev)
    task.model.load_state_dict(ckpt["weights"])
    task.model.eval()
    return LoadedRun(run_dir, cfg, info, task, dev, resolve_precision(cfg.train.precision, dev))


def build_task(cfg: C.Config, info: DataInfo, generator: torch.Generator, device: torch.device):
    """The configured task with its model(s) on ``device``, channels-last when the run says so (the batch transforms
    emit channels_last; NCHW weights would convert per layer): what training and a loaded run both start from."""
    task = TASKS.get(cfg.task)(cfg, info, generator)
    task.model.to(device)
    if cfg.train.channels_last:
        task.model.to(memory_format=torch.channels_last)
    return task


def eval_overrides(cfg: C.Config, overrides: list[str]) -> C.Config:
    """``cfg`` with evaluation-time ``overrides`` applied; a ConfigError names the keys that may change."""
    allowed = set(EVAL_KEYS)
    for part in C.TASK_EVAL_KEYS.get(cfg.task, ()):
        allowed |= {part} if "." in part else {k for k, *_ in C.fields_table(C.SECTIONS[part], part + ".")}
    for key in map(override_key, overrides):
        if key not in allowed:
            raise ConfigError(f"{key} cannot change at evaluation (it changes what was trained); keys that can: "
                              f"{', '.join(sorted(allowed))}")
    return C.as_config(cfg, overrides)


def override_key(override: str) -> str:
    """'data.image_size=0' -> 'data.image_size'."""
    return override.split("=", 1)[0].strip()


def predict(run_dir: str | Path | LoadedRun, images, topk: int = 5) -> list:
    """One result per image (``images``: file paths or uint8 HWC arrays, decoded like the data), as the task's
    predictions say: classes -> the top-k [(class, probability)]; masks -> {"mask": uint8 [H, W] class ids,
    "areas": {class: fraction of the image}}; images (a VAE's reconstructions) -> {"image": uint8 [H, W, C]}; boxes ->
    {"boxes" float [N, 4] xyxy in the image's own pixels, "scores", "labels", "classes"} at the display threshold."""
    if topk < 1:
        raise ConfigError(f"topk={topk} is out of range: it must be >= 1; e.g. topk=5")
    run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir)
    pred, classes = predict_batch(run, images), run.classes
    if pred.kind == "classes":
        probs = pred.probs.cpu()
        top = probs.topk(min(topk, probs.shape[1]), dim=1)
        return [[(classes[int(i)], float(p)) for p, i in zip(ps, ids)] for ps, ids in zip(top.values, top.indices)]
    if pred.kind == "masks":
        out = []
        for m in pred.masks.cpu():
            counts = torch.bincount(m.flatten(), minlength=len(classes)).double() / m.numel()
            out.append({"mask": m.to(torch.uint8).numpy(),
                        "areas": {c: float(a) for c, a in zip(classes, counts) if a > 0}})
        return out
    if pred.kind == "images":                 # e.g. a VAE's reconstructions
        return [{"image": im.numpy()} for im in pred.images.cpu()]
    if pred.kind == "boxes":
        return [_boxes_on_original(d, im, run) for d, im in zip(pred.boxes, images)]
    raise UserError(f"predict: a {pred.kind!r} prediction has no per-image summary yet")


def _boxes_on_original(d: dict, image, run: LoadedRun) -> dict:
    """One image's detections mapped from the letterboxed canvas back to the image's own pixels (clipped to it)."""
    from ..data.decode import letterbox_scale, probe

    if isinstance(image, (str, Path)):
        (w, h), _ = probe(str(image), oriented=True)
    else:
        h, w = np.asarray(image).shape[:2]
    size = int(run.info.preprocess.get("letterbox") or 0)
    scale = letterbox_scale(h, w, size) if size else 1.0
    boxes = d["boxes"].float() / scale
    boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
    boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
    labels = d["labels"].long()
    return {"boxes": boxes.numpy(), "scores": d["scores"].float().numpy(), "labels": labels.numpy(),
            "classes": [run.classes[int(k)] for k in labels]}


def add_generated(train, info: DataInfo, cfg: C.Config):
    """``train`` plus ``data.synthetic_per_class`` images per class sampled from the conditional generative run
    ``data.synthetic`` (same classes, size and channels), seeded by the run's seed; names say where they came from."""
    from ..data import ImageSet

    gen = load_run(cfg.data.synthetic)
    if not (gen.task.generates and gen.task.conditional):
        raise UserError(f"data.synthetic={cfg.data.synthetic} must be a class-conditional generative run "
                        "(task=vae|dcgan|ddpm with <task>.conditional=true)")
    if list(gen.info.classes) != list(info.classes) or tuple(gen.info.image_size) != tuple(info.image_size) \
            or gen.info.channels != info.channels:
        raise UserError(f"data.synthetic={cfg.data.synthetic} makes {gen.info.channels}-channel "
                        f"{tuple(gen.info.image_size)} images of {gen.info.classes}; this run needs {info.channels}-"
                        f"channel {tuple(info.image_size)} images of {info.classes}")
    if not train.in_memory:
        raise UserError("data.synthetic needs a dataset decoded in memory (data.in_memory=true)")
    k = cfg.data.synthetic_per_class
    if k < 1:
        raise ConfigError("data.synthetic needs data.synthetic_per_class >= 1 (images generated per class)")
    images = [gen.task.generate(k, 1_000_003 * cfg.seed + c, c).numpy() for c in range(len(info.classes))]
    labels = np.repeat(np.arange(len(info.classes)), k)
    names = [f"generated:{gen.run_dir.name}/{info.classes[c]}/{i}" for c in range(len(info.classes)) for i in range(k)]
    return ImageSet(labels=np.concatenate([train.labels, labels]).astype(np.int64),
                    images=np.concatenate([train.images] + images),
                    names=(train.names or [f"train[{i}]" for i in range(len(train))]) + names)


def generate(run_dir: str | Path | LoadedRun, n: int = 64, seed: int = 0, label: str | None = None,
             steps: int | None = None) -> np.ndarray:
    """``n`` new uint8 [n, H, W, C] images from a generative run's best (EMA) weights, reproducible from ``seed``;
    ``label``: a class name of a conditional model; ``steps``: sampling steps of a diffusion model."""
    run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir)
    if not run.task.generates:
        raise UserError(f"{run.run_dir} is a {run.cfg.task} run, which does not generate images: pass a run trained "
                        "with task=vae, dcgan or ddpm")
    if n < 1 or (steps is not None and steps < 1):
        raise UserError(f"n={n}, steps={steps}: both must be >= 1")
    return run.task.generate(n, seed, label, steps).numpy()


def predict_batch(run_dir: str | Path | LoadedRun, images):
    """The task's typed Prediction (tasks.base.Prediction) for a list of image files or uint8 HWC arrays."""
    from ..data.decode import try_load

    run = run_dir if isinstance(run_dir, LoadedRun) else load_run(run_dir)
    arrays = []
    for im in images:
        if isinstance(im, (str, Path)):
            arr, reason = try_load(str(im), run.info.preprocess)     # the same decoding as the training data
            if arr is None:
                raise UserError(f"{im}: cannot read this image ({reason}); pass a JPEG, PNG or other image file")
            im = arr
        elif run.info.preprocess.get("letterbox"):     # a detector's canvas: the array's own letterbox
            im = _letterboxed(np.asarray(im, dtype=np.uint8), run.info.preprocess)
        arrays.append(np.asarray(im, dtype=np.uint8))
    shapes = {a.shape for a in arrays}
    if len(shapes) > 1:
        raise UserError(f"images of different sizes ({', '.join(str(s[:2]) for s in sorted(shapes))}) cannot share a "
                        "batch; predict them one at a time")
    batch = torch.from_numpy(np.stack([a if a.ndim == 3 else a[..., None] for a in arrays])).to(run.device)
    return run.task.predict(batch)


def _letterboxed(arr: np.ndarray, preprocess: dict) -> np.ndarray:
    """A decoded uint8 HWC array on the run's letterbox canvas (unchanged when it is the canvas already)."""
    from PIL import Image

    from ..data.decode import prepare_image

    size, channels = int(preprocess["letterbox"]), 1 if preprocess.get("grayscale") else 3
    if arr.shape[:2] == (size, size) and (arr.shape[-1] if arr.ndim == 3 else 1) == channels:
        return arr
    return prepare_image(Image.fromarray(arr[..., 0] if arr.ndim == 3 and arr.shape[-1] == 1 else arr), preprocess)
