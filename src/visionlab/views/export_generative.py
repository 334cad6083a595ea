"""ONNX export of a generative run's network (the generator / VAE decoder, or the diffusion denoiser; named inputs,
dynamic batch) and its parity against eager in pixels: the same seeded noise through both (GAN, VAE), or the whole
DDIM sampler with the ONNX Runtime denoiser in place of the U-Net (DDPM)."""
from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from visionlab.deploy.export import DEFAULT_OPSET, _quiet_stdout
from visionlab.deploy.runtime import ort_session
from visionlab.run import LoadedRun
from visionlab.tasks.generative.base import to_uint8
from visionlab.utils import UserError, atomic_path, write_json
from visionlab.views.export_run import _export_json, _record, as_run

PARITY_SAMPLES = 16             # images compared (a DDPM's at its own sample_steps, through the whole sampler)
PARITY_SEED = 0
METHOD = "torch.onnx.export (legacy TorchScript-based exporter), fp32, named inputs, dynamic batch"


def is_denoiser(run: LoadedRun) -> bool:
    """Whether the exported network is a diffusion denoiser (inputs x, t) rather than a sampler of latents."""
    return "t" in run.task.export_example(1)


def onnx_path(run: LoadedRun) -> Path:
    """RUN_DIR/export/denoiser.onnx (DDPM) or generator.onnx (GAN generator, VAE decoder)."""
    return run.run_dir / "export" / ("denoiser.onnx" if is_denoiser(run) else "generator.onnx")


def check_formats(formats: list[str], task: str) -> None:
    """A UserError unless ``formats`` is plain ONNX: what a generative run can be exported to."""
    if list(formats) != ["onnx"]:
        asked = ", ".join(f for f in formats if f != "onnx") or ", ".join(formats)
        raise UserError(f"a generative run (task={task}) is exported to ONNX only (its network with named inputs; "
                        f"the sampling loop stays in Python), not {asked}: use `visionlab export RUN_DIR format=onnx`")


def write_onnx(module: nn.Module, example: dict[str, torch.Tensor], output: str, path: Path,
               opset: int = DEFAULT_OPSET) -> Path:
    """``module(*example.values())`` to an ONNX file (input names = the example's keys, every axis 0 dynamic),
    written atomically and checked by onnx.checker; returns the path."""
    names = list(example)
    axes = {n: {0: "batch"} for n in [*names, output]}
    with warnings.catch_warnings(), torch.no_grad(), atomic_path(path) as tmp:   # a failure keeps the old file
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        try:
            with _quiet_stdout():
                torch.onnx.export(module.float().cpu().eval(), tuple(example.values()), str(tmp), dynamo=False,
                                  input_names=names, output_names=[output], opset_version=int(opset),
                                  dynamic_axes=axes, do_constant_folding=True)
        except torch.onnx.errors.UnsupportedOperatorError as e:
            raise UserError(f"this network cannot be written to ONNX opset {opset}: {str(e).splitlines()[0]}; "
                            "try another opset=N (17 or newer)") from None
        import onnx

        onnx.checker.check_model(str(tmp))
        check_batch_axis(tmp, example)
    return path


def check_batch_axis(path: Path, example: dict[str, torch.Tensor], batch: int = 3) -> None:
    """Run the file at another batch size than the example's: a graph that traced a Python int for the batch
    (``len(x)`` in a reshape) fails here, with a UserError naming the cause, instead of in a user's session."""
    import onnxruntime as ort

    feeds = {k: v[torch.arange(batch) % len(v)].numpy() for k, v in example.items()}
    quiet = ort.RunOptions()
    quiet.log_severity_level = 4
    try:
        ort_session(path).run(None, feeds, quiet)
    except Exception as e:          # onnxruntime raises its own Fail / RuntimeException types
        raise UserError(f"the ONNX graph only runs at batch size {len(next(iter(example.values())))}: the network "
                        "fixes the batch size while traced (e.g. .view(len(z), ...); use .view(-1, ...) or "
                        f"z.shape[0]); ONNX Runtime at batch {batch}: {str(e).splitlines()[0][:300]}") from None


class OrtDenoiser(nn.Module):
    """An ONNX Runtime session in the U-Net's place: forward(x, t, labels) -> predicted noise as a torch tensor."""

    def __init__(self, session):
        super().__init__()
        self.session = session
        self.names = [i.name for i in session.get_inputs()]
        self.anchor = nn.Parameter(torch.zeros(0), requires_grad=False)   # the sampler asks the model its device

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        feeds = {n: v.detach().cpu().numpy() for n, v in zip(self.names, (x, t, labels))}
        return torch.from_numpy(self.session.run(None, feeds)[0])


def pixel_parity(eager: torch.Tensor, other: torch.Tensor) -> dict:
    """Two batches of images in [-1, 1] NCHW: max |difference| ([-1, 1] units) and the share of uint8 pixels that
    are equal ("agree") or within 1 ("agree_1")."""
    a, b = to_uint8(eager).int(), to_uint8(other).int()
    return {"metric": "pixels", "max_abs_diff": float((eager.float() - other.float()).abs().max()),
            "agree": float((a == b).float().mean()), "agree_1": float(((a - b).abs() <= 1).float().mean())}


def seeded_inputs(run: LoadedRun, n: int, seed: int) -> dict[str, torch.Tensor]:
    """The export's named inputs for ``n`` images: float inputs (the noise) drawn from ``seed``, the rest (labels,
    balanced over the classes) as the task's example gives them."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(v.shape, generator=g) if v.is_floating_point() else v
            for k, v in run.task.export_example(n).items()}


@torch.no_grad()
def noise_parity(run: LoadedRun, session, n: int = PARITY_SAMPLES, seed: int = PARITY_SEED) -> dict:
    """The same seeded latents (and labels) through the eager network and the ONNX Runtime session."""
    inputs = seeded_inputs(run, n, seed)
    eager = run.task.export_module()(*inputs.values()).float()
    ort = torch.from_numpy(session.run(None, {k: v.numpy() for k, v in inputs.items()})[0])
    return {**pixel_parity(eager, ort), "samples": n, "seed": seed,
            "check": "the same seeded noise through eager and ONNX Runtime"}


@torch.no_grad()
def sampler_parity(run: LoadedRun, session, n: int = PARITY_SAMPLES, seed: int = PARITY_SEED) -> dict:
    """The whole DDIM sampler at the run's sample_steps, eager U-Net against the ONNX Runtime denoiser, from the
    same seed (an ancestral run is compared on DDIM too: the denoiser is what was exported)."""
    task = run.task
    steps = task.p.sample_steps
    labels = task.export_example(n).get("labels")
    out = []
    for unet in (task.unet, OrtDenoiser(session)):
        sampler = copy.copy(task)                     # the run's task untouched: its own model and settings stay
        sampler.model = nn.ModuleDict({"unet": unet})
        sampler.p = dataclasses.replace(task.p, sampler="ddim")
        out.append(sampler.sample(n, torch.Generator().manual_seed(seed), labels, steps))
    return {**pixel_parity(*out), "samples": n, "seed": seed, "steps": len(task.timesteps_for(steps)),
            "check": f"DDIM sampler ({steps} steps) with the ONNX Runtime denoiser against eager, same seed"}


def export_generative(run_dir, opset: int = DEFAULT_OPSET, samples: int = PARITY_SAMPLES) -> dict:
    """Write the run's ``export_module()`` to RUN_DIR/export/{generator,denoiser}.onnx, check its parity against
    eager on ``samples`` images and record file, bytes, sha256 and parity under "onnx" in RUN_DIR/export.json;
    returns that record."""
    run = as_run(run_dir)
    if not run.task.generates:
        raise UserError(f"{run.run_dir} is a {run.cfg.task} run: export_generative exports vae, dcgan and ddpm "
                        "runs; use visionlab.views.export_run.export_run for the others")
    path, denoiser = onnx_path(run), is_denoiser(run)
    t0 = time.perf_counter()
    write_onnx(run.task.export_module(), run.task.export_example(2), "noise" if denoiser else "images", path, opset)
    export_s = time.perf_counter() - t0
    _record(run.run_dir, "onnx", path)                # file, bytes, sha256; an older file's parity goes
    session = ort_session(path)
    check = sampler_parity if denoiser else noise_parity
    result = {**_export_json(run.run_dir)["onnx"], "export_s": round(export_s, 2), "opset": int(opset),
              "method": METHOD, "module": "denoiser" if denoiser else "generator",
              "inputs": [i.name for i in session.get_inputs()], **check(run, session, samples)}
    merged = _export_json(run.run_dir)
    merged["onnx"] = result
    write_json(run.run_dir / "export.json", merged)
    return result


def format_generative(r: dict) -> str:
    """One line per figure of an export_generative result."""
    return "\n".join([f"onnx {r['module']} ({', '.join(r['inputs'])}): {r['bytes'] / 1e6:.2f} MB, opset {r['opset']}",
                      f"parity: {r['check']}, {r['samples']} images",
                      f"  max |diff| {r['max_abs_diff']:.2e} ([-1, 1] units); uint8 pixels equal "
                      f"{100 * r['agree']:.3f}%, within 1: {100 * r['agree_1']:.3f}%"])
