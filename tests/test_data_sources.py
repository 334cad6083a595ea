"""Sources: MNIST IDX, Fashion-MNIST, CIFAR pickles and folders, embedded mnist5k/digits, missing-data errors."""
import gzip
import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from visionlab.config import DataConfig
from visionlab.data import DATASETS, build_splits, idx
from visionlab.data.cifar import read_batch
from visionlab.utils import ConfigError, UserError

from conftest import DATA  # noqa: E402 - one definition of where the real data lies


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("VISIONLAB_DATA", raising=False)
    monkeypatch.chdir(tmp_path)                      # so ./data/<name> never finds anything by accident


def test_registry_names():
    assert {"mnist", "fashion_mnist", "cifar10", "cifar100", "folder", "trashnet", "mnist5k", "digits"} \
        <= set(DATASETS.names())
    with pytest.raises(ConfigError, match="did you mean 'mnist'"):
        build_splits(DataConfig(name="mnits"))


def test_mnist_known_answers():
    s = build_splits(DataConfig(name="mnist", root=str(DATA / "mnist"), val_fraction=0.1))
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    assert s.train.images.shape == (54000, 28, 28, 1) and s.train.images.dtype == np.uint8
    assert np.bincount(s.test.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert s.classes == [str(i) for i in range(10)] and s.channels == 1 and s.image_size == (28, 28)
    assert abs(s.mean[0] - 0.1307) < 0.002 and abs(s.std[0] - 0.3081) < 0.002
    full = np.bincount(np.concatenate([s.train.labels, s.val.labels]))
    assert full.sum() == 60000 and (np.abs(np.bincount(s.val.labels) - full * 0.1) < 1).all()
    assert s.preprocess == {"image_size": 28, "pad_square": False, "grayscale": True}   # what predict() needs
    s0 = build_splits(DataConfig(name="mnist", root=str(DATA / "mnist"), val_fraction=0, image_size=14))
    assert s0.val is None and s0.train.images.shape == (60000, 14, 14, 1)


def _write_idx(path: Path, arr: np.ndarray, gz: bool):
    head = bytes([0, 0, 8, arr.ndim]) + np.array(arr.shape, ">u4").tobytes()
    data = head + arr.astype(np.uint8).tobytes()
    (gzip.open if gz else open)(path, "wb").write(data)


def test_idx_plain_and_gz(tmp_path):
    root = tmp_path / "fm"
    root.mkdir()
    rng = np.random.default_rng(0)
    tr, te = rng.integers(0, 256, (30, 28, 28)), rng.integers(0, 256, (10, 28, 28))
    _write_idx(root / "train-images-idx3-ubyte", tr, gz=False)
    _write_idx(root / "train-labels-idx1-ubyte.gz", np.arange(30) % 10, gz=True)
    _write_idx(root / "t10k-images-idx3-ubyte.gz", te, gz=True)
    _write_idx(root / "t10k-labels-idx1-ubyte", np.arange(10), gz=False)
    s = build_splits(DataConfig(name="fashion_mnist", root=str(root), val_fraction=0.2))
    assert (len(s.train), len(s.val), len(s.test)) == (20, 10, 10)   # 30 * 0.2 = 6, but each class gets one val
    assert (s.test.images[..., 0] == te).all() and s.classes[9] == "Ankle boot"
    (root / "t10k-labels-idx1-ubyte").write_bytes(b"\0\0\x08\x01\0\0\0\x0a\1\2")   # header says 10, has 2
    with pytest.raises(UserError, match="truncated"):
        idx.read_idx(root / "t10k-labels-idx1-ubyte")


def test_missing_mnist_error_names_the_fix(tmp_path):
    with pytest.raises(UserError) as e:
        build_splits(DataConfig(name="mnist", root=str(tmp_path / "nowhere")))
    msg = str(e.value)
    for part in ("train-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", "nowhere", "data.root=",
                 "VISIONLAB_DATA", "data.download=true"):
        assert part in msg


def test_missing_fashion_and_cifar(tmp_path, monkeypatch):
    monkeypatch.setattr(idx, "FASHION_SYSTEM_DIR", tmp_path / "no-system-copy")
    monkeypatch.setenv("VISIONLAB_DATA", str(tmp_path / "vd"))
    with pytest.raises(UserError, match="dataset-fashion-mnist") as e:
        build_splits(DataConfig(name="fashion_mnist"))
    assert str(tmp_path / "vd" / "fashion-mnist") in str(e.value)
    with pytest.raises(UserError, match=r"(?s)cifar-10-batches-py/data_batch_1.*data.download=true"):
        build_splits(DataConfig(name="cifar10"))


def _write_cifar(root: Path):
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": list(np.arange(20) % 10),
                 b"batch_label": name.encode()}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    with open(d / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [n.encode() for n in names], b"num_vis": 3072}, f, protocol=2)
    return d


def test_cifar_pickles(tmp_path):
    d = _write_cifar(tmp_path / "c10")
    for root in (tmp_path / "c10", d):                # the parent folder or the batches folder itself
        s = build_splits(DataConfig(name="cifar10", root=str(root), val_fraction=0.1))
        assert (len(s.train), len(s.val), len(s.test)) == (90, 10, 20)
        assert s.train.images.shape[1:] == (32, 32, 3) and s.classes[0] == "airplane"
    raw = read_batch(d / "test_batch")[b"data"][3].reshape(3, 32, 32).transpose(1, 2, 0)
    assert (s.test.images[3] == raw).all()            # CHW rows -> HWC
    g = build_splits(DataConfig(name="cifar10", root=str(d), grayscale=True, image_size=16))
    assert g.test.images.shape[1:] == (16, 16, 1) and g.channels == 1


def test_cifar_pickle_refuses_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))
    with open(tmp_path / "evil", "wb") as f:
        pickle.dump({b"data": Evil()}, f)
    with pytest.raises(UserError, match="refusing"):
        read_batch(tmp_path / "evil")


def test_cifar10_image_folders(monkeypatch):
    monkeypatch.setenv("VISIONLAB_DATA", str(DATA))
    s = build_splits(DataConfig(name="cifar10", limit=100))
    assert (len(s.train), len(s.val), len(s.test)) == (100, 100, 100)
    assert s.classes[:3] == ["airplane", "automobile", "bird"] and s.image_size == (32, 32) and s.channels == 3
    assert np.bincount(s.test.labels).tolist() == [10] * 10 and not s.skipped
    assert all(m["file"].startswith("train/") for m in s.manifest if m["split"] == "val")
    assert "cifar10" in s.source and s.preprocess == {"image_size": 32, "pad_square": False, "grayscale": False}


def test_embedded_without_data_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("VISIONLAB_DATA", str(tmp_path / "empty"))
    m = build_splits(DataConfig(name="mnist5k"))
    assert (len(m.train), len(m.val), len(m.test)) == (4000, 500, 500)
    assert m.train.images.shape[1:] == (28, 28, 1) and np.bincount(m.test.labels).tolist() == [50] * 10
    again = build_splits(DataConfig(name="mnist5k"))
    assert (again.val.labels == m.val.labels).all() and again.val.names == m.val.names
    other = build_splits(DataConfig(name="mnist5k", split_seed=1))
    assert other.val.names != m.val.names
    d = build_splits(DataConfig(name="digits"))
    assert (len(d.train), len(d.val), len(d.test)) == (1437, 180, 180)
    assert d.train.images.shape[1:] == (8, 8, 1) and d.train.images.max() == 255


def test_fashion_mnist_from_os_package(monkeypatch, tmp_path):
    """Fashion-MNIST comes from the Debian package dataset-fashion-mnist (installed by `make test`)."""
    if not Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").is_file():
        pytest.fail("Fashion-MNIST is missing: `apt-get install dataset-fashion-mnist` (make test does it as root)")
    monkeypatch.setenv("VISIONLAB_DATA", str(tmp_path))           # nothing there: falls back to the OS package
    s = build_splits(DataConfig(name="fashion_mnist", val_fraction=0.0))
    assert len(s.train) == 60000 and len(s.test) == 10000 and s.val is None
    assert s.classes[0] == "T-shirt/top" and s.classes[9] == "Ankle boot"
    assert np.bincount(s.test.labels).tolist() == [1000] * 10
