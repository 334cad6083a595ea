"""Engine pieces: schedules against torch's own, optimizers, weight averaging, atomic single-file checkpoints."""
from __future__ import annotations

import pytest
import torch

from visionlab.config import OptimConfig, TrainConfig
from visionlab.engine import build_optimizer, build_scheduler, load_checkpoint, save_checkpoint
from visionlab.engine.averaging import Lookahead, build_averaging
from visionlab.engine.loop import TIMING_KEYS
from visionlab.engine.optim import lr_multiplier
from visionlab.utils import ConfigError, UserError, atomic_write_bytes


def _lrs(cfg, epochs, spe):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = build_optimizer([p], cfg)
    sch = build_scheduler(opt, cfg, epochs, spe)
    out = []
    for _ in range(epochs * spe):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sch.step()
    return out


def test_step_schedule_equals_torch_steplr_per_epoch():
    cfg = OptimConfig(name="adam", lr=0.00108, scheduler="step", step_size=4, gamma=0.5)
    ours = _lrs(cfg, 10, 3)[::3]                      # lr at the start of each epoch
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.Adam([p], lr=0.00108)
    ref_sch = torch.optim.lr_scheduler.StepLR(opt, 4, 0.5)
    ref = []
    for _ in range(10):
        ref.append(opt.param_groups[0]["lr"])
        opt.step()
        ref_sch.step()
    assert ours == pytest.approx(ref)
    assert ours[:5] == pytest.approx([0.00108] * 4 + [0.00054])


def test_multistep_cosine_warmup_onecycle_known_values():
    ms = _lrs(OptimConfig(name="sgd", lr=0.1, scheduler="multistep", milestones=[2, 4], gamma=0.1), 6, 1)
    assert ms == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    f = lr_multiplier(OptimConfig(lr=1.0, scheduler="cosine", min_lr=0.0), 10, 10)
    assert f(0) == pytest.approx(1.0) and f(50) == pytest.approx(0.5) and f(100) == pytest.approx(0.0, abs=1e-12)
    w = lr_multiplier(OptimConfig(lr=1.0, scheduler="none", warmup_epochs=1), 10, 4)
    assert [w(i) for i in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    oc = lr_multiplier(OptimConfig(lr=1.0, scheduler="onecycle"), 10, 10)
    assert oc(0) == pytest.approx(1 / 25) and oc(30) == pytest.approx(1.0) and oc(100) == pytest.approx(1e-4)


@pytest.mark.parametrize("name,cls", [("sgd", torch.optim.SGD), ("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("nadam", torch.optim.NAdam), ("rmsprop", torch.optim.RMSprop)])
def test_optimizers(name, cls):
    opt = build_optimizer([torch.nn.Parameter(torch.zeros(2))], OptimConfig(name=name, weight_decay=1e-4, nesterov=True))
    assert isinstance(opt, cls) and opt.param_groups[0]["weight_decay"] == 1e-4


def test_bad_optimizer_and_schedule_names():
    with pytest.raises(ConfigError, match="sgd, adam"):
        build_optimizer([torch.nn.Parameter(torch.zeros(1))], OptimConfig(name="adagrad"))
    with pytest.raises(ConfigError, match="cosine"):
        lr_multiplier(OptimConfig(scheduler="cosin"), 1, 1)


def test_checkpoint_roundtrip_with_optimizer_and_rng(tmp_path):
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.BatchNorm1d(3))
    opt = torch.optim.Adam(model.parameters(), 1e-3)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    gen = torch.Generator().manual_seed(5)
    state = {"optimizer": opt.state_dict(), "rng": {"torch": torch.get_rng_state(), "gen": gen.get_state()},
             "fit": {"epoch": 2, "batch": 7}, "scheduler": {"last_epoch": 9}}
    path = tmp_path / "ck" / "last.safetensors"
    save_checkpoint(path, model.state_dict(), {"classes": ["a", "b", "c"]}, state)
    ck = load_checkpoint(path, with_train_state=True)
    assert ck["sidecar"]["classes"] == ["a", "b", "c"] and (path.with_suffix(".json")).is_file()
    for k, v in model.state_dict().items():
        assert torch.equal(ck["weights"][k], v)
    opt2 = torch.optim.Adam(model.parameters(), 1e-3)
    opt2.load_state_dict(ck["train_state"]["optimizer"])
    for a, b in zip(opt.state_dict()["state"].values(), opt2.state_dict()["state"].values()):
        assert all(torch.equal(a[k], b[k]) for k in a)
    g2 = torch.Generator()
    g2.set_state(ck["train_state"]["rng"]["gen"])
    assert torch.equal(torch.rand(3, generator=g2), torch.rand(3, generator=gen))
    assert ck["train_state"]["fit"] == {"epoch": 2, "batch": 7}


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    path = tmp_path / "last.safetensors"
    atomic_write_bytes(path, b"old")

    with pytest.raises(TypeError):
        atomic_write_bytes(path, object())          # fails while writing
    assert path.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["last.safetensors"]      # no temp file left behind


def test_torn_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "best.safetensors"
    path.write_bytes(b"\x00" * 10)
    with pytest.raises(UserError, match="unreadable checkpoint"):
        load_checkpoint(path)


def test_full_disk_at_epoch_two_leaves_epoch_one_last_pair_that_resumes(tmp_path, monkeypatch):
    """ENOSPC while the epoch-2 `last` sidecar is written: the epoch-1 pair stays whole, and the run resumes."""
    import errno
    import json
    import os

    from visionlab import run as run_mod
    from visionlab.engine import loop

    real_save, real_fsync = loop.save_checkpoint, os.fsync

    def full_disk_at_epoch_two(path, weights, sidecar, train_state=None):
        if path.name == "last.safetensors" and sidecar["epoch"] == 2:
            calls = []

            def fsync(fd):                               # the 1st fsync (weights) passes, the 2nd (sidecar) fails
                calls.append(fd)
                if len(calls) == 2:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
                return real_fsync(fd)

            monkeypatch.setattr(os, "fsync", fsync)
        return real_save(path, weights, sidecar, train_state)

    monkeypatch.setattr(loop, "save_checkpoint", full_disk_at_epoch_two)
    args = ["data.limit=200", "train.epochs=2", "train.threads=1", "train.progress=false", f"out_dir={tmp_path}",
            "name=full"]
    with pytest.raises((OSError, UserError), match="No space"):
        run_mod.train(None, args)
    monkeypatch.undo()
    ck_dir = tmp_path / "full" / "checkpoints"
    side = json.loads((ck_dir / "last.json").read_text())
    ck = load_checkpoint(ck_dir / "last.safetensors", with_train_state=True)
    assert side == ck["sidecar"] and side["epoch"] == 1                 # the pair is the previous, whole `last`
    assert sorted(p.name for p in ck_dir.iterdir()) == ["best.json", "best.safetensors", "last.json",
                                                         "last.safetensors"]
    result = run_mod.train(None, [f"resume={tmp_path / 'full'}", "train.threads=1", "train.progress=false"])
    assert json.loads((ck_dir / "last.json").read_text())["epoch"] == 2 and result.run_dir == tmp_path / "full"


class _TwoPlayer:
    """A GAN-shaped task through the contract: two networks in one ModuleDict, two optimizers it steps itself."""

    from visionlab.tasks.base import Task as _Base

    class Task(_Base):
        manual_optimization = True
        primary_metric = ("val/gap", "min")

        def __init__(self):
            torch.manual_seed(0)
            nets = torch.nn.ModuleDict({"g": torch.nn.Linear(4, 4), "d": torch.nn.Linear(4, 1)})
            super().__init__(nets, None, (1, 4))
            self.seen = []

        def optimizer_groups(self, optim_cfg):
            return {"g": [{"params": list(self.model["g"].parameters())}],
                    "d": [{"params": list(self.model["d"].parameters())}]}

        def training_step(self, batch):
            x = batch[0].float()
            g, d = self.model["g"], self.model["d"]
            fake = g(x)
            loss_d = d(fake.detach()).mean() - d(x).mean()
            self.step_optimizer("d", loss_d)
            loss_g = -d(g(x)).mean()
            self.step_optimizer("g", loss_g)
            return {"loss": loss_g + loss_d, "loss_g": loss_g, "loss_d": loss_d}

        def validation_step(self, batch):
            self.seen.append(float((self.model["g"](batch[0].float()) - batch[0].float()).abs().mean()))

        def reset_metrics(self, collect_examples=False):
            self.seen = []

        def compute_metrics(self):
            return {"gap": sum(self.seen) / len(self.seen)}


class _Loader:
    def __init__(self, n=6):
        g = torch.Generator().manual_seed(1)
        self.batches = [(torch.randn(8, 4, generator=g), torch.zeros(8)) for _ in range(n)]
        self.epoch = self.start = 0

    def set_position(self, epoch, start_batch=0):
        self.epoch, self.start = epoch, start_batch

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        start, self.start = self.start, 0
        return iter(self.batches[start:])


def _two_player_context(task, run_dir, on_epoch_end=(), scaled=False):
    from visionlab.config import TrainConfig
    from visionlab.engine import FitContext

    cfg = OptimConfig(name="adam", lr=1e-2, scheduler="cosine")
    opts = {k: build_optimizer(g, cfg) for k, g in task.optimizer_groups(cfg).items()}
    task.optimizers = opts                    # what run.train hands a task that optimizes manually
    # fp16's loss scaler, as run.train makes it (CUDA there): it grows every 2 clean batches
    task.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8, growth_interval=2) if scaled else None
    return FitContext(opts, {k: build_scheduler(o, cfg, 2, 6) for k, o in opts.items()},
                      TrainConfig(epochs=2, progress=False, tensorboard=False), run_dir, torch.device("cpu"),
                      "fp32", {}, {}, on_epoch_end=list(on_epoch_end), scaler=task.scaler)


@pytest.mark.parametrize("scaled", [False, True], ids=["fp32", "loss_scaler"])
def test_manual_optimization_two_optimizers_log_checkpoint_and_resume(tmp_path, scaled):
    """The engine honours manual optimization: the task steps both optimizers (the engine does not step again),
    every scalar it returns is logged, both optimizers and schedules are checkpointed and a resume is exact; under
    fp16's loss scaler the engine updates the scale once a batch and a resume continues from the saved scale."""
    import csv

    from visionlab.engine import fit, restore

    (tmp_path / "a").mkdir()
    task = _TwoPlayer.Task()
    ctx = _two_player_context(task, tmp_path / "a", scaled=scaled)
    state = fit(task, _Loader(), _Loader(2), ctx)
    assert state.step == 12 and all(o.state_dict()["state"][0]["step"] == 12 for o in ctx.optimizers.values())
    with (tmp_path / "a" / "metrics.csv").open() as f:
        header = next(csv.reader(f))
    assert {"train/loss_g", "train/loss_d", "val/gap"} <= set(header)

    def stop(state, row):
        raise KeyboardInterrupt

    (tmp_path / "b").mkdir()
    cut = _TwoPlayer.Task()
    with pytest.raises(KeyboardInterrupt):                     # killed after epoch 1's checkpoint
        fit(cut, _Loader(), _Loader(2), _two_player_context(cut, tmp_path / "b", [stop], scaled=scaled))
    ck = load_checkpoint(tmp_path / "b" / "checkpoints" / "last.safetensors", with_train_state=True)
    assert set(ck["train_state"]["optimizers"]) == set(ck["train_state"]["schedulers"]) == {"g", "d"}
    again = _TwoPlayer.Task()
    again.model.load_state_dict(ck["weights"])
    ctx2 = _two_player_context(again, tmp_path / "b", scaled=scaled)
    resumed = fit(again, _Loader(), _Loader(2), ctx2, restore(again, ctx2, ck["train_state"]))
    strip = [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in state.history]
    assert [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in resumed.history] == strip
    for k, v in task.model.state_dict().items():
        assert torch.equal(v, again.model.state_dict()[k]), k
    if scaled:                                                  # 12 clean batches: grown 6 times, resumed included
        assert ctx.scaler.get_scale() == ctx2.scaler.get_scale() == 2.0 ** 14


def test_evaluate_computes_metrics_with_the_evaluated_model_and_precision():
    """compute_metrics runs with the model being evaluated (the EMA) and under the evaluation's autocast: a generative
    task samples there, and the raw training weights must not stand in for the EMA (a bug seen on a DDPM)."""
    import torch

    from visionlab.engine import evaluate
    from visionlab.tasks.base import Task

    class Probe(Task):
        def validation_step(self, batch):
            self.seen.append(self.model)

        def reset_metrics(self, collect_examples=False):
            self.seen = []

        def compute_metrics(self):
            return {"model": self.model, "steps": list(self.seen), "bf16": torch.is_autocast_enabled("cpu")}

    raw, ema = torch.nn.Linear(1, 1), torch.nn.Linear(1, 1)
    task = Probe(raw, None, (1, 1))
    out = evaluate(task, [(torch.zeros(1, 1),)], torch.device("cpu"), "bf16", model=ema)
    assert out["model"] is ema and out["steps"] == [ema] and out["bf16"]
    assert task.model is raw                                   # restored afterwards


def test_a_key_logged_by_some_steps_is_averaged_over_those_steps():
    """A phase may log keys the others do not (MPL's finetune steps have no mask rate): each train/<key> is the
    image-weighted mean over the steps that returned it."""
    from visionlab.engine.loop import _add_scalars, _means

    run = {"n": 0, "seconds": 0.0}
    for n, out in ((10, {"loss": 1.0, "mask": 0.5}), (30, {"loss": 3.0, "mask": 0.9}), (20, {"loss": 2.0})):
        run["n"] += n
        _add_scalars(run, {k: torch.tensor(v) for k, v in out.items()}, n)
    means = _means(run)
    assert means["train/loss"] == pytest.approx((10 + 90 + 40) / 60)
    assert means["train/mask"] == pytest.approx((5 + 27) / 40)
    assert _means({"n": 4, "seconds": 1.0, "loss": 8.0}) == {"train/loss": 2.0}     # a run saved before counts


def _net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4))


def _fake_step(net: torch.nn.Module, k: int) -> None:
    """Stand-in for an optimizer step: new weights and BatchNorm statistics (the step counter too)."""
    g = torch.Generator().manual_seed(100 + k)
    with torch.no_grad():
        for t in net.state_dict().values():
            t.add_(torch.randn(t.shape, generator=g).to(t.dtype) if t.is_floating_point() else 1)


@pytest.mark.parametrize("total", [23, 25])      # the last step between two updates, and on one
def test_lookahead_is_airbench94s(total):
    net, ref = _net(), _net()
    la = Lookahead(net, total)
    # airbench94's loop, written out: every 5 steps lerp toward the weights with 1 - rho and copy back; at the
    # end copy the slow weights into the net (its update with decay 1)
    slow = {k: v.clone() for k, v in ref.state_dict().items()}
    for step in range(1, total + 1):
        _fake_step(net, step)
        _fake_step(ref, step)
        la.update_parameters(net)
        rhos = ([0.95 ** 5 * (step / total) ** 3] if step % 5 == 0 else []) + ([1.0] if step == total else [])
        for rho in rhos:
            for (k, e), p in zip(slow.items(), ref.state_dict().values()):
                if p.is_floating_point():
                    e.lerp_(p, 1 - rho)
                    p.copy_(e)
        for a, b in zip(net.state_dict().values(), ref.state_dict().values()):
            assert torch.allclose(a, b, atol=1e-6), step
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), la.module.state_dict().values())
               if a.is_floating_point())           # the final weights are the slow ones (counters excepted)
    assert la.rho(total) == pytest.approx(0.95 ** 5) and la.rho(total // 2) < 0.15 * la.rho(total)


def test_lookahead_resumes_exactly_from_its_state_dict():
    a, b = _net(), _net()
    la = Lookahead(a, 20)
    for step in range(1, 21):
        _fake_step(a, step)
        la.update_parameters(a)
    lb = Lookahead(b, 20)
    for step in range(1, 8):
        _fake_step(b, step)
        lb.update_parameters(b)
    state, weights = lb.state_dict(), {k: v.clone() for k, v in b.state_dict().items()}
    b2 = _net()
    b2.load_state_dict(weights)                     # what a resumed run rebuilds: the model, then the average
    lb2 = Lookahead(b2, 20)
    lb2.load_state_dict(state)
    for step in range(8, 21):
        _fake_step(b2, step)
        lb2.update_parameters(b2)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b2.state_dict().values()))
    assert int(lb2.n_steps) == 20


def test_build_averaging():
    net = _net()
    assert build_averaging(net, TrainConfig(), 10) is None
    assert isinstance(build_averaging(net, TrainConfig(lookahead=True), 10), Lookahead)
    assert build_averaging(net, TrainConfig(ema_decay=0.9), 10).module is not net
    with pytest.raises(ConfigError, match="choose one way of averaging"):
        build_averaging(net, TrainConfig(lookahead=True, ema_decay=0.9), 10)
