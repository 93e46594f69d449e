"""Resizing NHWC arrays with Pillow's filters, for NumPy (through Pillow) and JAX (dense matrices, jit-able).

The lowest layer of the image code: `nst_jax.image` (files, crops, masks) and `nst_jax.color` (which resizes a
content image to the stylized size) both build on it, and `image.resize` is its public name.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from nst_jax.typing import ArrayLike

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
