"""`visionlab generate RUN_DIR [n=64] [class=NAME] [seed=S] [steps=K] [out=DIR]`: new images from a generative run,
one PNG each in OUT (default RUN_DIR/generated) and a grid in OUT-grid.png."""
from __future__ import annotations

from pathlib import Path

from ..utils import UserError, write_png
from .args import split_options
from .main import _int

USAGE = "usage: visionlab generate RUN_DIR [n=64] [class=NAME] [seed=0] [steps=K] [out=DIR]"


def cmd_generate(args: list[str]) -> int:
    from .. import api
    from ..tasks.generative.base import make_grid

    pos, kv = split_options(args, "generate", ("n", "class", "seed", "steps", "out"), USAGE)
    if len(pos) != 1:
        raise UserError(USAGE)
    n = _int(kv.pop("n", "64"), "n", minimum=1)
    seed = _int(kv.pop("seed", "0"), "seed", minimum=0)
    steps = kv.pop("steps", "")
    steps = _int(steps, "steps", minimum=1) if steps else None
    label = kv.pop("class", "") or None
    out = Path(kv.pop("out", "") or Path(pos[0]) / "generated")
    images = api.generate(pos[0], n, seed, label, steps)
    for i, im in enumerate(images):
        write_png(out / f"{label or 'sample'}_{seed}_{i:04d}.png", im)
    grid = out.with_name(out.name + "-grid.png")      # beside the folder: `visionlab fid OUT ...` reads samples only
    write_png(grid, make_grid(images))
    print(f"{len(images)} images ({images.shape[1]}x{images.shape[2]}) -> {out} (grid: {grid})")
    return 0
