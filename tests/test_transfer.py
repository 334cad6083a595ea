"""Transfer learning: freezing by fraction and stage, gradual unfreezing, discriminative learning rates, the resize
policy, progressive resizing, bootstrap bags; and ensembles of finished runs."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import visionlab
from visionlab import config as C
from visionlab.data.base import DataInfo, ImageSet
from visionlab.data.split import bootstrap
from visionlab.data.transforms import ProgressiveSchedule
from visionlab.experiments.ensemble import vote
from visionlab.models.transfer import backbone_layers, backbone_stages, frozen_layers, head_module
from visionlab.tasks.classification import build_classification
from visionlab.utils import ConfigError

from conftest import metrics_rows, run_cli

QUICK = ["train.progress=false", "train.tensorboard=false", "data.limit=600"]


def _task(*overrides, size=32, channels=3):
    cfg = C.load_config(None, list(overrides))
    info = DataInfo([str(i) for i in range(10)], channels, (size, size), (0.5,) * channels, (0.25,) * channels)
    return build_classification(cfg, info, torch.Generator().manual_seed(0))


def _trainable(model):
    return [m for m in backbone_layers(model) if all(p.requires_grad for p in m.parameters(recurse=False))]


def test_freeze_fraction_counts_backbone_layers_from_the_input():
    task = _task("model.name=resnet18_cifar", "model.freeze=0.5")
    layers = backbone_layers(task.model)
    frozen = [m for m in layers if not any(p.requires_grad for p in m.parameters(recurse=False))]
    assert frozen == layers[:len(layers) // 2]                 # the first half, nothing else
    assert all(p.requires_grad for p in head_module(task.model).parameters())
    task.model.train()
    task.on_train_epoch_start(0)
    assert all(not m.training for m in frozen if isinstance(m, torch.nn.BatchNorm2d))   # pretrained statistics kept
    probe = _task("model.name=resnet18_cifar", "model.freeze=1").model      # a linear probe: only the head trains
    assert [p.requires_grad for p in probe.parameters()].count(True) == len(list(head_module(probe).parameters()))


def test_freeze_stages_and_gradual_unfreezing_release_stages_from_the_head():
    task = _task("model.name=resnet18", "model.freeze=1", "train.unfreeze_epochs=[2,3]", "train.epochs=4")
    stages = backbone_stages(task.model)
    assert len(stages) >= 4
    n = [len(frozen_layers(task.model, "1", k)) for k in range(3)]
    assert n[0] == len(backbone_layers(task.model)) and n[0] > n[1] > n[2]
    counts = []
    for epoch in range(4):
        task.on_train_epoch_start(epoch)
        counts.append(len(backbone_layers(task.model)) - len(_trainable(task.model)))
    assert counts == [n[0], n[1], n[2], n[2]]          # released at the start of epochs 2 and 3 (1-based)
    assert len(frozen_layers(task.model, "stages:2")) == sum(len(s) for s in stages[:2])
    for bad in ("half", "1.5", "stages:x", "stages:99"):
        with pytest.raises(ConfigError):
            frozen_layers(task.model, bad)


def test_discriminative_learning_rates_split_backbone_and_head():
    task = _task("model.name=resnet18_cifar", "optim.backbone_lr_mult=0.1", "optim.lr=0.01")
    cfg = C.load_config(None, ["optim.lr=0.01", "optim.name=sgd"])
    opt = visionlab.engine.build_optimizer(task.param_groups(cfg.optim), cfg.optim)
    lrs = {id(p): g["lr"] for g in opt.param_groups for p in g["params"]}
    head = {id(p) for p in head_module(task.model).parameters()}
    assert all(lrs[i] == pytest.approx(0.01) for i in head)
    assert all(lr == pytest.approx(0.001) for i, lr in lrs.items() if i not in head)
    assert len(lrs) == sum(1 for _ in task.model.parameters())     # frozen or not, every tensor is in the optimizer


def test_progressive_schedule_known_answers_and_task_wiring():
    sched = ProgressiveSchedule(stages=3, epochs=6, full_size=32, min_size=16, min_reg=0.25)
    assert [sched.at(e) for e in range(6)] == [(16, 0.25), (16, 0.25), (24, 0.625), (24, 0.625), (32, 1.0),
                                               (32, 1.0)]
    task = _task("model.name=resnet18_cifar", "train.progressive_stages=3", "train.epochs=6", "data.cutmix=1.0",
                 "data.rotation=10", "train.progressive_min_size=16")
    images = torch.randint(0, 255, (4, 32, 32, 3), dtype=torch.uint8)
    task.on_train_epoch_start(0)
    assert task.train_tf(images).shape[-1] == 16 and task.p.cutmix == pytest.approx(0.25)
    assert task.train_tf.rotation == pytest.approx(2.5)
    task.on_train_epoch_start(5)
    assert task.train_tf(images).shape[-1] == 32 and task.p.cutmix == pytest.approx(1.0)
    assert task.eval_tf(images).shape[-1] == 32                  # evaluation always at full size


def test_input_size_resizes_every_batch_for_training_and_evaluation():
    task = _task("model.name=resnet18", "model.input_size=64")
    images = torch.randint(0, 255, (2, 32, 32, 3), dtype=torch.uint8)
    assert task.train_tf(images).shape == (2, 3, 64, 64) and task.eval_tf(images).shape == (2, 3, 64, 64)
    assert task.input_size == (64, 64)


def test_bootstrap_bag_is_seeded_resample_with_replacement():
    split = ImageSet(labels=np.arange(1000) % 10, images=np.zeros((1000, 2, 2, 1), np.uint8))
    a, b, c = bootstrap(split, 0), bootstrap(split, 0), bootstrap(split, 1)
    assert len(a) == 1000 and np.array_equal(a.labels, b.labels) and not np.array_equal(a.labels, c.labels)
    unique = len(np.unique(np.sort(np.random.default_rng(10_007).integers(0, 1000, 1000))))
    assert 0.58 < unique / 1000 < 0.69                           # 1 - 1/e of the images, the rest out of bag


def test_votes_known_answers():
    p = np.array([[[0.6, 0.4, 0.0], [0.2, 0.3, 0.5]],
                  [[0.1, 0.9, 0.0], [0.6, 0.0, 0.4]],
                  [[0.55, 0.45, 0.0], [0.0, 0.9, 0.1]]])     # 3 members, 2 images, 3 classes
    assert vote(p, "soft").tolist() == [1, 1]                  # means: [.42,.58,0], [.27,.40,.33]
    assert vote(p, "hard").tolist() == [0, 1]                  # votes 2:1 for class 0; a 1:1:1 tie -> higher mean


def test_gradual_unfreezing_with_progressive_resizing_resumes_exactly(tmp_path):
    args = ["model.name=mobilenet_v3_small", "model.freeze=1", "train.unfreeze_epochs=[2]", "train.epochs=2",
            "train.progressive_stages=2", "train.progressive_min_size=16", "data.limit=200", f"out_dir={tmp_path}",
            *QUICK]
    full = visionlab.train(None, args + ["name=full"])

    class Stop(Exception):
        pass

    def stop_after_first(state, row):
        if state.epoch == 1:
            raise Stop

    with pytest.raises(Stop):
        visionlab.train(None, args + ["name=cut"], on_epoch_end=[stop_after_first])
    resumed = visionlab.train(None, args + ["name=cut", f"resume={tmp_path / 'cut'}"])
    assert metrics_rows(resumed.run_dir) == metrics_rows(full.run_dir)


def test_frozen_layers_and_their_norm_statistics_do_not_change_in_training():
    task = _task("model.name=mnist_cnn", "model.freeze=0.5", size=28, channels=1)
    cfg = C.load_config(None, ["optim.lr=0.01", "optim.name=sgd"])
    opt = visionlab.engine.build_optimizer(task.param_groups(cfg.optim), cfg.optim)
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    task.model.train()
    task.on_train_epoch_start(0)          # what the loop does at each epoch start
    for _ in range(3):
        images = torch.randint(0, 255, (16, 28, 28, 1), dtype=torch.uint8)
        loss = task.training_step((images, torch.randint(0, 10, (16,))))["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = task.model.state_dict()
    frozen = [m for m in backbone_layers(task.model) if not any(p.requires_grad for p in m.parameters(False))]
    names = {id(m): n for n, m in task.model.named_modules()}
    keys = [k for k in after if any(k.startswith(names[id(m)] + ".") for m in frozen)]
    assert len(frozen) == 2 and any("running_mean" in k for k in keys)
    assert all(torch.equal(before[k], after[k]) for k in keys)
    changed = [k for k in after if k not in keys and after[k].is_floating_point() and not torch.equal(before[k],
                                                                                                       after[k])]
    assert any(k.startswith(names[id(head_module(task.model))]) for k in changed)


@pytest.mark.slow
def test_ensemble_cli_reports_members_and_votes(tmp_path):
    r = run_cli("seeds", "n=2", "data.bootstrap=true", "train.epochs=1", f"out_dir={tmp_path}", "name=bag", *QUICK,
                "data.limit=300")
    assert r.returncode == 0, r.stderr[-2000:]
    r = run_cli("ensemble", str(tmp_path / "bag"), "vote=both")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "soft vote" in r.stdout and "hard vote" in r.stdout
    res = json.loads((tmp_path / "bag" / "ensemble" / "ensemble.json").read_text())
    trained = [json.loads((tmp_path / "bag" / f"seed-{k}" / "summary.json").read_text())["test/acc"]
               for k in range(2)]
    # the ensemble re-evaluates each member on the same test split: the numbers training reported
    assert [m["acc"] for m in res["members"]] == pytest.approx(trained, abs=1e-9)
    assert res["member_mean"] == pytest.approx(np.mean(trained))
    assert res["soft"]["acc_by_members"][0] == pytest.approx(trained[0])
    assert res["soft"]["acc"] > 0.5 and (tmp_path / "bag" / "ensemble" / "report.html").is_file()
    bad = run_cli("ensemble", str(tmp_path / "bag" / "seed-0"))
    assert bad.returncode != 0 and "at least 2" in bad.stderr and "Traceback" not in bad.stderr


def test_pretrained_backbone_brings_its_normalization_and_warns_on_small_images():
    with pytest.warns(UserWarning, match="model.input_size=224"):
        task = _task("model.name=tf_efficientnet_lite0", "model.pretrained=true")
    assert task.info.mean == (0.5, 0.5, 0.5) and task.info.std == (0.5, 0.5, 0.5)
    assert task.input_size == (32, 32)
    resized = _task("model.name=tf_efficientnet_lite0", "model.pretrained=true", "model.input_size=224")
    assert resized.eval_tf(torch.zeros(1, 32, 32, 3, dtype=torch.uint8)).shape == (1, 3, 224, 224)
