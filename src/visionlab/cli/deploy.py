"""CLI modes `visionlab export RUN_DIR [format=onnx|torchscript] [quantize=int8] [opset=N]` (export with accuracy
parity on the test split; a generative run: ONNX with pixel parity) and `visionlab bench RUN_DIR [batch_sizes=1,32]
[iters=30] [warmup=3]` (latency)."""
from __future__ import annotations

from .args import split_options
from ..utils import ConfigError, UserError

EXPORT_USAGE = ("usage: visionlab export RUN_DIR [format=onnx|torchscript|onnx,torchscript] [quantize=int8] "
                "[opset=17] [calib=128] [limit=N]")
BENCH_USAGE = ("usage: visionlab bench RUN_DIR [batch_sizes=1,32] [iters=30] [warmup=3] [threads=N]\n"
               "       [backends=eager-fp32,eager-bf16-cl,torchscript,onnx,onnx-int8]")
EXPORT_OPTIONS = ("format", "quantize", "opset", "calib", "limit")
BENCH_OPTIONS = ("batch_sizes", "iters", "warmup", "threads", "backends")


def _int(value: str, key: str, low: int) -> int:
    try:
        v = int(value)
    except ValueError:
        raise ConfigError(f"{key} must be an integer >= {low}, got {value!r}") from None
    if v < low:
        raise ConfigError(f"{key} must be an integer >= {low}, got {v}")
    return v


def _run_dir(args: list[str], mode: str, options: tuple[str, ...], usage: str) -> tuple[str, dict]:
    pos, kv = split_options(args, mode, options, usage)
    if len(pos) != 1:
        raise UserError(usage)
    return pos[0], kv


def export_formats(fmt: str, quantize: str) -> list[str]:
    """The export backends that ``format=`` (one or a comma list) and ``quantize=`` ask for, in export order."""
    formats = [f.strip() for f in fmt.split(",") if f.strip()]
    bad = [f for f in formats if f not in ("onnx", "torchscript")]
    if bad or not formats:
        raise ConfigError(f"format must be onnx or torchscript (or both, comma-separated), got {fmt!r}\n"
                          f"{EXPORT_USAGE}")
    if quantize not in ("", "none", "int8"):
        raise ConfigError(f"quantize must be int8 (or left out), got {quantize!r}")
    if quantize == "int8" and "onnx" not in formats:
        raise ConfigError("quantize=int8 is supported for ONNX only (ONNX Runtime static quantization; "
                          "TorchScript int8 is not); use format=onnx quantize=int8")
    return list(dict.fromkeys(formats)) + (["onnx-int8"] if quantize == "int8" else [])


def cmd_export(args: list[str]) -> int:
    """Export RUN_DIR's eval preprocessing + model (uint8 NHWC in, dynamic batch) to RUN_DIR/export/, then print
    and save (RUN_DIR/export.json) the top-1 parity of eager and exported models on the test split."""
    from ..views.export_run import as_run, export_run, format_parity

    run_dir, kv = _run_dir(args, "export", EXPORT_OPTIONS, EXPORT_USAGE)
    formats = export_formats(kv.get("format", "onnx"), kv.get("quantize", ""))
    opset = _int(kv.get("opset", "17"), "opset", 7)
    calib = _int(kv.get("calib", "128"), "calib", 1)
    limit = _int(kv.get("limit", "0"), "limit", 0)               # parity on a stratified subset; 0 = all
    run = as_run(run_dir)
    if run.task.generates:                                       # its network with named inputs, pixel parity
        return _export_generative(run, run_dir, formats, opset)
    results = export_run(run, formats, opset=opset, calibration_images=calib, test_limit=limit)
    print(format_parity(results))
    for r in results.values():
        print(f"wrote {run_dir}/{r['file']}")
    return 0


def _export_generative(run, run_dir: str, formats: list[str], opset: int) -> int:
    """A vae / dcgan / ddpm run: RUN_DIR/export/{generator,denoiser}.onnx with its pixel parity against eager."""
    from ..views.export_generative import check_formats, export_generative, format_generative

    check_formats(formats, run.cfg.task)
    result = export_generative(run, opset)
    print(format_generative(result))
    print(f"wrote {run_dir}/{result['file']}")
    return 0


def cmd_bench(args: list[str]) -> int:
    """Time every backend of RUN_DIR at each batch size; print the table, write RUN_DIR/bench.json and bench.md."""
    import torch

    from ..views.bench_run import BACKENDS, bench_run, format_bench

    run_dir, kv = _run_dir(args, "bench", BENCH_OPTIONS, BENCH_USAGE)
    sizes = [_int(s, "batch_sizes", 1) for s in kv.get("batch_sizes", "1,32").split(",") if s.strip()]
    if not sizes:
        raise ConfigError("batch_sizes must list integers >= 1, e.g. batch_sizes=1,32")
    backends = [b.strip() for b in kv.get("backends", ",".join(BACKENDS)).split(",") if b.strip()]
    bad = [b for b in backends if b not in BACKENDS]
    if bad or not backends:
        raise ConfigError(f"backends: unknown {bad[0] if bad else '(empty)'!r}; choose from {', '.join(BACKENDS)}")
    if "threads" in kv:
        torch.set_num_threads(_int(kv["threads"], "threads", 1))
    result = bench_run(run_dir, sizes, iters=_int(kv.get("iters", "30"), "iters", 1),
                       warmup=_int(kv.get("warmup", "3"), "warmup", 0), backends=backends)
    print(format_bench(result))
    print(f"wrote {run_dir}/bench.json and bench.md")
    return 0
