"""Robust image decoding: any PIL mode -> uint8 RGB/L arrays, EXIF orientation, letterbox, resize.

Bad files (empty, truncated, not an image) raise DecodeError with a short reason; callers skip and report them.
"""
from __future__ import annotations

import functools
import multiprocessing as mp
import os
import re
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ..utils import ConfigError, UserError

IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm", ".pnm"}
POOL_MIN_FILES = 1500        # below this a process pool costs more than it saves
CHUNK = 256
# Decompression bombs: a 140 KB PNG can declare 12000x12000 px (~0.5 GB decoded). 40 Mpx is above any photo a
# phone or DSLR takes (a 24 Mpx DSLR frame is 6000x4000) and well below Pillow's own 179 Mpx error.
MAX_PIXELS = 40_000_000
MAX_PIXELS_ENV = "VISIONLAB_MAX_PIXELS"
ORIENTATION_TAG = 0x0112     # EXIF orientation: 5-8 = the stored pixels are rotated by 90 degrees


class DecodeError(Exception):
    """A file that cannot be decoded into an image; ``str(e)`` is a short reason for the skip report."""


def max_pixels() -> int:
    """The largest image (width x height) that visionlab decodes: $VISIONLAB_MAX_PIXELS, else MAX_PIXELS; 0 = any."""
    raw = os.environ.get(MAX_PIXELS_ENV, "").strip()
    if not raw:
        return MAX_PIXELS
    try:
        value = int(float(raw.replace("_", "")))
    except ValueError:
        raise ConfigError(f"{MAX_PIXELS_ENV}={raw!r}: expected a number of pixels, e.g. {MAX_PIXELS_ENV}=100000000 "
                          f"(0 = no limit; unset = {MAX_PIXELS:,})") from None
    return max(value, 0)


def apply_max_pixels() -> int:
    """Make Pillow itself refuse bombs at our limit (it raises above 2x Image.MAX_IMAGE_PIXELS); returns the limit."""
    limit = max_pixels()
    Image.MAX_IMAGE_PIXELS = limit or None
    return limit


def too_large(pixels: int | None, size: tuple[int, int] | None = None) -> str:
    """The refusal text for an image over the pixel limit (a skip reason, or part of a predict/app message)."""
    what = f"{size[0]}x{size[1]} = {pixels / 1e6:.1f} Mpx" if size else f"{(pixels or 0) / 1e6:.1f} Mpx"
    return (f"too large: {what}, over the {max_pixels() / 1e6:g} Mpx limit against decompression bombs; "
            f"set {MAX_PIXELS_ENV}=N to allow larger images")


def check_pixels(im: Image.Image, name: str = "") -> None:
    """Raise DecodeError when an opened (not yet loaded) image declares more pixels than max_pixels(); ``name``,
    when given, starts the message (skip reports leave it out: they name the file themselves)."""
    limit = max_pixels()
    w, h = im.size
    if limit and w * h > limit:
        raise DecodeError((f"{name}: " if name else "") + too_large(w * h, (w, h)))


try:
    apply_max_pixels()
except ConfigError:                 # a bad $VISIONLAB_MAX_PIXELS is reported where an image is opened
    pass


def preprocess_dict(cfg) -> dict:
    """The preprocessing parameters of a DataConfig, as stored in Splits.preprocess."""
    return {"image_size": int(cfg.image_size), "pad_square": bool(cfg.pad_square), "grayscale": bool(cfg.grayscale)}


def _to_8bit(arr: np.ndarray) -> np.ndarray:
    """Scale a 16/32-bit or float single-channel array to uint8 by its value range (not clipping)."""
    if arr.dtype == np.uint8:
        return arr
    a = arr.astype(np.float64)
    hi = float(a.max()) if a.size else 0.0
    lo = float(a.min()) if a.size else 0.0
    if np.issubdtype(arr.dtype, np.floating):
        a = a * 255.0 if (lo >= 0 and hi <= 1.0) else (a - lo) / max(hi - lo, 1e-12) * 255.0
    elif arr.dtype.itemsize == 2 or (lo >= 0 and 255 < hi <= 65535):
        a = a / 257.0                     # 16-bit: the full range 0..65535 -> 0..255, whatever this image's max
    elif lo >= 0 and hi <= 255:
        pass                              # 32-bit container holding 8-bit values
    else:
        a = (a - lo) / max(hi - lo, 1.0) * 255.0
    return np.clip(np.rint(a), 0, 255).astype(np.uint8)


def _on_white(im: Image.Image) -> Image.Image:
    rgba = im.convert("RGBA")
    bg = Image.new("RGB", im.size, (255, 255, 255))
    bg.paste(rgba, mask=rgba.getchannel("A"))
    return bg


def to_rgb_or_l(im: Image.Image, grayscale: bool) -> Image.Image:
    """Convert any PIL mode to 'RGB' (or 'L'): transparency composited on white, 16-bit scaled to 8-bit."""
    mode = im.mode
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        im = Image.fromarray(_to_8bit(np.asarray(im)))
    elif mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA") if "transparency" in im.info else im.convert("RGB")
    elif mode in ("RGB", "L") and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        im = _on_white(im)
    target = "L" if grayscale else "RGB"
    return im if im.mode == target else im.convert(target)


def letterbox(im: Image.Image) -> Image.Image:
    """Pad to a square, centred, with the image's mean colour (less of an edge than black)."""
    w, h = im.size
    if w == h:
        return im
    s = max(w, h)
    mean = np.asarray(im).reshape(-1, len(im.getbands())).mean(0)
    fill = int(round(mean[0])) if im.mode == "L" else tuple(int(round(m)) for m in mean)
    out = Image.new(im.mode, (s, s), fill)
    out.paste(im, ((s - w) // 2, (s - h) // 2))
    return out


LETTERBOX_FILL = 114        # the grey of detection canvases (YOLO's convention)


def letterbox_scale(h: int, w: int, size: int) -> float:
    """The factor that fits an h x w image into a size x size letterbox canvas (long side = size). Boxes on the
    canvas are the image's boxes times this; a box predicted on the canvas maps back as box / scale."""
    return size / max(h, w)


def letterbox_size(h: int, w: int, size: int) -> tuple[int, int]:
    """(H, W) of an h x w image inside a size x size letterbox canvas (the rest of the canvas is padding)."""
    s = letterbox_scale(h, w, size)
    return max(1, round(h * s)), max(1, round(w * s))


def letterbox_top_left(im: Image.Image, size: int) -> Image.Image:
    """Resize (bilinear, antialiased when shrinking) so the long side is ``size``, aspect kept, onto the top-left of a
    size x size canvas filled with grey 114 (detection sources: boxes only scale, never shift)."""
    w, h = im.size
    nh, nw = letterbox_size(h, w, size)
    if (nw, nh) != (w, h):
        im = im.resize((nw, nh), Image.BILINEAR)      # PIL's bilinear widens its support when shrinking
    if (nw, nh) == (size, size):
        return im
    out = Image.new(im.mode, (size, size), LETTERBOX_FILL if im.mode == "L" else (LETTERBOX_FILL,) * 3)
    out.paste(im, (0, 0))
    return out


def _open(path) -> Image.Image:
    apply_max_pixels()                                # the limit of now ($VISIONLAB_MAX_PIXELS may have changed)
    try:
        if os.path.getsize(path) == 0:
            raise DecodeError("empty file (0 bytes)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")           # corrupt EXIF etc. warn; we judge by load() below
            im = Image.open(path)
            check_pixels(im)                          # from the header, before a single pixel is decoded
            im.load()
    except DecodeError:
        raise
    except FileNotFoundError:
        raise DecodeError("file not found") from None
    except PermissionError:
        raise DecodeError("permission denied (not readable by this user)") from None
    except IsADirectoryError:
        raise DecodeError("a folder, not an image file") from None
    except UnidentifiedImageError:
        raise DecodeError("not an image (unrecognized format)") from None
    except Image.DecompressionBombError as e:
        pixels = re.search(r"\((\d+) pixels\)", str(e))
        raise DecodeError(too_large(int(pixels.group(1)) if pixels else None)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        msg = str(e) or type(e).__name__
        reason = "truncated" if "truncat" in msg.lower() else "corrupt"
        raise DecodeError(f"{reason}: {msg}"[:160]) from None
    try:
        im = ImageOps.exif_transpose(im)
    except Exception:                                 # broken EXIF: keep the pixels as stored
        pass
    return im


def short_side_size(h: int, w: int, short_side: int) -> tuple[int, int]:
    """(H, W) with the short side = ``short_side`` and the aspect ratio kept (0 keeps the size)."""
    if not short_side:
        return h, w
    s = short_side / min(h, w)
    return (short_side, max(1, round(w * s))) if h <= w else (max(1, round(h * s)), short_side)


def load_image(path, preprocess: dict) -> np.ndarray:
    """Decode one file into uint8 HWC (C = 3, or 1 when grayscale); raises DecodeError for bad files."""
    return prepare_image(_open(path), preprocess)


def prepare_image(im: Image.Image, preprocess: dict) -> np.ndarray:
    """A decoded image as the data pipeline makes a sample of it (uint8 HWC). ``preprocess`` is Splits.preprocess:
    image_size (0 = native, N = NxN, or [H, W]), short_side (segmentation sources: resize so the short side is N,
    aspect kept), letterbox (detection sources: long side N at the top-left of an NxN grey canvas), pad_square,
    grayscale."""
    im = to_rgb_or_l(im, bool(preprocess.get("grayscale")))
    if preprocess.get("letterbox"):
        im = letterbox_top_left(im, int(preprocess["letterbox"]))
    if preprocess.get("pad_square"):
        im = letterbox(im)
    short = int(preprocess.get("short_side") or 0)
    if short:
        h, w = short_side_size(im.size[1], im.size[0], short)
        if im.size != (w, h):
            im = im.resize((w, h), Image.BILINEAR)
    size = preprocess.get("image_size") or 0
    wh = (int(size[1]), int(size[0])) if isinstance(size, (list, tuple)) else (int(size), int(size))
    if size and im.size != wh:
        im = im.resize(wh, Image.BILINEAR)            # PIL's bilinear widens its support when shrinking
    arr = np.asarray(im, dtype=np.uint8)
    return arr[:, :, None] if arr.ndim == 2 else arr


def try_load(path, preprocess: dict):
    """(array, None) or (None, reason): never raises for a bad file."""
    try:
        return load_image(path, preprocess), None
    except DecodeError as e:
        return None, str(e)
    except UserError:                                 # a bad $VISIONLAB_MAX_PIXELS: not this file's fault
        raise
    except Exception as e:                            # anything else PIL throws at a hostile file
        return None, f"unreadable: {type(e).__name__}: {e}"[:160]


def verify(path) -> str | None:
    """None when the file decodes fully (the lazy path's check), else the reason it would be skipped."""
    try:
        to_rgb_or_l(_open(path), False)
        return None
    except DecodeError as e:
        return str(e)
    except UserError:
        raise
    except Exception as e:
        return f"unreadable: {type(e).__name__}: {e}"[:160]


def _verify_chunk(paths):
    return [verify(p) for p in paths]


def verify_files(paths: list[str], workers: int | None = None) -> list:
    """Fully decode (and drop) many files in a process pool: a reason per file, None for good ones."""
    return map_files(_verify_chunk, list(paths), workers)


def probe(path, oriented: bool = False) -> tuple[tuple[int, int] | None, str | None]:
    """Cheap header check: ((width, height), None) or (None, reason). Truncation is only found by decoding.
    ``oriented``: the size as decoded, after the EXIF orientation (width and height swap for a rotated photo)."""
    try:
        if os.path.getsize(path) == 0:
            return None, "empty file (0 bytes)"
        with Image.open(path) as im:
            rotated = oriented and im.getexif().get(ORIENTATION_TAG) in (5, 6, 7, 8)
            return (im.size[::-1] if rotated else im.size), None
    except UnidentifiedImageError:
        return None, "not an image (unrecognized format)"
    except Exception as e:
        return None, f"unreadable: {e}"[:160]


def _probe_chunk(paths, oriented=False):
    return [probe(p, oriented) for p in paths]


def probe_files(paths: list[str], oriented: bool = False, workers: int | None = None) -> list:
    """probe() of many files (a process pool for many): ((width, height), None) or (None, reason) per file."""
    return map_files(functools.partial(_probe_chunk, oriented=oriented), list(paths), workers)


def _load_chunk(paths, preprocess):
    res = [try_load(p, preprocess) for p in paths]
    shapes = {a.shape for a, _ in res if a is not None}
    if len(shapes) == 1:                  # one stacked array pickles back far cheaper than many small ones
        return [(np.stack([a for a, _ in res if a is not None]), [r for _, r in res])]
    return [(None, res)]


def _run_chunks(fn_chunk, items: list, workers: int | None) -> list:
    chunks = [items[i:i + CHUNK] for i in range(0, len(items), CHUNK)]
    workers = min(workers or os.cpu_count() or 1, 8)
    if len(items) < POOL_MIN_FILES or workers < 2:
        return [fn_chunk(c) for c in chunks]
    with mp.get_context().Pool(workers) as pool:
        return list(pool.imap(fn_chunk, chunks))


def map_files(fn_chunk, items: list, workers: int | None = None) -> list:
    """Apply a per-chunk function over ``items`` in a process pool (serially when small), keeping order."""
    return [r for rs in _run_chunks(fn_chunk, items, workers) for r in rs]


def decode_files(paths: list[str], preprocess: dict, workers: int | None = None):
    """Decode many files (process pool over all cores): list of (array or None, reason or None)."""
    out = []
    for stacked, res in map_files(functools.partial(_load_chunk, preprocess=dict(preprocess)), list(paths), workers):
        if stacked is None:
            out.extend(res)
            continue
        it = iter(stacked)
        out.extend((None, r) if r is not None else (next(it), None) for r in res)
    return out


def convert_array(images: np.ndarray, preprocess: dict) -> np.ndarray:
    """Apply grayscale / resize preprocessing to uint8 NHWC arrays (array sources like MNIST, CIFAR)."""
    if preprocess.get("grayscale") and images.shape[3] == 3:
        w = np.array([299, 587, 114], dtype=np.uint32)   # ITU-R 601-2 luma weights, as PIL's convert("L")
        images = ((images.astype(np.uint32) @ w + 500) // 1000).astype(np.uint8)[..., None]
    size = int(preprocess.get("image_size") or 0)
    if size and images.shape[1:3] != (size, size):
        gray = images.shape[3] == 1
        out = np.empty((len(images), size, size, images.shape[3]), np.uint8)
        for i, a in enumerate(images):
            im = Image.fromarray(a[..., 0] if gray else a)
            out[i] = np.asarray(im.resize((size, size), Image.BILINEAR)).reshape(size, size, -1)
        images = out
    return images
