"""Images in and out: loading, saving, resizing, cropping, masks and grids.

The one image convention of the project: NHWC float32 RGB in [0, 1]. This module (with `weights/`) is the only
place that knows about uint8, file formats, EXIF orientation, alpha and bit depth. Colour spaces and colour
preservation are in `nst_jax.color`.

Resizing follows what the reference implementations feed their nets: `load_image(size=...)` is torchvision's
`Resize(int)` on a PIL image (bilinear with antialiasing, the long side `int(size * long / short)`), as
pytorch-AdaIN's `--content_size`/`--style_size`. The array `resize` uses the same Pillow filters, so a NumPy
array and a JAX array (the latter jit-able) resize to the same values.
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import struct
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nst_jax.color import coral, rgb_to_yiq
from nst_jax.errors import ImageError, NstError
from nst_jax.files import atomic_write
from nst_jax.resample import resize
from nst_jax.typing import ArrayLike

# `nst_jax.image.coral` stays public (README, notebooks/blend_styles.ipynb); `resize` is this module's.
__all__ = [
    "IMAGE_EXTENSIONS", "adaptive_avg_pool", "aspect_ratios_differ", "center_crop", "center_crop_box", "coral",
    "expand_masks", "fit_mask", "fit_max_side", "from_uint8", "image_grid", "is_image_name", "list_images",
    "load_image", "load_mask", "masks_to_grid", "random_crop", "resize", "resize_max_side", "resize_shorter",
    "save_image", "shorter_side_hw", "to_rgb", "to_uint8",
]

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".pbm"}
)
# Relative tolerance on aspect ratios when a mask of another size is stretched over the content image.
ASPECT_TOLERANCE = 0.02

# ----------------------------------------------------------------------------------------------------
# uint8 <-> float


def to_uint8(img: ArrayLike) -> np.ndarray:
    """Float image(s) in [0, 1] (clipped) to uint8, rounding to nearest (as torchvision's save_image)."""
    a = np.asarray(img, dtype=np.float32)
    return np.rint(np.clip(a, 0.0, 1.0) * 255.0).astype(np.uint8)


def from_uint8(arr: ArrayLike) -> np.ndarray:
    """uint8 (0-255) to float32 in [0, 1]."""
    return np.asarray(arr, dtype=np.float32) / np.float32(255.0)


# ----------------------------------------------------------------------------------------------------
# Loading and saving


def _open(path: Path, max_pixels: int | None = None) -> Image.Image:
    """Open and fully decode an image; every failure (decompression bombs included) becomes ImageError.

    `max_pixels` raises (or lowers) the decompression-bomb guard for this file (default: Pillow's, 89.5 MP)."""
    limit = check_max_pixels(max_pixels)
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        raise ImageError(f"expected an image file, got a directory: {path}")
    try:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a warning would let a huge image through.
        with warnings.catch_warnings(), _pixel_limit(max_pixels):
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                im.load()
                return im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's own message quotes twice the limit above 2x; say the limit that was asked for.
        m = re.search(r"\((\d+) pixels\)", str(e))
        size, limit = f"{int(m.group(1)):,} pixels" if m else "too many pixels", limit or Image.MAX_IMAGE_PIXELS
        raise ImageError(f"refusing to decode {path}: {size}, over the limit of {limit:,} "
                         f"(--max-pixels raises the limit)") from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image (or an unsupported format): {path}") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error, TypeError, IndexError, KeyError,
            ZeroDivisionError, OverflowError, MemoryError, NotImplementedError, RuntimeError) as e:
        # Pillow's plugins raise all of these on corrupt files; some messages quote the file's bytes
        detail = " ".join(str(e).split())[:160] or type(e).__name__
        raise ImageError(f"cannot read image {path}: {detail}") from None


def check_max_pixels(max_pixels: Any) -> int | None:
    """`max_pixels` as a whole number of pixels >= 1 (None: Pillow's guard); ImageError for anything else."""
    if max_pixels is None:
        return None
    if (isinstance(max_pixels, int | float | np.integer | np.floating) and not isinstance(max_pixels, bool)
            and math.isfinite(max_pixels) and max_pixels >= 1):
        return int(max_pixels)
    raise ImageError(f"max_pixels (--max-pixels) must be a positive, finite number of pixels, got {max_pixels!r}")


def _as_path(path: Any) -> Path:
    if not isinstance(path, str | os.PathLike) or not str(path):
        raise ImageError(f"an image path must be a non-empty str or os.PathLike, got {path!r}")
    return Path(path)


@contextlib.contextmanager
def _pixel_limit(max_pixels: int | None) -> Iterator[None]:
    # Pillow warns above MAX_IMAGE_PIXELS (an error here) and refuses above twice that.
    old = Image.MAX_IMAGE_PIXELS
    if max_pixels is not None:
        Image.MAX_IMAGE_PIXELS = int(max_pixels)
    try:
        yield
    finally:
        Image.MAX_IMAGE_PIXELS = old


def load_uint8(path: str | os.PathLike, *, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file once as (H, W, 3) uint8 RGB at its own size (big files: a quarter of float32's memory;
    tiled stylization converts tiles to float on the fly). As `load_image` otherwise (EXIF, alpha on white).

    Raises:
      ImageError: as `load_image`; more than `max_pixels` pixels (default: Pillow's guard, 89.5 MP).
    """
    im = to_rgb(_open(_as_path(path), max_pixels))
    return np.asarray(im, np.uint8)


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _is_high_depth(im: Image.Image) -> bool:
    return im.mode.startswith("I;16") or im.mode in ("I", "F")


def _high_depth_rgb(im: Image.Image) -> np.ndarray:
    """16-bit or float grayscale as (H, W, 3) float32 in [0, 1] (16-bit scaled by 1/65535, float clipped)."""
    a = np.asarray(im).astype(np.float32)
    if im.mode != "F":
        a = a / np.float32(65535.0)
    return np.repeat(np.clip(a, 0.0, 1.0)[:, :, None], 3, axis=2)


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL image as 8-bit RGB: alpha composited on white, 16-bit and float grayscale rounded to 8 bits.

    `load_image` keeps 16-bit precision instead (it returns floats); the training data and the live server's
    decoders use this.
    """
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    if _is_high_depth(im):
        return Image.fromarray(np.rint(_high_depth_rgb(im) * 255).astype(np.uint8), "RGB")
    return im.convert("RGB")


def is_image_name(name: str) -> bool:
    """Whether a file name looks like an image: a known extension (any case), not hidden (no leading dot)."""
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def shorter_side_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes `size`, the longer `int(size * long / short)`."""
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, max(int(size * long / short), 1)
    return (new_short, new_long) if h <= w else (new_long, new_short)


def _long_side_hw(h: int, w: int, size: int, rounding) -> tuple[int, int]:
    """The longer side set to `size`, the other scaled with it (rounded by `rounding`, at least 1)."""
    if h >= w:
        return size, max(rounding(size * w / h), 1)
    return max(rounding(size * h / w), 1), size


def _max_side_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """The longer side capped at `size`, keeping the aspect ratio (torchvision's max_size rounding)."""
    if max(h, w) <= size:
        return h, w
    return _long_side_hw(h, w, size, int)


def center_crop_box(h: int, w: int, th: int, tw: int) -> tuple[int, int]:
    """torchvision CenterCrop's (top, left) offsets of a th x tw window in an h x w image."""
    if th > h or tw > w:
        raise ValueError(f"crop {th}x{tw} is larger than the image {h}x{w}")
    return int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))


def load_image(path: str | os.PathLike, *, size: int | None = None, max_side: int | None = None,
               crop: bool = False, max_pixels: int | None = None) -> np.ndarray:
    """Read an image file as a batch of one NHWC float32 RGB image in [0, 1].

    EXIF orientation is applied, alpha is composited on white, grayscale becomes RGB, 16-bit grayscale
    keeps its precision. Pillow's decompression-bomb limit stays on.

    Args:
      path: the image file.
      size: resize the shorter side to `size` (torchvision `Resize(size)`: bilinear, antialiased).
      max_side: then cap the longer side at `max_side` (never enlarges).
      crop: after resizing, centre-crop to `size` x `size` (torchvision `CenterCrop`); needs `size`.
      max_pixels: the decompression-bomb guard (None: Pillow's 89.5 megapixels).

    Returns:
      (1, H, W, 3) float32.

    Raises:
      ImageError: the file is missing, not an image, corrupt, truncated, or too large to decode safely.
    """
    if crop and size is None:
        raise ValueError("crop=True needs size")
    if size is not None and size < 1 or max_side is not None and max_side < 1:
        raise ValueError(f"size and max_side must be positive, got size={size}, max_side={max_side}")
    path = _as_path(path)
    im = _open(path, max_pixels)
    # 16-bit and float grayscale keep their precision as floats; everything else is 8-bit RGB in Pillow.
    img = _high_depth_rgb(im) if _is_high_depth(im) else to_rgb(im)
    if isinstance(img, Image.Image):
        # 8-bit images resize in Pillow exactly as torchvision does on PIL images (the reference pipelines).
        w, h = img.size
        if size is not None:
            nh, nw = shorter_side_hw(h, w, size)
            if (nh, nw) != (h, w):
                img = img.resize((nw, nh), Image.Resampling.BILINEAR)
                h, w = nh, nw
        if crop:
            top, left = center_crop_box(h, w, size, size)
            img = img.crop((left, top, left + size, top + size))
            h = w = size
        if max_side is not None:
            nh, nw = _max_side_hw(h, w, max_side)
            if (nh, nw) != (h, w):
                img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        return from_uint8(np.asarray(img))[None]
    x = img[None]
    if size is not None:
        x = resize_shorter(x, size)
    if crop:
        x = center_crop(x, size)
    if max_side is not None:
        x = resize_max_side(x, max_side)
    return np.ascontiguousarray(x, dtype=np.float32)


def _save_format(path: Path) -> str:
    ext = path.suffix.lower()
    fmt = Image.registered_extensions().get(ext)
    if fmt is None or fmt not in Image.SAVE:
        raise ImageError(f"cannot save {path}: unknown image extension {ext or '(none)'!r}; use .png or .jpg")
    return fmt


def save_image(path: str | os.PathLike, img: ArrayLike, *, overwrite: bool = False) -> Path:
    """Write one image atomically (temporary file + rename); the format follows the extension.

    Args:
      path: output file (.png, .jpg, ...); parent directories are created.
      img: (H, W, 3) or (1, H, W, 3) float in [0, 1] (clipped), NumPy or JAX; or uint8, written as it is.
      overwrite: replace an existing file; otherwise an existing file is an error.

    Returns:
      the path written.

    Raises:
      ImageError: the file exists (and not `overwrite`), the extension is unknown, or writing failed.
    """
    path = Path(path)
    fmt = _save_format(path)
    a = np.asarray(img)
    if a.ndim == 4 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 3 or a.shape[-1] != 3:
        raise ValueError(f"save_image expects (H, W, 3) or (1, H, W, 3), got {a.shape}")
    if path.exists() and not overwrite:
        raise ImageError(f"{path} exists (pass overwrite=True to replace it)")
    pil = Image.fromarray(a if a.dtype == np.uint8 else to_uint8(a))
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    try:
        atomic_write(path, lambda f: pil.save(f, format=fmt, **options), overwrite=overwrite)
    except (OSError, ValueError, KeyError) as e:
        raise ImageError(f"cannot write {path}: {e}") from None
    return path


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files (by extension, case-insensitive, hidden files skipped) directly inside `directory`, sorted.

    Raises:
      ImageError: `directory` is not a directory or holds no image files.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ImageError(f"not a directory: {d}")
    files = sorted(p for p in d.iterdir() if p.is_file() and is_image_name(p.name))
    if not files:
        raise ImageError(f"no image files in {d} (looked for {', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def load_mask(path: str | os.PathLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """Read a mask as (H, W) float32 in [0, 1]: the image's luminance (alpha composited on white), white = 1.

    Args:
      path: the mask image.
      shape: (h, w) to resize to (bilinear), e.g. the content image's size.
    """
    img = load_image(path)
    m = rgb_to_yiq(img)[..., :1]
    if shape is not None and tuple(shape) != m.shape[1:3]:
        m = resize(m, tuple(shape), "bilinear")
    return np.clip(m[0, :, :, 0], 0.0, 1.0).astype(np.float32)


# ----------------------------------------------------------------------------------------------------
# Resizing and cropping (NHWC, NumPy or JAX; `resize` itself is `nst_jax.resample.resize`)


def resize_shorter(img: ArrayLike, size: int, method: str = "bilinear") -> ArrayLike:
    """Resize NHWC images so the shorter side is `size` (torchvision `Resize(int)` rounding)."""
    return resize(img, shorter_side_hw(img.shape[1], img.shape[2], size), method)


def resize_max_side(img: ArrayLike, size: int, method: str = "bilinear") -> ArrayLike:
    """Shrink NHWC images so the longer side is at most `size`; never enlarges (see `fit_max_side`)."""
    return resize(img, _max_side_hw(img.shape[1], img.shape[2], size), method)


def fit_max_side(img: ArrayLike, size: int, method: str = "bilinear") -> np.ndarray:
    """Resize NHWC images so the longer side is exactly `size`: may enlarge (unlike `resize_max_side`).

    The other side keeps the aspect ratio, rounded to nearest (Gatys' multi-scale sizes).

    Returns:
      (N, h, w, C) float32 NumPy array.
    """
    hw = _long_side_hw(img.shape[1], img.shape[2], size, lambda x: int(round(x)))
    return np.asarray(resize(np.asarray(img, np.float32), hw, method))


def _hw(size_or_hw: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size_or_hw, int | np.integer):
        return int(size_or_hw), int(size_or_hw)
    th, tw = size_or_hw
    return int(th), int(tw)


def center_crop(img: ArrayLike, size_or_hw: int | Sequence[int]) -> ArrayLike:
    """Centre crop NHWC images to `size` x `size` or (h, w), with torchvision CenterCrop's offsets."""
    th, tw = _hw(size_or_hw)
    top, left = center_crop_box(img.shape[1], img.shape[2], th, tw)
    return img[:, top:top + th, left:left + tw, :]


def random_crop(img: ArrayLike, size_or_hw: int | Sequence[int], rng: np.random.Generator) -> ArrayLike:
    """Crop NHWC images (one window for the whole batch) at a uniformly random position drawn from `rng`."""
    th, tw = _hw(size_or_hw)
    h, w = img.shape[1], img.shape[2]
    if th > h or tw > w:
        raise ValueError(f"crop {th}x{tw} is larger than the image {h}x{w}")
    top = int(rng.integers(0, h - th + 1))
    left = int(rng.integers(0, w - tw + 1))
    return img[:, top:top + th, left:left + tw, :]


# ----------------------------------------------------------------------------------------------------
# Masks (spatial control: one (H, W) mask in [0, 1] per style)


def aspect_ratios_differ(hw: tuple[int, int], other_hw: tuple[int, int],
                         tolerance: float = ASPECT_TOLERANCE) -> bool:
    """Whether two (h, w) sizes differ in aspect ratio by more than `tolerance` (relative), e.g. mask and content."""
    return abs((hw[1] / hw[0]) / (other_hw[1] / other_hw[0]) - 1.0) > tolerance


def fit_mask(mask: ArrayLike, hw: tuple[int, int]) -> np.ndarray:
    """Stretch an (H, W) mask to (h, w) (bilinear, only if the size differs) and clip it to [0, 1]: float32."""
    m = np.asarray(mask, np.float32)
    if m.shape != tuple(hw):
        m = np.asarray(resize(m[None, :, :, None], tuple(hw), "bilinear"))[0, :, :, 0]
    return np.clip(m, 0.0, 1.0)


def expand_masks(masks: Sequence[Any], n_styles: int) -> list:
    """One mask for two styles means white = the first style, black = the second (the Lua original's `-mask`)."""
    if len(masks) == 1 and n_styles == 2:
        m = np.asarray(masks[0], np.float32)
        return [m, np.float32(1.0) - m]
    return list(masks)


def adaptive_avg_pool(mask: np.ndarray, hw: tuple[int, int]) -> np.ndarray:
    """Average a (H, W) mask onto an (h, w) grid (torch's adaptive_avg_pool2d bins: floor start, ceil end)."""
    H, W = mask.shape
    h, w = hw
    rows = [(i * H // h, -(-(i + 1) * H // h)) for i in range(h)]
    cols = [(j * W // w, -(-(j + 1) * W // w)) for j in range(w)]
    c = np.zeros((H + 1, W + 1), np.float64)
    c[1:, 1:] = np.cumsum(np.cumsum(mask.astype(np.float64), 0), 1)
    r0, r1 = np.array(rows).T
    c0, c1 = np.array(cols).T
    total = c[r1][:, c1] - c[r0][:, c1] - c[r1][:, c0] + c[r0][:, c0]
    area = np.outer(r1 - r0, c1 - c0)
    return (total / area).astype(np.float32)


def masks_to_grid(masks: Sequence[Any], content_hw: tuple[int, int], grid_hw: tuple[int, int],
                  n_styles: int) -> np.ndarray:
    """Prepare spatial-control masks: check count and shape, stretch to the content, average onto the grid.

    Args:
      masks: one (H, W) array in [0, 1] per style; or, for exactly 2 styles, a single mask (white = first
        style, black = second, as the Lua original's `-mask`). A mask of another size than the content must
        have the same aspect ratio (within 2%); it is resized (bilinear) to the content's size.
      content_hw: the content image's (H, W).
      grid_hw: the feature grid (h, w) the masks are averaged onto (AdaIN: relu4_1's).
      n_styles: number of styles.

    Returns:
      (h, w, K) float32 weights.

    Raises:
      NstError: wrong count; ImageError: a mask whose shape does not match the content.
    """
    ms = expand_masks([np.asarray(m, np.float32) for m in masks], n_styles)
    if len(ms) != n_styles:
        raise NstError(f"got {len(masks)} masks for {n_styles} styles: give one mask per style"
                       + (" (or one mask for two styles)" if n_styles == 2 else ""))
    H, W = content_hw
    out = []
    for i, m in enumerate(ms):
        m = np.squeeze(m)
        if m.ndim != 2:
            raise ImageError(f"mask {i + 1} must be a single-channel (H, W) image, got shape "
                             f"{np.shape(masks[i])}")
        if not np.all(np.isfinite(m)) or m.min() < 0 or m.max() > 1:
            raise ImageError(f"mask {i + 1} must hold values in [0, 1]")
        if m.shape != (H, W) and aspect_ratios_differ(m.shape, (H, W)):
            raise ImageError(f"mask {i + 1} is {m.shape[1]}x{m.shape[0]} but the content image is "
                             f"{W}x{H}: their aspect ratios differ")
        out.append(adaptive_avg_pool(fit_mask(m, (H, W)), grid_hw))
    return np.stack(out, axis=-1)


# ----------------------------------------------------------------------------------------------------
# Grids


def image_grid(rows: Sequence[Sequence[ArrayLike]] | Sequence[ArrayLike], pad: int = 2,
               pad_value: float = 1.0) -> np.ndarray:
    """Tile images into one (H, W, 3) float32 image, for sample grids and notebooks.

    Args:
      rows: a list of rows (lists of images) or a flat list (one row). Images are (H, W, 3), (1, H, W, 3) or
        (H, W) (grayscale, e.g. masks), of any sizes; each sits centred in a cell the size of the largest.
      pad: pixels between cells and around the border.
      pad_value: the background grey level.
    """
    if len(rows) == 0:
        raise ValueError("image_grid needs at least one image")
    first = rows[0]
    if not isinstance(first, list | tuple):
        rows = [rows]

    def as_hw3(im):
        a = np.asarray(im, np.float32)
        if a.ndim == 4 and a.shape[0] == 1:
            a = a[0]
        if a.ndim == 2:
            a = a[:, :, None]
        if a.ndim != 3 or a.shape[-1] not in (1, 3):
            raise ValueError(f"image_grid: cannot show an array of shape {np.shape(im)}")
        return np.broadcast_to(a, a.shape[:2] + (3,))

    cells = [[as_hw3(im) for im in row] for row in rows]
    ch = max(im.shape[0] for row in cells for im in row)
    cw = max(im.shape[1] for row in cells for im in row)
    ncols = max(len(row) for row in cells)
    out = np.full((pad + len(cells) * (ch + pad), pad + ncols * (cw + pad), 3), pad_value, np.float32)
    for r, row in enumerate(cells):
        for c, im in enumerate(row):
            y = pad + r * (ch + pad) + (ch - im.shape[0]) // 2
            x = pad + c * (cw + pad) + (cw - im.shape[1]) // 2
            out[y:y + im.shape[0], x:x + im.shape[1]] = np.clip(im, 0.0, 1.0)
    return out
