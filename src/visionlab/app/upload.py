"""An upload decoded once: refused above a pixel limit before any pixel is decoded, decoded reduced when it is far
larger than anything the app shows or the model sees, then turned into the model's input and the picture shown."""
from __future__ import annotations

import math
import os
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..data.decode import apply_max_pixels, prepare_image, to_rgb_or_l, too_large
from ..utils import UserError

DECODE_MAX = 2048           # longest side kept when decoding: 3x the shown picture, 9x a 224 px model input


class TooLarge(UserError):
    """An image over the project's pixel limit (data.decode.max_pixels(): a decompression bomb, or just too big)."""


def _check_size(w: int, h: int, limit: int) -> None:
    if limit and w * h > limit:
        raise TooLarge(too_large(w * h, (w, h)))


def _reduced(im: Image.Image) -> Image.Image:
    """Shrink while decoding (JPEG DCT scaling via draft), else by whole-factor box averaging right after."""
    w, h = im.size
    scale = DECODE_MAX / max(w, h)
    if scale >= 0.5:                        # at most 2x too big: decode as is, like `visionlab predict`
        im.load()
        return im
    im.draft(None, (math.ceil(w * scale), math.ceil(h * scale)))       # JPEG only; others ignore it
    im.load()
    factor = max(im.size) // DECODE_MAX
    if factor < 2:
        return im
    if im.mode not in ("L", "RGB", "RGBA", "LA", "I", "F"):   # modes reduce() supports; others convert first
        im = to_rgb_or_l(im, False)
    return im.reduce(factor)


def open_upload(path) -> Image.Image:
    """Decode an uploaded file once into a PIL image (EXIF turn applied). Raises TooLarge over the pixel limit (read
    from the header, before decoding) and UserError with the reason for an empty, truncated or non-image file."""
    limit = apply_max_pixels()                      # the limit of now, also made Pillow's (data.decode)
    try:
        if os.path.getsize(path) == 0:
            raise UserError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")         # Pillow's bomb warning: the explicit limit below decides
            im = Image.open(path)
            _check_size(*im.size, limit)
            im = _reduced(im)
    except UserError:
        raise
    except Image.DecompressionBombError as e:       # over Pillow's hard limit (2x Image.MAX_IMAGE_PIXELS), at open
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise TooLarge(too_large(int(pixels.group(1)) if pixels else None)) from None
    except UnidentifiedImageError:
        raise UserError("not an image (unrecognized format)") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        raise UserError(f"{'truncated' if 'truncat' in msg.lower() else 'corrupt'}: {msg}"[:160]) from None
    try:
        return ImageOps.exif_transpose(im)
    except Exception:                               # broken EXIF: keep the pixels as stored
        return im


def model_input(im: Image.Image, preprocess: dict) -> np.ndarray:
    """The run's preprocessing of a decoded image, exactly as data.decode.load_image applies it (uint8 HWC)."""
    return prepare_image(im, preprocess)
