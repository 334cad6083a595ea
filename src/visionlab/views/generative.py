"""The generative run's own report pieces (how FID was measured, sample grids by epoch, VAE reconstructions and
interpolations, FID against the number of sampling steps) and how `visionlab predict` shows a VAE's reconstructions."""
from __future__ import annotations

import re
from pathlib import Path

from visionlab.utils import write_png
from visionlab.views.markup import fmt

HEADLINE = (("fid", "FID", ""), ("kid", "KID", "f4"), ("kid_std", "KID std over subsets", "f4"),
            ("neg_elbo", "negative ELBO (nats per image)", ""), ("n_gen", "generated images", "int"),
            ("n_ref", "real images (reference)", "int"), ("sample_ms", "sampling time (ms per image)", ""))
NOT_COMPARABLE = ("FID and KID depend on the feature extractor and on the number of images (FID is biased upwards "
                  "at small n): compare only figures measured with the same extractor and the same counts.")


def _epochs(run_dir: Path, name: str) -> dict[int, str]:
    """epoch -> relative path of samples/<name>-epochNNN.png."""
    out = {}
    for p in (run_dir / "samples").glob(f"{name}-epoch*.png"):
        m = re.fullmatch(rf"{re.escape(name)}-epoch(\d+)\.png", p.name)
        if m:
            out[int(m.group(1))] = f"samples/{p.name}"
    return dict(sorted(out.items()))


def _measured(s: dict) -> list:
    ex = s.get("extractor") or {}
    if not ex:
        return []
    rows = [[k, fmt(ex.get(k))] for k in ("name", "sha256", "input_size", "resize", "dim", "test_acc") if k in ex]
    text = (f"Test split: {fmt(s.get('test/n_gen'), 'int')} generated images against the "
            f"{fmt(s.get('test/n_ref'), 'int')} real test images; KID over random subsets (mean and std). "
            + NOT_COMPARABLE)
    return [("How the figures were measured", [("text", text), ("table", ["feature extractor", ""], rows)])]


def _steps_table(info: dict) -> list:
    """FID against DDIM steps, from `visionlab eval RUN tag=... ddpm.sample_steps=K` files."""
    rows = []
    for name, d in info["evals"].items():
        steps = [o.split("=", 1)[1] for o in d.get("overrides") or [] if o.startswith("ddpm.sample_steps=")]
        if steps:
            rows.append((int(steps[0]), name, d))
    if not rows:
        return []
    table = [[str(k), fmt(d.get(f"{n}/fid")), fmt(d.get(f"{n}/kid"), "f4"), fmt(d.get(f"{n}/n_gen"), "int"),
              fmt(d.get(f"{n}/sample_ms")), n] for k, n, d in sorted(rows)]
    return [("FID against sampling steps", [("text", "DDIM steps (`visionlab eval RUN tag=stepsK "
                                                     "ddpm.sample_steps=K`), same extractor; compare rows with the "
                                                     "same number of generated images only."),
                                            ("table", ["steps", "FID", "KID", "generated images", "ms per image",
                                                       "eval"], table)])]


def sections(info: dict, classes: list[str]) -> list:
    s, run_dir = info["summary"], info["run_dir"]
    out = _measured(s)
    grids = _epochs(run_dir, "samples")
    if grids:
        best = s.get("best_epoch")
        shown = grids.get(best) or list(grids.values())[-1]
        epoch = best if best in grids else list(grids)[-1]
        blocks = [("text", f"Epoch {epoch} (the best checkpoint). Fixed noise, so the grids of different epochs are "
                           "comparable; one row per class for conditional models."), ("image", shown, "samples")]
        picks = sorted({list(grids)[0], list(grids)[len(grids) // 2], list(grids)[-1]})
        if len(picks) > 1:
            blocks.append(("text", "Progress: epochs " + ", ".join(str(e) for e in picks) + "."))
            blocks += [("image", grids[e], f"samples after epoch {e}") for e in picks]
        out.append(("Samples", blocks))
    for name, title in (("reconstructions", "Reconstructions (top: real validation images, bottom: decoded means)"),
                        ("interpolations", "Latent interpolations between pairs of validation images")):
        pics = _epochs(run_dir, name)
        if pics:
            out.append((title.split(" (")[0], [("text", title), ("image", list(pics.values())[-1], name)]))
    return out + _steps_table(info)


def after_train(run_dir: Path) -> None:
    """Nothing: the sample grids are written after every epoch."""


def show_predictions(results: list, images: list[str], out_dir: Path | None) -> list[str]:
    """Write <stem>_recon.png per image (a VAE's reconstruction) into ``out_dir``."""
    out_dir = Path(out_dir or "predictions")
    out_dir.mkdir(parents=True, exist_ok=True)
    lines = []
    for image, r in zip(images, results):
        path = out_dir / f"{Path(str(image)).stem}_recon.png"
        write_png(path, r["image"])
        lines.append(f"{image}\t-> {path}")
    return lines
