"""Report pieces of domain-generalization runs (task=dg): the classification sections plus accuracy per domain (the
held-out test domain(s) and the source domains' validation images), and a picture of the feature statistics that
MixStyle mixes: per image, the channel-averaged mean and std of the features at the first mixing layer, coloured by
domain (for a MixStyle run, also after mixing with images of other domains)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from visionlab.views import classification, plots

HEADLINE = classification.HEADLINE + (("class_map", "class mAP", "f4"), ("domain_map", "domain mAP (val)", "f4"))
show_predictions = classification.show_predictions
STATS_FILE = "feature_stats.png"
PER_DOMAIN = 150            # images per domain in the statistics picture


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def sections(info: dict, classes: list[str]) -> list:
    s = info["summary"]
    cfg = info["config"] or {}
    data = cfg.get("data") or {}
    blocks = [("text", f"Method dg.method={(cfg.get('dg') or {}).get('method', '?')}; trained on "
                       f"{data.get('source_domains') or 'every domain but the targets'}, held out "
                       f"{data.get('target_domains')}. The test split is the held-out domain(s): it never chose "
                       "an epoch (selection: the source domains' validation images).")]
    rows = s.get("per_domain") or []
    if rows:
        head = ["split", "domain", "images", "top-1"] + list(classes)
        table = [["test (held out)", r["domain"], str(r["n"]), _pct(r["acc"])] + [_pct(v) for v in r["per_class_acc"]]
                 for r in rows]
        last = (info["metrics"] or [{}])[-1]
        table += [["val (source)", k.split("@", 1)[1], "", _pct(v)] + [""] * len(classes)
                  for k, v in last.items() if k.startswith("val/acc@") and v is not None]
        blocks.append(("table", head, table))
    if (info["run_dir"] / STATS_FILE).is_file():
        blocks += [("text", "Feature statistics at the first MixStyle layer (channel-averaged mean and std per "
                            "image): domains differ in style; MixStyle trains on mixtures between them."),
                   ("image", STATS_FILE, "feature statistics by domain")]
    return [("Per-domain results", blocks)] + classification.sections(info, classes)


def _feature_stats(run, layer: str, images_by_domain: dict) -> dict:
    """domain -> (mu [N, C], sigma [N, C]) of the features at ``layer`` (instance statistics over H, W)."""
    module = dict(run.model.named_modules())[layer]
    out = {}
    for name, images in images_by_domain.items():
        got = []
        handle = module.register_forward_hook(lambda m, i, o: got.append(o.detach().float()))
        try:
            with torch.no_grad():
                run.model(run.task.model_input(torch.from_numpy(np.ascontiguousarray(images)).to(run.device)))
        finally:
            handle.remove()
        f = got[0]
        out[name] = (f.mean((2, 3)).cpu(), (f.var((2, 3)) + 1e-6).sqrt().cpu(), f.cpu())
    return out


def write_feature_stats(run_dir: Path) -> Path | None:
    """feature_stats.png of a dg run: source-domain validation and held-out test images, per domain."""
    from visionlab.data import build_splits
    from visionlab.models.mixstyle import MixStyle, auto_layers
    from visionlab.run import load_run

    run = load_run(run_dir, device="cpu")
    net = getattr(run.model, "net", run.model)
    prefix = "net." if net is not run.model else ""
    layers = list(run.cfg.dg.mixstyle_layers) or auto_layers(net)
    if not layers:
        return None
    splits = build_splits(run.cfg.data)
    by_domain = {}
    for split in (splits.val, splits.test):
        if split is None or split.domains is None:
            continue
        for d in np.unique(split.domains):
            idx = np.flatnonzero(split.domains == d)[:PER_DOMAIN]
            by_domain[run.info.domains[d]] = split.images[idx]
    stats = _feature_stats(run, prefix + layers[0], by_domain)
    mixed = run.cfg.dg.method == "mixstyle"
    fig = Figure(figsize=(11 if mixed else 6, 4.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, 2 if mixed else 1))
    for name, (mu, sig, _) in stats.items():
        axes[0].scatter(mu.mean(1), sig.mean(1), s=6, alpha=0.5, label=name)
    axes[0].set_title(f"features after {layers[0]}")
    if mixed:               # the same images' statistics after mixing with other domains (p = 1, crossdomain)
        names = list(stats)
        feats = torch.cat([stats[n][2] for n in names])
        doms = torch.cat([torch.full((len(stats[n][2]),), i) for i, n in enumerate(names)])
        ms = MixStyle(1.0, run.cfg.dg.mixstyle_alpha, "crossdomain", torch.Generator().manual_seed(0))
        ms.domains = doms
        out = ms.mix_stats(feats)
        mu, sig = out.mean((2, 3)), (out.var((2, 3)) + 1e-6).sqrt()
        for i, n in enumerate(names):
            m = doms == i
            axes[1].scatter(mu[m].mean(1), sig[m].mean(1), s=6, alpha=0.5, label=n)
        axes[1].set_title(f"after MixStyle (alpha={run.cfg.dg.mixstyle_alpha:g}, crossdomain)")
    for ax in axes:
        ax.set_xlabel("mean of channel means")
        ax.set_ylabel("mean of channel stds")
        ax.grid(alpha=0.3)
        ax.legend(markerscale=3)
    plots.save_figure(fig, run.run_dir / STATS_FILE)
    return run.run_dir / STATS_FILE


def after_train(run_dir: Path) -> None:
    classification.after_train(run_dir)
    write_feature_stats(run_dir)
