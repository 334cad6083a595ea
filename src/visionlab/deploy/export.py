"""Export a model with its eval preprocessing folded in (uint8 NHWC in, raw output out: class logits, per-pixel logits,
or a detector's boxes, scores and labels) to ONNX or TorchScript, and int8-quantize the ONNX file with ONNX Runtime
static quantization.

A module exports with one "logits" output and a dynamic batch axis unless it declares otherwise (``export_spec``):
``output_names`` for several named outputs, ``fixed_batch`` for a graph traced at one batch size with the
``dynamic_axes`` it names itself (DetectorExport: one image in, a variable number of detections out)."""
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


class DetectorExport(nn.Module):
    """uint8 [1, S, S, C] canvas -> (boxes float [N, 4] in canvas pixels, scores float [N], labels int64 [N]): the
    detector's own normalisation, score threshold, per-class NMS and top-``detections`` inside. ``detector``:
    float [B, 3, S, S] in [0, 1] -> one {"boxes", "scores", "labels"} per image, with ``set_thresholds(score,
    nms_iou, detections)`` (models.detection.Detector; its label offset already applied); ``preprocess``: uint8
    NHWC -> that float input. One image per call: torchvision's detectors export at batch 1 and a fixed size."""

    output_names = ("boxes", "scores", "labels")
    fixed_batch = 1
    dynamic_axes = {name: {0: "detections"} for name in output_names}

    def __init__(self, detector: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], score: float,
                 nms_iou: float, detections: int):
        super().__init__()
        self.detector, self.preprocess = detector, preprocess
        self.thresholds = (float(score), float(nms_iou), int(detections))

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.shape[0] != 1:
            raise UserError(f"a detector export takes one image per call, got a batch of {images.shape[0]}")
        self.detector.set_thresholds(*self.thresholds)    # the shared model: evaluation sets its own before use
        d = self.detector(self.preprocess(images))[0]
        return d["boxes"].float(), d["scores"].float(), d["labels"].long()


def wrap_detector(detector: nn.Module, preprocess: Callable[[torch.Tensor], torch.Tensor], score: float,
                  nms_iou: float, detections: int) -> DetectorExport:
    """The export wrapper around a detector (moved to CPU fp32 and set to eval in place; no copy)."""
    return DetectorExport(detector.float().cpu().eval(), preprocess, score, nms_iou, detections).eval()


def export_spec(module: nn.Module) -> tuple[int | None, list[str], dict]:
    """(fixed batch size or None, output names, dynamic axes) of an export module: one "logits" output with a
    dynamic batch axis, unless the module declares ``output_names`` and/or ``fixed_batch`` (no batch axis; its own
    ``dynamic_axes``, e.g. the number of detections)."""
    names = list(getattr(module, "output_names", (OUTPUT,)))
    fixed = getattr(module, "fixed_batch", None)
    if fixed:
        return int(fixed), names, dict(getattr(module, "dynamic_axes", {}))
    return None, names, {INPUT: {0: "batch"}, **{name: {0: "batch"} for name in names}}


def _example(channels: int, image_size: tuple[int, int], batch: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (batch, image_size[0], image_size[1], channels), dtype=torch.uint8, generator=g)


def _ignore_trace_warnings() -> None:
    """Inside warnings.catch_warnings(): silence what tracing prints about code it records as intended (shape checks
    turned constant, torchvision's detection post-processing, the torch.jit deprecation notice)."""
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
    warnings.filterwarnings("ignore", message=".*To copy construct from a tensor.*")
    warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")


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
                opset: int = DEFAULT_OPSET, metadata: dict | None = None) -> Path:
    """Write ``module`` (uint8 NHWC -> logits, or the outputs it names: ``export_spec``) to an ONNX file with a
    dynamic batch axis (or the module's fixed batch); returns the path. ``metadata`` (str -> str) goes into the
    file's metadata_props, which onnxruntime reads back as ``get_modelmeta().custom_metadata_map``.

    Uses the legacy TorchScript-based exporter (dynamo=False): the dynamo exporter needs the optional onnxscript
    package, and the legacy one exports these CNNs exactly; its deprecation notice is silenced here."""
    path = Path(path)
    batch, outputs, axes = export_spec(module)
    with warnings.catch_warnings(), torch.no_grad(), atomic_path(path) as tmp:   # a failure keeps the old file
        _ignore_trace_warnings()
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        try:
            with _quiet_stdout():
                torch.onnx.export(module.eval(), (_example(channels, image_size, batch or 2),), str(tmp), dynamo=False,
                                  input_names=[INPUT], output_names=outputs, opset_version=int(opset),
                                  dynamic_axes=axes, do_constant_folding=True)
        except torch.onnx.errors.UnsupportedOperatorError as e:   # e.g. antialiased downscaling in the transform
            raise UserError(f"this model cannot be written to ONNX opset {opset}: {str(e).splitlines()[0]}; "
                            "use format=torchscript (or another opset=N)") from None
        import onnx

        if metadata:
            model = onnx.load(str(tmp))
            for key, value in metadata.items():
                model.metadata_props.add(key=str(key), value=str(value))
            onnx.save(model, str(tmp))
        onnx.checker.check_model(str(tmp))
    return path


def export_torchscript(module: nn.Module, path: str | os.PathLike, channels: int,
                       image_size: tuple[int, int]) -> Path:
    """Trace ``module`` to a TorchScript file (the batch size stays dynamic: no shape-dependent Python in the
    wrapped CNNs; a ``fixed_batch`` module is traced at its batch) and freeze it so conv+BN fold; returns the path.
    torch.jit is deprecated but still runs in 2.14."""
    path = Path(path)
    with warnings.catch_warnings(), torch.no_grad():
        _ignore_trace_warnings()
        traced = torch.jit.trace(module.eval(), _example(channels, image_size, export_spec(module)[0] or 2),
                                 check_trace=False)
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
