"""Explanations: class activation maps (CAM, Grad-CAM) over any nn.Module, as heatmaps in [0, 1]."""
from .cam import (METHODS, CamResult, cam, class_scores, default_reshape, explain, find_target_layer, grad_cam, nchw,
                  nhwc_to_nchw, normalize_maps, overlay, tokens_to_nchw)

__all__ = ["METHODS", "CamResult", "cam", "class_scores", "default_reshape", "explain", "find_target_layer",
           "grad_cam", "nchw", "nhwc_to_nchw", "normalize_maps", "overlay", "tokens_to_nchw"]
