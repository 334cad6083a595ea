"""The generative tasks' science: the DDPM schedules and samplers on a known answer, the VAE's KL warm-up and bound,
the GAN's two optimizers, seeded sampling and class choice, and exact resume of all three (two optimizers, EMA)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from visionlab import config as C
from visionlab.data.base import DataInfo
from visionlab.tasks import TASKS
from visionlab.tasks.generative.ddpm import alpha_bars
from visionlab.utils import ConfigError, UserError

TINY = ["data.name=mnist5k", "data.limit=256", "train.epochs=1", "train.batch_size=64", "train.threads=1",
        "train.progress=false", "train.tensorboard=false", "fid.samples=128", "fid.val_samples=64",
        "fid.kid_subset_size=50", "fid.kid_subsets=10", "ddpm.sample_steps=4", "ddpm.width=8", "dcgan.width=8",
        "vae.width=8"]


def _task(name: str, *over: str, classes=10, size=28, channels=1):
    cfg = C.load_config(None, [f"task={name}", *over])
    info = DataInfo([str(i) for i in range(classes)], channels, (size, size), (0.5,), (0.5,))
    return TASKS.get(name)(cfg, info, torch.Generator().manual_seed(0))


def test_noise_schedules():
    lin = alpha_bars("linear", 1000)
    betas = 1 - lin / torch.cat([torch.ones(1, dtype=lin.dtype), lin[:-1]])
    assert betas[0].item() == pytest.approx(1e-4) and betas[-1].item() == pytest.approx(0.02)
    assert lin[-1] < 1e-4                                   # x_T is pure noise
    cos = alpha_bars("cosine", 1000)
    assert bool((cos[1:] < cos[:-1]).all()) and cos[0] > 0.999 and cos[-1] < 1e-4
    assert cos[500] > lin[500]                              # cosine destroys information more slowly mid-way
    with pytest.raises(ConfigError, match="linear or cosine"):
        alpha_bars("quadratic", 10)


def test_min_snr_weights_the_clean_timesteps_down():
    """Min-SNR-gamma (Hang et al. 2023) for epsilon prediction: weight min(SNR, gamma) / SNR, with SNR = abar /
    (1 - abar); 1 where SNR <= gamma. Known answers on the linear schedule; gamma 0 is the plain MSE."""
    plain = _task("ddpm", "ddpm.width=8")
    task = _task("ddpm", "ddpm.width=8", "ddpm.min_snr_gamma=5", "data.hflip=false")   # same x0 in both steps
    t = torch.tensor([0, 50, 999])
    ab = alpha_bars("linear", 1000)[t]
    snr = ab / (1 - ab)                                      # t=0: 9999; t=999: ~4e-5
    w = task.loss_weights(t)
    assert w[0].item() == pytest.approx(5 / 9999, rel=1e-3) and w[2].item() == 1.0
    assert w[1].item() == pytest.approx(min(snr[1].item(), 5) / snr[1].item(), rel=1e-6)
    assert torch.equal(plain.loss_weights(t), torch.ones(3))
    images = torch.randint(0, 256, (8, 28, 28, 1), dtype=torch.uint8)
    torch.manual_seed(3)
    weighted = task.training_step((images, torch.zeros(8, dtype=torch.long)))["loss"]
    task.p.min_snr_gamma = 0.0
    torch.manual_seed(3)
    unweighted = task.training_step((images, torch.zeros(8, dtype=torch.long)))["loss"]
    assert weighted.item() < unweighted.item()               # every weight <= 1, the clean ones far below


@pytest.mark.parametrize("sampler,steps", [("ddim", 1), ("ddim", 7), ("ancestral", None)])
def test_samplers_recover_the_data_point_with_an_exact_noise_predictor(sampler, steps):
    """With data = one image x*, the exact noise predictor is eps(x_t, t) = (x_t - sqrt(ab_t) x*) / sqrt(1 - ab_t);
    DDIM (any number of steps) and the ancestral sampler then return x* from any starting noise."""
    task = _task("ddpm", f"ddpm.sampler={sampler}", "ddpm.timesteps=50", "ddpm.width=8")
    target = torch.rand(1, 1, 28, 28) * 1.6 - 0.8
    ab = task.alpha_bar

    class Oracle(torch.nn.Module):
        def forward(self, x, t, labels=None):
            a = ab[t].float()[:, None, None, None]
            return (x - a.sqrt() * target) / (1 - a).sqrt()

    task.model["unet"] = Oracle()
    task.model.register_parameter("p", torch.nn.Parameter(torch.zeros(1)))      # a device for the noise
    out = task.sample(3, torch.Generator().manual_seed(1), None, steps)
    assert torch.allclose(out, target.expand(3, -1, -1, -1), atol=1e-4)
    assert len(task.timesteps_for(7)) == 7 and task.timesteps_for(7)[0] == 49 and task.timesteps_for(7)[-1] == 0


def test_vae_kl_warmup_and_bound():
    task = _task("vae", "vae.beta=2", "vae.kl_warmup_epochs=4")
    weights = []
    for e in range(6):
        task.on_train_epoch_start(e)
        weights.append(task.kl_weight())
    assert weights == [0.0, 0.5, 1.0, 1.5, 2.0, 2.0]
    torch.manual_seed(0)
    images = torch.randint(0, 256, (8, 28, 28, 1), dtype=torch.uint8)
    out = task.training_step((images, torch.zeros(8, dtype=torch.long)))
    assert set(out) == {"loss", "recon", "kl", "kl_weight"} and out["kl"] >= 0
    # Bernoulli NLL summed over 784 pixels: about 784 x ln 2 = 543 nats at p = 0.5, more for an untrained decoder
    assert 500 < float(out["recon"]) < 1000
    loss = float(out["loss"].detach())
    assert loss == pytest.approx(float(out["recon"]) + 2.0 * float(out["kl"]), rel=1e-5)   # epoch 5: full beta


def test_gan_steps_both_optimizers_itself():
    task = _task("dcgan", "dcgan.width=8")
    groups = task.optimizer_groups(C.OptimConfig(lr=2e-4))
    assert set(groups) == {"generator", "discriminator"}
    task.optimizers = {k: torch.optim.Adam(g, lr=2e-4, betas=(0.5, 0.999)) for k, g in groups.items()}
    before = {k: v.clone() for k, v in task.model.state_dict().items()}
    images = torch.randint(0, 256, (16, 28, 28, 1), dtype=torch.uint8)
    out = task.training_step((images, torch.zeros(16, dtype=torch.long)))
    assert {"d_loss", "g_loss", "d_real", "d_fake"} <= set(out)
    changed = {k.split(".")[0] for k, v in task.model.state_dict().items()
               if v.is_floating_point() and not torch.equal(v, before[k])}
    assert changed == {"generator", "discriminator"}



@pytest.mark.parametrize("name", ["vae", "dcgan", "ddpm"])
@pytest.mark.parametrize("conditional", [False, True])
def test_train_flops_per_image_matches_a_counted_training_step(name, conditional):
    """The FLOPs a task says one training image costs (the benchmarks' fraction of peak divides by them) against
    torch's FlopCounterMode around a real step, backward included: a GAN's 3 G + 9 D forwards, a VAE's encoder and
    decoder, a DDPM's 3 U-Net forwards. The count is a little higher than the step's (autograd skips the gradient of
    the images themselves)."""
    from torch.utils.flop_counter import FlopCounterMode

    task = _task(name, f"{name}.width=8", f"{name}.conditional={str(conditional).lower()}")
    if task.manual_optimization:
        task.optimizers = {k: torch.optim.SGD(g, lr=0.0) for k, g in task.optimizer_groups(C.OptimConfig()).items()}
    images = torch.randint(0, 256, (16, 28, 28, 1), dtype=torch.uint8)
    counter = FlopCounterMode(display=False)
    with counter:
        out = task.training_step((images, torch.arange(16) % 10))
        if not task.manual_optimization:
            out["loss"].backward()
    ratio = counter.get_total_flops() / 16 / task.train_flops_per_image()
    assert 0.8 < ratio <= 1.0, ratio


def _gan_step_params(scaler, seed: int = 0) -> tuple[dict, dict]:
    """One seeded GAN step (both optimizers) with ``scaler`` as the run's fp16 loss scaler; the float parameters
    before and after."""
    torch.manual_seed(seed)
    task = _task("dcgan", "dcgan.width=8")
    task.optimizers = {k: torch.optim.Adam(g, lr=2e-4, betas=(0.5, 0.999))
                       for k, g in task.optimizer_groups(C.OptimConfig(lr=2e-4)).items()}
    task.scaler = scaler
    before = {k: v.clone() for k, v in task.model.named_parameters()}
    images = torch.randint(0, 256, (16, 28, 28, 1), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    task.training_step((images, torch.zeros(16, dtype=torch.long)))
    return before, {k: v.detach().clone() for k, v in task.model.named_parameters()}


def test_manual_optimization_goes_through_the_fp16_loss_scaler():
    """Under fp16 the run's GradScaler scales the losses a manually optimizing task steps (GAN, MPL): a power-of-two
    scale unscales exactly (the same step as without a scaler), and an overflowing scale skips both steps."""
    _, plain = _gan_step_params(None)
    _, scaled = _gan_step_params(torch.amp.GradScaler("cpu", init_scale=2.0 ** 12))
    assert all(torch.equal(plain[k], scaled[k]) for k in plain)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 127)        # x the loss overflows float32: inf grads
    before, after = _gan_step_params(scaler)
    assert all(torch.equal(before[k], after[k]) for k in before)      # both optimizers skipped their step
    assert len(scaler._per_optimizer_states) == 2                    # both went through the scaler
    scaler.update()
    assert scaler.get_scale() == 2.0 ** 126                            # backed off once for the batch

def test_seeded_class_conditional_sampling():
    task = _task("dcgan", "dcgan.conditional=true", "dcgan.width=8")
    task.model.eval()
    a, b, c = task.generate(6, 3, "7"), task.generate(6, 3, "7"), task.generate(6, 4, "7")
    assert a.shape == (6, 28, 28, 1) and a.dtype == torch.uint8
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(task.generate(6, 3, "1"), a)                 # the class changes the image
    with pytest.raises(UserError, match="not one of this run's classes"):
        task.generate(2, 0, "cat")
    with pytest.raises(UserError, match="not class-conditional"):
        _task("dcgan", "dcgan.width=8").generate(2, 0, "7")
    grid = task.epoch_images()["samples"]
    assert grid.shape[0] == 10 * 30 + 2                                  # one row per class


def test_bad_settings_name_the_fix():
    with pytest.raises(ConfigError, match="square images"):
        _task("vae", size=30)
    with pytest.raises(ConfigError, match="drop model.name"):
        _task("ddpm", "model.name=resnet18")
    assert C.load_config(None, ["task=ddpm"]).model.name == "ddpm_unet"
    assert C.load_config(None, []).model.name == "mnist_cnn"


@pytest.mark.parametrize("task", ["vae", "dcgan", "ddpm"])
def test_resume_is_exact(task, tmp_path, monkeypatch, data_dir):
    """Two epochs in one go equal one epoch then a resume to two: weights, both optimizers' effect, the EMA, the
    augmentation and noise RNGs (train.ema_decay on for all three)."""
    from visionlab.run import train

    monkeypatch.setenv("VISIONLAB_DATA", str(data_dir))
    common = [f"task={task}", *TINY, "train.ema_decay=0.9", "data.hflip=true", f"out_dir={tmp_path}"]
    full = train(None, common + ["train.epochs=2", "name=full"]).run_dir
    half = train(None, common + ["train.epochs=1", "name=half"]).run_dir
    train(None, common + ["train.epochs=2", "name=half", f"resume={half}"])
    a, b = (load_file(str(d / "checkpoints" / "last.safetensors")) for d in (full, half))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    sa, sb = (json.loads((d / "summary.json").read_text()) for d in (full, half))
    assert sa["test/fid"] == pytest.approx(sb["test/fid"], rel=1e-6)
    assert (full / "samples" / "samples-epoch002.png").is_file()


def test_few_labels_plus_generated_images(tmp_path, monkeypatch, data_dir):
    """data.labels_per_class keeps k seeded training images per class (val/test whole); data.synthetic adds
    data.synthetic_per_class samples per class of a conditional generative run, seeded by the classifier's seed."""
    from visionlab.data import build_splits
    from visionlab.run import train

    monkeypatch.setenv("VISIONLAB_DATA", str(data_dir))
    few = C.load_config(None, ["data.name=mnist5k", "data.labels_per_class=10"]).data
    splits, full = build_splits(few), build_splits(C.load_config(None, ["data.name=mnist5k"]).data)
    assert np.bincount(splits.train.labels).tolist() == [10] * 10
    assert len(splits.test) == len(full.test) and len(splits.val) == len(full.val)
    assert np.array_equal(build_splits(few).train.labels, splits.train.labels)      # the same few for every seed

    base = ["data.name=mnist5k", "data.labels_per_class=10", "train.epochs=1", "train.threads=1",
            "train.progress=false", "train.tensorboard=false", f"out_dir={tmp_path}"]
    cvae = train(None, base + ["task=vae", "vae.conditional=true", "vae.width=8", "fid.samples=100",
                               "fid.val_samples=50", "fid.kid_subset_size=50", "name=cvae"]).run_dir
    clf = train(None, base + [f"data.synthetic={cvae}", "data.synthetic_per_class=20", "name=clf"]).run_dir
    report = json.loads((clf / "data_report.json").read_text())
    assert sum(report["counts"]["train"].values()) == 100 + 200
    uncond = train(None, base + ["task=dcgan", "dcgan.width=8", "fid.samples=100", "fid.val_samples=50",
                                 "fid.kid_subset_size=50", "name=gan"]).run_dir
    with pytest.raises(UserError, match="class-conditional generative run"):
        train(None, base + [f"data.synthetic={uncond}", "data.synthetic_per_class=5", "name=bad"])
