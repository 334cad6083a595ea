"""Joint image/box transforms for detection batches, with torchvision transforms v2 and ``tv_tensors.BoundingBoxes``.

A batch arrives as the loaders yield it: uint8 images [B, S, S, C] (letterboxed, see data/detection.py) and float
boxes [B, M, 5] (x0, y0, x1, y1, class; class -1 rows are padding). ``BatchBoxAugment`` returns float images
[B, 3, S, S] in [0, 1] (1-channel images repeated to 3; detectors normalise themselves) and one target dict per image
({"boxes" float [K, 4], "labels" int64 [K]}). Training adds, per image: horizontal / vertical flips, a scale jitter
(a random zoom in or out about a random centre, canvas size kept, new area filled with the letterbox grey) and
photometric jitter; boxes that leave the canvas are clipped, and those left under 2 px wide or high are dropped
(``SanitizeBoundingBoxes``). The randomness is torch's global generator, whose state the engine checkpoints, so a
resumed run draws the same augmentations.
"""
from __future__ import annotations

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

FILL = 114                               # the letterbox grey (YOLO's), also for the area a zoom-out uncovers
MIN_BOX = 2.0                            # px: boxes narrower or lower than this after augmentation are dropped


def unpad(boxes: torch.Tensor) -> list[dict]:
    """[B, M, 5] padded rows -> one {"boxes" [K, 4], "labels" int64 [K]} per image (rows with class >= 0)."""
    out = []
    for b in boxes:
        keep = b[:, 4] >= 0
        out.append({"boxes": b[keep, :4].float(), "labels": b[keep, 4].long()})
    return out


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC -> float NCHW in [0, 1], 3 channels."""
    x = images.permute(0, 3, 1, 2).float().div_(255.0)
    return x.expand(-1, 3, -1, -1) if x.shape[1] == 1 else x


class BatchBoxAugment:
    def __init__(self, train: bool, hflip: bool = True, vflip: bool = False, scale: tuple = (0.75, 1.25),
                 jitter: float = 0.2):
        self.train = train
        steps = []
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
        if vflip:
            steps.append(v2.RandomVerticalFlip())
        if tuple(scale) != (1.0, 1.0):
            steps.append(v2.RandomAffine(degrees=0.0, translate=(0.1, 0.1), scale=tuple(scale), fill=FILL))
        if jitter > 0:
            steps.append(v2.ColorJitter(brightness=jitter, contrast=jitter, saturation=jitter))
        steps.append(v2.SanitizeBoundingBoxes(min_size=MIN_BOX))
        self.pipeline = v2.Compose(steps)

    def __call__(self, images: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, list[dict]]:
        targets = unpad(boxes)
        if not self.train:
            return to_float(images), targets
        chw = images.permute(0, 3, 1, 2)
        if chw.shape[1] == 1:
            chw = chw.expand(-1, 3, -1, -1)
        size = tuple(chw.shape[-2:])
        out_images, out_targets = [], []
        for img, t in zip(chw, targets):
            sample = self.pipeline({"image": tv_tensors.Image(img.contiguous()),
                                    "boxes": tv_tensors.BoundingBoxes(t["boxes"], format="XYXY", canvas_size=size),
                                    "labels": t["labels"]})
            out_images.append(sample["image"].as_subclass(torch.Tensor))
            out_targets.append({"boxes": sample["boxes"].as_subclass(torch.Tensor).float(),
                                "labels": sample["labels"]})
        return torch.stack(out_images).float().div_(255.0), out_targets
