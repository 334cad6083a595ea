"""A full disk (ENOSPC) midway through a write keeps the previous file whole: checkpoint pairs, errors.npz, the
similarity index and exports; no temp files are left behind, and renames are made durable (folder fsync)."""
from __future__ import annotations

import errno
import io
import os
import stat
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from visionlab.engine import load_checkpoint, save_checkpoint
from visionlab.utils import atomic_write_bytes

REAL_SAVEZ = np.savez


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_on_fsync(monkeypatch, n: int) -> None:
    """The ``n``-th os.fsync raises ENOSPC (delayed allocation reports a full disk at fsync)."""
    real, calls = os.fsync, [0]

    def fsync(fd):
        calls[0] += 1
        if calls[0] == n:
            raise _enospc()
        return real(fd)

    monkeypatch.setattr(os, "fsync", fsync)


def _half_savez(file, *args, **arrays):
    """np.savez that writes half of its bytes, then finds the disk full."""
    buf = io.BytesIO()
    REAL_SAVEZ(buf, *args, **arrays)
    data = buf.getvalue()[: len(buf.getvalue()) // 2]
    if isinstance(file, (str, os.PathLike)):
        with open(file, "wb") as f:
            f.write(data)
    else:
        file.write(data)
    raise _enospc()


def _half_writer(*args, **_kwargs):
    """A third-party writer (torch.jit.save, torch.onnx.export) that dies midway through its file (the first
    str argument)."""
    with open(next(a for a in args if isinstance(a, (str, os.PathLike))), "wb") as f:
        f.write(b"PK\x03\x04 half a file")
    raise _enospc()


def _only(folder, *names):
    assert sorted(p.name for p in folder.iterdir()) == sorted(names)      # no temp files left behind


def test_atomic_write_fsyncs_the_folder(tmp_path, monkeypatch):
    real, kinds = os.fsync, []
    monkeypatch.setattr(os, "fsync", lambda fd: (kinds.append(stat.S_ISDIR(os.fstat(fd).st_mode)), real(fd))[1])
    atomic_write_bytes(tmp_path / "a.json", b"{}")
    assert kinds == [False, True]                  # the file's data, then the folder holding the rename


def _weights(value: float) -> dict:
    return {"w": torch.full((64, 64), value), "b": torch.full((64,), value)}


def _train_state(step: int) -> dict:
    p = torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.SGD([p], lr=0.1, momentum=0.9)
    p.sum().backward()
    opt.step()
    return {"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state()}, "fit": {"step": step}}


@pytest.mark.parametrize("failing_fsync", [1, 2])       # 1: while writing the weights, 2: while writing the sidecar
def test_full_disk_keeps_previous_last_checkpoint_pair(tmp_path, monkeypatch, failing_fsync):
    path = tmp_path / "checkpoints" / "last.safetensors"
    save_checkpoint(path, _weights(1.0), {"epoch": 1, "step": 10}, _train_state(10))
    _fail_on_fsync(monkeypatch, failing_fsync)
    with pytest.raises(OSError) as e:
        save_checkpoint(path, _weights(2.0), {"epoch": 2, "step": 20}, _train_state(20))
    assert e.value.errno == errno.ENOSPC
    monkeypatch.undo()
    ck = load_checkpoint(path, with_train_state=True)
    assert torch.equal(ck["weights"]["w"], torch.full((64, 64), 1.0))
    assert ck["sidecar"]["step"] == 10 and ck["train_state"]["fit"] == {"step": 10}
    assert load_checkpoint(path)["sidecar"] == {"epoch": 1, "step": 10}
    import json

    assert json.loads(path.with_suffix(".json").read_text()) == {"epoch": 1, "step": 10}   # the pair, not torn
    _only(path.parent, "last.safetensors", "last.json")


def test_full_disk_keeps_previous_errors_npz(tmp_path, monkeypatch):
    from visionlab.run import _write_errors

    def task(conf):
        return SimpleNamespace(examples=lambda: {"index": np.array([0, 1]), "conf": np.array([conf, conf])})

    split = SimpleNamespace(names=["a.png", "b.png"])
    _write_errors(task(0.5), split, tmp_path)
    monkeypatch.setattr(np, "savez", _half_savez)
    with pytest.raises(OSError, match="No space"):
        _write_errors(task(0.9), split, tmp_path)
    with np.load(tmp_path / "errors.npz", allow_pickle=False) as z:
        assert z["conf"].tolist() == [0.5, 0.5] and z["names"].tolist() == ["a.png", "b.png"]
    _only(tmp_path, "errors.npz")


def test_full_disk_keeps_previous_similarity_index(tmp_path, monkeypatch):
    from visionlab.search import EmbeddingIndex

    path = tmp_path / "similarity" / "index_train.npz"
    EmbeddingIndex(np.eye(3, dtype=np.float32)).save(path, labels=np.arange(3))
    monkeypatch.setattr(np, "savez", _half_savez)
    with pytest.raises(OSError, match="No space"):
        EmbeddingIndex(np.ones((5, 3), np.float32)).save(path, labels=np.arange(5))
    index, extra = EmbeddingIndex.load(path)
    assert len(index) == 3 and extra["labels"].tolist() == [0, 1, 2]
    _only(path.parent, "index_train.npz")


def _tiny_classifier():
    from visionlab.deploy.export import wrap_uint8

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                              torch.nn.Linear(4, 2))
    return wrap_uint8(net, lambda x: x.permute(0, 3, 1, 2).float() / 255)


def test_full_disk_keeps_previous_torchscript_export(tmp_path, monkeypatch):
    from visionlab.deploy.export import export_torchscript
    from visionlab.deploy.runtime import load_torchscript

    path = tmp_path / "export" / "model.torchscript.pt"
    export_torchscript(_tiny_classifier(), path, 3, (8, 8))
    before = path.read_bytes()
    monkeypatch.setattr(torch.jit, "save", _half_writer)
    with pytest.raises(OSError, match="No space"):
        export_torchscript(_tiny_classifier(), path, 3, (8, 8))
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert load_torchscript(path)(torch.zeros(1, 8, 8, 3, dtype=torch.uint8)).shape == (1, 2)
    _only(path.parent, "model.torchscript.pt")


def test_full_disk_keeps_previous_onnx_export(tmp_path, monkeypatch):
    pytest.importorskip("onnx", reason="ONNX export needs the deploy extra")
    from visionlab.deploy.export import export_onnx

    path = tmp_path / "export" / "model.onnx"
    export_onnx(_tiny_classifier(), path, 3, (8, 8))
    before = path.read_bytes()
    monkeypatch.setattr(torch.onnx, "export", _half_writer)
    with pytest.raises(OSError, match="No space"):
        export_onnx(_tiny_classifier(), path, 3, (8, 8))
    assert path.read_bytes() == before
    _only(path.parent, "model.onnx")
