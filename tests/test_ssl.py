"""Semi-supervised learning (task=ssl): the few-label protocol, the iteration streams, each method's loss against a
hand computation, hidden labels never reaching a loss, exact resume of the two-network MPL, and the final model
reported (never the best epoch)."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from visionlab import config as C
from visionlab.data import build_splits
from visionlab.data.base import ImageSet
from visionlab.data.fewlabel import per_class_counts
from visionlab.data.loaders import StreamLoader
from visionlab.tasks.semi_supervised import tsa_threshold
from visionlab.utils import ConfigError, UserError
from conftest import full_and_resumed

TINY = ["task=ssl", "data.name=mnist5k", "data.limit=400", "data.labels_per_class=5", "train.iterations=12",
        "train.eval_every=6", "train.batch_size=16", "ssl.mu=2", "train.threads=1", "train.progress=false",
        "train.tensorboard=false"]


@pytest.fixture
def data_env(monkeypatch, data_dir):
    monkeypatch.setenv("VISIONLAB_DATA", str(data_dir))


def test_few_label_split_is_balanced_seeded_and_the_rest_is_unlabelled(data_env):
    cfg = C.load_config(None, ["data.name=mnist5k", "data.labels_total=95"]).data
    whole = build_splits(C.load_config(None, ["data.name=mnist5k"]).data)
    few = build_splits(cfg)
    counts = np.bincount(few.train.labels)
    assert counts.sum() == 95 and counts.max() - counts.min() == 1          # 9 or 10 per class
    assert sorted(per_class_counts(whole.train.labels, 95, 0).values()) == sorted(counts.tolist())
    # labelled + unlabelled = the train split, disjoint; val and test untouched; the same picks every time
    assert len(few.train) + len(few.unlabeled) == len(whole.train)
    assert np.array_equal(whole.train.labels[few.labeled_index], few.train.labels)
    rest = np.setdiff1d(np.arange(len(whole.train)), few.labeled_index)
    assert np.array_equal(whole.train.images[rest], few.unlabeled.images)
    assert len(few.val) == len(whole.val) and len(few.test) == len(whole.test)
    assert np.array_equal(build_splits(cfg).labeled_index, few.labeled_index)
    with pytest.raises(ConfigError, match="both choose the labelled images"):
        build_splits(C.load_config(None, ["data.name=mnist5k", "data.labels_total=95",
                                          "data.labels_per_class=3"]).data)
    with pytest.raises(ConfigError, match="labels_total>=10"):
        build_splits(C.load_config(None, ["data.name=mnist5k", "data.labels_total=5"]).data)


def test_stream_loader_gives_fixed_batches_whole_passes_and_exact_positions():
    labelled = ImageSet(labels=np.arange(10) % 3, images=np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1))
    unlabelled = ImageSet(labels=np.zeros(7, np.int64), images=np.arange(7, dtype=np.uint8).reshape(7, 1, 1, 1))
    loader = StreamLoader([(labelled, 4), (unlabelled, 12)], steps=5, seed=3)
    seen = []
    for epoch in range(2):
        loader.set_position(epoch)
        for xl, yl, xu, yu in loader:
            assert xl.shape == (4, 1, 1, 1) and xu.shape == (12, 1, 1, 1)       # never short, even when 12 > 7
            assert torch.equal(yl, torch.from_numpy(labelled.labels)[xl.flatten().long()])
            seen.append((xl.flatten().tolist(), xu.flatten().tolist()))
    flat = [i for xl, _ in seen for i in xl]
    for p in range(4):                     # every pass over the labelled split is a permutation of it
        assert sorted(flat[10 * p:10 * (p + 1)]) == list(range(10))
    loader.set_position(1, 2)              # a resume mid-period yields exactly the rest of that period
    assert [(a.flatten().tolist(), c.flatten().tolist()) for a, _, c, _ in loader] == seen[7:]
    world = [StreamLoader([(labelled, 4)], steps=5, seed=3, rank=r, world=2) for r in range(2)]
    parts = [next(iter(w))[0].flatten().tolist() for w in world]
    assert parts[0] + parts[1] == seen[0][0]    # two ranks split each global batch


def test_tsa_threshold_rises_from_one_over_k_to_one():
    for schedule in ("linear", "log", "exp"):
        end = (1 - np.exp(-5)) * 0.9 + 0.1 if schedule == "log" else 1.0       # UDA's log schedule: 1 - e^-5
        assert tsa_threshold(schedule, 1.0, 10) == pytest.approx(end)
        values = [tsa_threshold(schedule, t / 10, 10) for t in range(11)]
        assert values == sorted(values)
    assert tsa_threshold("linear", 0.0, 10) == pytest.approx(0.1)
    assert tsa_threshold("linear", 0.5, 4) == pytest.approx(0.5 * 0.75 + 0.25)
    assert tsa_threshold("exp", 0.0, 10) == pytest.approx(np.exp(-5) * 0.9 + 0.1)


def _task(method: str, data_env, extra=()):
    from visionlab.tasks import TASKS

    cfg = C.load_config(None, TINY + [f"ssl.method={method}", *extra])
    splits = build_splits(cfg.data)
    task = TASKS.get("ssl")(cfg, splits.info(), torch.Generator().manual_seed(0))
    return task, splits


def _batch(splits, nl=8, nu=16):
    return (torch.from_numpy(splits.train.images[:nl]), torch.from_numpy(splits.train.labels[:nl]),
            torch.from_numpy(splits.unlabeled.images[:nu]), torch.from_numpy(splits.unlabeled.labels[:nu]))


@pytest.mark.parametrize("method", ["pseudo_label", "fixmatch", "uda"])
def test_each_methods_loss_matches_a_hand_computation(method, data_env):
    """With the augmentations made deterministic (weak = normalisation only, strong = a fixed flip), the step's loss
    equals the formula written out here; the hidden true labels of the unlabelled images change nothing."""
    task, splits = _task(method, data_env, ["ssl.threshold=0.3"])
    task.train_tf = task.eval_tf
    task.strong = lambda x: x.flip(2)
    task.model.eval()                      # no dropout / batch statistics: the two forwards must agree
    xl, yl, xu, yu = _batch(splits)
    out = task.training_step((xl, yl, xu, yu))
    with torch.no_grad():
        m = lambda x: task.model(task.eval_tf(x)).float()      # noqa: E731
        ll, lw, ls = m(xl), m(xu), m(xu.flip(2))
        conf, pseudo = lw.softmax(1).max(1)
        mask = (conf >= 0.3).float()
        if method == "pseudo_label":
            lu = (F.cross_entropy(lw, pseudo, reduction="none") * mask).mean()
        elif method == "fixmatch":
            lu = (F.cross_entropy(ls, pseudo, reduction="none") * mask).mean()
        else:
            target = (lw / 0.4).softmax(1)
            mask = (lw.softmax(1).max(1).values >= 0.3).float()
            lu = (-(target * ls.log_softmax(1)).sum(1) * mask).mean()
        expected = F.cross_entropy(ll, yl) + lu
    assert out["loss"].item() == pytest.approx(expected.item(), rel=1e-4, abs=1e-5)
    assert out["mask"].item() == pytest.approx(mask.mean().item())
    assert out["pl_acc"].item() == pytest.approx((pseudo == yu).float().mean().item())
    shuffled = task.training_step((xl, yl, xu, torch.randint(0, 10, yu.shape)))
    assert shuffled["loss"].item() == pytest.approx(out["loss"].item(), rel=1e-6)


def test_uda_tsa_drops_confident_labelled_examples(data_env):
    task, splits = _task("uda", data_env, ["ssl.tsa=linear"])
    task.train_tf = task.eval_tf
    task.model.eval()
    xl, yl, *_ = _batch(splits)
    logits = task.model(task.eval_tf(xl)).float()
    task.global_step = 0                   # threshold 1/K: only examples at most 10 % sure of their class count
    p = logits.softmax(1).gather(1, yl[:, None]).squeeze(1)
    keep = (p <= 0.1).float()
    ce = F.cross_entropy(logits, yl, reduction="none")
    assert task._labelled_loss(logits, yl).item() == pytest.approx(((ce * keep).sum() / keep.sum().clamp(min=1)).item())
    task.global_step = task.s.total_steps  # threshold 1: every example counts
    assert task._labelled_loss(logits, yl).item() == pytest.approx(ce.mean().item(), rel=1e-6)


def test_mpl_steps_teacher_and_student_and_finetunes_the_student_alone(data_env):
    from visionlab.engine import build_optimizer

    task, splits = _task("mpl", data_env, ["ssl.mpl_finetune=0.5"])
    groups = task.optimizer_groups(C.load_config(None, []).optim)
    assert set(groups) == {"student", "teacher"} and task.manual_optimization
    task.optimizers = {k: build_optimizer(g, C.load_config(None, []).optim) for k, g in groups.items()}
    net = task.model
    before = {k: v.clone() for k, v in net.state_dict().items()}
    task.global_step = 0
    out = task.training_step(_batch(splits))
    changed = {k.split(".")[0] for k, v in net.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"teacher", "student"} and {"mpl_h", "t_loss_mpl", "s_loss", "mask"} <= set(out)
    task.global_step = task.s.total_steps - 1          # the finetune phase: the teacher is left alone
    teacher = {k: v.clone() for k, v in net.teacher.state_dict().items()}
    out = task.training_step(_batch(splits))
    assert all(torch.equal(v, teacher[k]) for k, v in net.teacher.state_dict().items()) and "mpl_h" not in out
    x = task.eval_tf(torch.from_numpy(splits.test.images[:4]))
    net.eval()
    assert torch.equal(net(x), net.student(x))         # the module's forward is the student


def test_mpl_resume_is_exact_and_the_final_model_is_reported(tmp_path, data_env):
    """Two periods in one go equal one period then a resume: both networks, both optimizers, the EMA and the
    augmentation RNG (RandAugment draws from it). The best checkpoint is the final EMA, not the best period."""
    a, b = full_and_resumed(None, TINY + ["ssl.method=mpl", "train.ema_decay=0.9"], tmp_path)
    full = tmp_path / "full"
    assert a.keys() == b.keys() and any(k.startswith("model/teacher.") for k in a)
    assert all(torch.equal(a[k], b[k]) for k in a)
    s = json.loads((full / "summary.json").read_text())
    assert s["best_epoch"] == s["epochs_run"] == 2 and s["unlabeled_size"] == len(build_splits(
        C.load_config(None, TINY).data).unlabeled)
    assert "val/teacher_acc" in (full / "metrics.csv").read_text()
    with (full / "labeled_indices.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 50 and {r["label"] for r in rows} == {str(c) for c in range(10)}


def test_a_saved_split_is_reused_and_checked(tmp_path, data_env):
    """data.labeled_indices=RUN_DIR trains on exactly that run's labels; a file from other data settings is
    refused, naming the settings; bad set-ups name their fix."""
    from visionlab.run import train

    first = train(None, TINY + ["ssl.method=supervised", "data.labels_per_class=3", f"out_dir={tmp_path}",
                                "name=a", "train.iterations=6"]).run_dir
    cfg = C.load_config(None, [o for o in TINY if "labels_per_class" not in o] + [f"data.labeled_indices={first}"])
    reused = build_splits(cfg.data)
    original = build_splits(C.load_config(None, TINY + ["data.labels_per_class=3"]).data)
    assert np.array_equal(reused.labeled_index, original.labeled_index) and len(reused.train) == 30
    other = C.load_config(None, ["data.name=mnist5k", "data.limit=300", f"data.labeled_indices={first}"])
    with pytest.raises(UserError, match="other data settings"):
        build_splits(other.data)
    no_labels = [o for o in TINY if "labels_per_class" not in o]
    with pytest.raises(ConfigError, match="data.labels_per_class=N"):
        train(None, no_labels + [f"out_dir={tmp_path}", "name=b"])
    with pytest.raises(ConfigError, match="train.iterations=N"):
        train(None, [o for o in TINY if "iterations" not in o and "eval_every" not in o]
              + [f"out_dir={tmp_path}", "name=c"])
    with pytest.raises(ConfigError, match="not a multiple of train.eval_every"):
        C.load_config(None, ["train.iterations=10", "train.eval_every=3"])
    with pytest.raises(ConfigError, match="ssl.method='fixmatc'"):
        train(None, TINY + ["ssl.method=fixmatc", f"out_dir={tmp_path}", "name=d"])
