"""Many-run experiments on a segmentation task: seeds, compare and sweep default to the runs' own primary metric
(val/miou, test/miou) read from summary.json; a min-mode metric reads "lower is better"; ensembles refuse
non-classification runs in one line. Tiny real CamVid runs (24 images per split at 96 px, one epoch, ~10 s each)."""
from __future__ import annotations

import csv
import json

import pytest

from visionlab.cli.experiments import cmd_compare, cmd_seeds
from visionlab.cli.sweep import cmd_sweep
from visionlab.experiments import compare, seeds
from visionlab.experiments import primary as P
from visionlab.experiments import sweep_space as SP
from visionlab.experiments.ensemble import ensemble
from visionlab.experiments.render import render_any
from visionlab.utils import UserError

from conftest import DATA

SEG = ["task=segmentation", "data.name=camvid", f"data.root={DATA / 'camvid'}", "model.name=lraspp_lite0",
       "model.pretrained=true", "data.image_size=96", "data.limit=24", "segmentation.crop_size=[64,96]",
       "train.epochs=1", "train.threads=1", "train.progress=false", "train.tensorboard=false"]


@pytest.fixture(scope="module")
def seg_compare(tmp_path_factory):
    """A 2-variant x 2-seed comparison of two learning rates on tiny CamVid runs, made once for this module."""
    tmp = tmp_path_factory.mktemp("segcmp")
    (tmp / "seg.yaml").write_text("task: segmentation\n")
    spec = {"name": "cmp", "config": "seg.yaml", "baseline": "lr1e-3",
            "variants": {"lr1e-3": ["optim.lr=0.001"], "lr1e-2": ["optim.lr=0.01"]}, "n": 2}
    (tmp / "cmp.yaml").write_text(json.dumps(spec))
    assert cmd_compare([str(tmp / "cmp.yaml"), *SEG, f"out_dir={tmp / 'runs'}"]) == 0
    return tmp / "runs" / "cmp"


@pytest.mark.slow
def test_compare_defaults_to_test_miou_with_paired_difference(seg_compare, capsys):
    data = json.loads((seg_compare / "compare.json").read_text())
    assert data["metric"] == "test/miou" and data["task"] == "segmentation" and data["mode"] == "max"
    c = data["comparisons"]["lr1e-2"]
    assert c["matched_seeds"] == [0, 1] and c["diff"]["ci"] is not None and c["paired"]["df"] == 1
    means = {v: data["variants"][v]["stats"]["mean"] for v in data["variants"]}
    assert c["diff"]["mean"] == pytest.approx(means["lr1e-2"] - means["lr1e-3"])
    summary = json.loads((seg_compare / "lr1e-2" / "seed-1" / "summary.json").read_text())
    assert data["variants"]["lr1e-2"]["seeds"]["1"] == summary["test/miou"]
    md = (seg_compare / "compare.md").read_text()
    assert "Results: test/miou (higher is better)" in md and " pp" in md and "%" in md   # IoU prints as percent


@pytest.mark.slow
def test_seeds_report_test_miou_mean_and_ci(seg_compare, capsys, monkeypatch):
    # the comparison's variant folders are seeds folders: `visionlab seeds` over the same config skips both seeds
    monkeypatch.setattr(seeds, "train_run", lambda *_a, **_k: pytest.fail("a finished seed was trained again"))
    base = str(seg_compare.parent.parent / "seg.yaml")                  # the comparison's base config
    args = [base, *SEG, "optim.lr=0.01", "n=2", f"out_dir={seg_compare}", "name=lr1e-2"]
    assert cmd_seeds(args) == 0
    out = capsys.readouterr().out
    assert "val/miou (segmentation, higher is better)" in out and "test mean IoU" in out
    data = json.loads((seg_compare / "lr1e-2" / "seeds.json").read_text())
    assert data["primary_metric"] == "val/miou" and data["mode"] == "max"
    assert set(data["stats"]) == {"test/miou", "best_epoch", "train_s"}       # no test/loss in these summaries
    st = data["stats"]["test/miou"]
    assert st["n"] == 2 and len(st["ci"]) == 2 and st["ci"][0] <= st["mean"] <= st["ci"][1]
    assert "test mean IoU" in (seg_compare / "lr1e-2" / "seeds.md").read_text()
    assert render_any(seg_compare / "lr1e-2").name == "seeds.html"


@pytest.mark.slow
def test_ensemble_refuses_segmentation_runs_in_one_line(seg_compare):
    with pytest.raises(UserError) as e:
        ensemble([seg_compare / "lr1e-3"])
    assert "segmentation run" in str(e.value) and "classification" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.slow
def test_sweep_over_segmentation_lr_optimizes_val_miou(tmp_path):
    space = tmp_path / "lr.yaml"
    space.write_text("name: seglr\nstrategy: grid\nreport: false\nprune: false\n"
                     "params:\n  optim.lr: {values: [0.01, 0.001]}\n")     # no metric: nor direction:
    (tmp_path / "seg.yaml").write_text("task: segmentation\n")
    assert cmd_sweep([str(tmp_path / "seg.yaml"), str(space), *SEG, f"out_dir={tmp_path / 'runs'}"]) == 0
    sweep_dir = tmp_path / "runs" / "seglr"
    rows = list(csv.DictReader((sweep_dir / "sweep.csv").open()))
    assert len(rows) == 2 and {r["state"] for r in rows} == {"COMPLETE"}
    for r in rows:          # each trial's objective is the best val/miou of its run
        log = list(csv.DictReader(open(f"{r['run_dir']}/metrics.csv")))
        assert float(r["value"]) == pytest.approx(max(float(x["val/miou"]) for x in log))
    head = (sweep_dir / "best.yaml").read_text().splitlines()[0]
    assert "val/miou=" in head and "(maximize)" in head


def test_primary_metric_of_summaries_tasks_and_formats():
    assert P.of_summary({"test/acc": 0.9}) == P.Primary("classification", "val/acc", "max")       # old summaries
    seg = P.of_summary({"task": "segmentation", "primary_metric": "val/miou", "mode": "max"})
    assert seg.test == "test/miou" and seg.direction == "maximize"
    assert P.of_task("segmentation") == seg and P.of_task("classification").metric == "val/acc"
    assert P.metric_kind("test/miou", "segmentation") == "pct" and P.metric_kind("test/loss", "segmentation") == "f4"
    assert P.metric_label("test/miou", "segmentation") == "test mean IoU"
    assert P.mode_of("test/loss", seg) == "min" and P.mode_of("test/miou", seg) == "max"
    assert P.mode_of("test/fd", P.Primary("generative", "val/fd", "min")) == "min"


def test_sweep_space_without_metric_takes_the_tasks_primary_metric(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text("strategy: grid\nparams:\n  optim.lr: {values: [0.1]}\n")
    space = SP.load_space(path)
    assert space.metric is None and space.direction is None
    assert SP.resolve_objective(space, "segmentation").metric == "val/miou" and space.direction == "maximize"
    loss = SP.load_space(path)
    loss.metric = "val/loss"
    assert SP.resolve_objective(loss, "segmentation").direction == "minimize"
    kept = SP.load_space(path)
    kept.metric, kept.direction = "val/pixel_acc", "maximize"
    assert SP.resolve_objective(kept, "classification").metric == "val/pixel_acc"


def _fake_run(d, value: float, primary: tuple | None):
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"seed: {int(d.name.split('-')[1])}\n")
    s = {"test/fd": value, "best_epoch": 1, "timings": {"train_s": 1.0}}
    if primary:
        s.update(task=primary[0], primary_metric=primary[1], mode=primary[2])
    (d / "summary.json").write_text(json.dumps(s))


def test_a_min_mode_metric_reads_lower_is_better_and_mixed_tasks_are_refused(tmp_path):
    gen = ("generative", "val/fd", "min")
    for v, base in (("a", 30.0), ("b", 20.0)):
        for k in range(2):
            _fake_run(tmp_path / "cmp" / v / f"seed-{k}", base + k, gen)
    compare.write_compare(tmp_path / "cmp", {"name": "cmp", "metric": None, "baseline": "a", "n": 2,
                                             "variant_overrides": {"a": [], "b": []}})
    data = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert data["metric"] == "test/fd" and data["mode"] == "min"
    assert data["comparisons"]["b"]["diff"]["mean"] == pytest.approx(-10.0)
    assert "(lower is better)" in (tmp_path / "cmp" / "compare.md").read_text()
    seeds.write_seeds(tmp_path / "cmp" / "a", {"name": "a", "n": 2})
    sdata = json.loads((tmp_path / "cmp" / "a" / "seeds.json").read_text())
    assert list(sdata["stats"])[0] == "test/fd" and sdata["mode"] == "min"
    _fake_run(tmp_path / "cmp" / "b" / "seed-2", 0.5, ("segmentation", "val/miou", "max"))
    with pytest.raises(UserError, match="different primary metrics"):
        compare.write_compare(tmp_path / "cmp", {"name": "cmp", "metric": None, "baseline": "a", "n": 3,
                                                 "variant_overrides": {"a": [], "b": []}})
