"""FID throughput on real data: 10,000 CIFAR-10 test vs 10,000 train images with the lite0 extractor, and MNIST test
vs train with the classifier extractor: total seconds (features of both sides + FID + KID), batched feature extraction
in img/s against a naive per-image loop (unfused network, NCHW, one image at a time) timed in the same run.

    .venv/bin/python benchmarks/fid_throughput.py [n=10000] [naive=200] [threads=2] [extractors=lite0,classifier]
Decoding the datasets is not timed (it is cached after the first run); building the classifier is (trained once).
Batched extraction is also given as a fraction of the machine's measured fp32 peak (the extractor's FLOPs x img/s).
Last line: RESULT lite0_total_s=<a> lite0_img_s=<b> lite0_ratio=<c> lite0_of_peak=<p> classifier_total_s=<d>
           classifier_img_s=<e> classifier_ratio=<f> classifier_of_peak=<q> cpu=<model>
"""
from __future__ import annotations

import copy
import sys
import time

from _common import machine_peak, of_peak

import torch
import torch.nn.functional as F

SOURCES = {"lite0": ("cifar10:test", "cifar10:train"), "classifier": ("mnist:test", "mnist:train")}


def _naive_net(spec: str, extractor):
    """The network as a first implementation would run it: no BatchNorm folding, NCHW, float32, batch 1."""
    if spec == "lite0":
        from visionlab.models import build_model

        body = build_model("tf_efficientnet_lite0", 1000, 3, pretrained=True).eval().body
        return lambda x: body.forward_head(body.forward_features(x), pre_logits=True)
    net = copy.deepcopy(extractor.module.net).to(memory_format=torch.contiguous_format).eval()
    return net


def naive_rate(spec: str, extractor, images, count: int) -> tuple[float, float]:
    """(img/s of a per-image loop, max |difference| from the batched features relative to their scale)."""
    net, mod = _naive_net(spec, extractor), extractor.module
    size, mean, std = mod.size, mod.mean, mod.std
    out = []
    t0 = time.perf_counter()
    with torch.no_grad():
        for img in images[:count]:
            x = torch.from_numpy(img).permute(2, 0, 1).float()[None]
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            if mod.channels == 3 and x.shape[1] == 1:
                x = x.expand(-1, 3, -1, -1)
            out.append(net((x - mean) / std).double())
    rate = count / (time.perf_counter() - t0)
    ref = extractor.features(images[:count])
    return rate, float((torch.cat(out) - ref).abs().max() / ref.abs().max())


def run_one(spec: str, n: int, naive: int, peak: dict) -> dict:
    from visionlab.tasks.generative.features import build_extractor, feature_stats
    from visionlab.tasks.generative.sources import load_images
    from visionlab.metrics.fid import scores
    from visionlab.models import count_flops

    gen_src, ref_src = SOURCES[spec]
    gen, ref = load_images(gen_src, limit=n), load_images(ref_src, limit=n)
    t0 = time.perf_counter()
    ex = build_extractor(spec if spec == "lite0" else "classifier:mnist", gen.shape[-1])
    build_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    stats = [feature_stats(x, ex) for x in (gen, ref)]
    feat_s = time.perf_counter() - t1
    t2 = time.perf_counter()
    res = scores(*stats)
    score_s = time.perf_counter() - t2
    rate = (len(gen) + len(ref)) / feat_s
    naive_img_s, diff = naive_rate(spec, ex, gen, naive)
    frac = of_peak(count_flops(ex.module, torch.from_numpy(gen[:1])) * rate, "fp32", peak)   # the extractor runs fp32
    print(f"{spec:<10} {ex.line()}\n"
          f"           {len(gen)} ({gen_src}) vs {len(ref)} ({ref_src}): features {feat_s:.1f} s = {rate:.1f} img/s "
          f"batched ({100 * frac:.1f} % of the fp32 peak); FID+KID {score_s:.1f} s; total {feat_s + score_s:.1f} s "
          f"(+ build {build_s:.1f} s)\n"
          f"           naive per-image loop {naive_img_s:.1f} img/s ({naive} images) -> batched "
          f"{rate / naive_img_s:.2f}x"
          f" (max feature difference {diff:.1e} of scale)\n"
          f"           fid={res['fid']:.3f} kid={res['kid']:.5f} +- {res['kid_std']:.5f}", flush=True)
    return {"total_s": feat_s + score_s, "img_s": rate, "ratio": rate / naive_img_s, "of_peak": frac}


def main(argv: list[str]) -> None:
    from visionlab.deploy.latency import machine_info

    kv = dict(a.split("=", 1) for a in argv if "=" in a)
    n, naive, threads = int(kv.get("n", 10000)), int(kv.get("naive", 200)), int(kv.get("threads", 2))
    torch.set_num_threads(threads)
    info = machine_info()
    print(f"cpu: {info.get('cpu')} ({info.get('cpu_count')} cores, torch {info.get('torch')}, {threads} threads, "
          f"load {info.get('load_avg_1m')})")
    peak = machine_peak()
    results = {spec: run_one(spec, n, naive, peak) for spec in kv.get("extractors", "lite0,classifier").split(",")}
    fields = " ".join(f"{s}_{k}={v:.2f}" for s, r in results.items() for k, v in r.items())
    print(f"RESULT {fields} cpu={info.get('cpu', '?').replace(' ', '_')}")


if __name__ == "__main__":
    main(sys.argv[1:])
