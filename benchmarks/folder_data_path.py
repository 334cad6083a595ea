"""The data path of a folder dataset (TrashNet photos) at 64, 128 and 224 px: the share of training time spent outside
the model step, visionlab's path (decode once into the uint8 cache, then batched crop with reflect padding, flip and
colour jitter) against the usual one (torchvision ImageFolder: decode and augment each image with PIL transforms in
DataLoader workers), with the same model step (ResNet-18, the precision `train.precision=auto` picks,
channels_last) in the same run.

Ours is one epoch of the pipeline on ``limit`` training images (`summary.json` timings: the cache is built before
training, as it is once per machine); the baseline times the same number of images through a DataLoader with
``workers`` processes, counting the model step apart from the wait for the next batch.

    .venv/bin/python benchmarks/folder_data_path.py [sizes=64,128,224] [limit=256] [workers=2] [threads=N]
Last line: RESULT ours_outside_<size>=<f> baseline_outside_<size>=<g> ... speedup_<size>=<x> ...
"""
from __future__ import annotations

import sys

from _common import DATA, machine_peak, run_pipeline, timed_baseline_epoch

import torch


def baseline(size: int, limit: int, workers: int, precision: str, batch: int) -> tuple[float, float]:
    """(img/s, fraction of time outside the model step) of a PIL-per-image ImageFolder pipeline, same model step."""
    import torchvision
    from torchvision import transforms as T

    from visionlab.engine.precision import autocast

    tf = T.Compose([T.Resize((size, size)), T.RandomCrop(size, padding=size // 8, padding_mode="reflect"),
                    T.RandomHorizontalFlip(), T.ColorJitter(0.2, 0.2, 0.2), T.ToTensor(),
                    T.Normalize([0.5] * 3, [0.25] * 3)])
    data = torchvision.datasets.ImageFolder(str(DATA / "trashnet"), transform=tf)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    subset = torch.utils.data.Subset(data, order[:limit])
    loader = torch.utils.data.DataLoader(subset, batch_size=batch, shuffle=True, num_workers=workers)
    model = torchvision.models.resnet18(num_classes=6).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    return timed_baseline_epoch(loader, lambda x: model(x.contiguous(memory_format=torch.channels_last)), opt,
                                torch.nn.functional.cross_entropy,
                                step_context=lambda: autocast(torch.device("cpu"), precision))


def main(argv: list[str]) -> None:
    kv = dict(a.split("=", 1) for a in argv)
    if "threads" in kv:
        torch.set_num_threads(int(kv["threads"]))
    sizes = [int(s) for s in kv.get("sizes", "64,128,224").split(",")]
    limit, workers, batch = int(kv.get("limit", 256)), int(kv.get("workers", 2)), 32
    machine_peak()
    fields = []
    for size in sizes:
        s = run_pipeline(None, ["data.name=trashnet", f"data.image_size={size}", "data.pad_square=false",
                                f"data.limit={limit}", f"data.crop_padding={size // 8}", "data.crop_pad_mode=reflect",
                                "data.hflip=true", "data.color_jitter=0.2", "model.name=resnet18", "train.epochs=1",
                                f"train.batch_size={batch}", "optim.name=sgd", "optim.lr=0.01"])
        ours_rate, ours_out = s["timings"]["train_img_per_s"], s["timings"]["outside_step_fraction"]
        base_rate, base_out = baseline(size, s["train_size"], workers, s["precision"], batch)
        print(f"{size:>3} px, {s['train_size']} images, {s['precision']}: visionlab {ours_rate:6.1f} img/s, "
              f"{100 * ours_out:5.1f} % outside the step | ImageFolder + PIL, {workers} workers {base_rate:6.1f} img/s,"
              f" {100 * base_out:5.1f} % outside the step | {ours_rate / base_rate:.2f}x", flush=True)
        fields += [f"ours_outside_{size}={ours_out:.3f}", f"baseline_outside_{size}={base_out:.3f}",
                   f"speedup_{size}={ours_rate / base_rate:.2f}"]
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main(sys.argv[1:])
