"""Data parallelism on PyTorch's engine (gloo on CPU): sharded batches, averaged gradients, a torchrun run that is
killed and resumed."""
from __future__ import annotations

import json
import os
import socket
import sys

import pytest
import torch
import torch.multiprocessing as mp

from conftest import DATA, kill_at_checkpoint, last_checkpoint_step, metrics_rows, run_cli
from visionlab.data.loaders import _Batches

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def test_rank_slices_partition_each_global_batch():
    one = _Batches(103, 10, True, seed=3)
    ranks = [_Batches(103, 10, True, seed=3, rank=r, world=2) for r in range(2)]
    for b in [one, *ranks]:
        b.set_position(epoch=4, start_batch=2)
    for full, r0, r1 in zip(one, *ranks):
        assert torch.equal(torch.cat([r0, r1]), full) and abs(len(r0) - len(r1)) <= 1
    assert len(one) == 11 and len(ranks[0]) == 11            # a 3-image tail splits into 2 + 1: kept
    assert len(_Batches(101, 10, True, 0, 0, 2)) == 10       # a 1-image tail cannot be split over 2 ranks: dropped


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank: int, port: int, out: str):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE="2", RANK=str(rank),
                      LOCAL_RANK=str(rank), VISIONLAB_DATA=str(DATA))
    torch.set_num_threads(1)
    from visionlab.engine import distributed
    from visionlab.models import build_model
    from visionlab.data import build_splits
    from visionlab.data.loaders import build_loader
    from visionlab.config import DataConfig

    dist, device = distributed.setup(torch.device("cpu"))
    splits = build_splits(DataConfig(name="mnist5k"))
    x8, y = next(iter(build_loader(splits.train, 64, True, 0, {}, rank=dist.rank, world=dist.world)))
    torch.manual_seed(0)
    model = build_model("mnist_cnn", 10, 1).eval()          # eval: no dropout noise, per-sample BatchNorm
    ddp = distributed.wrap(model, dist, device)
    x = (x8.permute(0, 3, 1, 2).float() / 255 - 0.13) / 0.31
    torch.nn.functional.cross_entropy(ddp(x), y).backward()
    if dist.main:
        torch.save({n: p.grad for n, p in model.named_parameters()}, out)
    distributed.cleanup(dist)


def test_ddp_gradients_equal_single_process_on_the_global_batch(tmp_path):
    out = str(tmp_path / "grads.pt")
    mp.spawn(_ddp_worker, args=(_free_port(), out), nprocs=2, join=True)
    ddp_grads = torch.load(out, weights_only=True)

    from visionlab.config import DataConfig
    from visionlab.data import build_splits
    from visionlab.data.loaders import build_loader
    from visionlab.models import build_model

    x8, y = next(iter(build_loader(build_splits(DataConfig(name="mnist5k")).train, 64, True, 0, {})))
    torch.manual_seed(0)
    model = build_model("mnist_cnn", 10, 1).eval()
    x = (x8.permute(0, 3, 1, 2).float() / 255 - 0.13) / 0.31
    torch.nn.functional.cross_entropy(model(x), y).backward()
    for n, p in model.named_parameters():
        assert torch.allclose(ddp_grads[n], p.grad, atol=1e-6, rtol=1e-4), n


@pytest.mark.slow
def test_torchrun_two_processes_train_killed_and_resumed(tmp_path):
    args = ["train.epochs=2", "train.checkpoint_every=10", "train.progress=false", "data.rotation=13"]
    ref = run_cli("train", *args, f"out_dir={tmp_path / 'a'}", "name=ref", python=TORCHRUN)
    assert ref.returncode == 0, ref.stderr
    assert ref.stdout.strip().splitlines()[-1] == str(tmp_path / "a" / "ref")
    a = json.loads((tmp_path / "a" / "ref" / "summary.json").read_text())
    assert a["test/acc"] > 0.9 and [p.name for p in (tmp_path / "a").iterdir()] == ["ref"]

    run_dir = kill_at_checkpoint(args, tmp_path / "b", "cut", 50, python=TORCHRUN)   # torchrun + both workers
    step = last_checkpoint_step(run_dir)
    assert 50 <= step < 80, f"not killed mid-epoch 2 (last checkpoint at step {step})"

    res = run_cli("train", f"resume={run_dir}", python=TORCHRUN)
    assert res.returncode == 0, res.stderr
    b = json.loads((run_dir / "summary.json").read_text())
    assert b["test/acc"] == a["test/acc"] and b["confusion"] == a["confusion"]
    assert metrics_rows(run_dir) == metrics_rows(tmp_path / "a" / "ref")
    wrong = run_cli("train", f"resume={run_dir}")              # one process cannot continue a 2-process run
    assert wrong.returncode == 1 and "--nproc_per_node=2" in wrong.stderr


@pytest.mark.slow
def test_torchrun_segmentation_killed_and_resumed(tmp_path):
    """DDP for the second task: two processes share each global batch of images and masks; a killed 2-process
    segmentation run resumes to the same metrics as an uninterrupted one."""
    from test_resume import SEG

    args = [a for a in SEG if not a.startswith("train.threads")]
    ref = run_cli("train", *args, f"out_dir={tmp_path / 'a'}", "name=ref", python=TORCHRUN)
    assert ref.returncode == 0, ref.stderr
    a = json.loads((tmp_path / "a" / "ref" / "summary.json").read_text())
    assert a["task"] == "segmentation" and 0 < a["test/miou"] <= 1

    run_dir = kill_at_checkpoint(args, tmp_path / "b", "cut", 15, python=TORCHRUN)   # torchrun + both workers
    step = last_checkpoint_step(run_dir)
    assert 15 <= step < 24, f"not killed mid-epoch 2 (last checkpoint at step {step})"

    res = run_cli("train", f"resume={run_dir}", python=TORCHRUN)
    assert res.returncode == 0, res.stderr
    b = json.loads((run_dir / "summary.json").read_text())
    assert b["test/miou"] == a["test/miou"] and b["confusion"] == a["confusion"]
    assert metrics_rows(run_dir) == metrics_rows(tmp_path / "a" / "ref")
