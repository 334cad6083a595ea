"""`seeds` and `compare` end to end on the embedded MNIST-5k with tiny settings: skip finished seeds, resume a
killed one, a 2-variant x 2-seed comparison with its JSON and plot, and report dispatch for every kind of folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from visionlab.cli_experiments import cmd_compare, cmd_seeds
from visionlab.experiments import compare, render_any, seeds
from visionlab.utils import ConfigError, UserError

TINY = ["data.name=mnist5k", "data.limit=300", "train.progress=false", "train.tensorboard=false"]


def _no_training(*_a, **_k):
    raise AssertionError("a finished seed was trained again")


@pytest.mark.slow
def test_seeds_kill_resume_and_skip(tmp_path, capsys, monkeypatch):
    args = [*TINY, "train.epochs=2", "n=2", f"out_dir={tmp_path}", "name=s"]
    seed1 = tmp_path / "s" / "seed-1"
    code = f"import sys; from visionlab.cli_experiments import cmd_seeds; sys.exit(cmd_seeds({args!r}))"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 180
    while not (seed1 / "checkpoints" / "last.safetensors").is_file() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)          # seed-1 killed after its first checkpoint (epoch 1 of 2)
    proc.wait()
    assert (tmp_path / "s" / "seed-0" / "summary.json").is_file(), "seed-0 should have finished before seed-1"
    if (seed1 / "summary.json").exists():      # lost the race: the kill came after the summary; same state for us
        (seed1 / "summary.json").unlink()
    assert seeds.seed_dir_state(seed1) == "interrupted"
    mtime0 = (tmp_path / "s" / "seed-0" / "summary.json").stat().st_mtime_ns

    assert cmd_seeds(args) == 0
    err = capsys.readouterr().err
    assert "seed-0: finished, skipped" in err and "seed-1: resuming" in err
    assert (tmp_path / "s" / "seed-0" / "summary.json").stat().st_mtime_ns == mtime0
    assert sorted(p.name for p in (tmp_path / "s").iterdir() if p.is_dir()) == ["seed-0", "seed-1"]  # no seed-1-2
    data = json.loads((tmp_path / "s" / "seeds.json").read_text())
    assert [r["seed"] for r in data["seeds"]] == [0, 1]
    assert set(data["stats"]) == {"test/acc", "test/loss", "best_epoch", "train_s"}
    assert data["stats"]["test/acc"]["n"] == 2 and len(data["stats"]["test/acc"]["ci"]) == 2
    for f in ("seeds.md", "seeds.html", "seeds.png"):
        assert (tmp_path / "s" / f).is_file()

    mtimes = [(tmp_path / "s" / f"seed-{k}" / "summary.json").stat().st_mtime_ns for k in (0, 1)]
    monkeypatch.setattr(seeds, "train_run", _no_training)
    assert cmd_seeds(args) == 0                # everything finished: nothing trains
    assert [(tmp_path / "s" / f"seed-{k}" / "summary.json").stat().st_mtime_ns for k in (0, 1)] == mtimes
    with pytest.raises(UserError, match="another config"):
        cmd_seeds([*args, "optim.lr=0.5"])    # finished seeds of another config are never mixed in
    with pytest.raises(UserError, match="seed="):
        cmd_seeds([*args, "seed=3"])
    assert render_any(tmp_path / "s").name == "seeds.html"


def _write_compare(tmp_path, **extra) -> str:
    (tmp_path / "tiny.yaml").write_text("data: {name: mnist5k, limit: 300}\ntrain: {epochs: 1, progress: false, "
                                        "tensorboard: false}\n")
    spec = {"name": "cmp", "config": "tiny.yaml", "overrides": ["optim.lr=0.002"], "baseline": "bn",
            "variants": {"bn": ["model.name=mnist_cnn"], "nobn": ["model.name=mnist_cnn_nobn"]}, "n": 3, **extra}
    (tmp_path / "cmp.yaml").write_text(json.dumps(spec))      # JSON is YAML
    return str(tmp_path / "cmp.yaml")


@pytest.mark.slow
def test_compare_two_variants_two_seeds(tmp_path, capsys):
    path = _write_compare(tmp_path)
    assert cmd_compare([path, "n=2", f"out_dir={tmp_path / 'runs'}"]) == 0
    out = capsys.readouterr().out
    assert "p (paired t)" in out and "nobn" in out
    parent = tmp_path / "runs" / "cmp"
    data = json.loads((parent / "compare.json").read_text())
    assert {"name", "metric", "baseline", "n", "variants", "comparisons", "variant_overrides"} <= set(data)
    assert data["metric"] == "test/acc" and data["baseline"] == "bn" and data["n"] == 2
    assert set(data["variants"]) == {"bn", "nobn"} and set(data["comparisons"]) == {"nobn"}
    c = data["comparisons"]["nobn"]
    assert c["matched_seeds"] == [0, 1] and {"diff", "paired", "welch"} <= set(c)
    v = data["variants"]["nobn"]
    assert c["diff"]["mean"] == pytest.approx(v["stats"]["mean"] - data["variants"]["bn"]["stats"]["mean"])
    for f in ("compare.md", "compare.html", "compare.png", "bn/seeds.json", "nobn/seed-1/summary.json"):
        assert (parent / f).is_file(), f
    assert "mnist_cnn_nobn" in (parent / "nobn" / "seed-0" / "config.yaml").read_text()

    html = compare.render_compare(parent, metric="test/loss")     # another metric, from the run folders only
    assert json.loads((parent / "compare.json").read_text())["metric"] == "test/loss"
    assert render_any(parent) == html


def test_compare_spec_errors_name_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="baseline 'x' is not a variant"):
        compare.load_spec(_write_compare(tmp_path, baseline="x"))
    with pytest.raises(ConfigError, match="unknown keys"):
        compare.load_spec(_write_compare(tmp_path, seeds=3))
    with pytest.raises(ConfigError, match="did you mean"):
        compare.load_spec(_write_compare(tmp_path, variants={"bn": ["optim.lrr=1"]}))
    with pytest.raises(ConfigError, match="not found"):
        compare.load_spec(_write_compare(tmp_path, config="nope.yaml"))
    with pytest.raises(UserError, match="compare file"):
        cmd_compare(["n=2"])
    spec = compare.load_spec(_write_compare(tmp_path), ["name=other", "train.epochs=3"], n=4)
    assert spec.name == "other" and spec.n == 4 and spec.configs["nobn"].train.epochs == 3


def test_render_any_dispatch(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"test/acc": 0.5, "split": "test"}))
    assert render_any(run) == run / "report.html" and (run / "report.md").is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="seeds.json or compare.json"):
        render_any(tmp_path / "empty")
    assert os.path.exists(run / "report.html")
