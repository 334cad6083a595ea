"""Ensembles of finished runs: soft and hard voting, test-time augmentation, and the ensemble against its members'
mean +- std, with a bootstrap interval for the gain. Members: seeds, bootstrap bags, or differently augmented runs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from visionlab import config as C
from visionlab.data import build_splits
from visionlab.data.loaders import build_loader
from visionlab.engine.precision import autocast
from visionlab.engine.rundir import unfinished
from visionlab.experiments import stats
from visionlab.views.markup import render_html, render_markdown
from visionlab.run import load_run
from visionlab.utils import ConfigError, UserError, atomic_write_text, read_json, write_json

VOTES = ("soft", "hard")
TTAS = ("none", "flip")
# data settings that decide which images form the evaluation split and how they are decoded: members must agree
SPLIT_KEYS = ("name", "root", "split", "split_seed", "val_fraction", "limit", "image_size", "pad_square", "grayscale")


def find_members(paths: list[str | Path]) -> list[Path]:
    """Run directories among ``paths``: a run itself, or a folder (seeds, sweep, compare) holding runs below it."""
    runs = []
    for p in map(Path, paths):
        if (p / "checkpoints" / "best.safetensors").is_file():
            if unfinished(p):
                raise UserError(f"{p} is not a finished run ({unfinished(p)}); finish it or leave it out")
            runs.append(p)
            continue
        found = sorted(q.parent.parent for q in p.glob("**/checkpoints/best.safetensors")) if p.is_dir() else []
        for q in [q for q in found if unfinished(q)]:
            print(f"note: leaving out {q}: {unfinished(q)}")
        found = [q for q in found if not unfinished(q)]
        if not found:
            raise UserError(f"{p}: not a run directory and holds none (no checkpoints/best.safetensors); pass runs "
                            "made by `visionlab train` or a `visionlab seeds` folder")
        runs += found
    if len(runs) < 2:
        raise UserError(f"an ensemble needs at least 2 member runs, got {len(runs)}")
    return runs


def _check_votable(run) -> None:
    """Ensembles vote class probabilities per image; refuse other tasks in one line before any prediction
    (per-pixel voting of segmentation masks would need its own metrics: mIoU of the voted masks)."""
    if run.task.target != "label":
        raise UserError(f"{run.run_dir} is a {run.cfg.task} run: ensembles vote class probabilities per image, "
                        f"so only classification runs can be ensembled (for {run.cfg.task}, compare seeds with "
                        "`visionlab seeds` / `visionlab compare`)")


def _check_compatible(runs: list) -> None:
    first = runs[0]
    for r in runs[1:]:
        if r.classes != first.classes:
            raise UserError(f"{r.run_dir} predicts other classes than {first.run_dir}; ensemble runs of one dataset")
        diff = [k for k in SPLIT_KEYS if getattr(r.cfg.data, k) != getattr(first.cfg.data, k)]
        if diff:
            raise UserError(f"{r.run_dir} was evaluated on other data than {first.run_dir} (data.{diff[0]}: "
                            f"{getattr(r.cfg.data, diff[0])!r} vs {getattr(first.cfg.data, diff[0])!r})")


@torch.no_grad()
def _probs(run, images: torch.Tensor, tta: str) -> torch.Tensor:
    """Class probabilities at the run's own evaluation precision (so a member scores what its training reported)."""
    views = [images, images.flip(2)] if tta == "flip" else [images]      # NHWC: dim 2 is the width
    with autocast(run.device, run.precision):
        return torch.stack([run.task.predict(v.to(run.device)).probs.float().cpu() for v in views]).mean(0)


def member_predictions(runs: list, split: str, tta: str) -> tuple[np.ndarray, np.ndarray]:
    """(probabilities [members, N, C], labels [N]) on one split, every member seeing the same images."""
    cfg = runs[0].cfg
    splits = build_splits(cfg.data)
    part = getattr(splits, split, None)
    if part is None:
        raise UserError(f"{runs[0].run_dir} has no {split} split")
    loader = build_loader(part, cfg.train.eval_batch_size, False, 0, runs[0].info.preprocess, cfg.data.num_workers)
    probs, labels = [[] for _ in runs], []
    for images, y in loader:
        labels.append(y.numpy())
        for i, run in enumerate(runs):
            probs[i].append(_probs(run, images, tta).numpy())
    return np.stack([np.concatenate(p) for p in probs]), np.concatenate(labels)


def vote(probs: np.ndarray, how: str) -> np.ndarray:
    """Class per sample. soft: argmax of the mean probability. hard: the most votes, ties to the higher mean
    probability among the tied classes."""
    if how == "soft":
        return probs.mean(0).argmax(1)
    m, n, c = probs.shape
    counts = np.zeros((n, c))
    np.add.at(counts, (np.arange(n)[None, :].repeat(m, 0), probs.argmax(2)), 1)
    return (counts + probs.mean(0) / (m + 1)).argmax(1)          # the tie-break stays below one vote


def _gain_interval(correct_ens: np.ndarray, correct_members: np.ndarray, seed: int = 0, n_boot: int = 2000):
    """Percentile bootstrap over test images of (ensemble accuracy - mean member accuracy), in points."""
    rng = np.random.default_rng(seed)
    diff = correct_ens.astype(float) - correct_members.mean(0)
    idx = rng.integers(0, len(diff), (n_boot, len(diff)))
    boots = diff[idx].mean(1) * 100
    return [float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))]


def ensemble(paths: list[str | Path], vote_how: str = "soft", tta: str = "none", split: str = "test",
             out: str | Path | None = None) -> dict:
    """Evaluate the ensemble of the runs in ``paths`` on ``split``; writes ensemble.json and a report in ``out``."""
    if vote_how not in VOTES + ("both",):
        raise ConfigError(f"vote must be soft, hard or both, got {vote_how!r}")
    if tta not in TTAS:
        raise ConfigError(f"tta must be one of {', '.join(TTAS)}, got {tta!r}")
    if split not in ("train", "val", "test"):
        raise ConfigError(f"split must be train, val or test, got {split!r}")
    dirs = find_members(paths)
    runs = []
    for d in dirs:                 # one at a time: a segmentation member is refused before the others load
        runs.append(load_run(d))
        _check_votable(runs[-1])
    _check_compatible(runs)
    probs, labels = member_predictions(runs, split, tta)
    correct = probs.argmax(2) == labels[None, :]
    accs = correct.mean(1)
    member = stats.describe(accs.tolist())
    result = {"split": split, "tta": tta, "n_images": int(len(labels)), "members": [
        {"run": str(d), "acc": float(a)} for d, a in zip(dirs, accs)],
        "member_mean": member["mean"], "member_std": member["std"], "member_best": float(accs.max())}
    for how in (VOTES if vote_how == "both" else (vote_how,)):
        pred = vote(probs, how)
        ok = pred == labels
        curve = [float((vote(probs[:k], how) == labels).mean()) for k in range(1, len(runs) + 1)]
        result[how] = {"acc": float(ok.mean()), "gain_vs_mean_pp": (float(ok.mean()) - member["mean"]) * 100,
                       "gain_ci95_pp": _gain_interval(ok, correct), "acc_by_members": curve}
        if how == "soft":
            top5 = np.argsort(-probs.mean(0), 1)[:, :5]
            result[how]["top5"] = float((top5 == labels[:, None]).any(1).mean())
    out = Path(out) if out else _default_out(dirs)
    out.mkdir(parents=True, exist_ok=True)
    result["out"] = str(out)
    write_json(out / "ensemble.json", result)
    render_ensemble(out)
    return result


def _default_out(dirs: list[Path]) -> Path:
    parents = {d.parent for d in dirs}
    base = parents.pop() if len(parents) == 1 else Path(C.Config().out_dir)
    return base / "ensemble"


def _sections(r: dict) -> tuple[str, list]:
    pct = lambda v: f"{100 * v:.2f} %"      # noqa: E731
    std = f" +- {100 * r['member_std']:.2f}" if r["member_std"] is not None else ""
    rows = [["members (mean +- std)", f"{100 * r['member_mean']:.2f}{std} %", "", ""],
            ["best member", pct(r["member_best"]), "", ""]]
    for how in VOTES:
        if how in r:
            lo, hi = r[how]["gain_ci95_pp"]
            rows.append([f"{how} vote ({len(r['members'])} members, tta={r['tta']})", pct(r[how]["acc"]),
                         f"{r[how]['gain_vs_mean_pp']:+.2f}", f"[{lo:+.2f}, {hi:+.2f}]"])
    sections = [("Result", [("text", f"{r['split']} split, {r['n_images']} images. Gain: ensemble minus the mean "
                                     "member, in points; its 95 % interval is a bootstrap over the images."),
                            ("table", ["", "accuracy", "gain (pp)", "95 % CI"], rows)])]
    curves = [[str(k + 1)] + [pct(r[h]["acc_by_members"][k]) for h in VOTES if h in r]
              for k in range(len(r["members"]))]
    sections.append(("Accuracy by number of members", [
        ("table", ["members"] + [f"{h} vote" for h in VOTES if h in r], curves)]))
    sections.append(("Members", [("table", ["run", "accuracy"],
                                  [[m["run"], pct(m["acc"])] for m in r["members"]])]))
    return "Ensemble report", sections


def render_ensemble(folder: str | Path) -> Path:
    """Rewrite report.md/html of an ensemble folder from its ensemble.json; returns the HTML path."""
    folder = Path(folder)
    title, sections = _sections(read_json(folder / "ensemble.json"))
    atomic_write_text(folder / "report.md", render_markdown(title, sections))
    atomic_write_text(folder / "report.html", render_html(title, sections))
    return folder / "report.html"
