"""Latency benchmark of a run's model on this machine: eager fp32, eager channels_last + bf16 autocast,
TorchScript, ONNX Runtime fp32 and int8 -> RUN_DIR/bench.json and bench.md (missing exports are made on the fly).
On a CPU without native bf16 (no avx512_bf16/amx_bf16 flag) the bf16 row is kept and marked as emulated.
A detection run is timed one image per call (its export's fixed batch), NMS included, without int8 (not exported)."""
from __future__ import annotations

import copy
import numpy as np
import torch

from visionlab.deploy.export import export_spec
from visionlab.deploy.latency import bf16_note, machine_info, measure
from visionlab.views.export_run import FILES, as_run, backends_for, module_runner, runner
from visionlab.utils import UserError, atomic_write_text, write_json

BACKENDS = ("eager-fp32", "eager-bf16-cl", "torchscript", "onnx", "onnx-int8")
LABELS = {"eager-fp32": "eager fp32", "eager-bf16-cl": "eager channels_last + bf16 autocast",
          "torchscript": "TorchScript (traced, frozen) fp32", "onnx": "ONNX Runtime fp32",
          "onnx-int8": "ONNX Runtime int8 (static QDQ)"}


def _bf16_runner(run):
    """The eval path with the model in channels_last and bf16 autocast (a copy: the run's model stays fp32)."""
    module = copy.deepcopy(run.task.export_module()).to(memory_format=torch.channels_last).eval()
    run_module = module_runner(module)              # export modules return float32 outputs

    def fn(images: np.ndarray):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return run_module(images)

    return fn


def _runners(run, backends) -> dict:
    out = {}
    for b in backends:
        out[b] = _bf16_runner(run) if b == "eager-bf16-cl" else runner(run, "eager" if b == "eager-fp32" else b)
    return out


def bench_run(run_dir, batch_sizes=(1, 32), iters: int = 30, warmup: int = 3, backends=BACKENDS,
              max_seconds: float = 10.0) -> dict:
    """Time every backend at every batch size on seeded random uint8 images of the run's input shape (latency
    does not depend on pixel values); writes RUN_DIR/bench.json and bench.md and returns the bench.json dict.
    ``max_seconds`` caps the timed loop of one (backend, batch size) so a slow backend cannot stall the bench.
    A run whose export takes a fixed batch (a detector: one image) is timed at that batch only, and backends it does
    not export to (int8 for a detector) are left out with a note."""
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown:
        raise UserError(f"unknown backend {unknown[0]!r}; choose from {', '.join(BACKENDS)}")
    if not batch_sizes or min(batch_sizes) < 1 or iters < 1 or warmup < 0:
        raise UserError("batch sizes and iters must be >= 1 and warmup >= 0")
    run = as_run(run_dir)
    h, w = run.info.image_size
    rng = np.random.default_rng(0)
    machine = machine_info()
    notes = {"eager-bf16-cl": bf16_note(machine["bf16_native"])}      # why a slow bf16 row is slow
    fixed = export_spec(run.task.export_module())[0]
    if fixed:
        batch_sizes = (fixed,)
    for b in backends:
        if b in FILES and b not in backends_for(run):
            notes[b] = f"not measured: task={run.cfg.task} runs do not export to it"
    fns = _runners(run, [b for b in backends if b not in FILES or b in backends_for(run)])
    rows = []
    for bs in batch_sizes:
        batch = rng.integers(0, 256, (bs, h, w, run.info.channels), dtype=np.uint8)
        for b, fn in fns.items():
            r = measure(fn, batch, iters=iters, warmup=warmup, max_seconds=max_seconds)
            rows.append({"backend": b, **r, **({"note": notes[b]} if notes.get(b) else {})})
    result = {"machine": machine, "input": [int(h), int(w), int(run.info.channels)],
              "settings": {"iters": iters, "warmup": warmup, "max_seconds": max_seconds,
                           "batch_sizes": list(batch_sizes)},
              "model": run.cfg.model.name, "results": rows,
              "notes": [LABELS[b] + ": " + n for b, n in notes.items() if n and b in backends]}
    write_json(run.run_dir / "bench.json", result)
    atomic_write_text(run.run_dir / "bench.md", format_bench(result, markdown=True) + "\n")
    return result


def bench_table(result: dict) -> tuple[list[str], list[list[str]]]:
    """(header, rows) of a bench.json dict: one row per backend and batch size, speedup against eager fp32."""
    base = {r["batch_size"]: r["p50_ms"] for r in result.get("results", []) if r.get("backend") == "eager-fp32"}
    header = ["backend", "batch", "p50 ms", "p95 ms", "img/s", "vs eager fp32"]
    rows = []
    for r in result.get("results", []):
        ref = base.get(r["batch_size"])
        label = LABELS.get(r["backend"], r["backend"]) + (" (bf16 emulated)" if r.get("note") else "")
        rows.append([label, str(r["batch_size"]), f"{r['p50_ms']:.2f}",
                     f"{r['p95_ms']:.2f}", f"{r['img_per_s']:.0f}", f"{ref / r['p50_ms']:.2f}x" if ref else "-"])
    return header, rows


def machine_line(result: dict) -> str:
    """One line naming the CPU, threads and versions a bench.json was measured with."""
    m = result.get("machine", {})
    shape = "x".join(str(v) for v in result.get("input", []))
    return (f"{m.get('cpu', '?')}, {m.get('cpu_count', '?')} CPUs, torch threads {m.get('torch_threads', '?')}, "
            f"torch {m.get('torch', '?')}, onnxruntime {m.get('onnxruntime', '?')}, load average "
            f"{m.get('load_avg_1m', '?')}; input {shape} uint8")


def format_bench(result: dict, markdown: bool = False) -> str:
    """bench.json as a fixed-width text table (markdown=False) or a markdown table with a machine line."""
    header, rows = bench_table(result)
    notes = [f"Note: {n}." for n in result.get("notes", [])]
    if markdown:
        lines = [f"# Latency: {result.get('model', '')}", "", machine_line(result), "",
                 "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows] + ([""] + notes if notes else []))
    widths = [max(len(x) for x in col) for col in zip(header, *rows)]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return "\n".join([machine_line(result), line(header)] + [line(r) for r in rows] + notes)

