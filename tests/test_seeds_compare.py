"""`seeds` and `compare` end to end on the embedded MNIST-5k with tiny settings: skip finished seeds, resume a
killed one, a 2-variant x 2-seed comparison with its JSON and plot, and report dispatch for every kind of folder."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from visionlab import config as C
from visionlab.cli.experiments import cmd_compare, cmd_seeds
from visionlab.experiments import compare, parallel, seeds
from visionlab.experiments.render import render_any
from visionlab.utils import ConfigError, UserError

TINY = ["data.name=mnist5k", "data.limit=300", "train.progress=false", "train.tensorboard=false"]


def _no_training(*_a, **_k):
    raise AssertionError("a finished seed was trained again")


@pytest.mark.slow
def test_seeds_kill_resume_and_skip(tmp_path, capsys, monkeypatch):
    args = [*TINY, "train.epochs=2", "n=2", f"out_dir={tmp_path}", "name=s"]
    seed1 = tmp_path / "s" / "seed-1"
    code = f"import sys; from visionlab.cli.experiments import cmd_seeds; sys.exit(cmd_seeds({args!r}))"
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


def _fake_seed(parent, k: int, acc: float, status: str | None, reason: str | None = None, summary: bool = True):
    """A seed-<k> run folder as train leaves it, without training: config.yaml, summary.json, status.json."""
    d = parent / f"seed-{k}"
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(f"seed: {k}\n")
    if summary:
        (d / "summary.json").write_text(json.dumps({"test/acc": acc, "test/loss": 1 - acc, "best_epoch": 1,
                                                    "timings": {"train_s": 1.0}}))
    if status:
        (d / "status.json").write_text(json.dumps({"status": status, "reason": reason}))


def test_failed_runs_are_left_out_and_explained(tmp_path, monkeypatch):
    for v, base in (("a", 0.5), ("b", 0.6)):
        parent = tmp_path / "cmp" / v
        _fake_seed(parent, 0, base, "finished")
        _fake_seed(parent, 1, base + 0.1, None)                    # made before status.json existed: finished
        _fake_seed(parent, 2, 0.99, "failed", "CUDA out of memory")   # a resume that failed: old summary
        _fake_seed(parent, 3, 0.0, "failed", "interrupted", summary=False)
    parent = tmp_path / "cmp" / "a"
    assert seeds.seed_dir_state(parent / "seed-2") == "stale"      # its old summary does not count
    assert [r["seed"] for r in seeds.collect(parent)] == [0, 1]
    seeds.write_seeds(parent, {"name": "a", "n": 4})
    data = json.loads((parent / "seeds.json").read_text())
    assert data["stats"]["test/acc"]["n"] == 2
    assert data["failed"] == {"2": "failed: CUDA out of memory", "3": "failed: interrupted"}
    md = (parent / "seeds.md").read_text()
    assert "seed 2 (left out)" in md and "CUDA out of memory" in md and "failed: interrupted" in md

    compare.write_compare(tmp_path / "cmp", {"name": "cmp", "metric": "test/acc", "baseline": "a", "n": 4,
                                             "variant_overrides": {"a": [], "b": ["optim.lr=0.1"]}})
    cdata = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert cdata["comparisons"]["b"]["matched_seeds"] == [0, 1]
    assert cdata["variants"]["b"]["failed"]["2"] == "failed: CUDA out of memory"
    assert "b/seed-3 (left out)" in (tmp_path / "cmp" / "compare.md").read_text()

    # seeds says why before it trains a failed seed again
    logged = []
    monkeypatch.setattr(seeds, "train_run", _no_training)
    with pytest.raises(AssertionError, match="trained again"):
        seeds.ensure_seed(C.load_config(None, ["seed=3"]), parent, 3, logged.append)
    assert logged[0] == f"{parent / 'seed-3'}: failed: interrupted but no checkpoint; starting it again"


def test_seeds_jobs_run_side_by_side_with_the_same_results(tmp_path, capfd):
    """jobs=2: two spawned workers; every seed's result is the one a run on its own gives (here seed-1 again, alone,
    on the same one thread: a different thread count may round differently), and a second call finds everything
    finished."""
    args = [*TINY, "train.epochs=1", "train.threads=1", f"out_dir={tmp_path}"]
    assert cmd_seeds([*args, "n=2", "jobs=2", "name=par"]) == 0
    assert "2 runs to train, 2 at a time" in capfd.readouterr().err      # workers write to the same stderr
    assert seeds.ensure_seed(C.load_config(None, [*args, "name=seq"]), tmp_path / "seq", 1) == "ran"
    par = json.loads((tmp_path / "par" / "seed-1" / "summary.json").read_text())
    seq = json.loads((tmp_path / "seq" / "seed-1" / "summary.json").read_text())
    assert par["test/acc"] == seq["test/acc"] and par["test/loss"] == seq["test/loss"]
    saved = C.from_dict(yaml.safe_load((tmp_path / "par" / "seed-0" / "config.yaml").read_text()))
    assert saved.seed == 0 and saved.train.threads == 1 and saved.train.progress is False
    assert cmd_seeds([*args, "n=2", "jobs=2", "name=par"]) == 0
    err = capfd.readouterr().err
    assert err.count("finished, skipped") == 2 and "at a time" not in err     # no workers started for nothing


def test_jobs_option_checks_and_worker_share():
    with pytest.raises(ConfigError, match="jobs=0"):
        cmd_seeds([*TINY, "n=1", "jobs=0"])
    with pytest.raises(ConfigError, match="jobs: expected an integer"):
        cmd_compare(["x.yaml", "jobs=two"])
    cfg = C.load_config(None, ["train.threads=0", "train.progress=true"])
    assert parallel.worker_config(cfg, 2, cores=16).train.threads == 8
    assert parallel.worker_config(cfg, 32, cores=16).train.threads == 1
    assert parallel.worker_config(C.load_config(None, ["train.threads=3"]), 2, cores=16).train.threads == 3
    assert parallel.worker_config(cfg, 2).train.progress is False and cfg.train.progress is True


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="finds the workers through /proc (Linux)")
def test_workers_end_when_the_parent_is_killed(tmp_path):
    """SIGKILL of `seeds/compare ... jobs=N` (not only Ctrl-C) ends its workers: none trains on as an orphan beside a
    rerun. Two workers sleep here; the parent is killed once both run, and both are gone within seconds."""
    parent = subprocess.Popen([sys.executable, "-c", "import time\nfrom visionlab.experiments import parallel\n"
                               "parallel.run_in_workers(time.sleep, [(120,), (120,)], 2)\n"])
    deadline, workers = time.time() + 60, []
    while len(workers) < 2 and time.time() < deadline:
        time.sleep(0.2)
        workers = [p for p in _children(parent.pid) if b"spawn_main" in _cmdline(p)]
    assert len(workers) == 2, f"the workers did not start: {workers}"
    time.sleep(1.0)                              # both are inside time.sleep(120), their initializer done
    os.kill(parent.pid, signal.SIGKILL)
    parent.wait()
    deadline, alive = time.time() + 20, workers
    while alive and time.time() < deadline:
        time.sleep(0.2)
        alive = [p for p in workers if _state(p) not in ("gone", "Z")]
    for p in alive:                              # leave no sleeper behind when the check fails
        os.kill(p, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their killed parent"


def _stat(pid) -> list[str]:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return []


def _state(pid: int) -> str:
    return (_stat(pid) or ["gone"])[0]


def _children(pid: int) -> list[int]:
    return [int(d.name) for d in Path("/proc").iterdir() if d.name.isdigit() and _stat(d.name)[1:2] == [str(pid)]]


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return b""


def test_compare_table_prints_differences_as_the_metric_prints():
    from visionlab.experiments import stats
    from visionlab.experiments.compare import results_table

    def table(metric, task, base, other):
        data = {"metric": metric, "task": task, "baseline": "a",
                "variants": {"a": {"stats": stats.describe(list(base.values()))},
                             "b": {"stats": stats.describe(list(other.values()))}},
                "comparisons": {"b": stats.compare_to_baseline(base, other)}}
        header, rows = results_table(data)
        return dict(zip(header, rows[1]))

    fid = table("test/fid", "ddpm", {0: 801.2, 1: 770.0, 2: 832.4}, {0: 641.0, 1: 620.3, 2: 661.7})
    assert fid["mean \u00b1 std"] == "641 \u00b1 20.7" and fid["\u0394 vs a (paired)"] == "-160.2"
    acc = table("test/acc", "classification", {0: 0.5, 1: 0.52}, {0: 0.55, 1: 0.58})
    assert acc["\u0394 vs a (paired)"] == "+5.50 pp"
