"""Run exported classifiers: ONNX Runtime sessions and TorchScript modules as uint8 NHWC numpy -> logits numpy.

ONNX files are protobuf data. TorchScript archives are not: a zip of pickled data and code that ``torch.jit.load``
unpickles and runs, so only files this project wrote (with their recorded sha256) or a file you name are loaded."""
from __future__ import annotations

import hashlib
import os
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..utils import UserError

Runner = Callable[[np.ndarray], np.ndarray]


def ort_session(path: str | os.PathLike, threads: int = 0):
    """An ONNX Runtime CPU session with all graph optimizations; ``threads`` 0 = as many as torch uses."""
    try:
        import onnxruntime as ort
    except ImportError:
        raise UserError("ONNX Runtime is not installed; pip install 'visionlab[deploy]' (onnx, onnxruntime)") from None
    if not Path(path).is_file():
        raise UserError(f"{path}: no such ONNX file; create it with `visionlab export RUN_DIR format=onnx`")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = int(threads or torch.get_num_threads())   # the same cores as eager, for a fair bench
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3                                            # errors only
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def onnx_runner(path: str | os.PathLike, threads: int = 0) -> Runner:
    """uint8 NHWC numpy batch -> float32 logits from an exported ONNX file (fp32 or int8)."""
    sess = ort_session(path, threads)
    name = sess.get_inputs()[0].name

    def run(images: np.ndarray) -> np.ndarray:
        return sess.run(None, {name: np.ascontiguousarray(images, dtype=np.uint8)})[0]

    return run


def file_sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_torchscript(path: str | os.PathLike, sha256: str | None = None) -> torch.jit.ScriptModule:
    """Load a TorchScript file on the CPU. The archive holds pickled data and TorchScript code that loading runs:
    pass only a file you trust (you name it yourself) or one this project exported, with the ``sha256`` recorded
    when it was written; a file whose hash differs is refused."""
    if not Path(path).is_file():
        raise UserError(f"{path}: no such TorchScript file; create it with `visionlab export RUN_DIR "
                        "format=torchscript`")
    if sha256 is not None and file_sha256(path) != sha256:
        raise UserError(f"{path}: not the TorchScript file visionlab exported (its sha256 differs from the one "
                        "recorded in export.json), so it is not loaded: TorchScript archives contain pickled code. "
                        "Delete it and export again (`visionlab export RUN_DIR format=torchscript`)")
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*torch.jit.*deprecated.*")
        return torch.jit.load(str(path), map_location="cpu").eval()


def torch_runner(module: torch.nn.Module, autocast_bf16: bool = False) -> Runner:
    """uint8 NHWC numpy batch -> float32 logits from an nn.Module or ScriptModule taking uint8 NHWC (CPU)."""

    @torch.inference_mode()
    def run(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.uint8))
        if autocast_bf16:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return module(x).float().numpy()
        return module(x).float().numpy()

    return run


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float32, stable for large logits."""
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
