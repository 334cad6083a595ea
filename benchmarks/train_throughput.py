"""Training throughput of the seed MNIST CNN on full MNIST with +-13 degree rotation: visionlab against a baseline
written the way the seed project did it (torchvision-style dataset, PIL transforms, DataLoader, NCHW fp32, Adam).

Both train one epoch on the 60,000 training digits (batch 100, Adam lr 0.00108) and report test accuracy on the
10,000 test digits. img/s counts the training loop end to end: data, augmentation, forward, backward, step. Beside
them: the bare model step of the pipeline's own arm (batches fetched before the clock starts), each one's
achieved FLOP/s as a fraction of the machine's measured conv peak, and the share of time outside the model step.

    .venv/bin/python benchmarks/train_throughput.py
Last line: RESULT ratio=<x> ours_img_s=<y> baseline_img_s=<z> acc_delta=<d> ours_over_bare=<e> bare_of_peak=<f>
    ours_outside_step=<g>
"""
from __future__ import annotations

from _common import DATA, build_arm, machine_peak, of_peak, run_efficiency, run_pipeline, time_arms, \
    timed_baseline_epoch, training_flop_per_s

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision import transforms as T


class SeedStyleMNIST(torch.utils.data.Dataset):
    """One PIL image per sample, PIL transforms, as torchvision.datasets.MNIST does."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images, labels, transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return self.transform(Image.fromarray(self.images[i], mode="L")), int(self.labels[i])


ARGS = ["data.name=mnist", "data.val_fraction=0", "data.rotation=13", "train.epochs=1", "train.batch_size=100",
        "optim.name=adam", "optim.lr=0.00108", "optim.scheduler=none"]


def baseline(workers: int, max_batches: int | None = None) -> tuple[float, float | None, float]:
    """(img/s, test accuracy or None when cut at ``max_batches``, fraction of the time outside the model step)."""
    from visionlab.data.idx import read_idx
    from visionlab.models.seed_cnn import SeedCNN

    tr_x = read_idx(DATA / "mnist" / "train-images-idx3-ubyte.gz")
    tr_y = read_idx(DATA / "mnist" / "train-labels-idx1-ubyte.gz")
    te_x = read_idx(DATA / "mnist" / "t10k-images-idx3-ubyte.gz")
    te_y = read_idx(DATA / "mnist" / "t10k-labels-idx1-ubyte.gz")
    norm = T.Normalize((0.1307,), (0.3081,))
    train = SeedStyleMNIST(tr_x, tr_y, T.Compose([T.RandomRotation(13), T.ToTensor(), norm]))
    test = SeedStyleMNIST(te_x, te_y, T.Compose([T.ToTensor(), norm]))
    torch.manual_seed(0)
    loader = torch.utils.data.DataLoader(train, batch_size=100, shuffle=True, num_workers=workers)
    model = SeedCNN()
    opt = torch.optim.Adam(model.parameters(), lr=0.00108)
    rate, outside = timed_baseline_epoch(loader, model, opt, F.nll_loss, max_batches)
    if max_batches is not None:
        return rate, None, outside
    model.eval()
    correct = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(test, batch_size=500, num_workers=workers):
            correct += int((model(x).argmax(1) == y).sum())
    return rate, correct / len(test), outside


def bare_step(steps: int = 60, reps: int = 3) -> tuple[float, float, str]:
    """(img/s, forward FLOPs per image, precision) of the pipeline's own training step on batches fetched before the
    clock starts (median of ``reps`` rounds of ``steps``): the speed the end-to-end loop would have with a free data
    path."""
    task, loader, precision, cfg = build_arm(None, ARGS)
    ms = time_arms({"bare": (task, loader, precision, cfg)}, steps, reps)["bare"]
    return 1000 * cfg.train.batch_size / ms, task.flops_per_image(), precision


def main() -> None:
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, data {DATA}")
    peak = machine_peak()
    probe = {w: baseline(w, max_batches=120)[0] for w in (0, 2)}
    workers = max(probe, key=probe.get)
    print("baseline probe (120 batches): " + ", ".join(f"num_workers={w}: {r:.0f} img/s" for w, r in probe.items())
          + f" -> the baseline uses num_workers={workers}")
    base_rate, base_acc, base_outside = baseline(workers)
    s = run_pipeline(None, ARGS)
    base_flops = training_flop_per_s(s["flops_per_image"], base_rate)
    print(f"baseline: {base_rate:.0f} img/s, test acc after 1 epoch {base_acc:.4f}; {base_flops / 1e9:.1f} GFLOP/s = "
          f"{100 * of_peak(base_flops, 'fp32', peak):.1f} % of the fp32 conv peak; {100 * base_outside:.1f} % of the "
          "time outside the model step")
    ours_rate, ours_acc = s["timings"]["train_img_per_s"], s["test/acc"]
    print(f"visionlab: {ours_rate:.0f} img/s ({s['precision']}, channels_last, in-memory batched augmentation), "
          f"test acc after 1 epoch {ours_acc:.4f}; {run_efficiency(s, peak)}")
    bare_rate, flops, precision = bare_step()
    bare_frac = of_peak(training_flop_per_s(flops, bare_rate), precision, peak)
    print(f"bare model step ({precision}, batches fetched before timing): {bare_rate:.0f} img/s = "
          f"{100 * bare_frac:.1f} % of the {precision} conv peak; "
          f"end to end runs at {ours_rate / bare_rate:.2f}x of it")
    print(f"RESULT ratio={ours_rate / base_rate:.2f} ours_img_s={ours_rate:.0f} baseline_img_s={base_rate:.0f} "
          f"acc_delta={100 * (ours_acc - base_acc):+.2f} ours_over_bare={ours_rate / bare_rate:.2f} "
          f"bare_of_peak={bare_frac:.3f} ours_outside_step={s['timings']['outside_step_fraction']:.3f}")


if __name__ == "__main__":
    main()
