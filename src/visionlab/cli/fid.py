"""`visionlab fid GENERATED REFERENCE`: FID and KID between two image sources (folders, .npy/.npz, DATASET:SPLIT)
with a pinned, named feature extractor; the numbers and the extractor that made them, optionally as JSON."""
from __future__ import annotations

import time

from ..utils import UserError

FID_USAGE = ("usage: visionlab fid GENERATED REFERENCE [n=10000] [extractor=auto|lite0|classifier[:DATASET]|"
             "inception:PATH] [size=0] [out=FILE.json]   (a source: image folder, .npy/.npz, or DATASET:SPLIT such as "
             "mnist:test; n keeps the first n of a folder, a seeded class-stratified n of a dataset split)")
NOT_COMPARABLE = "FID/KID from different extractors or sample counts are not comparable"


def _dataset_of(*sources: str) -> str:
    """The dataset named by the first DATASET:SPLIT source (what extractor=auto/classifier trains on), or ''."""
    from pathlib import Path

    for s in sources:
        if ":" in s and not Path(s).expanduser().exists():
            return s.partition(":")[0]
    return ""


def _options(kv: dict) -> dict:
    from .main import _int, _reject_unknown

    opts = {"n": _int(kv.pop("n", "10000"), "n", minimum=2, example=10000),
            "extractor": kv.pop("extractor", "auto"),
            "size": _int(kv.pop("size", "0"), "size", minimum=0, example=64),
            "out": kv.pop("out", "")}
    _reject_unknown(kv)
    return opts


def cmd_fid(args: list[str]) -> int:
    from ..config import DataConfig
    from ..tasks.generative.features import build_extractor, fid_between
    from ..tasks.generative.sources import load_images
    from ..utils import write_json
    from .main import _split_args

    pos, kv = _split_args(args)
    if len(pos) != 2:
        raise UserError(FID_USAGE)
    o = _options(kv)
    gen_src, ref_src = pos
    t0 = time.perf_counter()
    ref = load_images(ref_src, o["size"], 0, o["n"])
    gen = load_images(gen_src, o["size"], ref.shape[-1], o["n"])
    if len(gen) < 2 or len(ref) < 2:
        raise UserError(f"FID needs at least 2 images on each side; got {len(gen)} generated, {len(ref)} reference")
    dataset = _dataset_of(ref_src, gen_src)
    extractor = build_extractor(o["extractor"], ref.shape[-1], DataConfig(name=dataset) if dataset else None)
    result = fid_between(gen, ref, extractor)
    result.update(generated=gen_src, reference=ref_src, n_requested=o["n"], size=o["size"],
                  seconds=round(time.perf_counter() - t0, 2))
    for line in _lines(result, extractor.line()):
        print(line)
    if o["out"]:
        write_json(o["out"], result)
        print(f"wrote {o['out']}")
    return 0


def _lines(r: dict, extractor_line: str) -> list[str]:
    return [f"fid={r['fid']:.4f} kid={r['kid']:.6f} +- {r['kid_std']:.6f} (KID over {r['kid_subsets']} subsets of "
            f"{r['kid_subset_size']})",
            f"n: generated {r['n_gen']} ({r['generated']}), reference {r['n_ref']} ({r['reference']})",
            f"extractor: {extractor_line}",
            NOT_COMPARABLE]
