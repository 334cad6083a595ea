"""Export a model with its eval preprocessing folded in (uint8 NHWC in, raw output out: class logits, per-pixel logits)
to ONNX or TorchScript, and int8-quantize the ONNX file with ONNX Runtime static quantization."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from torch import nn

from ..utils import UserError, atomic_path

DEFAULT_OPSET = 17              # the legacy exporter's best-tested opset; ORT 1.18+ runs it everywhere
INPUT, OUTPUT = "images", "logits"


class UInt8Model(nn.Module):
    """uint8 [B, H, W, C] -> float output (logits [B, K], or [B, K, H, W] per pixel): the run's own eval transform,
    then the model (its ``output`` entry when the model returns a dict). Exported as one graph, so a deployed file
    needs no Python preprocessing and video/app code can feed raw resized frames.

    ``preprocess`` must be deterministic tensor code (the task's eval transform: scale, resize, normalize); tracing
    records its ops, so the export follows that code exactly."""

    def __init__(self, model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], output: str = ""):
        super().__init__()
        self.model = model
        self.preprocess = preprocess
        self.output = output

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.model(self.preprocess(images))
        return (out[self.output] if self.output else out).float()


def wrap_uint8(model: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], output: str = "") -> UInt8Model:
    """The export wrapper around ``model`` (moved to CPU fp32 and set to eval in place; no copy)."""
    return UInt8Model(model.float().cpu().eval(), preprocess, output).eval()


def _example(channels: int, image_size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, image_size[0], image_size[1], channels), dtype=torch.uint8, generator=g)


@contextlib.contextmanager
def _quiet_stdout():
    """Silence file descriptor 1: on a failed export, torch 2.14's C++ logger prints the whole IR graph there
    (its setup_onnx_logging tests a function object for truth, so logging is always on)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        os.dup2(saved, 1)
        os.close(saved)


def export_onnx(module: nn.Module, path: str | os.PathLike, channels: int, image_size: tuple[int, int],
                opset: int = DEFAULT_OPSET) -> Path:
    """Write ``module`` (uint8 NHWC -> logits) to an ONNX file with a dynamic batch axis; returns the path.

    Uses the legacy TorchScript-based exporter (dynamo=False): the dynamo exporter needs the optional onnxscript
    package, and the legacy one exports these CNNs exactly; its deprecation notice is silenced here."""
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad(), atomic_path(path) as tmp:   # a failure keeps the old file
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        try:
            with _quiet_stdout():
                torch.onnx.export(module.eval(), (_example(channels, image_size),), str(tmp), dynamo=False,
                                  input_names=[INPUT], output_names=[OUTPUT], opset_version=int(opset),
                                  dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}},
                                  do_constant_folding=True)
        except torch.onnx.errors.UnsupportedOperatorError as e:   # e.g. antialiased downscaling in the transform
            raise UserError(f"this model cannot be written to ONNX opset {opset}: {str(e).splitlines()[0]}; "
                            "use format=torchscript (or another opset=N)") from None
        import onnx

        onnx.checker.check_model(str(tmp))
    return path


def export_torchscript(module: nn.Module, path: str | os.PathLike, channels: int,
                       image_size: tuple[int, int]) -> Path:
    """Trace ``module`` to a TorchScript file (the batch size stays dynamic: no shape-dependent Python in the
    wrapped CNNs) and freeze it so conv+BN fold; returns the path. torch.jit is deprecated but still runs in 2.14."""
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        traced = torch.jit.trace(module.eval(), _example(channels, image_size), check_trace=False)
        frozen = torch.jit.freeze(traced)
        with atomic_path(path) as tmp:
            torch.jit.save(frozen, str(tmp))
    return path


class _Calibration:
    """ONNX Runtime CalibrationDataReader over uint8 NHWC images, in small batches."""

    def __init__(self, images: np.ndarray, batch: int = 16):
        self.batches = iter([images[i:i + batch] for i in range(0, len(images), batch)])

    def get_next(self):
        b = next(self.batches, None)
        return None if b is None else {INPUT: np.ascontiguousarray(b, dtype=np.uint8)}


def quantize_onnx(src: str | os.PathLike, dst: str | os.PathLike, calibration: np.ndarray) -> Path:
    """Static int8 quantization (QDQ, per-channel int8 weights, uint8 activations, min-max calibration) of an fp32
    ONNX classifier; ``calibration``: uint8 NHWC images from the train split (a few dozen suffice).

    Static rather than dynamic: dynamic quantization only quantizes weights of MatMul/Gemm (ConvInteger with
    runtime activation ranges is slow on CPU), so a CNN would stay almost all fp32."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if calibration is None or len(calibration) == 0:
        raise UserError("int8 quantization needs calibration images (the run's train split was empty)")
    dst = Path(dst)
    with tempfile.TemporaryDirectory() as tmpdir:
        pre = Path(tmpdir) / "pre.onnx"
        quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)   # fold/fuse first: BN into convs
        with atomic_path(dst) as tmp:                                 # same folder: the rename stays atomic
            quantize_static(str(pre), str(tmp), _Calibration(calibration), quant_format=QuantFormat.QDQ,
                            activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, per_channel=True,
                            calibrate_method=CalibrationMethod.MinMax)
    return dst
