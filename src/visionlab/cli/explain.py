"""CLI mode `visionlab explain RUN_DIR IMAGE... [method=gradcam|cam] [layer=NAME] [class=NAME|pred] [out=DIR]`."""
from __future__ import annotations

from .args import split_options
from ..utils import ConfigError, UserError

USAGE = "usage: visionlab explain RUN_DIR IMAGE [IMAGE ...] [method=gradcam|cam] [layer=NAME] [class=NAME|pred] " \
        "[out=DIR]"
OPTIONS = ("method", "layer", "class", "out")


def cmd_explain(args: list[str]) -> int:
    """Write a heatmap overlay PNG per image (default folder RUN_DIR/explain) and print the paths."""
    from ..views.cam_gallery import explain_images
    from ..explain import METHODS

    pos, kv = split_options(args, "explain", OPTIONS, USAGE)
    if len(pos) < 2:
        raise UserError(USAGE)
    method = kv.get("method", "gradcam")
    if method not in METHODS:
        raise ConfigError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    paths = explain_images(pos[0], pos[1:], method=method, layer=kv.get("layer") or None,
                           target=kv.get("class"), out=kv.get("out"))
    for p in paths:
        print(p)
    return 0
