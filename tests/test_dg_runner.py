"""`visionlab dg`: a compare file over held-out domains. Checks before training (bad domain, per-domain keys, task),
the DG analysis on synthetic seed folders against a hand computation (average row, paired differences, compute
seconds, reports), and one real leave-domain-out comparison on PACS with a small network (skip on re-run)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import yaml
from scipy import stats as sps

from visionlab.cli.main import main
from visionlab.data.domains import domain_names
from visionlab import config as C
from visionlab.experiments import dg, seeds, stats
from visionlab.utils import ConfigError

PACS_DOMAINS = ["art_painting", "cartoon", "photo", "sketch"]
CLASSES = ["dog", "elephant", "giraffe", "guitar", "horse", "house", "person"]
# a small network at 32 px keeps a real run at a few seconds; the lite0 recipe is configs/pacs_lite0.yaml
FAST = ["model.name=mnist_cnn", "model.pretrained=false", "data.image_size=32", "data.limit=40", "train.epochs=1",
        "train.batch_size=16", "train.threads=1", "train.progress=false", "train.tensorboard=false"]


def _spec(tmp_path, domains, variants=None, name="dgt", n=2):
    path = tmp_path / "dg.yaml"
    path.write_text(yaml.safe_dump({"name": name, "config": str(_config()), "baseline": "erm",
                                    "domains": domains, "n": n,
                                    "variants": variants or {"erm": ["dg.method=erm"],
                                                             "head": ["dg.method=domain_head"]}}))
    return path


def _config():
    from pathlib import Path

    return Path(__file__).resolve().parents[1] / "configs" / "pacs_lite0.yaml"


def _no_training(*_a, **_k):
    raise AssertionError("training started although the dg file is invalid")


# ---------------------------------------------------------------- checks before the first run

def test_domain_names_of_pacs(data_dir):
    cfg = C.load_config(str(_config()), [])
    assert domain_names(cfg.data) == PACS_DOMAINS
    with pytest.raises(ConfigError, match="has no domains"):
        domain_names(C.load_config(None, ["data.name=mnist"]).data)


def test_bad_domain_fails_before_training(tmp_path, data_dir, monkeypatch, capsys):
    monkeypatch.setattr(seeds, "train_run", _no_training)
    path = _spec(tmp_path, ["cartoon", "sketchy"])
    with pytest.raises(ConfigError) as e:
        dg.load_dg_spec(path, [f"out_dir={tmp_path / 'runs'}"])
    msg = str(e.value)
    assert "'sketchy'" in msg and all(d in msg for d in PACS_DOMAINS)
    assert main(["dg", str(path), f"out_dir={tmp_path / 'runs'}"]) == 2
    assert "sketchy" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("variants, match", [
    ({"erm": ["dg.method=erm", "data.target_domains=[photo]"]}, "sets data.target_domains itself"),
    ({"erm": ["dg.method=erm"], "bad": ["dg.method=nope"]}, "dg.method"),
    ({"erm": ["task=classification"]}, "needs task=dg"),
    ({"erm": ["dg.method=erm", "data.source_domains=[photo,sketch]"]}, "holds the held-out domain"),
])
def test_bad_variants_fail_before_training(tmp_path, data_dir, monkeypatch, variants, match):
    monkeypatch.setattr(seeds, "train_run", _no_training)
    with pytest.raises(ConfigError, match=match):
        spec = dg.load_dg_spec(_spec(tmp_path, ["sketch"], variants), [f"out_dir={tmp_path}"])
        dg.run_dg(spec)          # dg.method is checked when the task is built: must not get here either


def test_empty_domains_mean_every_domain(tmp_path, data_dir):
    spec = dg.load_dg_spec(_spec(tmp_path, []), [f"out_dir={tmp_path}"], n=3)
    assert spec.domains == PACS_DOMAINS and spec.spec.n == 3
    assert spec.parent == tmp_path / "dgt"
    assert spec.configs["photo"]["head"].data.target_domains == ["photo"]
    assert spec.configs["photo"]["head"].dg.method == "domain_head"


def test_shipped_dg_configs_load(data_dir):
    """configs/dg_pacs_lite0.yaml resolves to every held-out domain x variant; the GPU recipe loads (no training)."""
    root = _config().parent
    spec = dg.load_dg_spec(root / "dg_pacs_lite0.yaml")
    assert spec.domains == PACS_DOMAINS and spec.spec.n == 3 and spec.spec.baseline == "erm"
    cfgs = [c for by_v in spec.configs.values() for c in by_v.values()]
    assert len(cfgs) == 8 and {c.model.name for c in cfgs} == {"tf_efficientnet_lite0"}
    assert {c.dg.method for c in cfgs} == {"erm", "mixstyle"} and {c.data.val_fraction for c in cfgs} == {0.2}
    gpu = C.load_config(root / "pacs_resnet50_gpu.yaml")
    assert (gpu.task, gpu.model.name, gpu.data.image_size, gpu.optim.name, gpu.optim.lr) == (
        "dg", "resnet50", 224, "adam", 5e-5)
    assert gpu.data.domain_balanced and gpu.train.batch_size == 96 and gpu.model.pretrained
    assert gpu.model.weights and not gpu.model.download


# ---------------------------------------------------------------- analysis on synthetic seed folders

ACC = {  # domain -> variant -> {seed: test/acc}; head misses seed 2 on sketch (unfinished)
    "cartoon": {"erm": {0: 0.60, 1: 0.64, 2: 0.58}, "head": {0: 0.66, 1: 0.65, 2: 0.61}},
    "sketch": {"erm": {0: 0.40, 1: 0.45, 2: 0.43}, "head": {0: 0.47, 1: 0.44}},
}


def _fake_run(run_dir, domain, variant, seed, acc):
    run_dir.mkdir(parents=True)
    conf = np.full((7, 7), 1) + np.eye(7, dtype=int) * (seed + 3)
    per_class = [0.1 * (c + 1) * (1 + seed) / 3 for c in range(7)]
    summary = {"task": "dg", "primary_metric": "val/acc", "mode": "max", "classes": CLASSES, "best_epoch": 1,
               "test/acc": acc, "test/class_map": acc + 0.1, f"test/acc@{domain}": acc, "confusion": conf.tolist(),
               "per_domain": [{"domain": domain, "n": 70, "acc": acc, "per_class_acc": per_class}],
               "timings": {"train_s": 10.0 + seed, "eval_s": 1.5}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"seed": seed, "task": "dg"}))
    rows = "epoch,val/acc" + (",val/domain_map" if variant == "head" else "") + "\n"
    for e in (1, 2):
        rows += f"{e},0.5" + (f",{0.5 + 0.1 * e + 0.01 * seed}" if variant == "head" else "") + "\n"
    (run_dir / "metrics.csv").write_text(rows)


def test_analysis_against_hand_computation(tmp_path):
    parent = tmp_path / "dgt"
    for t, by_v in ACC.items():
        for v, vals in by_v.items():
            for k, acc in vals.items():
                _fake_run(parent / t / v / f"seed-{k}", t, v, k, acc)
    meta = {"name": "dgt", "dg_file": "dg.yaml", "config": "pacs_lite0.yaml", "overrides": [], "metric": None,
            "baseline": "erm", "n": 3, "domains": ["cartoon", "sketch"],
            "variant_overrides": {"erm": ["dg.method=erm"], "head": ["dg.method=domain_head"]}}
    html = dg.write_dg(parent, meta)
    data = json.loads((parent / "dg.json").read_text())
    for f in ("dg.html", "dg.md", "dg.png", "dg_confusion.png"):
        assert (parent / f).stat().st_size > 0
    assert html == parent / "dg.html" and data["rows"] == ["cartoon", "sketch", "average"]

    # per domain: describe() over seeds, paired difference over the matched seeds
    sk = data["table"]["sketch"]
    assert sk["head"]["stats"]["n"] == 2 and math.isclose(sk["erm"]["stats"]["mean"], np.mean([0.40, 0.45, 0.43]))
    c = sk["head"]["vs_baseline"]
    assert c["matched_seeds"] == [0, 1]
    assert math.isclose(c["diff"]["mean"], np.mean([0.47 - 0.40, 0.44 - 0.45]))

    # average row: per seed the mean over domains, only seeds finished in every domain
    avg = data["table"]["average"]
    base = {k: (ACC["cartoon"]["erm"][k] + ACC["sketch"]["erm"][k]) / 2 for k in range(3)}
    head = {k: (ACC["cartoon"]["head"][k] + ACC["sketch"]["head"][k]) / 2 for k in range(2)}
    assert {int(k): v for k, v in avg["erm"]["seeds"].items()} == pytest.approx(base)
    assert {int(k): v for k, v in avg["head"]["seeds"].items()} == pytest.approx(head)
    want = stats.paired([base[0], base[1]], [head[0], head[1]])
    got = avg["head"]["vs_baseline"]
    assert got["n_pairs"] == 2 and got["diff"]["mean"] == pytest.approx(want["diff"]["mean"])
    assert got["diff"]["ci"] == pytest.approx(want["diff"]["ci"])
    ref = sps.ttest_rel([head[0], head[1]], [base[0], base[1]])
    assert got["paired"]["p"] == pytest.approx(ref.pvalue) and got["paired"]["t"] == pytest.approx(ref.statistic)
    assert avg["erm"]["stats"]["ci"] == pytest.approx(stats.describe(list(base.values()))["ci"])

    # the second table: class mAP per domain and variant; domain mAP from metrics.csv's last row, head only
    assert data["extra"]["cartoon"]["erm"]["domain_map"] is None
    dm = data["extra"]["cartoon"]["head"]["domain_map"]["stats"]
    assert dm["mean"] == pytest.approx(np.mean([0.70, 0.71, 0.72]))
    assert data["extra"]["sketch"]["erm"]["class_map"]["stats"]["mean"] == pytest.approx(np.mean([0.5, 0.55, 0.53]))

    # per-class accuracy averaged over seeds; seed 0's confusion matrix; compute seconds
    assert data["per_class"]["sketch"]["head"][6] == pytest.approx(np.mean([0.7 * 1 / 3, 0.7 * 2 / 3]))
    assert data["confusion"]["cartoon"]["erm"]["seed"] == 0
    runs = sum(len(v) for by_v in ACC.values() for v in by_v.values())
    secs = sum(10.0 + k + 1.5 for by_v in ACC.values() for v in by_v.values() for k in v)
    assert data["compute"]["runs"] == runs and data["compute"]["total_s"] == pytest.approx(secs)
    assert data["compute"]["per_variant_s"]["head"] == pytest.approx(sum(11.5 + k for k in (0, 1, 2, 0, 1)))

    md = (parent / "dg.md").read_text()
    assert "source domains' validation images only" in md and "No oracle" in md and "| average | 3/2 |" in md
    assert f"{100 * want['diff']['mean']:+.2f} pp" in md
    dg.render_dg(parent)              # re-render from dg.json alone
    assert json.loads((parent / "dg.json").read_text())["table"] == data["table"]


# ---------------------------------------------------------------- real runs

@pytest.mark.slow
def test_dg_end_to_end_and_skip(tmp_path, data_dir, monkeypatch, capsys):
    """2 held-out domains x (erm, domain_head) x 2 seeds on PACS (40 images per split, 1 epoch, a small CNN)."""
    path = _spec(tmp_path, ["cartoon", "sketch"])
    args = ["dg", str(path), *FAST, f"out_dir={tmp_path / 'runs'}"]
    assert main(args) == 0
    out = capsys.readouterr().out
    parent = tmp_path / "runs" / "dgt"
    assert f"report: {parent / 'dg.html'}" in out and "average" in out
    for t in ("cartoon", "sketch"):
        for v in ("erm", "head"):
            for k in (0, 1):
                cfg = yaml.safe_load((parent / t / v / f"seed-{k}" / "config.yaml").read_text())
                assert cfg["data"]["target_domains"] == [t] and cfg["seed"] == k
        assert (parent / t / "compare.json").is_file()
    data = json.loads((parent / "dg.json").read_text())
    assert all(data["table"][r][v]["stats"]["n"] == 2 for r in data["rows"] for v in ("erm", "head"))
    assert data["extra"]["sketch"]["head"]["domain_map"] is not None
    assert data["extra"]["sketch"]["erm"]["domain_map"] is None
    assert data["compute"]["runs"] == 8 and data["compute"]["total_s"] > 0
    for k in (0, 1):   # the average row is the per-seed mean of the two held-out domains
        accs = [json.loads((parent / t / "erm" / f"seed-{k}" / "summary.json").read_text())["test/acc"]
                for t in ("cartoon", "sketch")]
        assert data["table"]["average"]["erm"]["seeds"][str(k)] == pytest.approx(np.mean(accs))
    assert (parent / "dg_confusion.png").is_file()

    monkeypatch.setattr(seeds, "train_run", _no_training)     # everything finished: a second call trains nothing
    assert main([*args, "render=true"]) == 0 and main(args) == 0
    assert "finished, skipped" in capsys.readouterr().err
