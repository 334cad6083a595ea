"""Domain generalization (task=dg): leave-domains-out splits on real PACS, MixStyle's statistics against their
definition, gradient reversal, domain-balanced batches, per-domain metrics and class mAP against scikit-learn, and an
exact resume with MixStyle drawing from the checkpointed generator."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from visionlab import config as C
from visionlab.data.base import ImageSet
from visionlab.data.loaders import DomainBalancedLoader
from visionlab.models.mixstyle import DomainHeadModel, MixStyle, auto_layers, beta, grad_reverse, partners
from visionlab.utils import ConfigError
from conftest import full_and_resumed

PACS = ["task=dg", "data.name=pacs", "data.val_fraction=0.2", "model.pretrained=true", "train.threads=1",
        "train.progress=false", "train.tensorboard=false", "train.batch_size=16"]


@pytest.fixture
def data_env(monkeypatch, data_dir):
    monkeypatch.setenv("VISIONLAB_DATA", str(data_dir))


def test_leave_one_domain_out_splits(data_env):
    """The held-out domain is the whole test split and nothing else; each source domain is split 80/20 by class."""
    from visionlab.data import build_splits

    s = build_splits(C.load_config(None, PACS + ["data.target_domains=[photo]"]).data)
    photo = s.domains.index("photo")
    assert s.domains == ["art_painting", "cartoon", "photo", "sketch"] and len(s.test) == 1670
    assert set(s.test.domains) == {photo} and photo not in set(s.train.domains) | set(s.val.domains)
    assert len(s.train) + len(s.val) == 2048 + 2344 + 3929
    for d in set(s.train.domains):
        n_val, n_all = (s.val.domains == d).sum(), (s.train.domains == d).sum() + (s.val.domains == d).sum()
        assert n_val / n_all == pytest.approx(0.2, abs=0.01)
    assert not set(s.train.names) & set(s.val.names)
    with pytest.raises(ConfigError, match="data.target_domains=\\[sketch\\]"):
        build_splits(C.load_config(None, PACS).data)
    with pytest.raises(ConfigError, match="no domain 'photos'"):
        build_splits(C.load_config(None, PACS + ["data.target_domains=[photos]"]).data)
    with pytest.raises(ConfigError, match="overlap"):
        build_splits(C.load_config(None, PACS + ["data.target_domains=[photo]",
                                                 "data.source_domains=[photo,sketch]"]).data)


def test_beta_sampler_matches_the_beta_distribution():
    g = torch.Generator().manual_seed(0)
    for alpha in (0.1, 2.0):
        x = beta(alpha, 40_000, g)
        assert float(x.min()) >= 0 and float(x.max()) <= 1
        assert float(x.mean()) == pytest.approx(0.5, abs=0.01)
        assert float(x.var()) == pytest.approx(1 / (4 * (2 * alpha + 1)), rel=0.05)


def test_mixstyle_gives_each_image_the_mixed_statistics():
    """After mixing, image i's per-channel mean and std are lam_i * own + (1 - lam_i) * partner's, with lam and the
    partner drawn from the generator in that order; crossdomain partners come from another domain."""
    g = torch.Generator().manual_seed(0)       # not the global RNG: its state depends on which tests ran before
    # channel stds 0.5-3.5: near 0, MixStyle's eps inside the std (1e-6 on the variance) moves it by more than atol
    x = (torch.randn(8, 5, 6, 6, generator=g) * (torch.rand(8, 5, 1, 1, generator=g) * 3 + 0.5)
         + torch.randn(8, 5, 1, 1, generator=g))
    domains = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2])
    ms = MixStyle(p=1.0, alpha=0.3, mix="crossdomain", generator=torch.Generator().manual_seed(4))
    ms.domains = domains
    state = ms.generator.get_state()
    out = ms.mix_stats(x)
    g = torch.Generator()
    g.set_state(state)
    lam = beta(0.3, 8, g).float().view(8, 1)
    j = partners(domains, "crossdomain", g)
    assert (domains[j] != domains).all()
    mu, sig = x.mean((2, 3)), (x.var((2, 3)) + 1e-6).sqrt()
    assert torch.allclose(out.mean((2, 3)), lam * mu + (1 - lam) * mu[j], atol=1e-4)
    assert torch.allclose((out.var((2, 3)) + 1e-6).sqrt(), lam * sig + (1 - lam) * sig[j], atol=1e-3)
    assert partners(torch.zeros(4, dtype=torch.long), "crossdomain", g).shape == (4,)   # one domain: random


def test_mixstyle_hooks_act_only_while_training_and_active():
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.Conv2d(4, 4, 3))
    ms = MixStyle(p=1.0, alpha=0.1)
    ms.attach(net, ["0"])
    x = torch.randn(6, 3, 10, 10)
    ref = net(x)
    ms.domains, ms.active = torch.arange(6) % 2, True
    assert not torch.allclose(net(x), ref)              # training + active: mixed
    net.eval()
    assert torch.equal(net(x), ref)                     # evaluation: never
    net.train()
    ms.active = False
    assert torch.equal(net(x), ref)                     # outside the training step: never
    ms.active, ms.p = True, 0.0
    assert torch.equal(net(x), ref)                     # p = 0: never
    assert auto_layers(torch.nn.Module()) == []


def test_gradient_reversal_and_domain_head():
    x = torch.randn(3, 4, requires_grad=True)
    (grad_reverse(x, 0.5) * torch.arange(4.0)).sum().backward()
    assert torch.equal(x.grad, -0.5 * torch.arange(4.0).expand(3, 4))
    from visionlab.models import build_model

    net = build_model("mnist_cnn", 7, 3)
    model = DomainHeadModel(net, 128, 3).eval()          # the seed CNN's features: 128 values
    x = torch.randn(2, 3, 28, 28)
    cls, dom = model.both(x)
    assert torch.allclose(model(x), net(x)) and torch.allclose(cls, net(x)) and dom.shape == (2, 3)


def test_domain_balanced_batches_are_balanced_and_resume_exactly():
    domains = np.repeat([0, 1, 2], [30, 7, 13])
    split = ImageSet(labels=np.arange(50) % 4, images=np.arange(50, dtype=np.uint8).reshape(50, 1, 1, 1),
                     domains=domains)
    loader = DomainBalancedLoader(split, 12, seed=1)
    assert len(loader) == 50 // 12
    batches = [(x.flatten().tolist(), d.tolist()) for x, y, d in loader]
    for xs, ds in batches:
        assert np.bincount(ds).tolist() == [4, 4, 4] and [int(domains[i]) for i in xs] == ds
    loader.set_position(0, 2)
    assert [(x.flatten().tolist(), d.tolist()) for x, _, d in loader] == batches[2:]


COMMON = PACS + ["dg.method=mixstyle", "dg.mixstyle_mix=crossdomain", "data.target_domains=[cartoon]",
                  "data.limit=24", "train.epochs=2"]


def test_dg_run_per_domain_metrics_and_class_map_match_sklearn(tmp_path, data_env):
    """A short MixStyle run: test/acc@<held-out> equals test/acc, test/class_map equals scikit-learn's macro
    average precision of the saved model's test scores, and the validation curves are per source domain."""
    from sklearn.metrics import average_precision_score

    from visionlab.data import build_splits
    from visionlab.run import load_run, train

    full = train(None, COMMON + [f"out_dir={tmp_path}", "name=full"]).run_dir
    s = json.loads((full / "summary.json").read_text())
    assert s["test/acc@cartoon"] == pytest.approx(s["test/acc"]) and s["per_domain"][0]["domain"] == "cartoon"
    run = load_run(full, device="cpu")
    test = build_splits(run.cfg.data).test
    with torch.no_grad():
        probs = run.task.predict(torch.from_numpy(np.ascontiguousarray(test.images))).probs.numpy()
    onehot = np.eye(7)[test.labels]
    present = [c for c in range(7) if onehot[:, c].any()]
    ref = np.mean([average_precision_score(onehot[:, c], probs[:, c]) for c in present])
    assert s["test/class_map"] == pytest.approx(ref, abs=0.02)          # bf16 evaluation vs fp32 here
    header = (full / "metrics.csv").read_text().splitlines()[0]
    assert "val/acc@photo" in header and "val/acc@cartoon" not in header
    manifest = (full / "split_manifest.csv").read_text().splitlines()
    assert manifest[0] == "file,label,split,domain" and all(r.split(",")[3] == "cartoon" for r in manifest[1:]
                                                           if r.split(",")[2] == "test")


@pytest.mark.slow
def test_mixstyle_resume_is_exact(tmp_path, data_env):
    """Two epochs in one go equal one epoch, an interruption and a resume: MixStyle draws its mixing weights and
    partners from the checkpointed augmentation generator."""
    a, b = full_and_resumed(None, COMMON, tmp_path)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
