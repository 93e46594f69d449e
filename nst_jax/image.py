"""Images in and out: loading, saving, resizing, cropping, colour spaces and colour preservation.

The one image convention of the project: NHWC float32 RGB in [0, 1]. This module (with `weights/`) is the only
place that knows about uint8, file formats, EXIF orientation, alpha and bit depth.

Resizing follows what the reference implementations feed their nets: `load_image(size=...)` is torchvision's
`Resize(int)` on a PIL image (bilinear with antialiasing, the long side `int(size * long / short)`), as
pytorch-AdaIN's `--content_size`/`--style_size`. The array `resize` uses the same Pillow filters, so a NumPy
array and a JAX array (the latter jit-able) resize to the same values.

Colour preservation (Gatys et al. 2016, "Preserving color in neural artistic style transfer"):
- `luminance_transfer(stylized, content)`: the stylized image's luminance with the content's chroma (YIQ).
- `coral(source, target)`: recolour `source` so its RGB mean and covariance match `target`'s; with
  source=style and target=content before stylizing, this is pytorch-AdaIN's `--preserve_color`.
Colour functions accept NumPy or JAX arrays and return the same kind.
"""

from __future__ import annotations

import os
import struct
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from nst_jax.errors import ImageError

ArrayLike = np.ndarray | jax.Array

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pnm", ".pbm"}
)

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


def _open(path: Path) -> Image.Image:
    """Open and fully decode an image; every failure (decompression bombs included) becomes ImageError."""
    if not path.exists():
        raise ImageError(f"image not found: {path}")
    if path.is_dir():
        raise ImageError(f"expected an image file, got a directory: {path}")
    try:
        # Pillow only warns between MAX_IMAGE_PIXELS and twice that; a warning would let a huge image through.
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                im = ImageOps.exif_transpose(im)
                im.load()
                return im
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageError(f"refusing to decode {path}: {e}") from None
    except UnidentifiedImageError:
        raise ImageError(f"not an image (or an unsupported format): {path}") from None
    except (OSError, ValueError, SyntaxError, EOFError, struct.error) as e:
        raise ImageError(f"cannot read image {path}: {e}") from None


def _has_alpha(im: Image.Image) -> bool:
    return im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info


def _to_rgb(im: Image.Image) -> Image.Image | np.ndarray:
    """An 8-bit RGB PIL image, or for high-bit-depth/float grayscale a (H, W, 3) float32 array in [0, 1]."""
    if im.mode.startswith("I;16") or im.mode == "I":
        # 16-bit grayscale (PNG/TIFF): keep the precision that converting to "L" would throw away.
        a = np.asarray(im).astype(np.float32) / np.float32(65535.0)
        return np.repeat(np.clip(a, 0.0, 1.0)[:, :, None], 3, axis=2)
    if im.mode == "F":
        a = np.clip(np.asarray(im, dtype=np.float32), 0.0, 1.0)
        return np.repeat(a[:, :, None], 3, axis=2)
    if _has_alpha(im):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def _shorter_side_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """torchvision Resize(int): the shorter side becomes `size`, the longer `int(size * long / short)`."""
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, max(int(size * long / short), 1)
    return (new_short, new_long) if h <= w else (new_long, new_short)


def _max_side_hw(h: int, w: int, size: int) -> tuple[int, int]:
    """The longer side capped at `size`, keeping the aspect ratio (torchvision's max_size rounding)."""
    if max(h, w) <= size:
        return h, w
    if h >= w:
        return size, max(int(size * w / h), 1)
    return max(int(size * h / w), 1), size


def _crop_box(h: int, w: int, th: int, tw: int) -> tuple[int, int]:
    """torchvision CenterCrop's top/left offsets."""
    if th > h or tw > w:
        raise ValueError(f"crop {th}x{tw} is larger than the image {h}x{w}")
    return int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))


def load_image(path: str | os.PathLike, *, size: int | None = None, max_side: int | None = None,
               crop: bool = False) -> np.ndarray:
    """Read an image file as a batch of one NHWC float32 RGB image in [0, 1].

    EXIF orientation is applied, alpha is composited on white, grayscale becomes RGB, 16-bit grayscale
    keeps its precision. Pillow's decompression-bomb limit stays on.

    Args:
      path: the image file.
      size: resize the shorter side to `size` (torchvision `Resize(size)`: bilinear, antialiased).
      max_side: then cap the longer side at `max_side` (never enlarges).
      crop: after resizing, centre-crop to `size` x `size` (torchvision `CenterCrop`); needs `size`.

    Returns:
      (1, H, W, 3) float32.

    Raises:
      ImageError: the file is missing, not an image, corrupt, truncated, or too large to decode safely.
    """
    if crop and size is None:
        raise ValueError("crop=True needs size")
    if size is not None and size < 1 or max_side is not None and max_side < 1:
        raise ValueError(f"size and max_side must be positive, got size={size}, max_side={max_side}")
    path = Path(path)
    img = _to_rgb(_open(path))
    if isinstance(img, Image.Image):
        # 8-bit images resize in Pillow exactly as torchvision does on PIL images (the reference pipelines).
        w, h = img.size
        if size is not None:
            nh, nw = _shorter_side_hw(h, w, size)
            if (nh, nw) != (h, w):
                img = img.resize((nw, nh), Image.Resampling.BILINEAR)
                h, w = nh, nw
        if crop:
            top, left = _crop_box(h, w, size, size)
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


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_image(path: str | os.PathLike, img: ArrayLike, *, overwrite: bool = False) -> Path:
    """Write one image atomically (temporary file + rename); the format follows the extension.

    Args:
      path: output file (.png, .jpg, ...); parent directories are created.
      img: (H, W, 3) or (1, H, W, 3) float in [0, 1] (clipped), NumPy or JAX.
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
        raise ImageError(f"{path} exists; pass --overwrite to replace it")
    pil = Image.fromarray(to_uint8(a))
    options = {"quality": 95} if fmt in ("JPEG", "WEBP") else {}
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            pil.save(f, format=fmt, **options)
        # mkstemp creates 0600 files; give the output the permissions a plain open() would have.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
        tmp = None
    except (OSError, ValueError, KeyError) as e:
        raise ImageError(f"cannot write {path}: {e}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
    return path


def list_images(directory: str | os.PathLike) -> list[Path]:
    """Image files (by extension, case-insensitive, hidden files skipped) directly inside `directory`, sorted.

    Raises:
      ImageError: `directory` is not a directory or holds no image files.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ImageError(f"not a directory: {d}")
    files = sorted(p for p in d.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS)
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
# Resizing and cropping (NHWC, NumPy or JAX)

_FILTERS = {"bilinear": (Image.Resampling.BILINEAR, 1.0), "area": (Image.Resampling.BOX, 0.5)}


def _filter_weights(in_size: int, out_size: int, method: str) -> np.ndarray:
    """Dense (out, in) resampling matrix with Pillow's coefficients (Resample.c precompute_coeffs)."""
    support = _FILTERS[method][1]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    m = np.zeros((out_size, in_size), np.float64)
    for i in range(out_size):
        center = (i + 0.5) * scale
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), in_size)
        x = (np.arange(lo, hi) - center + 0.5) / filterscale
        if method == "bilinear":
            w = np.maximum(1.0 - np.abs(x), 0.0)
        else:
            w = ((x > -0.5) & (x <= 0.5)).astype(np.float64)
        m[i, lo:hi] = w / w.sum()
    return m.astype(np.float32)


def _nearest_index(in_size: int, out_size: int) -> np.ndarray:
    scale = in_size / out_size
    return np.minimum(np.floor((np.arange(out_size) + 0.5) * scale).astype(np.int64), in_size - 1)


def resize(img: ArrayLike, hw: tuple[int, int], method: str = "bilinear") -> ArrayLike:
    """Resize NHWC images to (h, w) with Pillow's filters (antialiased when shrinking).

    Args:
      img: (N, H, W, C) NumPy or JAX array (JAX: jit-able, shapes static).
      hw: output (height, width).
      method: "bilinear", "nearest" or "area" (Pillow BOX: exact block averages for integer factors).

    Returns:
      (N, h, w, C) of the same array kind and dtype.
    """
    if method not in ("bilinear", "nearest", "area"):
        raise ValueError(f"unknown resize method {method!r}; use bilinear, nearest or area")
    oh, ow = int(hw[0]), int(hw[1])
    if oh < 1 or ow < 1:
        raise ValueError(f"resize to a non-positive size {hw}")
    n, h, w, c = img.shape
    if (oh, ow) == (h, w):
        return img
    is_jax = isinstance(img, jax.Array)
    if method == "nearest":
        xp = jnp if is_jax else np
        return xp.take(xp.take(img, _nearest_index(h, oh), axis=1), _nearest_index(w, ow), axis=2)
    if is_jax:
        mh = jnp.asarray(_filter_weights(h, oh, method), img.dtype)
        mw = jnp.asarray(_filter_weights(w, ow, method), img.dtype)
        hi = jax.lax.Precision.HIGHEST
        y = jnp.einsum("nhwc,oh->nowc", img, mh, precision=hi)
        return jnp.einsum("nowc,pw->nopc", y, mw, precision=hi)
    # NumPy: Pillow's float ("F") resampling is sparse and fast even for multi-megapixel photos.
    a = np.asarray(img, np.float32)
    out = np.empty((n, oh, ow, c), np.float32)
    resample = _FILTERS[method][0]
    for i in range(n):
        for k in range(c):
            channel = Image.fromarray(np.ascontiguousarray(a[i, :, :, k]))
            out[i, :, :, k] = np.asarray(channel.resize((ow, oh), resample))
    return out.astype(img.dtype, copy=False)


def resize_shorter(img: ArrayLike, size: int, method: str = "bilinear") -> ArrayLike:
    """Resize NHWC images so the shorter side is `size` (torchvision `Resize(int)` rounding)."""
    return resize(img, _shorter_side_hw(img.shape[1], img.shape[2], size), method)


def resize_max_side(img: ArrayLike, size: int, method: str = "bilinear") -> ArrayLike:
    """Shrink NHWC images so the longer side is at most `size` (unchanged if already within it)."""
    return resize(img, _max_side_hw(img.shape[1], img.shape[2], size), method)


def _hw(size_or_hw: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(size_or_hw, int | np.integer):
        return int(size_or_hw), int(size_or_hw)
    th, tw = size_or_hw
    return int(th), int(tw)


def center_crop(img: ArrayLike, size_or_hw: int | Sequence[int]) -> ArrayLike:
    """Centre crop NHWC images to `size` x `size` or (h, w), with torchvision CenterCrop's offsets."""
    th, tw = _hw(size_or_hw)
    top, left = _crop_box(img.shape[1], img.shape[2], th, tw)
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
# Colour spaces (NumPy or JAX, any leading shape, channels last)

# NTSC YIQ (FCC) and full-range BT.601 YCbCr (JPEG, offsets 0.5 for [0, 1] images). The inverses are the exact
# matrix inverses, so round trips are exact up to float rounding.
_RGB2YIQ = np.array([[0.299, 0.587, 0.114],
                     [0.595716, -0.274453, -0.321263],
                     [0.211456, -0.522591, 0.311135]], np.float64)
_YIQ2RGB = np.linalg.inv(_RGB2YIQ)
_RGB2YCC = np.array([[0.299, 0.587, 0.114],
                     [-0.168735892, -0.331264108, 0.5],
                     [0.5, -0.418687589, -0.081312411]], np.float64)
_YCC2RGB = np.linalg.inv(_RGB2YCC)
_YCC_OFFSET = np.array([0.0, 0.5, 0.5], np.float64)


def _xp(x: ArrayLike):
    return jnp if isinstance(x, jax.Array) else np


def _apply_matrix(x: ArrayLike, m: np.ndarray) -> ArrayLike:
    if isinstance(x, jax.Array):
        return jnp.einsum("...c,dc->...d", x, jnp.asarray(m, x.dtype), precision=jax.lax.Precision.HIGHEST)
    x = np.asarray(x)
    dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else np.float32
    return (x.astype(np.float64) @ m.T).astype(dtype)


def _const(x: ArrayLike, v: np.ndarray) -> ArrayLike:
    return jnp.asarray(v, x.dtype) if isinstance(x, jax.Array) else v.astype(np.asarray(x).dtype)


def rgb_to_yiq(img: ArrayLike) -> ArrayLike:
    """RGB -> YIQ (Y luminance in [0, 1], I and Q chroma), channels last."""
    return _apply_matrix(img, _RGB2YIQ)


def yiq_to_rgb(img: ArrayLike) -> ArrayLike:
    """YIQ -> RGB, the inverse of `rgb_to_yiq` (not clipped)."""
    return _apply_matrix(img, _YIQ2RGB)


def rgb_to_ycbcr(img: ArrayLike) -> ArrayLike:
    """RGB -> full-range YCbCr (JPEG's BT.601), all three in [0, 1] for RGB in [0, 1]."""
    y = _apply_matrix(img, _RGB2YCC)
    return y + _const(y, _YCC_OFFSET)


def ycbcr_to_rgb(img: ArrayLike) -> ArrayLike:
    """Full-range YCbCr -> RGB, the inverse of `rgb_to_ycbcr` (not clipped)."""
    if not isinstance(img, jax.Array):
        img = np.asarray(img)
    return _apply_matrix(img - _const(img, _YCC_OFFSET), _YCC2RGB)


# ----------------------------------------------------------------------------------------------------
# Colour preservation


def luminance_transfer(stylized: ArrayLike, content: ArrayLike) -> ArrayLike:
    """Luminance-only colour preservation: the stylized image's luminance with the content's chroma (YIQ).

    Args:
      stylized: (N, H, W, 3) in [0, 1].
      content: (N or 1, h, w, 3); resized (bilinear) to (H, W) if needed.

    Returns:
      (N, H, W, 3) in [0, 1], same array kind as `stylized`.
    """
    xp = _xp(stylized)
    if content.shape[1:3] != stylized.shape[1:3]:
        content = resize(content, stylized.shape[1:3], "bilinear")
    if xp is jnp:
        content = jnp.asarray(content, stylized.dtype)
    s = rgb_to_yiq(stylized)
    c = rgb_to_yiq(content)
    c = xp.broadcast_to(c, s.shape)
    yiq = xp.concatenate([s[..., :1], c[..., 1:]], axis=-1)
    return xp.clip(yiq_to_rgb(yiq), 0.0, 1.0)


def _sym_sqrt(xp, cov, inverse: bool):
    w, v = xp.linalg.eigh(cov)
    w = xp.maximum(w, 1e-12)
    d = 1.0 / xp.sqrt(w) if inverse else xp.sqrt(w)
    return (v * d[..., None, :]) @ xp.swapaxes(v, -1, -2)


def coral(source: ArrayLike, target: ArrayLike, eps: float = 1e-5) -> ArrayLike:
    """CORAL colour transfer: recolour `source` so its RGB mean and covariance match `target`'s.

    As pytorch-AdaIN's `util.coral` (standardise per channel, whiten with the inverse square root of the
    channel correlation matrix, colour with the target's), except that correlations are averaged over pixels
    rather than summed, so images of different sizes match too. `coral(style, content)` before stylizing is
    colour preservation by histogram matching.

    Args:
      source: (N, H, W, 3) images to recolour.
      target: (N or 1, h, w, 3) images whose colour statistics to take (any spatial size).
      eps: added to variances and to the correlation diagonals for stability on flat images.

    Returns:
      (N, H, W, 3) in [0, 1], same array kind as `source`.
    """
    xp = _xp(source)
    if xp is np:
        s = np.asarray(source, np.float64)
        t = np.asarray(target, np.float64)
    else:
        s = source
        t = jnp.asarray(target, source.dtype)

    def stats(x):
        f = x.reshape(x.shape[0], -1, 3)
        mean = xp.mean(f, axis=1, keepdims=True)
        std = xp.sqrt(xp.var(f, axis=1, keepdims=True) + eps)
        z = (f - mean) / std
        corr = xp.swapaxes(z, 1, 2) @ z / z.shape[1] + eps * xp.eye(3, dtype=z.dtype)
        return z, mean, std, corr

    zs, _, _, cs = stats(s)
    _, mt, st, ct = stats(t)
    a = _sym_sqrt(xp, ct, False) @ _sym_sqrt(xp, cs, True)
    out = (zs @ xp.swapaxes(a, 1, 2)) * st + mt
    out = xp.clip(out.reshape(s.shape), 0.0, 1.0)
    if xp is np:
        dtype = source.dtype if np.issubdtype(np.asarray(source).dtype, np.floating) else np.float32
        return out.astype(dtype)
    return out


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
