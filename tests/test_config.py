"""Config and CLI grammar: defaults, overrides, types, unknown keys, clean user errors."""
from __future__ import annotations

import dataclasses

import pytest

from visionlab import config as C
from visionlab.utils import ConfigError


def test_defaults_and_overrides():
    cfg = C.load_config(None, ["optim.lr=3e-4", "train.epochs=2", "data.name=digits", "optim.milestones=[3,6]"])
    assert cfg.optim.lr == pytest.approx(3e-4)
    assert cfg.train.epochs == 2 and cfg.data.name == "digits" and cfg.optim.milestones == [3, 6]
    assert cfg.model.name == "mnist_cnn"           # the embedded main job
    assert C.load_config(None).data.name == "mnist5k"


def test_int_accepted_for_float_and_bool_strings():
    cfg = C.load_config(None, ["optim.lr=1", "data.hflip=true"])
    assert cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float) and cfg.data.hflip is True


def test_unknown_key_suggests():
    with pytest.raises(ConfigError, match=r"did you mean 'optim.lr'"):
        C.load_config(None, ["optim.lrr=0.1"])


def test_wrong_type_names_key_and_type():
    with pytest.raises(ConfigError, match=r"train.epochs: expected int, got 'five'"):
        C.load_config(None, ["train.epochs=five"])
    with pytest.raises(ConfigError, match=r"optim.lr: expected float"):
        C.load_config(None, ["optim.lr=fast"])


def test_yaml_file_roundtrip(tmp_path):
    cfg = C.load_config("configs/mnist_cnn.yaml", ["seed=3"])
    assert (cfg.optim.lr, cfg.optim.step_size, cfg.optim.gamma, cfg.train.epochs) == (0.00108, 4, 0.5, 25)
    assert cfg.data.rotation == 13.0 and cfg.name == "mnist_cnn" and cfg.seed == 3
    p = tmp_path / "config.yaml"
    p.write_text(C.dump_yaml(cfg))
    assert C.load_config(p) == cfg


def test_every_key_has_help():
    rows = list(C.fields_table())
    assert len(rows) > 50
    for key in ("data.name", "data.root", "model.name", "train.epochs", "train.batch_size", "optim.name", "optim.lr",
                "seed", "resume"):
        assert key in {r[0] for r in rows}
    assert all(r[3] for r in rows), [r[0] for r in rows if not r[3]]


def test_data_root_resolution(monkeypatch, tmp_path):
    d = C.DataConfig()
    monkeypatch.delenv("VISIONLAB_DATA", raising=False)
    assert str(C.data_root(d, "mnist")) == "data/mnist"
    monkeypatch.setenv("VISIONLAB_DATA", str(tmp_path))
    assert C.data_root(d, "mnist") == tmp_path / "mnist"
    d.root = "/somewhere"
    assert str(C.data_root(d, "mnist")) == "/somewhere"


def test_cli_unknown_key_exit_2_without_traceback(cli):
    r = cli("train", "optim.lrr=0.1")
    assert r.returncode == 2
    assert "did you mean 'optim.lr'" in r.stderr and "Traceback" not in r.stderr


def test_cli_wrong_type_and_missing_dataset(cli, tmp_path):
    r = cli("train", "train.epochs=abc")
    assert r.returncode == 2 and "train.epochs: expected int" in r.stderr and "Traceback" not in r.stderr
    r = cli("train", "data.name=mnist", f"data.root={tmp_path / 'nowhere'}", f"out_dir={tmp_path}")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    for needle in ("train-images-idx3-ubyte.gz", "nowhere", "download=true"):
        assert needle in r.stderr, r.stderr


def test_cli_cfg_lists_keys(cli):
    r = cli("cfg")
    assert r.returncode == 0
    assert "optim.lr" in r.stdout and "peak learning rate" in r.stdout and "resnet18_cifar" in r.stdout


def test_every_shipped_config_resolves_and_names_a_known_model():
    """configs/*.yaml: run configs and compare files load (keys, types) and every model name builds from the zoo;
    a typo fails here, not an hour into a comparison."""
    from pathlib import Path

    from visionlab.experiments import compare, dg
    from visionlab.models import MODELS
    from visionlab.models.timm_zoo import is_timm_name

    root = Path(__file__).resolve().parents[1] / "configs"
    cfgs = []
    for path in sorted(root.glob("*.yaml")):
        if path.name.startswith("compare_"):
            cfgs += list(compare.load_spec(path).configs.values())
        elif path.name.startswith("dg_"):              # a compare file per held-out domain
            cfgs += [c for by_variant in dg.load_dg_spec(path).configs.values() for c in by_variant.values()]
        elif not path.name.startswith(("sweep_", "spec_")) and not path.name.endswith("_guide.yaml"):
            cfgs.append(C.load_config(path))
    assert len(cfgs) > 30
    generative = [c for c in cfgs
                  if c.task in C.TASK_EVAL_KEYS and c.task not in ("classification", "segmentation", "detection")]
    assert {c.task for c in generative} == {"vae", "dcgan", "ddpm"}
    assert all(c.model.name == C.DEFAULT_MODEL[c.task] for c in generative)      # they build their own networks
    from visionlab.models.detection import DETECTION_MODELS

    detection = [c for c in cfgs if c.task == "detection"]
    assert detection and all(c.model.name in DETECTION_MODELS for c in detection)
    names = {c.model.name for c in cfgs if c not in generative and c not in detection}
    assert {"drn_c_26", "drn_d_22", "densenet201", "swin_t", "alexnet", "tf_efficientnet_lite0"} <= names
    assert all(n in MODELS or is_timm_name(n) for n in names)
    # segmentation configs pair task=segmentation with segmentation models (a classifier there fails at build time)
    from visionlab.models import SEGMENTATION_MODELS

    seg = [c for c in cfgs if c.task == "segmentation"]
    assert {"lraspp_lite0", "deeplabv3_resnet101", "deeplabv3_lite0", "lraspp_mobilenet_v3_large", "unet"} <= {
        c.model.name for c in seg}
    assert all(c.model.name in SEGMENTATION_MODELS for c in seg)
    assert all(c.model.name not in SEGMENTATION_MODELS for c in cfgs if c.task != "segmentation")
    lrs = compare.load_spec(root / "compare_camvid_lr.yaml").configs
    assert sorted(c.optim.lr for c in lrs.values()) == [0.0001, 0.001, 0.01]
    assert {c.optim.name for c in lrs.values()} == {"sgd"} and {c.optim.momentum for c in lrs.values()} == {0.9}


def test_run_name_without_a_config_file_follows_data_and_model():
    assert C.load_config(None).name == "mnist5k"                                   # the bare demo
    assert C.load_config(None, ["optim.lr=3e-4", "train.epochs=2"]).name == "mnist5k"
    cfg = C.load_config(None, ["data.name=folder", "data.root=/data/trashnet/", "model.name=resnet18"])
    assert cfg.name == "trashnet-resnet18"
    assert C.load_config(None, ["data.name=cifar10", "model.name=timm/convnext_tiny"]).name == "cifar10-convnext_tiny"
    assert C.load_config(None, ["data.name=digits"]).name == "digits-mnist_cnn"
    assert C.load_config(None, ["data.name=digits", "name=mine"]).name == "mine"
    assert C.load_config("configs/mnist_cnn.yaml", ["model.name=resnet18"]).name == "mnist_cnn"   # file stem


def test_ranges_are_declared_on_the_fields():
    rows = {f.name: f.metadata["bounds"] for f in dataclasses.fields(C.TrainConfig)}
    assert rows["epochs"] == {"ge": 1} and rows["batch_size"] == {"ge": 1}
    with pytest.raises(ConfigError, match=r"train.epochs=0 is out of range: it must be >= 1 .*e.g. train.epochs=5"):
        C.load_config(None, ["train.epochs=0"])
    with pytest.raises(ConfigError, match=r"optim.lr=0.0 is out of range: it must be > 0"):
        C.from_dict({"optim": {"lr": 0}})


def test_non_utf8_yaml_names_the_file(tmp_path):
    p = tmp_path / "latin1.yaml"
    p.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(ConfigError, match="latin1.yaml: not UTF-8 text .*save the file as UTF-8"):
        C.load_config(p)
